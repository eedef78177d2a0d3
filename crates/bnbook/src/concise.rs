//! The "concise" batch norm: one fused operation with a hand-derived
//! backward pass, and PyTorch's conventions by default.
//!
//! *Book: chapter "Concise BN".*
//!
//! [`scratch::batch_norm`](crate::scratch::batch_norm) records about ten
//! autograd operations and lets autograd find the backward pass. Here the
//! whole layer is **one** operation. With `m` values per channel,
//! `x̂ = (x − μ)/σ`, `σ = sqrt(var + ε)` and `y = γ·x̂ + β`, the book derives
//!
//! ```text
//! ∂L/∂β = Σ g        ∂L/∂γ = Σ g·x̂
//! ∂L/∂x = γ/(m·σ) · (m·g − Σ g − x̂ · Σ g·x̂)
//! ```
//!
//! (sums over the `m` values of a channel; `g = ∂L/∂y`), which needs two
//! reductions and one pass instead of a dozen full-size temporaries.
//!
//! ## Conventions
//!
//! | option | PyTorch (default here) | d2l scratch | Keras |
//! |---|---|---|---|
//! | `momentum` | new-batch weight 0.1 | old-value weight 0.9 (= new 0.1) | old-value weight 0.99 (= new 0.01) |
//! | running variance | unbiased (`m/(m−1)`) | biased | biased |
//! | `eps` | 1e-5 | 1e-5 | 1e-3 |
//!
//! [`BatchNormOptions::d2l`] reproduces the scratch layer exactly;
//! [`BatchNormOptions::keras`] Keras' defaults.

use crate::autograd::kernels::multiversioned;
use crate::autograd::{Tensor, build, with_wide_vectors};
use crate::error::{Error, Result};
pub use crate::nn::Momentum;
use crate::nn::{BatchNormLayer, Mode, Module, check_eps, check_weight};
use crate::parallel::*;
use ndarray::{ArrayD, IxDyn};
use std::mem::MaybeUninit;

/// Which batch variance feeds the running variance. (Normalising always
/// uses the biased one, as the math of BN says.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunningVariance {
    /// `Σ(x − μ)²/(m − 1)`: PyTorch's choice.
    Unbiased,
    /// `Σ(x − μ)²/m`: d2l's scratch code and Keras.
    Biased,
}

/// The knobs on which frameworks differ. `Default` is PyTorch's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormOptions {
    /// Added to the variance before the square root.
    pub eps: f32,
    /// How running statistics are averaged.
    pub momentum: Momentum,
    /// Biased or unbiased variance for the running estimate.
    pub running_variance: RunningVariance,
    /// Whether the layer has the learned scale γ and shift β.
    pub affine: bool,
}

impl Default for BatchNormOptions {
    fn default() -> Self {
        BatchNormOptions {
            eps: 1e-5,
            momentum: Momentum::NewBatchWeight(0.1),
            running_variance: RunningVariance::Unbiased,
            affine: true,
        }
    }
}

impl BatchNormOptions {
    /// Exactly the conventions of [`scratch::BatchNorm`](crate::scratch::BatchNorm):
    /// old-value weight 0.9, biased running variance, ε = 1e-5.
    pub fn d2l() -> Self {
        BatchNormOptions {
            momentum: Momentum::from_old_weight(0.9),
            running_variance: RunningVariance::Biased,
            ..Default::default()
        }
    }

    /// Keras' `BatchNormalization` defaults: old-value weight 0.99, ε = 1e-3,
    /// biased running variance.
    pub fn keras() -> Self {
        BatchNormOptions {
            eps: 1e-3,
            momentum: Momentum::from_old_weight(0.99),
            running_variance: RunningVariance::Biased,
            affine: true,
        }
    }

    /// ε positive and finite, a new-batch weight in `[0, 1]`. Checked when a
    /// layer is built and on every forward pass (the field is public).
    fn check(&self) -> Result<()> {
        check_eps("BatchNorm", self.eps)?;
        if let Momentum::NewBatchWeight(w) = self.momentum {
            check_weight(
                "BatchNorm",
                "weight of the new batch; Momentum::from_old_weight(m) gives 1 - m",
                w,
            )?;
        }
        Ok(())
    }
}

/// `(N, C, S)` view sizes of a rank-2 `(N, C)` or rank-4 `(N, C, H, W)` input.
fn channel_layout(shape: &[usize]) -> (usize, usize, usize) {
    let s = shape[2..].iter().product();
    (shape[0], shape[1], s)
}

