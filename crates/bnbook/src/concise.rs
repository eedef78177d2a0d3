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
use crate::autograd::{Tensor, build};
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

/// `len` values from `start` of each of `J` arrays. (`from_fn`, not the
/// arrays' `map`, which the compiler left as a call in the hot loops.)
#[inline(always)]
fn windows<const J: usize>(arrays: [&[f32]; J], start: usize, len: usize) -> [&[f32]; J] {
    std::array::from_fn(|j| &arrays[j][start..][..len])
}

/// The one or two per-value arrays of a kernel as two slices (the same one
/// twice when there is one), so that its loop can zip plain slices: the
/// compiler turns that into vector instructions, where it gave up on
/// indexing an array of slices.
#[inline(always)]
fn one_or_two<const J: usize>(arrays: [&[f32]; J]) -> (&[f32], &[f32]) {
    const { assert!(J == 1 || J == 2, "kernels take one or two per-value arrays") };
    (arrays[0], arrays[J - 1])
}

/// The formula's per-value argument from the values of [`one_or_two`]'s
/// slices.
#[inline(always)]
fn pick<const J: usize>(a: f32, b: f32) -> [f32; J] {
    std::array::from_fn(|j| if j == 0 { a } else { b })
}

/// Entry `i` of each of `K` arrays: the numbers a formula of
/// [`channel_map`] or [`channel_sums`] gets for one channel or one value.
#[inline(always)]
fn entries<const K: usize>(arrays: [&[f32]; K], i: usize) -> [f32; K] {
    std::array::from_fn(|k| arrays[k][i])
}

/// Per channel of an `(N, C, S)` layout, the `P` sums of
/// `f(per_channel, per_value)` over the channel's `N · S` values, where
/// `f` gets the channel's entry of each array in `per_channel` (μ, 1/σ, …)
/// and the value's entry of each array in `per_value` (x, g, …).
///
/// Inside a block of `S` values (one image, one channel) the sums run in
/// sixteen `f32` lanes ([`block_sums`]); block sums and the totals are
/// `f64`. Groups of [`IMAGES_PER_GROUP`] images run in parallel, and their
/// totals are added in group order: the same bits on any number of threads.
fn channel_sums<const K: usize, const J: usize, const P: usize>(
    (n, c, s): (usize, usize, usize),
    per_channel: [&[f32]; K],
    per_value: [&[f32]; J],
    f: impl Fn([f32; K], [f32; J]) -> [f32; P] + Sync,
) -> [Vec<f64>; P] {
    let zeros = || std::array::from_fn(|_| vec![0.0_f64; c]);
    let partials: Vec<[Vec<f64>; P]> = (0..n.div_ceil(IMAGES_PER_GROUP))
        .into_par_iter()
        .map(|group| {
            let mut sums = zeros();
            for image in group * IMAGES_PER_GROUP..((group + 1) * IMAGES_PER_GROUP).min(n) {
                let start = image * c * s;
                if s == 1 {
                    // after a fully connected layer: a row of C channels, one value each
                    let row = windows(per_value, start, c);
                    add_row(&mut sums, per_channel, row, &f);
                } else {
                    for ch in 0..c {
                        let block = windows(per_value, start + ch * s, s);
                        let block_sum = block_sums(block, entries(per_channel, ch), &f);
                        for (sum, b) in sums.iter_mut().zip(block_sum) {
                            sum[ch] += f64::from(b);
                        }
                    }
                }
            }
            sums
        })
        .collect();
    let mut totals = zeros();
    for partial in &partials {
        for (total, part) in totals.iter_mut().zip(partial) {
            total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
        }
    }
    totals
}

multiversioned! {
    /// One row of a fully connected layer's output in [`channel_sums`]:
    /// value `ch` is added to channel `ch`'s sums.
    fn add_row<const K: usize, const J: usize, const P: usize>(
        sums: &mut [Vec<f64>; P],
        per_channel: [&[f32]; K],
        row: [&[f32]; J],
        f: &impl Fn([f32; K], [f32; J]) -> [f32; P],
    ) {
        let c = sums.first().map_or(0, |s| s.len());
        let (per_channel, row) = (windows(per_channel, 0, c), windows(row, 0, c));
        for ch in 0..c {
            let values = f(entries(per_channel, ch), entries(row, ch));
            for (sum, v) in sums.iter_mut().zip(values) {
                sum[ch] += f64::from(v);
            }
        }
    }
}

