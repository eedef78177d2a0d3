//! "Normalise a batch": batch norm on synthetic features, step by step.
//!
//! *Book: chapter "Try it: batch norm in your browser", section "Normalise a
//! batch".*
//!
//! [`Demo`] owns one [`BatchNorm1d`] over [`FEATURES`] features and a seeded
//! random generator. Each [`Demo::normalize`] draws a fresh batch, shifts
//! and scales it as the reader asks, and passes it through the layer in the
//! chosen [`Mode`]: in training mode the layer normalises with the batch's
//! own mean and variance and updates its running statistics; in evaluation
//! mode it normalises with the running statistics and leaves them alone.

use bnbook::autograd::Tensor;
use bnbook::concise::{BatchNorm1d, BatchNormOptions};
use bnbook::error::{Error, Result};
use bnbook::nn::{BatchNormLayer, Mode, Module, Momentum};
use ndarray::{ArrayD, IxDyn};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Number of features of the demo batch: one bell-shaped, one skewed, one
/// with two bumps, so the histograms show that BN shifts and rescales a
/// distribution but does not change its shape.
pub const FEATURES: usize = 3;

/// Largest batch the page may ask for.
pub const MAX_BATCH: usize = 4096;

/// Which "momentum" the reader sets (book chapter "BN at inference").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MomentumConvention {
    /// PyTorch: `momentum` is the weight of the new batch (0.1); the running
    /// variance is fed the unbiased batch variance.
    NewBatchWeight,
    /// d2l's scratch code and Keras: `momentum` is the weight of the old
    /// value (0.9); the running variance is fed the biased batch variance.
    OldValueWeight,
}

/// The controls of the "Normalise a batch" panel.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Examples per batch, `2..=MAX_BATCH` in training mode.
    pub batch_size: usize,
    /// Scale γ, the same for every feature.
    pub gamma: f32,
    /// Shift β, the same for every feature.
    pub beta: f32,
    /// ε, added to the variance.
    pub eps: f32,
    /// Added to every input value.
    pub input_shift: f32,
    /// Multiplies every input value (before the shift).
    pub input_scale: f32,
    /// The momentum, read in `convention`.
    pub momentum: f32,
    /// How `momentum` is read.
    pub convention: MomentumConvention,
    /// Training (batch statistics, running statistics updated) or evaluation.
    pub training: bool,
}

impl Settings {
    /// The layer options these settings stand for.
    fn options(&self) -> BatchNormOptions {
        let base = match self.convention {
            MomentumConvention::NewBatchWeight => BatchNormOptions::default(),
            MomentumConvention::OldValueWeight => BatchNormOptions::d2l(),
        };
        let momentum = match self.convention {
            MomentumConvention::NewBatchWeight => Momentum::NewBatchWeight(self.momentum),
            MomentumConvention::OldValueWeight => Momentum::from_old_weight(self.momentum),
        };
        BatchNormOptions {
            eps: self.eps,
            momentum,
            ..base
        }
    }

    fn check(&self) -> Result<()> {
        if self.batch_size == 0 || self.batch_size > MAX_BATCH {
            return Err(Error::InvalidArgument(format!(
                "batch size {} is outside 1..={MAX_BATCH}",
                self.batch_size
            )));
        }
        for (name, v) in [
            ("gamma", self.gamma),
            ("beta", self.beta),
            ("input shift", self.input_shift),
            ("input scale", self.input_scale),
        ] {
            if !v.is_finite() {
                return Err(Error::InvalidArgument(format!(
                    "{name} must be a finite number"
                )));
            }
        }
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(Error::InvalidArgument(format!(
                "momentum {} is outside [0, 1]",
                self.momentum
            )));
        }
        Ok(())
    }
}

/// What one pass shows. Vectors are per feature; `input` and `output` hold
/// one row per feature (its values across the batch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalized {
    /// The batch fed to the layer, feature by feature.
    pub input: Vec<Vec<f32>>,
    /// The layer's output, feature by feature.
    pub output: Vec<Vec<f32>>,
    /// Mean of each input feature over the batch.
    pub batch_mean: Vec<f64>,
    /// Biased variance of each input feature over the batch.
    pub batch_var: Vec<f64>,
    /// Mean of each output feature (≈ β in training mode).
    pub output_mean: Vec<f64>,
    /// Biased variance of each output feature (≈ γ² in training mode).
    pub output_var: Vec<f64>,
    /// The layer's running mean after the pass.
    pub running_mean: Vec<f32>,
    /// The layer's running variance after the pass.
    pub running_var: Vec<f32>,
    /// Training passes so far (the running statistics' age).
    pub batches_tracked: u64,
}

/// The demo's state: the layer (with its running statistics) and the
/// generator of input batches.
pub struct Demo {
    layer: BatchNorm1d,
    rng: StdRng,
}