/// Images per work item of a per-channel sum: fixed, so that the sums are
/// always added in the same order (reproducible to the last bit).
const IMAGES_PER_GROUP: usize = 16;

/// Per channel, the sums of `f(channel, block)` over the `n · c` blocks of
/// a `(N, C, S)` layout (block `i` is image `i / c`, channel `i % c`). Two
/// sums are taken at once. Groups of images run in parallel.
fn channel_sums(
    n: usize,
    c: usize,
    f: impl Fn(usize, usize) -> (f64, f64) + Sync,
) -> (Vec<f64>, Vec<f64>) {
    let partials: Vec<(Vec<f64>, Vec<f64>)> = (0..n.div_ceil(IMAGES_PER_GROUP))
        .into_par_iter()
        .map(|group| {
            // two arrays rather than one of pairs, so that a row of channels
            // (after a fully connected layer) is summed with vector instructions
            let (mut first, mut second) = (vec![0.0; c], vec![0.0; c]);
            let images = group * IMAGES_PER_GROUP..((group + 1) * IMAGES_PER_GROUP).min(n);
            with_wide_vectors(|| {
                for image in images {
                    for (ch, (a, b)) in first.iter_mut().zip(&mut second).enumerate() {
                        let (da, db) = f(ch, image * c + ch);
                        *a += da;
                        *b += db;
                    }
                }
            });
            (first, second)
        })
        .collect();
    let (mut first, mut second) = (vec![0.0; c], vec![0.0; c]);
    for (part_first, part_second) in partials {
        first.iter_mut().zip(part_first).for_each(|(t, p)| *t += p);
        second
            .iter_mut()
            .zip(part_second)
            .for_each(|(t, p)| *t += p);
    }
    (first, second)
}

/// A `(N, C, S)` array of `len` values produced block by block, in parallel
/// (small blocks in bunches, see [`build`]):
/// `fill(channel, block_index, block)` must write every value of its
/// length-`s` block. Writing into fresh memory skips zero-filling it first.
/// After a fully connected layer (`s = 1`) the work is handed out a row of
/// `c` blocks at a time, so that no block pays for a division to find its
/// channel.
pub(crate) fn build_blocks(
    len: usize,
    s: usize,
    c: usize,
    fill: impl Fn(usize, usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    if s == 1 {
        return build(len, c, |row, values| {
            for (ch, value) in values.chunks_mut(1).enumerate() {
                fill(ch, row * c + ch, value);
            }
        });
    }
    build(len, s, |i, block| fill(i % c, i, block))
}

/// `Σ f(x)` over a block with sixteen running sums (lane `l` takes values
/// `l, l + 16, …`), added together at the end. A single running total
/// would make every addition wait for the one before (about four cycles
/// each); independent lanes let the compiler use vector instructions and
/// keep several additions in flight — and, as a bonus, round less.
#[inline(always)]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    if xs.len() < 16 {
        // a fully connected layer's blocks hold one value: no lanes to fill
        return xs.iter().map(|&x| f(x)).sum();
    }
    lane_sum_wide(xs, &f)
}

multiversioned! {
    /// [`lane_sum`] of a block of at least 16 values, compiled per vector
    /// width (see `multiversioned!` in `src/autograd/kernels.rs`).
    fn lane_sum_wide(xs: &[f32], f: &impl Fn(f32) -> f32) -> f32 {
        let mut acc = [0.0_f32; 16];
        let mut chunks = xs.chunks_exact(16);
        for chunk in &mut chunks {
            for (a, &x) in acc.iter_mut().zip(chunk) {
                *a += f(x);
            }
        }
        let tail: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
        acc.iter().sum::<f32>() + tail
    }
}

/// `(Σ f(x, g), Σ h(x, g))` over two blocks of the same length, with
/// [`lane_sum`]'s sixteen lanes for each.
#[inline(always)]
fn lane_sums2(
    xs: &[f32],
    gs: &[f32],
    f: impl Fn(f32, f32) -> f32,
    h: impl Fn(f32, f32) -> f32,
) -> (f32, f32) {
    if xs.len() < 16 {
        let pairs = xs.iter().zip(gs);
        return pairs.fold((0.0, 0.0), |(a, b), (&x, &g)| (a + f(x, g), b + h(x, g)));
    }
    lane_sums2_wide(xs, gs, &f, &h)
}