multiversioned! {
    /// The `P` sums of `f(k, value)` over one block of [`channel_sums`], in
    /// sixteen running sums each (lane `l` takes values `l, l + 16, …`),
    /// added together at the end, then the values past the last whole
    /// sixteen. A single running total would make every addition wait for
    /// the one before (about four cycles each); independent lanes let the
    /// compiler use vector instructions and keep several additions in
    /// flight — and, as a bonus, round less.
    fn block_sums<const K: usize, const J: usize, const P: usize>(
        block: [&[f32]; J],
        k: [f32; K],
        f: &impl Fn([f32; K], [f32; J]) -> [f32; P],
    ) -> [f32; P] {
        let (a, b) = one_or_two(block);
        let (a_chunks, b_chunks) = (a.chunks_exact(16), b.chunks_exact(16));
        let (a_tail, b_tail) = (a_chunks.remainder(), b_chunks.remainder());
        let mut lanes = [[0.0_f32; 16]; P];
        for (xa, xb) in a_chunks.zip(b_chunks) {
            for l in 0..16 {
                let values = f(k, pick(xa[l], xb[l]));
                for (lane, v) in lanes.iter_mut().zip(values) {
                    lane[l] += v;
                }
            }
        }
        let mut tail = [0.0_f32; P];
        for (&xa, &xb) in a_tail.iter().zip(b_tail) {
            let values = f(k, pick(xa, xb));
            for (t, v) in tail.iter_mut().zip(values) {
                *t += v;
            }
        }
        if a.len() < 16 {
            return tail;
        }
        std::array::from_fn(|p| lanes[p].iter().sum::<f32>() + tail[p])
    }
}

/// A new `(N, C, S)` array of `f(per_channel, per_value)` for every value,
/// where `f` gets the value's channel's entry of each array in
/// `per_channel` (γ/σ, β − γμ/σ, …) and the value's own entry of each array
/// in `per_value` (x, g, …). Blocks of `S` values run in parallel (small
/// ones in bunches); after a fully connected layer (`S = 1`) a task takes
/// whole rows of `C` values. Writing into fresh memory skips zero-filling
/// it first.
fn channel_map<const K: usize, const J: usize>(
    (n, c, s): (usize, usize, usize),
    per_channel: [&[f32]; K],
    per_value: [&[f32]; J],
    f: impl Fn([f32; K], [f32; J]) -> f32 + Sync,
) -> Vec<f32> {
    if s == 1 {
        build(n * c, c, |row, dst| {
            let values = windows(per_value, row * c, dst.len());
            map_row(dst, per_channel, values, &f);
        })
    } else {
        build(n * c * s, s, |block, dst| {
            let values = windows(per_value, block * s, dst.len());
            map_block(dst, entries(per_channel, block % c), values, &f);
        })
    }
}

multiversioned! {
    /// One row of a fully connected layer's output in [`channel_map`]:
    /// value `ch` belongs to channel `ch`.
    fn map_row<const K: usize, const J: usize>(
        dst: &mut [MaybeUninit<f32>],
        per_channel: [&[f32]; K],
        row: [&[f32]; J],
        f: &impl Fn([f32; K], [f32; J]) -> f32,
    ) {
        // slices of the row's exact length: no bounds checks in the loop
        let n = dst.len();
        let (per_channel, row) = (windows(per_channel, 0, n), windows(row, 0, n));
        for (ch, d) in dst.iter_mut().enumerate() {
            d.write(f(entries(per_channel, ch), entries(row, ch)));
        }
    }
}

multiversioned! {
    /// One block of one channel in [`channel_map`]: the channel's numbers
    /// `k` stay the same for the whole block.
    fn map_block<const K: usize, const J: usize>(
        dst: &mut [MaybeUninit<f32>],
        k: [f32; K],
        block: [&[f32]; J],
        f: &impl Fn([f32; K], [f32; J]) -> f32,
    ) {
        let (a, b) = one_or_two(block);
        for ((d, &xa), &xb) in dst.iter_mut().zip(a).zip(b) {
            d.write(f(k, pick(xa, xb)));
        }
    }
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
fn channel_moments(x: &[f32], layout: (usize, usize, usize)) -> (Vec<f32>, Vec<f32>) {
    let m = (layout.0 * layout.2) as f64;
    let [sum] = channel_sums(layout, [], [x], |[], [v]| [v]);
    let mean: Vec<f32> = sum.iter().map(|v| (v / m) as f32).collect();
    let [squares] = channel_sums(layout, [&mean], [x], |[mu], [v]| [(v - mu) * (v - mu)]);
    (mean, squares.iter().map(|v| (v / m) as f32).collect())
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
    let layout = channel_layout(&shape);
    let (n, c, s) = layout;
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
        channel_map(layout, [&scale, &offset], [x], |[a, b], [x]| a * x + b)
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
        // per channel: Σ g and Σ g·x̂
        let [sum_g, sum_gx] =
            channel_sums(layout, [&mean, &inv_std], [x, g], |[mu, inv], [x, g]| {
                [g, g * (x - mu) * inv]
            });
        let dx = ctx.needs(0).then(|| {
            let dx = if batch_statistics {
                // ∂L/∂x = γ·inv/m · (m·g − Σg − x̂·Σg·x̂)
                let m = (n * s) as f32;
                let over_m =
                    |sums: &[f64]| -> Vec<f32> { sums.iter().map(|&v| v as f32 / m).collect() };
                let (mean_g, mean_gx) = (over_m(&sum_g), over_m(&sum_gx));
                let per_channel: [&[f32]; 5] = [&scale, &mean_g, &mean_gx, &mean, &inv_std];
                channel_map(
                    layout,
                    per_channel,
                    [x, g],
                    |[k, sg, sgx, mu, inv], [x, g]| k * (g - sg - (x - mu) * inv * sgx),
                )
            } else {
                // statistics are constants: ∂L/∂x = γ·inv·g
                channel_map(layout, [&scale], [g], |[k], [g]| k * g)
            };
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
