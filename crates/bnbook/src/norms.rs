//! Batch norm's relatives: layer norm, instance norm and group norm.
//!
//! *Book: chapter "BatchNorm, LayerNorm, InstanceNorm, GroupNorm".*
//!
//! All four normalisations compute `x̂ = (x − μ)/sqrt(σ² + ε)` and then
//! `y = γ·x̂ + β`. They differ only in **which values share one μ and one
//! σ²**. For a convolutional batch `(N, C, H, W)`:
//!
//! | layer | one mean and variance per | averaged over |
//! |---|---|---|
//! | batch norm | channel | `N, H, W` |
//! | layer norm | example | `C, H, W` |
//! | instance norm | example and channel | `H, W` |
//! | group norm (`G` groups) | example and group of `C/G` channels | `C/G, H, W` |
//!
//! Batch norm is the only one whose statistics mix different examples, so it
//! is the only one that needs running averages for prediction and that
//! behaves differently in [`Mode::Train`] and [`Mode::Eval`]. The three
//! layers here normalise every example on its own: they keep no running
//! statistics, and their output is the same in both modes.
//!
//! In every case the values sharing statistics can be laid out as one
//! contiguous **row** of a row-major array: an example of `(N, C, H, W)` is
//! `C·H·W` consecutive numbers, a channel group `(C/G)·H·W` of them, an
//! instance-channel `H·W`. So a single operation, "standardise each row",
//! serves all three layers; it exists twice, to compare:
//!
//! * [`standardize_rows_fused`] — one operation with the hand-derived
//!   backward pass `∂L/∂x = (g − mean(g) − x̂·mean(g·x̂)) / σ` per row (the
//!   batch-norm derivation of the chapter "Autograd", with the row in place
//!   of the channel);
//! * [`standardize_rows_composed`] — the same math as a composition of
//!   autograd primitives (reshape, mean, subtract, multiply, square root,
//!   divide), whose backward pass autograd derives.
//!
//! ## Two meanings of "layer norm" for convolutional features
//!
//! PyTorch's `nn.LayerNorm([C, H, W])` normalises each example over
//! `C, H, W` and then scales and shifts **every element** with its own γ and
//! β (`C·H·W` of each): that is [`LayerNorm::new(&[c, h, w])`](LayerNorm::new).
//! The "layer norm" of the group-norm paper (Wu & He, 2018) normalises over
//! the same values but has **one γ and β per channel**, like batch norm: that
//! is group norm with a single group, [`GroupNorm::new(1, c)`](GroupNorm::new).
//! The normalised values are identical; only the number of affine parameters
//! (and whether they depend on the image size) differs. The models of the
//! book use the per-channel version, so that batch norm and layer norm runs
//! differ in nothing but the axes of the statistics.

use crate::autograd::{Tensor, build};
use crate::concise::{lane_sum_f64, lane_sums_f64};
use crate::error::{Error, Result};
use crate::nn::{Mode, Module, check_eps, check_parameter};
use crate::parallel::*;
use ndarray::{ArrayD, IxDyn};

/// Which of the two equivalent implementations of the standardisation a
/// layer runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Implementation {
    /// One operation with a hand-derived backward pass
    /// ([`standardize_rows_fused`]).
    #[default]
    Fused,
    /// A composition of autograd primitives ([`standardize_rows_composed`]).
    Composed,
}

/// Options shared by [`LayerNorm`], [`InstanceNorm2d`] and [`GroupNorm`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormOptions {
    /// Added to the variance before the square root (PyTorch: 1e-5).
    pub eps: f32,
    /// Whether the layer has the learned scale γ (starts at 1) and shift β
    /// (starts at 0). PyTorch: on for layer and group norm, off for
    /// instance norm.
    pub affine: bool,
    /// Fused operation or composition of autograd primitives.
    pub implementation: Implementation,
}

impl Default for NormOptions {
    /// ε = 1e-5, affine, fused: PyTorch's `LayerNorm` and `GroupNorm`.
    fn default() -> Self {
        NormOptions {
            eps: 1e-5,
            affine: true,
            implementation: Implementation::Fused,
        }
    }
}

impl NormOptions {
    /// PyTorch's `InstanceNorm2d` defaults: ε = 1e-5, **no** affine part.
    pub fn instance_norm() -> Self {
        NormOptions {
            affine: false,
            ..Default::default()
        }
    }