multiversioned! {
    /// [`lane_sums2`] of blocks of at least 16 values, compiled per vector
    /// width.
    fn lane_sums2_wide(
        xs: &[f32],
        gs: &[f32],
        f: &impl Fn(f32, f32) -> f32,
        h: &impl Fn(f32, f32) -> f32,
    ) -> (f32, f32) {
        let (mut acc_f, mut acc_h) = ([0.0_f32; 16], [0.0_f32; 16]);
        let (mut x_chunks, mut g_chunks) = (xs.chunks_exact(16), gs.chunks_exact(16));
        for (xc, gc) in (&mut x_chunks).zip(&mut g_chunks) {
            for l in 0..16 {
                acc_f[l] += f(xc[l], gc[l]);
                acc_h[l] += h(xc[l], gc[l]);
            }
        }
        let (mut tail_f, mut tail_h) = (0.0_f32, 0.0_f32);
        for (&x, &g) in x_chunks.remainder().iter().zip(g_chunks.remainder()) {
            tail_f += f(x, g);
            tail_h += h(x, g);
        }
        (
            acc_f.iter().sum::<f32>() + tail_f,
            acc_h.iter().sum::<f32>() + tail_h,
        )
    }
}

multiversioned! {
    /// `Σ f(x)` over a block in eight running `f64` sums (lane `l` takes
    /// values `l, l + 8, …`); the values past the last whole eight are
    /// added first, then the lanes in order. Layer, instance and group norm
    /// take their row statistics this way: a row holds thousands of values,
    /// and one running total would make each addition wait for the last.
    pub(crate) fn lane_sum_f64(xs: &[f32], f: &impl Fn(f32) -> f64) -> f64 {
        let mut acc = [0.0_f64; 8];
        let mut chunks = xs.chunks_exact(8);
        for chunk in &mut chunks {
            for l in 0..8 {
                acc[l] += f(chunk[l]);
            }
        }
        let tail: f64 = chunks.remainder().iter().map(|&x| f(x)).sum();
        tail + acc.iter().sum::<f64>()
    }
}

multiversioned! {
    /// `(Σ a, Σ b)` of `(a, b) = pair(x, g)` over two blocks of the same
    /// length, with [`lane_sum_f64`]'s eight `f64` lanes for each.
    pub(crate) fn lane_sums_f64(
        xs: &[f32],
        gs: &[f32],
        pair: &impl Fn(f32, f32) -> (f64, f64),
    ) -> (f64, f64) {
        let (mut acc_a, mut acc_b) = ([0.0_f64; 8], [0.0_f64; 8]);
        let (mut x_chunks, mut g_chunks) = (xs.chunks_exact(8), gs.chunks_exact(8));
        for (xc, gc) in (&mut x_chunks).zip(&mut g_chunks) {
            for l in 0..8 {
                let (a, b) = pair(xc[l], gc[l]);
                acc_a[l] += a;
                acc_b[l] += b;
            }
        }
        let (mut a, mut b) = (0.0, 0.0);
        for (&x, &g) in x_chunks.remainder().iter().zip(g_chunks.remainder()) {
            let (pa, pb) = pair(x, g);
            a += pa;
            b += pb;
        }
        (a + acc_a.iter().sum::<f64>(), b + acc_b.iter().sum::<f64>())
    }
}

/// Per-channel mean and biased variance: two passes (the second sums
/// squared deviations from the mean, which loses no precision to
/// cancellation), block sums in `f32` lanes, channel totals in `f64`.
fn channel_moments(x: &[f32], (n, c, s): (usize, usize, usize)) -> (Vec<f32>, Vec<f32>) {
    let m = (n * s) as f64;
    let block = |i: usize| &x[i * s..][..s];
    // After a fully connected layer (s = 1) a block is one value, whose
    // lane sum is that value: the same sums, without slicing out blocks.
    let (sum, _) = if s == 1 {
        channel_sums(n, c, |_, i| (f64::from(x[i]), 0.0))
    } else {
        channel_sums(n, c, |_, i| (f64::from(lane_sum(block(i), |v| v)), 0.0))
    };
    let mean: Vec<f32> = sum.iter().map(|v| (v / m) as f32).collect();
    let (sq, _) = if s == 1 {
        channel_sums(n, c, |ch, i| {
            let d = x[i] - mean[ch];
            (f64::from(d * d), 0.0)
        })
    } else {
        channel_sums(n, c, |ch, i| {
            let mu = mean[ch];
            (f64::from(lane_sum(block(i), |v| (v - mu) * (v - mu))), 0.0)
        })
    };
    (mean, sq.iter().map(|v| (v / m) as f32).collect())
}

