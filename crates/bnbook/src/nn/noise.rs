//! "Noisy batch norm" (Santurkar, Tsipras, Ilyas & Madry, 2018): after a
//! batch-norm layer, every channel is scaled and shifted by random amounts
//! drawn afresh at every training step, so the distribution of each
//! activation moves from step to step — deliberately the "internal
//! covariate shift" that batch norm was said to remove.
//!
//! *Book: chapter "What batch norm does to training", section "Noisy batch
//! norm".*
//!
//! The layer draws from its own seeded generator (a run is the same bits
//! every time). [`scale_and_shift`] is the operation for given draws, which
//! is what the gradient check uses: with the draws fixed, `∂y/∂x` is the
//! scale.

use super::{Mode, Module};
use crate::autograd::Tensor;
use crate::error::{Error, Result};
use ndarray::{ArrayD, IxDyn};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// `x · scale + shift`, with `scale` and `shift` constants (no gradient)
/// of shape `(1, C)` for an `(N, C)` input or `(1, C, 1, 1)` for an
/// `(N, C, H, W)` input: one scale and one shift per channel.
///
/// # Errors
/// If `x` is neither rank 2 nor rank 4, or `scale` or `shift` does not have
/// the per-channel shape for `x`.
pub fn scale_and_shift(x: &Tensor, scale: &ArrayD<f32>, shift: &ArrayD<f32>) -> Result<Tensor> {
    let expected = channel_shape("scale_and_shift", &x.shape())?;
    for (name, a) in [("scale", scale), ("shift", shift)] {
        if a.shape() != expected.as_slice() {
            return Err(Error::shape(
                "scale_and_shift",
                format!(
                    "the {name} has shape {:?} but an input of shape {:?} needs {expected:?} \
                     (one value per channel)",
                    a.shape(),
                    x.shape()
                ),
            ));
        }
    }
    Ok(&x.mul(&Tensor::new(scale.clone())) + &Tensor::new(shift.clone()))
}

/// `(1, C)` for an `(N, C)` input, `(1, C, 1, 1)` for `(N, C, H, W)`.
fn channel_shape(layer: &str, shape: &[usize]) -> Result<Vec<usize>> {
    match shape {
        [_, c] => Ok(vec![1, *c]),
        [_, c, _, _] => Ok(vec![1, *c, 1, 1]),
        _ => Err(Error::shape(
            layer,
            format!("expected (N, C) or (N, C, H, W), got shape {shape:?}"),
        )),
    }
}

/// How strong the noise of [`DistributionNoise`] is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NoiseOptions {
    /// Each channel's shift is drawn from `U(−max_shift, max_shift)`.
    pub max_shift: f32,
    /// Each channel's scale is drawn from `U(min_scale, max_scale)`.
    pub min_scale: f32,
    /// See [`NoiseOptions::min_scale`].
    pub max_scale: f32,
}

impl Default for NoiseOptions {
    /// Shifts in `[−1, 1]` and scales in `[0.5, 1.5]`: after batch norm a
    /// channel has mean about 0 and variance about 1, so each step moves its
    /// mean by up to one standard deviation and multiplies its variance by
    /// 0.25 to 2.25.
    fn default() -> Self {
        NoiseOptions {
            max_shift: 1.0,
            min_scale: 0.5,
            max_scale: 1.5,
        }
    }
}

impl NoiseOptions {
    /// Checks the ranges.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if a bound is not finite, the shift is
    /// negative, or the scales are not `0 < min_scale ≤ max_scale`.
    pub fn validate(&self) -> Result<()> {
        let NoiseOptions {
            max_shift,
            min_scale,
            max_scale,
        } = *self;
        let finite = max_shift.is_finite() && min_scale.is_finite() && max_scale.is_finite();
        if !finite || max_shift < 0.0 || min_scale <= 0.0 || min_scale > max_scale {
            return Err(Error::InvalidArgument(format!(
                "noise: need finite bounds with max_shift ≥ 0 and 0 < min_scale ≤ max_scale, \
                 got max_shift {max_shift}, scales {min_scale} to {max_scale} \
                 (the default is 1, 0.5 to 1.5)"
            )));
        }
        Ok(())
    }

    /// The scale the noise applies on average, `(min_scale + max_scale)/2`
    /// (the shift averages 0).
    pub fn mean_scale(&self) -> f32 {
        (self.min_scale + self.max_scale) / 2.0
    }
}

/// Santurkar et al.'s noise after batch norm: in [`Mode::Train`], every
/// forward pass draws for each channel a scale from `U(min_scale,
/// max_scale)` and a shift from `U(−max_shift, max_shift)` and returns
/// `x · scale + shift` ([`scale_and_shift`]); each channel's mean and
/// variance therefore change at every step. In [`Mode::Eval`] the layer
/// applies the average transformation, `x · mean_scale`.
pub struct DistributionNoise {
    options: NoiseOptions,
    rng: StdRng,
}