    /// The same options with another implementation.
    pub fn with_implementation(self, implementation: Implementation) -> Self {
        NormOptions {
            implementation,
            ..self
        }
    }

    fn check(&self, layer: &str) -> Result<()> {
        check_eps(layer, self.eps)
    }
}

/// Refuses an input without values (an empty batch or an empty feature
/// map): there is nothing to normalise, and no statistic to compute.
fn check_not_empty(layer: String, shape: &[usize]) -> Result<()> {
    if shape.contains(&0) {
        return Err(Error::shape(
            layer,
            format!("got an empty input of shape {shape:?}; there is nothing to normalise"),
        ));
    }
    Ok(())
}

/// Splits the elements of `x` into `rows` rows of equal length `k`.
fn row_length(x: &Tensor, rows: usize) -> usize {
    let numel: usize = x.shape().iter().product();
    assert!(
        rows > 0 && numel > 0 && numel.is_multiple_of(rows),
        "standardize_rows: {numel} values cannot be split into {rows} equal, non-empty rows"
    );
    numel / rows
}

// ANCHOR: fused
/// Standardises each of the `rows` consecutive rows of `x` (any shape whose
/// row-major elements split evenly into `rows` rows) to mean 0 and variance
/// 1: `x̂ = (x − μ)/sqrt(σ² + ε)` with the row's mean μ and biased
/// variance σ². One autograd operation with the analytic backward pass.
///
/// # Panics
/// If `x` is empty or its number of elements is not a multiple of `rows`
/// (the layers check shapes first and return errors instead).
pub fn standardize_rows_fused(x: &Tensor, rows: usize, eps: f32) -> Tensor {
    let k = row_length(x, rows);
    let shape = x.shape();
    let (stats, x_hat) = {
        let input = x.value();
        let input = input.as_standard_layout();
        let values = input.as_slice().expect("standard layout");
        // forward: each row's mean and 1/σ (one row per task; sums in f64,
        // in eight running lanes: see lane_sum_f64) ...
        let stats: Vec<(f32, f32)> = values
            .par_chunks(k)
            .map(|row| {
                let mean = lane_sum_f64(row, &|v| f64::from(v)) / k as f64;
                let var = lane_sum_f64(row, &|v| (f64::from(v) - mean).powi(2)) / k as f64;
                (mean as f32, (1.0 / (var + f64::from(eps)).sqrt()) as f32)
            })
            .collect();
        // ... then x̂, written row by row into fresh memory
        let x_hat = build(values.len(), k, |r, out| {
            let (mean, inv_std) = stats[r];
            for (o, &v) in out.iter_mut().zip(&values[r * k..]) {
                o.write((v - mean) * inv_std);
            }
        });
        (stats, x_hat)
    };
    let y = ArrayD::from_shape_vec(IxDyn(&shape), x_hat).expect("same size");

    Tensor::from_op("standardize_rows_fused", y, &[x], move |ctx| {
        let x = ctx.input(0).as_standard_layout();
        let x = x.as_slice().expect("standard layout");
        let g = ctx.grad.as_standard_layout();
        let g = g.as_slice().expect("standard layout");
        let dx = build(x.len(), k, |r, d| {
            let (mean, inv_std) = stats[r];
            let (xr, gr) = (&x[r * k..][..k], &g[r * k..][..k]);
            // the row's mean(g) and mean(g·x̂) ...
            let (sum_g, sum_gx) = lane_sums_f64(xr, gr, &|xv, gv| {
                (f64::from(gv), f64::from(gv * (xv - mean) * inv_std))
            });
            let (mean_g, mean_gx) = ((sum_g / k as f64) as f32, (sum_gx / k as f64) as f32);
            // ... and ∂L/∂x = (g − mean(g) − x̂·mean(g·x̂)) / σ
            for ((dv, &xv), &gv) in d.iter_mut().zip(xr).zip(gr) {
                dv.write(inv_std * (gv - mean_g - (xv - mean) * inv_std * mean_gx));
            }
        });
        vec![Some(
            ArrayD::from_shape_vec(IxDyn(ctx.input(0).shape()), dx).expect("same size"),
        )]
    })
}
// ANCHOR_END: fused

