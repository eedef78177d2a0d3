//! Batch normalization from scratch: a pure function, then a layer.
//!
//! *Book: chapter "BN from scratch".*
//!
//! The function [`batch_norm`] holds all the math and is built only from the
//! autograd's primitive operations (mean, subtract, multiply, square root,
//! divide), so autograd derives its backward pass for us and the graph shows
//! exactly the steps the book derives by hand. The layer [`BatchNorm`] only
//! does the bookkeeping: it owns γ and β (parameters) and the moving mean and
//! variance (plain arrays, *outside* the autograd graph).
//!
//! Conventions, as in the d2l code this mirrors:
//!
//! * `momentum` is the weight of the **old** moving value:
//!   `moving ← momentum · moving + (1 − momentum) · batch`, with 0.9 by default.
//!   PyTorch's `momentum = 0.1` is the weight of the *new* batch: the same
//!   average (see [`crate::concise::Momentum`]).
//! * The moving variance is fed with the **biased** batch variance (divide by
//!   `m`, the number of values averaged), the one used to normalise.
//! * The moving mean starts at 0 and the moving variance at 1, so that a
//!   network evaluated before any training step normalises by
//!   `sqrt(1 + ε) ≈ 1` rather than by `sqrt(ε)`.

use crate::autograd::Tensor;
use crate::error::{Error, Result};
use crate::nn::{BatchNormLayer, Mode, Module, Momentum, check_eps, check_weight};
use ndarray::{ArrayD, IxDyn};

/// The axes batch statistics are taken over: the batch axis for fully
/// connected inputs `(N, C)`; batch and both spatial axes for convolutional
/// inputs `(N, C, H, W)`, so that each channel gets one mean and one variance.
pub fn statistics_axes(rank: usize) -> Option<&'static [usize]> {
    match rank {
        2 => Some(&[0]),
        4 => Some(&[0, 2, 3]),
        _ => None,
    }
}

/// Shape of γ, β and the moving statistics for `num_features` channels at
/// `rank`: `(1, C)` or `(1, C, 1, 1)`, so they broadcast against the input.
pub fn parameter_shape(num_features: usize, rank: usize) -> Vec<usize> {
    if rank == 2 {
        vec![1, num_features]
    } else {
        vec![1, num_features, 1, 1]
    }
}

// ANCHOR: batch_norm
/// Batch normalization of `x`, the heart of the chapter.
///
/// * `x`: `(N, C)` (after a fully connected layer) or `(N, C, H, W)` (after
///   a convolution);
/// * `gamma`, `beta`: scale and shift, shaped `(1, C)` or `(1, C, 1, 1)`;
/// * `moving_mean`, `moving_var`: running statistics of the same shape;
/// * `eps`: added to the variance so we never divide by zero;
/// * `momentum`: weight of the old moving value (d2l's 0.9);
/// * `mode`: [`Mode::Train`] normalises with this batch's mean and (biased)
///   variance and returns updated moving statistics; [`Mode::Eval`] uses the
///   moving statistics and returns them unchanged.
///
/// Returns `(Y, new_moving_mean, new_moving_var)`.
///
/// # Errors
/// If `x` is not rank 2 or 4, the other shapes do not match its channels,
/// `eps` is not a positive finite number or `momentum` is outside `[0, 1]`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    moving_mean: &ArrayD<f32>,
    moving_var: &ArrayD<f32>,
    eps: f32,
    momentum: f32,
    mode: Mode,
) -> Result<(Tensor, ArrayD<f32>, ArrayD<f32>)> {
    check_shapes(x, gamma, beta, moving_mean, moving_var, mode)?;
    check_eps("batch_norm", eps)?;
    check_weight("batch_norm", "weight of the old moving value", momentum)?;
    let axes = statistics_axes(x.ndim()).expect("rank checked");
    let (x_hat, new_mean, new_var) = match mode {
        Mode::Eval => {
            // Predict with the statistics gathered during training.
            let mean = Tensor::new(moving_mean.clone());
            let var = Tensor::new(moving_var.clone());
            let x_hat = (x - &mean) / (var + eps).sqrt();
            (x_hat, moving_mean.clone(), moving_var.clone())
        }
        Mode::Train => {
            // Mean and biased variance per feature / per channel.
            let mean = x.mean(axes, true);
            let centered = x - &mean;
            let var = (&centered * &centered).mean(axes, true);
            let x_hat = centered / (&var + eps).sqrt();
            // Moving averages: plain arrays, outside the graph.
            let new_mean = moving_mean * momentum + &*mean.value() * (1.0 - momentum);
            let new_var = moving_var * momentum + &*var.value() * (1.0 - momentum);
            (x_hat, new_mean, new_var)
        }
    };
    let y = gamma * &x_hat + beta; // scale and shift
    Ok((y, new_mean, new_var))
}
// ANCHOR_END: batch_norm