// ANCHOR: fused
/// One fused batch-norm operation on a standard-layout `(N, C)` or
/// `(N, C, H, W)` tensor, normalising channel `c` with `mean[c]` and
/// `inv_std[c] = 1/sqrt(var[c] + ε)`.
///
/// `batch_statistics` says whether `mean`/`inv_std` were computed from this
/// very batch (training), in which case they depend on `x` and the backward
/// pass has the two extra terms; otherwise (evaluation) they are constants.
///
/// `affine` is `Some((γ, β))` for a layer with learned scale and shift.
///
/// # Errors
/// If `x` has fewer than two axes or γ, β, `mean`, `inv_std` do not hold
/// one value per channel.
pub fn batch_norm_fused(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    batch_statistics: bool,
) -> Result<Tensor> {
    let shape = x.shape();
    check_per_channel(&shape, affine, &mean, &inv_std)?;
    let (n, c, s) = channel_layout(&shape);
    let (scale, shift): (Vec<f32>, Vec<f32>) = match affine {
        Some((g, b)) => (
            g.value().iter().zip(&inv_std).map(|(g, i)| g * i).collect(),
            b.value().iter().copied().collect(),
        ),
        None => (inv_std.clone(), vec![0.0; c]),
    };
    // forward: y = γ·(x − μ)·inv_std + β, as one multiply-add per value
    let y = {
        let x = x.value();
        let x = x.as_standard_layout();
        let x = x.as_slice().expect("standard layout");
        let offset: Vec<f32> = (0..c).map(|ch| shift[ch] - scale[ch] * mean[ch]).collect();
        build_blocks(x.len(), s, c, |ch, i, block| {
            let (a, b) = (scale[ch], offset[ch]);
            for (v, &xv) in block.iter_mut().zip(&x[i * s..]) {
                v.write(a * xv + b);
            }
        })
    };
    let y = ArrayD::from_shape_vec(IxDyn(&shape), y).expect("sizes match");

    let parents = match affine {
        Some((gamma, beta)) => vec![x, gamma, beta],
        None => vec![x],
    };
    let out = Tensor::from_op("batch_norm_fused", y, &parents, move |ctx| {
        let x = ctx.input(0).as_standard_layout();
        let x = x.as_slice().expect("standard layout");
        let g = ctx.grad.as_standard_layout();
        let g = g.as_slice().expect("standard layout");
        let blocks = |i: usize| (&x[i * s..][..s], &g[i * s..][..s]); // (x, g) of block i
        // per channel: Σ g and Σ g·x̂
        let (sum_g, sum_gx) = channel_sums(n, c, |ch, i| {
            let (mu, inv) = (mean[ch], inv_std[ch]);
            let (xb, gb) = blocks(i);
            let (sg, sgx) = lane_sums2(xb, gb, |_, g| g, |x, g| g * (x - mu) * inv);
            (f64::from(sg), f64::from(sgx))
        });
        let dx = ctx.needs(0).then(|| {
            let m = (n * s) as f32;
            let dx = build_blocks(x.len(), s, c, |ch, i, db| {
                let (mu, inv, k) = (mean[ch], inv_std[ch], scale[ch]);
                let (xb, gb) = blocks(i);
                if batch_statistics {
                    // ∂L/∂x = γ·inv/m · (m·g − Σg − x̂·Σg·x̂)
                    let (sg, sgx) = ((sum_g[ch] as f32) / m, (sum_gx[ch] as f32) / m);
                    for ((d, &xv), &gv) in db.iter_mut().zip(xb).zip(gb) {
                        d.write(k * (gv - sg - (xv - mu) * inv * sgx));
                    }
                } else {
                    // statistics are constants: ∂L/∂x = γ·inv·g
                    for (d, &gv) in db.iter_mut().zip(gb) {
                        d.write(k * gv);
                    }
                }
            });
            ArrayD::from_shape_vec(IxDyn(&shape), dx).expect("sizes match")
        });
        let to_array = |v: &[f64]| {
            ArrayD::from_shape_vec(IxDyn(&[c]), v.iter().map(|&x| x as f32).collect())
                .expect("c values")
        };
        let mut grads = vec![dx];
        if ctx.inputs.len() == 3 {
            // γ and β: ∂L/∂γ = Σ g·x̂, ∂L/∂β = Σ g
            grads.push(ctx.needs(1).then(|| to_array(&sum_gx)));
            grads.push(ctx.needs(2).then(|| to_array(&sum_g)));
        }
        grads
    });
    Ok(out)
}
// ANCHOR_END: fused