// ANCHOR: composed
/// The same standardisation as [`standardize_rows_fused`], written with
/// autograd primitives only: view `x` as `(rows, k)`, take the mean and the
/// biased variance along each row, normalise, view back.
///
/// # Panics
/// If `x` is empty or its number of elements is not a multiple of `rows`.
pub fn standardize_rows_composed(x: &Tensor, rows: usize, eps: f32) -> Tensor {
    let k = row_length(x, rows);
    let shape = x.shape();
    let table = x.reshape(&[rows, k]);
    let mean = table.mean(&[1], true); // (rows, 1)
    let centered = &table - &mean;
    let var = (&centered * &centered).mean(&[1], true);
    let x_hat = centered / (var + eps).sqrt();
    x_hat.reshape(&shape)
}
// ANCHOR_END: composed

/// Standardises rows with the chosen implementation.
fn standardize(x: &Tensor, rows: usize, options: &NormOptions) -> Tensor {
    match options.implementation {
        Implementation::Fused => standardize_rows_fused(x, rows, options.eps),
        Implementation::Composed => standardize_rows_composed(x, rows, options.eps),
    }
}

/// Standardises `rows` rows of `x`, then `γ·x̂ + β` with one γ and β per
/// channel (axis 1) of a rank ≥ 2 input.
fn standardize_then_per_channel_affine(
    x: &Tensor,
    rows: usize,
    options: &NormOptions,
    (gamma, beta): (&Option<Tensor>, &Option<Tensor>),
) -> Tensor {
    let x_hat = standardize(x, rows, options);
    let (Some(gamma), Some(beta)) = (gamma, beta) else {
        return x_hat;
    };
    // (C,) → (C, 1, 1) for (N, C, H, W): NumPy broadcasting aligns trailing axes
    let mut shape = vec![gamma.shape()[0]];
    shape.resize(x_hat.ndim() - 1, 1);
    x_hat * gamma.reshape(&shape) + beta.reshape(&shape)
}

fn affine_parameters(affine: bool, shape: &[usize]) -> (Option<Tensor>, Option<Tensor>) {
    let param = |v: f32| Tensor::parameter(ArrayD::from_elem(IxDyn(shape), v));
    (affine.then(|| param(1.0)), affine.then(|| param(0.0)))
}

/// Checks that γ and β (when present) still have the shape `expected`.
fn check_affine(
    layer: impl Fn() -> String,
    (gamma, beta): (&Option<Tensor>, &Option<Tensor>),
    expected: &[usize],
) -> Result<()> {
    for (name, p) in [("gamma", gamma), ("beta", beta)] {
        if let Some(p) = p {
            check_parameter(&layer, name, p, expected)?;
        }
    }
    Ok(())
}

fn affine_list(gamma: &Option<Tensor>, beta: &Option<Tensor>) -> Vec<Tensor> {
    gamma.iter().chain(beta).cloned().collect()
}

// ANCHOR: layer_norm
/// Layer normalisation (Ba, Kiros & Hinton, 2016): each example is
/// normalised over its trailing `normalized_shape` axes, with one γ and β
/// **per element** of `normalized_shape` — PyTorch's `nn.LayerNorm`.
///
/// After a fully connected layer, `LayerNorm::new(&[F])` normalises each
/// example's `F` features (the transformer's layer norm). After a
/// convolution, `LayerNorm::new(&[C, H, W])` normalises each example over all
/// of its values; for the per-channel γ and β used by the group-norm paper,
/// use [`GroupNorm::new(1, C)`](GroupNorm::new) instead (see the module
/// documentation).
pub struct LayerNorm {
    /// Scale γ, shaped like `normalized_shape` (`None` without affine).
    pub gamma: Option<Tensor>,
    /// Shift β, shaped like `normalized_shape` (`None` without affine).
    pub beta: Option<Tensor>,
    normalized_shape: Vec<usize>,
    options: NormOptions,
}
// ANCHOR_END: layer_norm

impl LayerNorm {
    /// Layer norm over trailing axes of the given sizes, PyTorch's defaults
    /// (ε = 1e-5, element-wise affine, fused).
    ///
    /// # Errors
    /// If `normalized_shape` is empty or contains a zero.
    pub fn new(normalized_shape: &[usize]) -> Result<Self> {
        Self::with_options(normalized_shape, NormOptions::default())
    }

    /// Layer norm with explicit options.
    ///
    /// # Errors
    /// If `normalized_shape` is empty or contains a zero, or `eps` is not
    /// positive.
    pub fn with_options(normalized_shape: &[usize], options: NormOptions) -> Result<Self> {
        options.check("LayerNorm")?;
        if normalized_shape.is_empty() || normalized_shape.contains(&0) {
            return Err(Error::InvalidArgument(format!(
                "LayerNorm: normalized_shape must be non-empty with no zero sizes, got \
                 {normalized_shape:?}; pass the trailing sizes of the input, e.g. [120] or [16, 8, 8]"
            )));
        }
        let (gamma, beta) = affine_parameters(options.affine, normalized_shape);
        Ok(LayerNorm {
            gamma,
            beta,
            normalized_shape: normalized_shape.to_vec(),
            options,
        })
    }