impl DistributionNoise {
    /// A noise layer drawing from a generator seeded with `seed`.
    ///
    /// # Errors
    /// If the options are invalid ([`NoiseOptions::validate`]).
    pub fn new(options: NoiseOptions, seed: u64) -> Result<Self> {
        options.validate()?;
        Ok(DistributionNoise {
            options,
            rng: StdRng::seed_from_u64(seed),
        })
    }

    /// The noise ranges.
    pub fn options(&self) -> NoiseOptions {
        self.options
    }

    /// Fresh per-channel scales and shifts for an input of `shape`.
    fn draw(&mut self, shape: &[usize]) -> Result<(ArrayD<f32>, ArrayD<f32>)> {
        let channels = IxDyn(&channel_shape(&self.describe(), shape)?);
        let NoiseOptions {
            max_shift,
            min_scale,
            max_scale,
        } = self.options;
        let rng = &mut self.rng;
        let scale = ArrayD::from_shape_simple_fn(channels.clone(), || {
            min_scale + (max_scale - min_scale) * rng.random::<f32>()
        });
        let shift = ArrayD::from_shape_simple_fn(channels, || {
            max_shift * (2.0 * rng.random::<f32>() - 1.0)
        });
        Ok((scale, shift))
    }
}

impl Module for DistributionNoise {
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match mode {
            Mode::Train => {
                let (scale, shift) = self.draw(&x.shape())?;
                scale_and_shift(x, &scale, &shift)
            }
            Mode::Eval => {
                channel_shape(&self.describe(), &x.shape())?;
                Ok(x.mul_scalar(self.options.mean_scale()))
            }
        }
    }

    fn describe(&self) -> String {
        let o = self.options;
        format!(
            "DistributionNoise(shift ±{}, scale {} to {})",
            o.max_shift, o.min_scale, o.max_scale
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::refusal;
    use crate::gradcheck::GradCheck;
    use crate::random::random_input;

    #[test]
    fn scale_and_shift_passes_its_gradient_through_the_scale() {
        for shape in [vec![6, 4], vec![3, 4, 2, 2]] {
            let x = random_input(&shape, -2.0, 2.0, 1);
            let (scale, shift) = DistributionNoise::new(NoiseOptions::default(), 3)
                .unwrap()
                .draw(&shape)
                .unwrap();
            let report =
                GradCheck::default().run(&[x], |t| scale_and_shift(&t[0], &scale, &shift).unwrap());
            assert!(report.passed(), "{shape:?}: {report}");
        }
    }

    #[test]
    fn every_step_moves_each_channel_and_evaluation_is_the_average() {
        let x = Tensor::new(random_input(&[64, 3, 4, 4], -1.0, 1.0, 2));
        let mut layer = DistributionNoise::new(NoiseOptions::default(), 0).unwrap();
        let channel_mean = |y: &Tensor| -> Vec<f32> {
            let v = y.value();
            (0..3)
                .map(|c| v.index_axis(ndarray::Axis(1), c).mean().unwrap())
                .collect()
        };
        let before = channel_mean(&x);
        let first = layer.forward(&x, Mode::Train).unwrap();
        let second = layer.forward(&x, Mode::Train).unwrap();
        for (a, b) in channel_mean(&first).iter().zip(&channel_mean(&second)) {
            assert!((a - b).abs() > 1e-4, "a new draw every step: {a} vs {b}");
        }
        assert_ne!(channel_mean(&first), before);
        // the same seed gives the same draws
        let mut twin = DistributionNoise::new(NoiseOptions::default(), 0).unwrap();
        assert_eq!(
            *twin.forward(&x, Mode::Train).unwrap().value(),
            *first.value()
        );
        let eval = layer.forward(&x, Mode::Eval).unwrap();
        assert_eq!(*eval.value(), x.value().mapv(|v| v * 1.0));
    }

    #[test]
    fn bad_ranges_and_shapes_are_refused() {
        for options in [
            NoiseOptions {
                max_shift: -1.0,
                ..NoiseOptions::default()
            },
            NoiseOptions {
                min_scale: 0.0,
                ..NoiseOptions::default()
            },
            NoiseOptions {
                min_scale: 2.0,
                max_scale: 1.0,
                ..NoiseOptions::default()
            },
            NoiseOptions {
                max_shift: f32::NAN,
                ..NoiseOptions::default()
            },
        ] {
            let message = refusal(DistributionNoise::new(options, 0).map(|_| ()));
            assert!(message.contains("0 < min_scale ≤ max_scale"), "{message}");
        }
        let x = Tensor::new(random_input(&[2, 3], -1.0, 1.0, 0));
        let wrong = ArrayD::ones(IxDyn(&[1, 2]));
        let right = ArrayD::ones(IxDyn(&[1, 3]));
        let err = scale_and_shift(&x, &wrong, &right).unwrap_err().to_string();
        assert!(err.contains("the scale has shape [1, 2]"), "{err}");
        let flat = Tensor::new(random_input(&[6], -1.0, 1.0, 0));
        let mut layer = DistributionNoise::new(NoiseOptions::default(), 0).unwrap();
        let err = layer.forward(&flat, Mode::Train).err().unwrap().to_string();
        assert!(err.contains("expected (N, C) or (N, C, H, W)"), "{err}");
    }
}
