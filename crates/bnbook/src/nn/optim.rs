//! Plain stochastic gradient descent.

use crate::autograd::Tensor;
use crate::error::Result;

/// The one rule for learning rates, used by [`Sgd::new`] and by the
/// training settings: a positive finite number. A negative one would step
/// uphill (PyTorch's `SGD` refuses it too), NaN or infinity turns every
/// weight into NaN, and 0 trains nothing.
///
/// # Errors
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument) naming the
/// value and d2l's choices.
pub fn check_learning_rate(lr: f32) -> Result<()> {
    if lr.is_finite() && lr > 0.0 {
        return Ok(());
    }
    Err(crate::Error::InvalidArgument(format!(
        "the learning rate must be a positive number, got {lr} \
         (d2l uses 1.0 for LeNet with batch norm, 0.9 for plain LeNet)"
    )))
}

/// Minibatch SGD without momentum or weight decay: `p ← p − lr · ∂loss/∂p`.
///
/// Because the loss is the *mean* over the batch, `lr` is the step per
/// batch, as in d2l (`torch.optim.SGD(params, lr)`).
#[derive(Clone, Copy, Debug)]
pub struct Sgd {
    /// The learning rate.
    pub lr: f32,
}

impl Sgd {
    /// An optimizer with learning rate `lr`.
    ///
    /// # Errors
    /// If `lr` is not a positive finite number ([`check_learning_rate`]).
    pub fn new(lr: f32) -> Result<Self> {
        check_learning_rate(lr)?;
        Ok(Sgd { lr })
    }

    /// Moves every parameter that has a gradient one step downhill.
    pub fn step(&self, params: &[Tensor]) {
        for p in params {
            if let Some(g) = p.grad_ref().as_ref() {
                p.value_mut().scaled_add(-self.lr, g);
            }
        }
    }

    /// Clears the gradients (they accumulate otherwise).
    pub fn zero_grad(&self, params: &[Tensor]) {
        for p in params {
            p.zero_grad();
        }
    }
}