    /// The trailing sizes normalised over.
    pub fn normalized_shape(&self) -> &[usize] {
        &self.normalized_shape
    }
}

impl Module for LayerNorm {
    /// Same computation in both modes: layer norm has no running statistics.
    fn forward(&mut self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        let shape = x.shape();
        let d = self.normalized_shape.len();
        if shape.len() < d || shape[shape.len() - d..] != self.normalized_shape[..] {
            return Err(Error::shape(
                self.describe(),
                format!(
                    "the input's trailing sizes must be {:?}, got shape {shape:?}",
                    self.normalized_shape
                ),
            ));
        }
        check_not_empty(self.describe(), &shape)?;
        let affine = (&self.gamma, &self.beta);
        check_affine(|| self.describe(), affine, &self.normalized_shape)?;
        let rows = shape[..shape.len() - d].iter().product();
        let x_hat = standardize(x, rows, &self.options);
        Ok(match (&self.gamma, &self.beta) {
            // γ and β shaped like the trailing axes broadcast against them
            (Some(gamma), Some(beta)) => x_hat * gamma + beta,
            _ => x_hat,
        })
    }

    fn parameters(&self) -> Vec<Tensor> {
        affine_list(&self.gamma, &self.beta)
    }

    fn describe(&self) -> String {
        format!("LayerNorm({:?})", self.normalized_shape)
    }
}

// ANCHOR: group_norm
/// Group normalisation (Wu & He, 2018): the `C` channels are split into
/// `num_groups` groups of `C/G` consecutive channels, and each example is
/// normalised over each group (all its channels and positions), with one γ
/// and β per channel — PyTorch's `nn.GroupNorm`.
///
/// Input `(N, C)` or `(N, C, H, W)` (any rank ≥ 2 with channels on axis 1).
/// `G = 1` is layer norm with per-channel affine; `G = C` is instance norm.
/// A group of a single value (`G = C` on an `(N, C)` input) normalises to 0,
/// so the output is just β, as in PyTorch; [`InstanceNorm2d`] refuses that
/// case instead.
pub struct GroupNorm {
    /// Scale γ, one per channel (`None` without affine).
    pub gamma: Option<Tensor>,
    /// Shift β, one per channel (`None` without affine).
    pub beta: Option<Tensor>,
    num_groups: usize,
    num_channels: usize,
    options: NormOptions,
}
// ANCHOR_END: group_norm

impl GroupNorm {
    /// `num_groups` groups over `num_channels` channels, PyTorch's defaults
    /// (ε = 1e-5, per-channel affine, fused).
    ///
    /// # Errors
    /// If either count is 0 or `num_channels` is not divisible by
    /// `num_groups`.
    pub fn new(num_groups: usize, num_channels: usize) -> Result<Self> {
        Self::with_options(num_groups, num_channels, NormOptions::default())
    }

    /// Group norm with explicit options.
    ///
    /// # Errors
    /// As [`GroupNorm::new`], and if `eps` is not positive.
    pub fn with_options(
        num_groups: usize,
        num_channels: usize,
        options: NormOptions,
    ) -> Result<Self> {
        options.check("GroupNorm")?;
        if num_groups == 0 || num_channels == 0 {
            return Err(Error::InvalidArgument(format!(
                "GroupNorm: num_groups and num_channels must be at least 1, got \
                 GroupNorm({num_groups}, {num_channels})"
            )));
        }
        if !num_channels.is_multiple_of(num_groups) {
            let divisors: Vec<String> = (1..=num_channels)
                .filter(|&g| num_channels.is_multiple_of(g))
                .map(|g| g.to_string())
                .collect();
            return Err(Error::InvalidArgument(format!(
                "GroupNorm: num_channels ({num_channels}) must be divisible by num_groups \
                 ({num_groups}); for {num_channels} channels choose one of {}",
                divisors.join(", ")
            )));
        }
        let (gamma, beta) = affine_parameters(options.affine, &[num_channels]);
        Ok(GroupNorm {
            gamma,
            beta,
            num_groups,
            num_channels,
            options,
        })
    }