fn check_shapes(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    moving_mean: &ArrayD<f32>,
    moving_var: &ArrayD<f32>,
    mode: Mode,
) -> Result<()> {
    let shape = x.shape();
    if statistics_axes(shape.len()).is_none() {
        return Err(Error::shape(
            "batch_norm",
            format!(
                "expected a fully connected batch (N, C) or a convolutional batch (N, C, H, W), \
                 got rank {} with shape {shape:?}",
                shape.len()
            ),
        ));
    }
    let expected = parameter_shape(shape[1], shape.len());
    for (name, got) in [
        ("gamma", gamma.shape()),
        ("beta", beta.shape()),
        ("moving_mean", moving_mean.shape().to_vec()),
        ("moving_var", moving_var.shape().to_vec()),
    ] {
        if got != expected {
            return Err(Error::shape(
                "batch_norm",
                format!("{name} has shape {got:?}; for input {shape:?} it must be {expected:?}"),
            ));
        }
    }
    let values_per_channel: usize = statistics_axes(shape.len())
        .expect("rank checked")
        .iter()
        .map(|&a| shape[a])
        .product();
    if mode == Mode::Train && values_per_channel < 2 {
        return Err(Error::shape(
            "batch_norm",
            format!(
                "training needs more than one value per channel to estimate a variance, \
                 got input shape {shape:?}; use a larger batch (or drop a final batch of size 1)"
            ),
        ));
    }
    Ok(())
}

// ANCHOR: layer
/// The batch-normalization layer built on [`batch_norm`].
///
/// `num_dims` is 2 after a fully connected layer and 4 after a convolution.
pub struct BatchNorm {
    /// Scale γ, a parameter initialised to 1.
    pub gamma: Tensor,
    /// Shift β, a parameter initialised to 0.
    pub beta: Tensor,
    /// Running mean, initialised to 0; not a parameter (no gradient).
    pub moving_mean: ArrayD<f32>,
    /// Running (biased) variance, initialised to 1; not a parameter.
    pub moving_var: ArrayD<f32>,
    /// Added to the variance before the square root (default `1e-5`).
    pub eps: f32,
    /// Weight of the old moving value (default `0.9`).
    pub momentum: f32,
    num_features: usize,
    num_dims: usize,
}

impl BatchNorm {
    /// A layer for `num_features` features (rank 2) or channels (rank 4).
    ///
    /// # Errors
    /// If `num_dims` is not 2 or 4, or `num_features` is 0.
    pub fn new(num_features: usize, num_dims: usize) -> Result<Self> {
        if statistics_axes(num_dims).is_none() {
            return Err(Error::InvalidArgument(format!(
                "BatchNorm: num_dims must be 2 (after a Linear layer) or 4 (after a Conv2d), got {num_dims}"
            )));
        }
        if num_features == 0 {
            return Err(Error::InvalidArgument(
                "BatchNorm: num_features must be at least 1".into(),
            ));
        }
        let shape = IxDyn(&parameter_shape(num_features, num_dims));
        Ok(BatchNorm {
            gamma: Tensor::parameter(ArrayD::ones(shape.clone())),
            beta: Tensor::parameter(ArrayD::zeros(shape.clone())),
            moving_mean: ArrayD::zeros(shape.clone()),
            moving_var: ArrayD::ones(shape),
            eps: 1e-5,
            momentum: 0.9,
            num_features,
            num_dims,
        })
    }
}

impl Module for BatchNorm {
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if x.ndim() != self.num_dims {
            return Err(Error::shape(
                self.describe(),
                format!(
                    "expected a rank-{} input, got shape {:?}",
                    self.num_dims,
                    x.shape()
                ),
            ));
        }
        let (y, moving_mean, moving_var) = batch_norm(
            x,
            &self.gamma,
            &self.beta,
            &self.moving_mean,
            &self.moving_var,
            self.eps,
            self.momentum,
            mode,
        )?;
        // Updated once per training forward; in Eval these are unchanged copies.
        self.moving_mean = moving_mean;
        self.moving_var = moving_var;
        Ok(y)
    }
    // ANCHOR_END: layer

    fn parameters(&self) -> Vec<Tensor> {
        vec![self.gamma.clone(), self.beta.clone()]
    }

    fn describe(&self) -> String {
        format!(
            "BatchNorm({}, num_dims {})",
            self.num_features, self.num_dims
        )
    }

    fn as_batch_norm(&self) -> Option<&dyn BatchNormLayer> {
        Some(self)
    }

    fn as_batch_norm_mut(&mut self) -> Option<&mut dyn BatchNormLayer> {
        Some(self)
    }
}

impl BatchNormLayer for BatchNorm {
    fn num_features(&self) -> usize {
        self.num_features
    }
    fn gamma(&self) -> Option<Vec<f32>> {
        Some(self.gamma.value().iter().copied().collect())
    }
    fn beta(&self) -> Option<Vec<f32>> {
        Some(self.beta.value().iter().copied().collect())
    }
    fn running_mean(&self) -> Vec<f32> {
        self.moving_mean.iter().copied().collect()
    }
    fn running_var(&self) -> Vec<f32> {
        self.moving_var.iter().copied().collect()
    }
    fn eps(&self) -> f32 {
        self.eps
    }
    fn momentum(&self) -> Momentum {
        Momentum::from_old_weight(self.momentum)
    }
    fn set_momentum(&mut self, momentum: Momentum) -> Result<()> {
        match momentum {
            Momentum::NewBatchWeight(w) => {
                check_weight("BatchNorm", "weight of the new batch", w)?;
                self.momentum = 1.0 - w;
                Ok(())
            }
            Momentum::CumulativeAverage => Err(Error::InvalidArgument(
                "the scratch BatchNorm keeps no count of its training steps, so it cannot \
                 follow Momentum::CumulativeAverage; set NewBatchWeight(1/k) at step k instead"
                    .into(),
            )),
        }
    }
}