/// Checks that `x` (shape `shape`) has a channel axis and that every
/// per-channel input of [`batch_norm_fused`] has one value per channel.
fn check_per_channel(
    shape: &[usize],
    affine: Option<(&Tensor, &Tensor)>,
    mean: &[f32],
    inv_std: &[f32],
) -> Result<()> {
    let Some(&c) = shape.get(1) else {
        return Err(Error::shape(
            "batch_norm_fused",
            format!("expected (N, C) or (N, C, H, W), got shape {shape:?}"),
        ));
    };
    // exactly (C,) for γ and β: their gradients are built with that shape
    let shapes = [
        ("gamma", affine.map(|(gamma, _)| gamma.shape())),
        ("beta", affine.map(|(_, beta)| beta.shape())),
        ("mean", Some(vec![mean.len()])),
        ("inv_std", Some(vec![inv_std.len()])),
    ];
    for (name, got) in shapes {
        if let Some(got) = got.filter(|got| got[..] != [c]) {
            return Err(Error::shape(
                "batch_norm_fused",
                format!("{name} has shape {got:?}; input {shape:?} needs [{c}], one per channel"),
            ));
        }
    }
    Ok(())
}

/// Batch norm as a framework provides it, for `(N, C)` inputs when
/// `RANK = 2` ([`BatchNorm1d`]) and `(N, C, H, W)` inputs when `RANK = 4`
/// ([`BatchNorm2d`]). γ and β have shape `(C,)`.
pub struct ConciseBatchNorm<const RANK: usize> {
    /// Scale γ (`None` without affine part), initialised to 1.
    pub gamma: Option<Tensor>,
    /// Shift β (`None` without affine part), initialised to 0.
    pub beta: Option<Tensor>,
    /// Running mean, starts at 0.
    pub running_mean: Vec<f32>,
    /// Running variance, starts at 1.
    pub running_var: Vec<f32>,
    /// Number of training forward passes so far.
    pub num_batches_tracked: u64,
    /// The conventions in use.
    pub options: BatchNormOptions,
    num_features: usize,
}

/// Concise batch norm after a fully connected layer: input `(N, C)`.
pub type BatchNorm1d = ConciseBatchNorm<2>;
/// Concise batch norm after a convolution: input `(N, C, H, W)`.
pub type BatchNorm2d = ConciseBatchNorm<4>;

impl<const RANK: usize> ConciseBatchNorm<RANK> {
    /// A layer with PyTorch's defaults.
    ///
    /// # Errors
    /// If `num_features` is 0.
    pub fn new(num_features: usize) -> Result<Self> {
        Self::with_options(num_features, BatchNormOptions::default())
    }

    /// A layer with the given conventions.
    ///
    /// # Errors
    /// If `RANK` is not 2 or 4, `num_features` is 0, `eps` is not a
    /// positive finite number, or the momentum weight is outside `[0, 1]`.
    pub fn with_options(num_features: usize, options: BatchNormOptions) -> Result<Self> {
        if num_features == 0 {
            return Err(Error::InvalidArgument(
                "BatchNorm: num_features must be at least 1".into(),
            ));
        }
        if RANK != 2 && RANK != 4 {
            return Err(Error::InvalidArgument(format!(
                "ConciseBatchNorm::<{RANK}>: the rank must be 2 (BatchNorm1d, after a Linear \
                 layer) or 4 (BatchNorm2d, after a Conv2d)"
            )));
        }
        options.check()?;
        let param = |v: f32| Tensor::parameter(ArrayD::from_elem(IxDyn(&[num_features]), v));
        Ok(ConciseBatchNorm {
            gamma: options.affine.then(|| param(1.0)),
            beta: options.affine.then(|| param(0.0)),
            running_mean: vec![0.0; num_features],
            running_var: vec![1.0; num_features],
            num_batches_tracked: 0,
            options,
            num_features,
        })
    }

