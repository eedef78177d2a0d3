//! Batch norm for small batches and many devices: ghost batch norm, batch
//! renormalization, frozen statistics and synchronised batch norm.
//!
//! *Book: chapter "Batch norm at inference and with small batches".*
//!
//! Plain batch norm normalises a training batch with the batch's own mean
//! and variance. Each variant here changes only *which* statistics a
//! training batch is normalised with ([`BatchNormKind`]); prediction
//! ([`Mode::Eval`]) is the same for all of them: the running statistics, as
//! in [`concise`](crate::concise).
//!
//! * **Ghost batch norm** (Hoffer, Hubara & Soudry, 2017): the batch is cut
//!   into "ghost" batches of a fixed size, each normalised with its own
//!   statistics. With `k` devices that each normalise their share of the
//!   batch ("per-worker BN"), this is exactly what happens.
//! * **Batch renormalization** (Ioffe, 2017): `x̂ = (x − μ_B)/σ_B · r + d`
//!   with `r = clip(σ_B/σ, 1/r_max, r_max)` and `d = clip((μ_B − μ)/σ,
//!   −d_max, d_max)` from the running `μ`, `σ`. `r` and `d` are treated as
//!   constants in the backward pass (no gradient flows through them).
//! * **Frozen batch norm**: after a warm-up, training normalises with the
//!   running statistics (and stops updating them), so the batch size no
//!   longer matters.
//! * **Synchronised batch norm**: the batch is split over `k` simulated
//!   workers; each computes per-channel sums of its share, the sums are added
//!   up (an all-reduce), and every worker normalises with the statistics of
//!   the whole batch. The result is full-batch batch norm, to float rounding.
//!
//! Ghost and synchronised batch norm share one operation,
//! [`grouped_batch_norm`]: rows are cut into groups, each group computes its
//! partial sums, and the sums are either kept per group (ghost) or added up
//! across groups (synchronised).

use crate::autograd::{Tensor, with_wide_vectors};
use crate::concise::{
    BatchNormOptions, ConciseBatchNorm, RunningVariance, batch_norm_fused, build_blocks,
    lane_sums_f64,
};
use crate::error::{Error, Result};
use crate::models::ModelKind;
use crate::nn::{BatchNormLayer, Mode, Module, Momentum, Sequential};
use crate::parallel::*;
use ndarray::{ArrayD, IxDyn};
use rand::Rng;
use std::ops::Range;

/// Where a training batch's normalisation statistics come from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BatchNormKind {
    /// Plain batch norm: the whole batch's mean and variance.
    Batch,
    /// Ghost batch norm: consecutive ghost batches of `ghost_batch_size`
    /// examples, each normalised with its own statistics (a last ghost batch
    /// too small to have a variance joins the one before it).
    Ghost {
        /// Examples per ghost batch.
        ghost_batch_size: usize,
    },
    /// Batch renormalization (Ioffe, 2017): plain batch norm for the first
    /// `warm_up_steps` training steps, then corrected by `r` and `d` clipped
    /// to `[1/r_max, r_max]` and `[−d_max, d_max]`.
    Renorm {
        /// Largest allowed `r` (at least 1; 1 means plain batch norm).
        r_max: f32,
        /// Largest allowed `|d|` (at least 0; 0 means plain batch norm).
        d_max: f32,
        /// Training steps of plain batch norm before the correction starts.
        warm_up_steps: u64,
    },
    /// Plain batch norm for `warm_up_steps` training steps, then training
    /// with the running statistics, which stop changing.
    FrozenAfter {
        /// Training steps with batch statistics before the freeze.
        warm_up_steps: u64,
    },
    /// Synchronised batch norm over `workers` simulated devices: per-worker
    /// sums, added up, give every worker the whole batch's statistics.
    Synchronised {
        /// Number of simulated devices the batch is split over.
        workers: usize,
    },
}

impl BatchNormKind {
    /// A short label for tables and figures, e.g. `ghost BN (8)`.
    pub fn label(&self) -> String {
        match *self {
            BatchNormKind::Batch => "BN".into(),
            BatchNormKind::Ghost { ghost_batch_size } => format!("ghost BN ({ghost_batch_size})"),
            BatchNormKind::Renorm { r_max, d_max, .. } => {
                format!("batch renorm (r_max {r_max}, d_max {d_max})")
            }
            BatchNormKind::FrozenAfter { .. } => "frozen BN".into(),
            BatchNormKind::Synchronised { workers } => {
                format!("sync BN ({})", plural(workers, "worker"))
            }
        }
    }

