//! Plain stochastic gradient descent.

use crate::autograd::Tensor;
use crate::error::Result;

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
    /// If `lr` is negative, NaN or infinite (PyTorch's `SGD` also refuses a
    /// negative one): a step would go uphill or turn every weight into NaN.
    pub fn new(lr: f32) -> Result<Self> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(crate::Error::InvalidArgument(format!(
                "Sgd: the learning rate must be a finite number >= 0, got {lr}"
            )));
        }
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
