//! Dropout (Srivastava et al., 2014): in training, each value is kept with
//! probability `1 − p` and scaled by `1/(1 − p)`, or set to 0; in evaluation
//! the layer passes its input through. The scaling keeps every value's
//! expectation unchanged, so nothing needs rescaling at prediction time
//! ("inverted dropout", what PyTorch's `nn.Dropout` does).
//!
//! *Book: chapter "What batch norm does to training" — the seed texts say
//! that with batch norm, dropout is often unnecessary.*
//!
//! The layer draws its masks from its own seeded generator, so a training
//! run is the same bits every time. [`dropout`] is the operation with a
//! given mask, which is what the gradient check uses: with the mask fixed,
//! `∂y/∂x` is the mask itself.

use super::{Mode, Module};
use crate::autograd::Tensor;
use crate::error::{Error, Result};
use ndarray::ArrayD;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// `x · mask`, element by element, with `mask` a constant (no gradient):
/// `mask` holds `1/(1 − p)` for kept values and 0 for dropped ones.
///
/// # Errors
/// If `mask` and `x` differ in shape.
pub fn dropout(x: &Tensor, mask: &ArrayD<f32>) -> Result<Tensor> {
    if mask.shape() != x.shape().as_slice() {
        return Err(Error::shape(
            "dropout",
            format!(
                "the mask has shape {:?} but the input has shape {:?}",
                mask.shape(),
                x.shape()
            ),
        ));
    }
    Ok(x.mul(&Tensor::new(mask.clone())))
}

/// Inverted dropout with drop probability `p` (Srivastava et al., 2014). In
/// [`Mode::Train`] each value is kept with probability `1 − p` and scaled
/// by `1/(1 − p)`, or set to 0, so its expectation is unchanged; in
/// [`Mode::Eval`] the input passes through, as in PyTorch's `nn.Dropout`.
/// The masks come from the layer's own seeded generator: a training run is
/// the same bits every time. [`dropout`] is the operation for a given mask.
pub struct Dropout {
    p: f32,
    rng: StdRng,
}

impl Dropout {
    /// A dropout layer that drops each value with probability `p` in
    /// training; its masks come from a generator seeded with `seed`.
    ///
    /// # Errors
    /// If `p` is not in `[0, 1)` (at 1 every value would be dropped and the
    /// scale `1/(1 − p)` would be infinite).
    pub fn new(p: f32, seed: u64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::InvalidArgument(format!(
                "Dropout: the drop probability must be in [0, 1), got {p} \
                 (0.5 is the classic choice for fully connected layers)"
            )));
        }
        Ok(Dropout {
            p,
            rng: StdRng::seed_from_u64(seed),
        })
    }

    /// The drop probability.
    pub fn p(&self) -> f32 {
        self.p
    }

    /// A fresh mask for an input of `shape`: `1/(1 − p)` with probability
    /// `1 − p`, else 0.
    fn mask(&mut self, shape: &[usize]) -> ArrayD<f32> {
        let keep = 1.0 / (1.0 - self.p);
        let p = f64::from(self.p);
        ArrayD::from_shape_simple_fn(shape, || if self.rng.random_bool(p) { 0.0 } else { keep })
    }
}

impl Module for Dropout {
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match mode {
            Mode::Eval => Ok(x.clone()),
            Mode::Train if self.p == 0.0 => Ok(x.clone()),
            Mode::Train => {
                let mask = self.mask(&x.shape());
                dropout(x, &mask)
            }
        }
    }

    fn describe(&self) -> String {
        format!("Dropout(p {})", self.p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::refusal;
    use crate::gradcheck::GradCheck;
    use crate::random::random_input;

    #[test]
    fn dropout_passes_its_gradient_through_the_mask() {
        let x = random_input(&[8, 5], -2.0, 2.0, 1);
        let mask = Dropout::new(0.5, 3).unwrap().mask(&[8, 5]);
        let report = GradCheck::default().run(&[x], |t| dropout(&t[0], &mask).unwrap());
        assert!(report.passed(), "{report}");
    }

    #[test]
    fn training_drops_and_rescales_evaluation_passes_through() {
        let x = Tensor::new(ArrayD::ones(ndarray::IxDyn(&[100, 100])));
        let mut layer = Dropout::new(0.3, 0).unwrap();
        let y = layer.forward(&x, Mode::Train).unwrap();
        let values = y.value();
        let kept = values.iter().filter(|&&v| v != 0.0).count();
        assert!(
            values
                .iter()
                .all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6)
        );
        // 10,000 draws with p = 0.3: 7,000 kept on average, sd ≈ 46
        assert!((6_800..7_200).contains(&kept), "{kept} kept");
        let mean = values.iter().sum::<f32>() / 10_000.0;
        assert!((mean - 1.0).abs() < 0.03, "expectation kept: {mean}");
        let z = layer.forward(&x, Mode::Eval).unwrap();
        assert_eq!(*z.value(), *x.value());
        // a new mask every training step, the same masks for the same seed
        let again = layer.forward(&x, Mode::Train).unwrap();
        assert_ne!(*again.value(), *y.value());
        let mut twin = Dropout::new(0.3, 0).unwrap();
        assert_eq!(*twin.forward(&x, Mode::Train).unwrap().value(), *y.value());
    }

    #[test]
    fn bad_probabilities_and_masks_are_refused() {
        for p in [-0.1, 1.0, 1.5, f32::NAN] {
            let message = refusal(Dropout::new(p, 0).map(|_| ()));
            assert!(
                message.contains("drop probability must be in [0, 1)"),
                "{p}: {message}"
            );
        }
        let x = Tensor::new(ArrayD::ones(ndarray::IxDyn(&[2, 3])));
        let wrong = ArrayD::ones(ndarray::IxDyn(&[3, 2]));
        let err = dropout(&x, &wrong).unwrap_err().to_string();
        assert!(
            err.contains("the mask has shape [3, 2] but the input has shape [2, 3]"),
            "{err}"
        );
    }
}