    /// γ and β as the pair [`batch_norm_fused`] takes.
    ///
    /// # Errors
    /// If only one of them is set: an affine layer has both, a plain one
    /// neither.
    fn affine(&self) -> Result<Option<(&Tensor, &Tensor)>> {
        match (&self.gamma, &self.beta) {
            (Some(gamma), Some(beta)) => Ok(Some((gamma, beta))),
            (None, None) => Ok(None),
            _ => Err(Error::InvalidArgument(format!(
                "{}: gamma and beta must both be Some (affine) or both None",
                self.describe()
            ))),
        }
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let shape = x.shape();
        if shape.len() != RANK || shape[1] != self.num_features {
            let expected = if RANK == 2 { "(N, C)" } else { "(N, C, H, W)" };
            return Err(Error::shape(
                self.describe(),
                format!(
                    "expected {expected} with C = {}, got shape {shape:?}",
                    self.num_features
                ),
            ));
        }
        Ok(())
    }
}

impl<const RANK: usize> Module for ConciseBatchNorm<RANK> {
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.check_input(x)?;
        self.options.check()?;
        for (name, stat) in [
            ("running_mean", &self.running_mean),
            ("running_var", &self.running_var),
        ] {
            if stat.len() != self.num_features {
                return Err(Error::shape(
                    self.describe(),
                    format!(
                        "{name} holds {} values but the layer has {} features; \
                         give it one value per feature",
                        stat.len(),
                        self.num_features
                    ),
                ));
            }
        }
        let eps = self.options.eps;
        let (mean, var, batch_statistics) = match mode {
            Mode::Eval => (self.running_mean.clone(), self.running_var.clone(), false),
            Mode::Train => {
                let shape = x.shape();
                let layout = channel_layout(&shape);
                let m = layout.0 * layout.2;
                if m < 2 {
                    return Err(Error::shape(
                        self.describe(),
                        format!(
                            "training needs more than one value per channel to estimate a variance, \
                             got input shape {shape:?}; use a larger batch (or drop a final batch of size 1)"
                        ),
                    ));
                }
                let (mean, var) = {
                    let v = x.value();
                    let v = v.as_standard_layout();
                    channel_moments(v.as_slice().expect("standard layout"), layout)
                };
                self.update_running(&mean, &var, m);
                (mean, var, true)
            }
        };
        let inv_std = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        batch_norm_fused(x, self.affine()?, mean, inv_std, batch_statistics)
    }

    fn parameters(&self) -> Vec<Tensor> {
        self.gamma.iter().chain(&self.beta).cloned().collect()
    }

    fn describe(&self) -> String {
        format!(
            "BatchNorm{}d({})",
            if RANK == 2 { 1 } else { 2 },
            self.num_features
        )
    }

    fn as_batch_norm(&self) -> Option<&dyn BatchNormLayer> {
        Some(self)
    }

    fn as_batch_norm_mut(&mut self) -> Option<&mut dyn BatchNormLayer> {
        Some(self)
    }
}

impl<const RANK: usize> ConciseBatchNorm<RANK> {
    /// One update of the running statistics from a training batch with `m`
    /// values per channel.
    fn update_running(&mut self, mean: &[f32], biased_var: &[f32], m: usize) {
        self.num_batches_tracked += 1;
        let w = match self.options.momentum {
            Momentum::NewBatchWeight(w) => w,
            Momentum::CumulativeAverage => 1.0 / self.num_batches_tracked as f32,
        };
        let correction = match self.options.running_variance {
            RunningVariance::Unbiased => m as f32 / (m - 1) as f32,
            RunningVariance::Biased => 1.0,
        };
        for c in 0..self.num_features {
            self.running_mean[c] = (1.0 - w) * self.running_mean[c] + w * mean[c];
            self.running_var[c] = (1.0 - w) * self.running_var[c] + w * biased_var[c] * correction;
        }
    }
}

impl<const RANK: usize> BatchNormLayer for ConciseBatchNorm<RANK> {
    fn num_features(&self) -> usize {
        self.num_features
    }
    fn gamma(&self) -> Option<Vec<f32>> {
        self.gamma
            .as_ref()
            .map(|g| g.value().iter().copied().collect())
    }
    fn beta(&self) -> Option<Vec<f32>> {
        self.beta
            .as_ref()
            .map(|b| b.value().iter().copied().collect())
    }
    fn running_mean(&self) -> Vec<f32> {
        self.running_mean.clone()
    }
    fn running_var(&self) -> Vec<f32> {
        self.running_var.clone()
    }
    fn eps(&self) -> f32 {
        self.options.eps
    }
    fn momentum(&self) -> Momentum {
        self.options.momentum
    }
    fn set_momentum(&mut self, momentum: Momentum) -> Result<()> {
        let options = BatchNormOptions {
            momentum,
            ..self.options
        };
        options.check()?;
        self.options = options;
        Ok(())
    }
}