    /// Checks the variant's numbers.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a ghost batch size or a worker count
    /// of 0, an `r_max` below 1 or a negative `d_max` (or either not finite).
    pub fn check(&self) -> Result<()> {
        let invalid = |m: String| Err(Error::InvalidArgument(m));
        match *self {
            BatchNormKind::Ghost {
                ghost_batch_size: 0,
            } => invalid("ghost batch norm: the ghost batch size must be at least 1, got 0".into()),
            BatchNormKind::Synchronised { workers: 0 } => invalid(
                "synchronised batch norm: the batch must be split over at least 1 worker, got 0"
                    .into(),
            ),
            BatchNormKind::Renorm { r_max, d_max, .. }
                if !(r_max.is_finite() && r_max >= 1.0 && d_max.is_finite() && d_max >= 0.0) =>
            {
                invalid(format!(
                    "batch renorm: r_max must be a number of at least 1 and d_max of at least 0 \
                     (r_max = 1, d_max = 0 is plain batch norm; Ioffe uses up to 3 and 5), \
                     got r_max {r_max}, d_max {d_max}"
                ))
            }
            _ => Ok(()),
        }
    }
}

fn plural(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

// ----- the shared operation -----

/// `(N, C, S)` sizes of an `(N, C)` or `(N, C, H, W)` shape.
fn layout(shape: &[usize]) -> (usize, usize, usize) {
    (shape[0], shape[1], shape[2..].iter().product())
}

/// The mean and biased variance one set of rows was normalised with, per
/// channel, and how many values per channel they were computed from.
#[derive(Clone, Debug, PartialEq)]
pub struct Statistics {
    /// Mean per channel.
    pub mean: Vec<f32>,
    /// Biased variance (divided by `count`) per channel.
    pub var: Vec<f32>,
    /// Values per channel: rows × positions.
    pub count: usize,
}

/// Rows per work item of [`group_sums`]: fixed, so that the sums are always
/// added in the same order whatever the number of threads.
const ROWS_PER_ITEM: usize = 16;

/// For each group of rows of an `(N, C, S)` layout, per channel, the sums
/// `(Σ a, Σ b)` of `(a, b) = pair(group, channel, x, g)` over the group's
/// values, where `x` and `g` are the values at the same index of `xs` and
/// `gs`. Blocks of `S` values are summed in eight `f64` lanes (independent
/// running sums, so the additions vectorise), blocks are added in `f64`, and
/// work items of [`ROWS_PER_ITEM`] rows of one group run in parallel and are
/// added up in order.
fn group_sums(
    (xs, gs): (&[f32], &[f32]),
    groups: &[Range<usize>],
    (c, s): (usize, usize),
    pair: impl Fn(usize, usize, f32, f32) -> (f64, f64) + Sync,
) -> Vec<Vec<(f64, f64)>> {
    let items: Vec<(usize, Range<usize>)> = groups
        .iter()
        .enumerate()
        .flat_map(|(k, rows)| {
            rows.clone()
                .step_by(ROWS_PER_ITEM)
                .map(move |r| (k, r..(r + ROWS_PER_ITEM).min(rows.end)))
        })
        .collect();
    let partials: Vec<(usize, Vec<(f64, f64)>)> = items
        .into_par_iter()
        .map(|(k, rows)| {
            let partial = with_wide_vectors(|| {
                let mut partial = vec![(0.0, 0.0); c];
                for row in rows {
                    for (ch, sum) in partial.iter_mut().enumerate() {
                        let at = (row * c + ch) * s;
                        let (a, b) = lane_sums_f64(&xs[at..][..s], &gs[at..][..s], &|x, g| {
                            pair(k, ch, x, g)
                        });
                        sum.0 += a;
                        sum.1 += b;
                    }
                }
                partial
            });
            (k, partial)
        })
        .collect();
    let mut sums = vec![vec![(0.0, 0.0); c]; groups.len()];
    for (k, partial) in partials {
        for (total, p) in sums[k].iter_mut().zip(partial) {
            total.0 += p.0;
            total.1 += p.1;
        }
    }
    sums
}

/// The all-reduce of synchronised batch norm: every worker's per-channel
/// sums, added up, handed back to every worker.
fn all_reduce(per_worker: &[Vec<(f64, f64)>]) -> Vec<Vec<(f64, f64)>> {
    let mut total = vec![(0.0, 0.0); per_worker.first().map_or(0, Vec::len)];
    for sums in per_worker {
        for (t, s) in total.iter_mut().zip(sums) {
            t.0 += s.0;
            t.1 += s.1;
        }
    }
    vec![total; per_worker.len()]
}

// ANCHOR: grouped
/// Batch norm in training mode with the rows of `x` cut into `groups`.
///
/// Each group computes, per channel, the sums `Σx` and `Σx²` of its rows.
/// With `synchronise` false every group is normalised with its own
/// statistics (ghost batch norm, per-worker batch norm); with `synchronise`
/// true the groups' sums are first added up (the all-reduce of synchronised
/// batch norm), so every group gets the statistics of the whole batch. The
/// backward pass does the same with its two per-channel sums `Σg` and
/// `Σg·x̂`. Returns the output and the statistics of each group (all equal
/// when synchronised).
///
/// # Errors
/// If `x` is not `(N, C)` or `(N, C, H, W)`, γ and β do not hold one value
/// per channel, the groups do not cover the rows `0..N` in order, or a set
/// of values sharing statistics has fewer than two values per channel.
pub fn grouped_batch_norm(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    groups: &[Range<usize>],
    synchronise: bool,
    eps: f32,
) -> Result<(Tensor, Vec<Statistics>)> {
    let shape = x.shape();
    check_groups(&shape, affine, groups, synchronise)?;
    let (_, c, s) = layout(&shape);
    let xv = x.value().as_standard_layout().into_owned();
    let values = xv.as_slice().expect("standard layout");
    // forward: per group, Σx and Σx² per channel (each worker alone) ...
    let mut sums = group_sums((values, values), groups, (c, s), |_, _, v, _| {
        let v = f64::from(v);
        (v, v * v)
    });
    let mut counts: Vec<usize> = groups.iter().map(|rows| rows.len() * s).collect();
    if synchronise {
        // ... then one all-reduce: every worker holds the batch's sums
        sums = all_reduce(&sums);
        counts = vec![counts.iter().sum(); groups.len()];
    }
    let statistics: Vec<Statistics> = sums
        .iter()
        .zip(&counts)
        .map(|(sums, &count)| {
            let m = count as f64;
            let (mean, var) = sums
                .iter()
                .map(|&(sx, sxx)| {
                    let mean = sx / m;
                    (mean as f32, (sxx / m - mean * mean).max(0.0) as f32)
                })
                .unzip();
            Statistics { mean, var, count }
        })
        .collect();
    let inv_std: Vec<Vec<f32>> = statistics
        .iter()
        .map(|st| st.var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect())
        .collect();
    let (gamma, beta): (Vec<f32>, Vec<f32>) = match affine {
        Some((g, b)) => (
            g.value().iter().copied().collect(),
            b.value().iter().copied().collect(),
        ),
        None => (vec![1.0; c], vec![0.0; c]),
    };
    // which group each row belongs to
    let row_group: Vec<usize> = groups
        .iter()
        .enumerate()
        .flat_map(|(k, rows)| rows.clone().map(move |_| k))
        .collect();
    let means: Vec<Vec<f32>> = statistics.iter().map(|st| st.mean.clone()).collect();
    let inv = inv_std.clone(); // for the backward pass
    // x̂ of a value of group k, channel ch
    let x_hat = move |k: usize, ch: usize, v: f32| (v - means[k][ch]) * inv_std[k][ch];
    // y = γ·x̂ + β
    let y = build_blocks(values.len(), s, c, |ch, i, block| {
        let k = row_group[i / c];
        for (out, &v) in block.iter_mut().zip(&values[i * s..]) {
            out.write(gamma[ch] * x_hat(k, ch, v) + beta[ch]);
        }
    });
    let y = ArrayD::from_shape_vec(IxDyn(&shape), y).expect("same size");

    let parents = match affine {
        Some((g, b)) => vec![x, g, b],
        None => vec![x],
    };
    let groups = groups.to_vec();
    let out = Tensor::from_op("grouped_batch_norm", y, &parents, move |ctx| {
        let xv = ctx.input(0).as_standard_layout();
        let xv = xv.as_slice().expect("standard layout");
        let g = ctx.grad.as_standard_layout();
        let g = g.as_slice().expect("standard layout");
        // per group, Σg and Σg·x̂ per channel ...
        let own = group_sums((xv, g), &groups, (c, s), |k, ch, x, g| {
            (f64::from(g), f64::from(g * x_hat(k, ch, x)))
        });
        // ... all-reduced when synchronised
        let reduced;
        let sums = if synchronise {
            reduced = all_reduce(&own);
            &reduced
        } else {
            &own
        };
        let dx = ctx.needs(0).then(|| {
            let dx = build_blocks(xv.len(), s, c, |ch, i, block| {
                let (k, at) = (row_group[i / c], i * s);
                let m = counts[k] as f64;
                let (sg, sgx) = ((sums[k][ch].0 / m) as f32, (sums[k][ch].1 / m) as f32);
                // ∂L/∂x = γ·inv · (g − Σg/m − x̂·Σg·x̂/m)
                let scale = gamma[ch] * inv[k][ch];
                for ((d, &xi), &gi) in block.iter_mut().zip(&xv[at..]).zip(&g[at..]) {
                    d.write(scale * (gi - sg - x_hat(k, ch, xi) * sgx));
                }
            });
            ArrayD::from_shape_vec(IxDyn(ctx.input(0).shape()), dx).expect("same size")
        });
        let mut grads = vec![dx];
        if ctx.inputs.len() == 3 {
            // ∂L/∂γ = Σ g·x̂ and ∂L/∂β = Σ g over every group's own rows
            let column = |f: fn(&(f64, f64)) -> f64| {
                let total = (0..c).map(|ch| own.iter().map(|sums| f(&sums[ch])).sum::<f64>());
                ArrayD::from_shape_vec(IxDyn(&[c]), total.map(|v| v as f32).collect())
                    .expect("c values")
            };
            grads.push(ctx.needs(1).then(|| column(|p| p.1)));
            grads.push(ctx.needs(2).then(|| column(|p| p.0)));
        }
        grads
    });
    Ok((out, statistics))
}
// ANCHOR_END: grouped

fn check_groups(
    shape: &[usize],
    affine: Option<(&Tensor, &Tensor)>,
    groups: &[Range<usize>],
    synchronise: bool,
) -> Result<()> {
    let context = "grouped_batch_norm";
    if shape.len() != 2 && shape.len() != 4 {
        return Err(Error::shape(
            context,
            format!("expected (N, C) or (N, C, H, W), got shape {shape:?}"),
        ));
    }
    let (n, c, s) = layout(shape);
    if let Some((g, b)) = affine
        && (g.shape() != [c] || b.shape() != [c])
    {
        return Err(Error::shape(
            context,
            format!(
                "gamma {:?} and beta {:?} must have shape [{c}] for input {shape:?}",
                g.shape(),
                b.shape()
            ),
        ));
    }
    let mut next = 0;
    for rows in groups {
        if rows.start != next || rows.end <= rows.start {
            return Err(Error::InvalidArgument(format!(
                "{context}: the groups must cover the rows 0..{n} in order, each non-empty, got {groups:?}"
            )));
        }
        next = rows.end;
        if !synchronise && rows.len() * s < 2 {
            return Err(Error::shape(
                context,
                format!(
                    "the group of rows {rows:?} has {} value per channel, which has no variance; \
                     use groups of at least 2 examples",
                    rows.len() * s
                ),
            ));
        }
    }
    if next != n {
        return Err(Error::InvalidArgument(format!(
            "{context}: the groups must cover the rows 0..{n} in order, got {groups:?}"
        )));
    }
    if synchronise && n * s < 2 {
        return Err(Error::shape(
            context,
            format!("input {shape:?} has one value per channel, which has no variance"),
        ));
    }
    Ok(())
}

/// The ghost batches of a batch of `n` examples with `s` values per channel
/// and example: consecutive runs of `size` rows; a last run with fewer than
/// two values per channel joins the run before it.
pub fn ghost_batches(n: usize, size: usize, s: usize) -> Vec<Range<usize>> {
    let size = size.max(1);
    let mut groups: Vec<Range<usize>> = (0..n)
        .step_by(size)
        .map(|start| start..(start + size).min(n))
        .collect();
    if groups.len() > 1 && groups.last().is_some_and(|r| r.len() * s < 2) {
        let last = groups.pop().expect("two groups");
        groups.last_mut().expect("one left").end = last.end;
    }
    groups
}

/// The shares of `workers` simulated devices of a batch of `n` examples:
/// as equal as possible, the first ones one example larger.
///
/// # Errors
/// If there are more workers than examples (a worker with no example) or
/// no worker.
pub fn worker_shares(n: usize, workers: usize) -> Result<Vec<Range<usize>>> {
    if workers == 0 || workers > n {
        return Err(Error::InvalidArgument(format!(
            "synchronised batch norm: a batch of {n} examples cannot be split over {workers} \
             workers; every worker needs at least one example"
        )));
    }
    let (base, extra) = (n / workers, n % workers);
    let mut start = 0;
    Ok((0..workers)
        .map(|k| {
            let len = base + usize::from(k < extra);
            start += len;
            start - len..start
        })
        .collect())
}

/// Synchronised batch norm in training mode: `x` split over `workers`
/// simulated devices, per-worker sums all-reduced, every worker normalised
/// with the whole batch's statistics. Equal to full-batch batch norm up to
/// float rounding.
///
/// # Errors
/// As [`grouped_batch_norm`], or if there are more workers than examples.
pub fn sync_batch_norm(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    workers: usize,
    eps: f32,
) -> Result<(Tensor, Statistics)> {
    let n = x.shape().first().copied().unwrap_or(0);
    let shares = worker_shares(n, workers)?;
    let (y, mut statistics) = grouped_batch_norm(x, affine, &shares, true, eps)?;
    Ok((y, statistics.swap_remove(0)))
}

/// The mean and biased variance per channel of a whole training batch `x`,
/// computed as [`grouped_batch_norm`] computes them (no graph is recorded).
///
/// # Errors
/// As [`grouped_batch_norm`] with one group.
pub fn batch_statistics(x: &Tensor, eps: f32) -> Result<Statistics> {
    let whole = 0..x.shape().first().copied().unwrap_or(0);
    let (_, mut statistics) =
        grouped_batch_norm(&x.detach(), None, std::slice::from_ref(&whole), false, eps)?;
    Ok(statistics.swap_remove(0))
}

// ANCHOR: renorm
/// Ioffe's correction of one batch: `r = σ_B/σ` clipped to
/// `[1/r_max, r_max]` and `d = (μ_B − μ)/σ` clipped to `[−d_max, d_max]`,
/// per channel, with `σ_B = √(var_B + ε)` and `σ = √(running_var + ε)`.
pub fn renorm_correction(
    batch: &Statistics,
    running_mean: &[f32],
    running_var: &[f32],
    eps: f32,
    (r_max, d_max): (f32, f32),
) -> (Vec<f32>, Vec<f32>) {
    (0..batch.mean.len())
        .map(|ch| {
            let sigma_batch = (batch.var[ch] + eps).sqrt();
            let sigma = (running_var[ch] + eps).sqrt();
            let r = (sigma_batch / sigma).clamp(1.0 / r_max, r_max);
            let d = ((batch.mean[ch] - running_mean[ch]) / sigma).clamp(-d_max, d_max);
            (r, d)
        })
        .unzip()
}

/// Batch renormalization in training mode with the correction `r`, `d`
/// given: `y = γ·(r·(x − μ_B)/σ_B + d) + β`, with the batch statistics
/// `μ_B`, `σ_B` computed from `x` (gradients flow through them) and `r`, `d`
/// constants (no gradient flows through them, as Ioffe prescribes). Written
/// as batch norm with scale `γ·r` and shift `γ·d + β`.
///
/// # Errors
/// As [`grouped_batch_norm`], or if `r` or `d` do not hold one value per
/// channel.
pub fn batch_renorm(
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    r: &[f32],
    d: &[f32],
    eps: f32,
) -> Result<(Tensor, Statistics)> {
    let shape = x.shape();
    let c = shape.get(1).copied().unwrap_or(0);
    if r.len() != c || d.len() != c {
        return Err(Error::shape(
            "batch_renorm",
            format!(
                "r and d need one value per channel ({c}), got {} and {}",
                r.len(),
                d.len()
            ),
        ));
    }
    let batch = batch_statistics(x, eps)?;
    let constant =
        |v: &[f32]| Tensor::new(ArrayD::from_shape_vec(IxDyn(&[c]), v.to_vec()).expect("c"));
    let (r, d) = (constant(r), constant(d));
    let (scale, shift) = match affine {
        Some((gamma, beta)) => (gamma * &r, &(gamma * &d) + beta),
        None => (r, d),
    };
    let inv_std = batch.var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let y = batch_norm_fused(x, Some((&scale, &shift)), batch.mean.clone(), inv_std, true)?;
    Ok((y, batch))
}
// ANCHOR_END: renorm

// ----- the layer -----

/// A batch-norm layer whose training statistics come from a [`BatchNormKind`],
/// for `(N, C)` inputs when `RANK = 2` and `(N, C, H, W)` inputs when
/// `RANK = 4`. Prediction ([`Mode::Eval`]) uses the running statistics, as
/// every batch norm does.
pub struct BatchNormVariant<const RANK: usize> {
    /// γ, β, the running statistics and the conventions (momentum, ε,
    /// biased or unbiased running variance, affine): a concise layer, which
    /// also does the prediction. Its `num_batches_tracked` counts updates of
    /// the running statistics (one per ghost batch for ghost batch norm).
    pub inner: ConciseBatchNorm<RANK>,
    /// Training forward passes so far (the warm-ups count these).
    pub steps: u64,
    /// Where training statistics come from.
    pub variant: BatchNormKind,
}

/// [`BatchNormVariant`] after a fully connected layer: input `(N, C)`.
pub type BatchNormVariant1d = BatchNormVariant<2>;
/// [`BatchNormVariant`] after a convolution: input `(N, C, H, W)`.
pub type BatchNormVariant2d = BatchNormVariant<4>;

impl<const RANK: usize> BatchNormVariant<RANK> {
    /// A layer for `num_features` channels.
    ///
    /// # Errors
    /// If `RANK` is not 2 or 4, `num_features` is 0, the options are
    /// invalid, or the variant's numbers are ([`BatchNormKind::check`]).
    pub fn new(
        num_features: usize,
        variant: BatchNormKind,
        options: BatchNormOptions,
    ) -> Result<Self> {
        variant.check()?;
        Ok(BatchNormVariant {
            inner: ConciseBatchNorm::with_options(num_features, options)?,
            steps: 0,
            variant,
        })
    }

    /// One update of the running statistics from statistics computed over
    /// `statistics.count` values per channel.
    fn update_running(&mut self, statistics: &Statistics) {
        let bn = &mut self.inner;
        bn.num_batches_tracked += 1;
        let w = match bn.options.momentum {
            Momentum::NewBatchWeight(w) => w,
            Momentum::CumulativeAverage => 1.0 / bn.num_batches_tracked as f32,
        };
        let m = statistics.count as f32;
        let bessel = match bn.options.running_variance {
            RunningVariance::Unbiased => m / (m - 1.0).max(1.0),
            RunningVariance::Biased => 1.0,
        };
        let follow = |old: &mut f32, new: f32| *old = (1.0 - w) * *old + w * new;
        for (ch, (mean, var)) in statistics.mean.iter().zip(&statistics.var).enumerate() {
            follow(&mut bn.running_mean[ch], *mean);
            follow(&mut bn.running_var[ch], var * bessel);
        }
    }

    fn train_forward(&mut self, x: &Tensor) -> Result<Tensor> {
        let shape = x.shape();
        let c = self.inner.num_features();
        if shape.len() != RANK || shape[1] != c || self.inner.running_mean.len() != c {
            // the concise layer's checks and messages
            return self.inner.forward(x, Mode::Eval);
        }
        let eps = self.inner.options.eps;
        let affine = match (&self.inner.gamma, &self.inner.beta) {
            (Some(g), Some(b)) => Some((g, b)),
            _ => None,
        };
        let (n, _, s) = layout(&shape);
        let step = self.steps;
        self.steps += 1;
        let (y, statistics) = match self.variant {
            BatchNormKind::FrozenAfter { warm_up_steps } if step >= warm_up_steps => {
                return self.inner.forward(x, Mode::Eval);
            }
            BatchNormKind::Renorm {
                r_max,
                d_max,
                warm_up_steps,
            } => {
                let limits = if step < warm_up_steps {
                    (1.0, 0.0)
                } else {
                    (r_max, d_max)
                };
                let batch = batch_statistics(x, eps)?;
                let (running_mean, running_var) =
                    (&self.inner.running_mean, &self.inner.running_var);
                let (r, d) = renorm_correction(&batch, running_mean, running_var, eps, limits);
                let (y, batch) = batch_renorm(x, affine, &r, &d, eps)?;
                (y, vec![batch])
            }
            BatchNormKind::Ghost { ghost_batch_size } => {
                let ghosts = ghost_batches(n, ghost_batch_size, s);
                grouped_batch_norm(x, affine, &ghosts, false, eps)?
            }
            BatchNormKind::Synchronised { workers } => {
                let (y, batch) = sync_batch_norm(x, affine, workers, eps)?;
                (y, vec![batch])
            }
            BatchNormKind::Batch | BatchNormKind::FrozenAfter { .. } => {
                let whole = 0..n;
                grouped_batch_norm(x, affine, std::slice::from_ref(&whole), false, eps)?
            }
        };
        for st in &statistics {
            self.update_running(st);
        }
        Ok(y)
    }
}

impl<const RANK: usize> Module for BatchNormVariant<RANK> {
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.variant.check()?;
        match mode {
            Mode::Eval => self.inner.forward(x, Mode::Eval),
            Mode::Train => self.train_forward(x).map_err(|e| match e {
                Error::Shape { message, .. } => Error::shape(self.describe(), message),
                other => other,
            }),
        }
    }

    fn parameters(&self) -> Vec<Tensor> {
        self.inner.parameters()
    }

    fn describe(&self) -> String {
        format!("{} {}", self.variant.label(), self.inner.describe())
    }

    fn as_batch_norm(&self) -> Option<&dyn BatchNormLayer> {
        Some(&self.inner)
    }

    fn as_batch_norm_mut(&mut self) -> Option<&mut dyn BatchNormLayer> {
        Some(&mut self.inner)
    }
}