impl Demo {
    /// A fresh layer (running mean 0, running variance 1) and a generator
    /// seeded with `seed`.
    pub fn new(seed: u64) -> Demo {
        Demo {
            layer: BatchNorm1d::new(FEATURES).expect("FEATURES > 0"),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// One batch through the layer.
    ///
    /// # Errors
    /// Settings out of range, or a training batch of one example (no
    /// variance to estimate), as `bnbook` reports them.
    pub fn normalize(&mut self, settings: &Settings) -> Result<Normalized> {
        settings.check()?;
        let n = settings.batch_size;
        let mut x = vec![0.0_f32; n * FEATURES];
        for row in x.chunks_exact_mut(FEATURES) {
            for (feature, v) in row.iter_mut().enumerate() {
                *v = settings.input_shift + settings.input_scale * draw(feature, &mut self.rng);
            }
        }
        // The layer checks the options (ε, momentum) on every forward pass.
        self.layer.options = settings.options();
        let fill = |v: f32| Tensor::parameter(ArrayD::from_elem(IxDyn(&[FEATURES]), v));
        self.layer.gamma = Some(fill(settings.gamma));
        self.layer.beta = Some(fill(settings.beta));
        let mode = if settings.training {
            Mode::Train
        } else {
            Mode::Eval
        };
        let x = ArrayD::from_shape_vec(IxDyn(&[n, FEATURES]), x).expect("n * FEATURES values");
        let y = self.layer.forward(&Tensor::new(x.clone()), mode)?;
        let by_feature = |a: &ArrayD<f32>| -> Vec<Vec<f32>> {
            (0..FEATURES)
                .map(|f| (0..n).map(|i| a[[i, f]]).collect())
                .collect()
        };
        let (input, output) = (by_feature(&x), by_feature(&y.value()));
        let (batch_mean, batch_var) = moments(&input);
        let (output_mean, output_var) = moments(&output);
        Ok(Normalized {
            input,
            output,
            batch_mean,
            batch_var,
            output_mean,
            output_var,
            running_mean: self.layer.running_mean(),
            running_var: self.layer.running_var(),
            batches_tracked: self.layer.num_batches_tracked,
        })
    }

    /// Running mean 0, running variance 1, no batches tracked.
    pub fn reset_running_statistics(&mut self) {
        self.layer.running_mean = vec![0.0; FEATURES];
        self.layer.running_var = vec![1.0; FEATURES];
        self.layer.num_batches_tracked = 0;
    }
}

/// One raw value of `feature`: 0 standard normal, 1 exponential (skewed),
/// 2 an even mix of two narrow bumps at ±1.5.
fn draw(feature: usize, rng: &mut StdRng) -> f32 {
    let normal = |rng: &mut StdRng| {
        // Box–Muller: u1 in (0, 1] so the logarithm is finite.
        let u1 = 1.0 - rng.random::<f64>();
        let u2 = rng.random::<f64>();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    };
    let v = match feature {
        0 => normal(rng),
        1 => -(1.0 - rng.random::<f64>()).ln(),
        _ => {
            let side = if rng.random::<bool>() { 1.5 } else { -1.5 };
            side + 0.4 * normal(rng)
        }
    };
    v as f32
}

/// Mean and biased variance of each row, in `f64`.
fn moments(rows: &[Vec<f32>]) -> (Vec<f64>, Vec<f64>) {
    rows.iter()
        .map(|row| {
            let n = row.len().max(1) as f64;
            let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let var = row
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / n;
            (mean, var)
        })
        .unzip()
}

/// One training-mode forward and backward pass of a fresh
/// [`BatchNorm1d`] (PyTorch conventions, ε = `eps`) on `x` of shape
/// `(batch, features)` (row-major), with γ, β given per feature and the
/// upstream gradient ∂L/∂y. The page's code path, and the one a test
/// compares between the native and the WebAssembly builds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForwardBackward {
    /// y, row-major `(batch, features)`.
    pub y: Vec<f32>,
    /// ∂L/∂x, row-major `(batch, features)`.
    pub dx: Vec<f32>,
    /// ∂L/∂γ per feature.
    pub dgamma: Vec<f32>,
    /// ∂L/∂β per feature.
    pub dbeta: Vec<f32>,
    /// Running mean after the pass.
    pub running_mean: Vec<f32>,
    /// Running variance after the pass.
    pub running_var: Vec<f32>,
}

/// The input of [`forward_backward`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForwardBackwardInput {
    /// Examples in the batch.
    pub batch: usize,
    /// Features per example.
    pub features: usize,
    /// x, row-major `(batch, features)`.
    pub x: Vec<f32>,
    /// γ per feature.
    pub gamma: Vec<f32>,
    /// β per feature.
    pub beta: Vec<f32>,
    /// ∂L/∂y, row-major `(batch, features)`.
    pub upstream: Vec<f32>,
    /// ε.
    pub eps: f32,
}

/// See [`ForwardBackward`].
///
/// # Errors
/// Lengths that do not match `batch` and `features`, or what `bnbook`'s
/// layer rejects (a batch of one, a bad ε).
pub fn forward_backward(input: &ForwardBackwardInput) -> Result<ForwardBackward> {
    let (n, c) = (input.batch, input.features);
    let matrix = |name: &str, v: &[f32], len: usize, shape: &[usize]| {
        if v.len() != len {
            return Err(Error::InvalidArgument(format!(
                "forward_backward: {name} has {} values, expected {len}",
                v.len()
            )));
        }
        Ok(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).expect("length checked"))
    };
    let x = Tensor::parameter(matrix("x", &input.x, n * c, &[n, c])?);
    let upstream = matrix("upstream", &input.upstream, n * c, &[n, c])?;
    let gamma = Tensor::parameter(matrix("gamma", &input.gamma, c, &[c])?);
    let beta = Tensor::parameter(matrix("beta", &input.beta, c, &[c])?);
    let mut layer = BatchNorm1d::with_options(
        c,
        BatchNormOptions {
            eps: input.eps,
            ..BatchNormOptions::default()
        },
    )?;
    layer.gamma = Some(gamma.clone());
    layer.beta = Some(beta.clone());
    let y = layer.forward(&x, Mode::Train)?;
    y.backward_with(upstream);
    let flat =
        |t: &Tensor| -> Vec<f32> { t.grad().expect("a parameter").iter().copied().collect() };
    Ok(ForwardBackward {
        y: y.value().iter().copied().collect(),
        dx: flat(&x),
        dgamma: flat(&gamma),
        dbeta: flat(&beta),
        running_mean: layer.running_mean(),
        running_var: layer.running_var(),
    })
}
