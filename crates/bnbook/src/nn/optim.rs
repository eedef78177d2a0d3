//! Plain stochastic gradient descent.

use crate::autograd::Tensor;

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
    pub fn new(lr: f32) -> Self {
        Sgd { lr }
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