// ANCHOR: lenet_bn_with
/// LeNet-BN (the network of [`ModelKind::LenetBnConcise`], same weights for
/// the same `rng`) with every batch-norm layer replaced by a
/// [`BatchNormVariant`] of `variant` with `options`.
///
/// # Errors
/// If the variant's numbers or the options are invalid.
pub fn lenet_bn_with<R: Rng + ?Sized>(
    variant: BatchNormKind,
    options: BatchNormOptions,
    rng: &mut R,
) -> Result<Sequential> {
    let mut net = Sequential::new();
    for layer in ModelKind::LenetBnConcise.build(rng)?.into_layers() {
        match layer.as_batch_norm().map(|bn| bn.num_features()) {
            // the concise BatchNorm1d sits after a Linear layer, BatchNorm2d after a Conv2d
            Some(c) if layer.as_any().is::<crate::concise::BatchNorm1d>() => {
                net.push(BatchNormVariant1d::new(c, variant, options)?);
            }
            Some(c) => net.push(BatchNormVariant2d::new(c, variant, options)?),
            None => net.push_boxed(layer),
        }
    }
    Ok(net)
}
// ANCHOR_END: lenet_bn_with

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ghost_batches_merge_a_last_single_example() {
        assert_eq!(ghost_batches(7, 3, 1), vec![0..3, 3..7]);
        assert_eq!(ghost_batches(7, 3, 4), vec![0..3, 3..6, 6..7]);
        assert_eq!(ghost_batches(8, 4, 1), vec![0..4, 4..8]);
        assert_eq!(ghost_batches(5, 256, 1), vec![0..5]);
    }

    #[test]
    fn worker_shares_are_as_equal_as_possible() {
        assert_eq!(worker_shares(10, 3).unwrap(), vec![0..4, 4..7, 7..10]);
        assert_eq!(worker_shares(4, 4).unwrap(), vec![0..1, 1..2, 2..3, 3..4]);
        let message = worker_shares(3, 4).unwrap_err().to_string();
        assert!(
            message.contains("every worker needs at least one example"),
            "{message}"
        );
    }
}