    /// The number of groups `G`.
    pub fn num_groups(&self) -> usize {
        self.num_groups
    }

    /// The number of channels `C`.
    pub fn num_channels(&self) -> usize {
        self.num_channels
    }
}

impl Module for GroupNorm {
    /// Same computation in both modes: group norm has no running statistics.
    fn forward(&mut self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        let shape = x.shape();
        if shape.len() < 2 || shape[1] != self.num_channels {
            return Err(Error::shape(
                self.describe(),
                format!(
                    "expected (N, C) or (N, C, H, W) with C = {}, got shape {shape:?}",
                    self.num_channels
                ),
            ));
        }
        check_not_empty(self.describe(), &shape)?;
        check_affine(|| self.describe(), (&self.gamma, &self.beta), &[shape[1]])?;
        // an example's group of C/G channels is one contiguous row
        let rows = shape[0] * self.num_groups;
        Ok(standardize_then_per_channel_affine(
            x,
            rows,
            &self.options,
            (&self.gamma, &self.beta),
        ))
    }

    fn parameters(&self) -> Vec<Tensor> {
        affine_list(&self.gamma, &self.beta)
    }

    fn describe(&self) -> String {
        format!("GroupNorm({}, {})", self.num_groups, self.num_channels)
    }
}

// ANCHOR: instance_norm
/// Instance normalisation (Ulyanov, Vedaldi & Lempitsky, 2016): every
/// channel of every example is normalised over its own `H × W` positions —
/// PyTorch's `nn.InstanceNorm2d`, whose defaults it keeps: **no** affine part
/// (turn it on with [`NormOptions::affine`]) and no running statistics.
pub struct InstanceNorm2d {
    /// Scale γ, one per channel (`None` without affine, the default).
    pub gamma: Option<Tensor>,
    /// Shift β, one per channel (`None` without affine, the default).
    pub beta: Option<Tensor>,
    num_features: usize,
    options: NormOptions,
}
// ANCHOR_END: instance_norm

impl InstanceNorm2d {
    /// Instance norm for `num_features` channels with PyTorch's defaults
    /// (ε = 1e-5, no affine, fused).
    ///
    /// # Errors
    /// If `num_features` is 0.
    pub fn new(num_features: usize) -> Result<Self> {
        Self::with_options(num_features, NormOptions::instance_norm())
    }

    /// Instance norm with explicit options (e.g. `affine: true`).
    ///
    /// # Errors
    /// If `num_features` is 0 or `eps` is not positive.
    pub fn with_options(num_features: usize, options: NormOptions) -> Result<Self> {
        options.check("InstanceNorm2d")?;
        if num_features == 0 {
            return Err(Error::InvalidArgument(
                "InstanceNorm2d: num_features must be at least 1".into(),
            ));
        }
        let (gamma, beta) = affine_parameters(options.affine, &[num_features]);
        Ok(InstanceNorm2d {
            gamma,
            beta,
            num_features,
            options,
        })
    }

    /// The number of channels.
    pub fn num_features(&self) -> usize {
        self.num_features
    }
}

impl Module for InstanceNorm2d {
    /// Same computation in both modes: instance norm keeps no running
    /// statistics, so it always normalises with the example's own.
    fn forward(&mut self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        let shape = x.shape();
        if shape.len() != 4 || shape[1] != self.num_features {
            return Err(Error::shape(
                self.describe(),
                format!(
                    "expected (N, C, H, W) with C = {}, got shape {shape:?}",
                    self.num_features
                ),
            ));
        }
        check_not_empty(self.describe(), &shape)?;
        check_affine(|| self.describe(), (&self.gamma, &self.beta), &[shape[1]])?;
        if shape[2] * shape[3] < 2 {
            return Err(Error::shape(
                self.describe(),
                format!(
                    "needs more than one spatial position per channel to estimate a variance, \
                     got shape {shape:?}; after a fully connected layer (or a 1×1 feature map) \
                     use LayerNorm or GroupNorm instead"
                ),
            ));
        }
        // one channel of one example is one contiguous row
        let rows = shape[0] * shape[1];
        Ok(standardize_then_per_channel_affine(
            x,
            rows,
            &self.options,
            (&self.gamma, &self.beta),
        ))
    }

    fn parameters(&self) -> Vec<Tensor> {
        affine_list(&self.gamma, &self.beta)
    }

    fn describe(&self) -> String {
        format!("InstanceNorm2d({})", self.num_features)
    }
}
