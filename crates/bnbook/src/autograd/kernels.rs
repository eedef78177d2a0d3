//! Fast loops behind the element-wise operations: broadcasting without
//! per-element index arithmetic.
//!
//! Broadcasting a `(1, C, 1, 1)` array against an `(N, C, H, W)` one could be
//! written with ndarray's general `Zip`, but over dynamic-rank arrays that
//! walks the data one short row at a time. Here the output is cut into
//! equal **blocks** along its trailing axes, chosen so that inside a block
//! each operand is either *contiguous* (the same shape as the block) or
//! *constant* (broadcast, one value). `(N, C, H, W)` with `(1, C, 1, 1)`
//! gives blocks of `H·W` values: a plain slice loop against one number,
//! which the compiler vectorises. Large outputs are split across threads.

use crate::parallel::*;
use ndarray::{ArrayD, IxDyn};
use std::mem::MaybeUninit;

/// Outputs with fewer elements than this are computed on one thread.
const PARALLEL_THRESHOLD: usize = 1 << 15;

/// Values per parallel task of [`for_each_chunk`] when chunks are small,
/// and per piece of [`build_blocked`] (and of the convolution's bias
/// gradient).
pub(super) const VALUES_PER_TASK: usize = 1 << 13;

/// How one operand is laid out relative to the output.
#[derive(Clone, Debug)]
struct Operand {
    /// Element strides over the *outer* (block-indexing) axes; 0 where broadcast.
    outer_strides: Vec<usize>,
    /// Whether the operand is contiguous inside a block (else constant).
    contiguous: bool,
}

/// The block decomposition of an output shape.
#[derive(Clone, Debug)]
struct Plan {
    outer_shape: Vec<usize>,
    block: usize,
    operands: Vec<Operand>,
}

impl Plan {
    /// Plans the loops for operands of the given (right-aligned, NumPy
    /// broadcasting) shapes against `out`.
    fn new(out: &[usize], shapes: &[&[usize]]) -> Plan {
        let n = out.len();
        // each operand's size along each output axis (1 where it is missing)
        let sizes: Vec<Vec<usize>> = shapes
            .iter()
            .map(|s| {
                (0..n)
                    .map(|i| {
                        if i + s.len() < n {
                            1
                        } else {
                            s[i + s.len() - n]
                        }
                    })
                    .collect()
            })
            .collect();
        // grow the block from the last axis while every operand stays either
        // contiguous (full size) or constant (size 1) over it
        let mut k = n;
        let mut mode: Vec<Option<bool>> = vec![None; shapes.len()]; // Some(true) = contiguous
        while k > 0 {
            let axis = k - 1;
            if out[axis] != 1 {
                let fits = sizes.iter().zip(&mode).all(|(s, m)| {
                    let full = s[axis] == out[axis];
                    m.is_none_or(|m| m == full)
                });
                if !fits {
                    break;
                }
                for (s, m) in sizes.iter().zip(mode.iter_mut()) {
                    *m = Some(s[axis] == out[axis]);
                }
            }
            k -= 1;
        }
        let block = out[k..].iter().product();
        let operands = sizes
            .iter()
            .zip(&mode)
            .map(|(s, m)| {
                // standard-layout strides of the operand, 0 on broadcast axes
                let mut strides = vec![0; n];
                let mut acc = 1;
                for axis in (0..n).rev() {
                    strides[axis] = if s[axis] == 1 { 0 } else { acc };
                    acc *= s[axis];
                }
                Operand {
                    outer_strides: strides[..k].to_vec(),
                    contiguous: m.unwrap_or(true),
                }
            })
            .collect();
        Plan {
            outer_shape: out[..k].to_vec(),
            block,
            operands,
        }
    }

    /// Where the first `K` operands' values for the piece starting `within`
    /// values into a block begin, given the block's offsets: contiguous
    /// operands start `within` into their block, constant ones have their
    /// single value at the block's offset.
    fn piece_starts<const K: usize>(&self, block: [usize; K], within: usize) -> [usize; K] {
        let mut starts = block;
        for (start, operand) in starts.iter_mut().zip(&self.operands) {
            if operand.contiguous {
                *start += within;
            }
        }
        starts
    }
}

/// The start offsets of consecutive blocks of a [`Plan`] in its first `K`
/// operands. Only the first block's are found by division (one per outer
/// axis); each next block's come from counting along the outer axes like an
/// odometer. A division costs more cycles than the work on a 64-value block
/// (batch norm after LeNet's second convolution), so a division per block
/// was a noticeable part of such operations.
struct Blocks<'p, const K: usize> {
    plan: &'p Plan,
    /// The current block's index along each outer axis.
    index: Vec<usize>,
    /// The current block's start in each operand.
    offsets: [usize; K],
}

impl<'p, const K: usize> Blocks<'p, K> {
    /// The walk from block `first` on: its index along each outer axis (one
    /// division per axis), which gives its offset in every operand.
    fn starting_at(plan: &'p Plan, first: usize) -> Self {
        let (mut index, mut offsets) = (vec![0; plan.outer_shape.len()], [0; K]);
        let mut rest = first;
        for axis in (0..index.len()).rev() {
            let n = plan.outer_shape[axis];
            index[axis] = rest % n;
            rest /= n;
            for (offset, operand) in offsets.iter_mut().zip(&plan.operands) {
                *offset += index[axis] * operand.outer_strides[axis];
            }
        }
        Blocks {
            plan,
            index,
            offsets,
        }
    }

    /// Moves on to the next block (past the last one it starts over).
    #[inline]
    fn advance(&mut self) {
        for axis in (0..self.index.len()).rev() {
            let n = self.plan.outer_shape[axis];
            self.index[axis] += 1;
            let wraps = self.index[axis] == n;
            for (offset, operand) in self.offsets.iter_mut().zip(&self.plan.operands) {
                let stride = operand.outer_strides[axis];
                if wraps {
                    *offset -= stride * (n - 1);
                } else {
                    *offset += stride;
                }
            }
            if !wraps {
                return;
            }
            self.index[axis] = 0;
        }
    }
}

/// Standard-layout contents of `a` as a slice, copying only if needed.
fn contiguous(a: &ArrayD<f32>) -> std::borrow::Cow<'_, [f32]> {
    match a.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(a.iter().copied().collect()),
    }
}

/// Calls `f(index, chunk)` for every `chunk`-sized piece of `out` (the last
/// may be shorter), on all threads when `out` is large. Small chunks (one
/// 64-value image plane, one value per channel after a fully connected
/// layer) are handed out in bunches: a parallel task per chunk would cost
/// more than the work.
pub(crate) fn for_each_chunk<T: Send>(
    out: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    if chunk == 0 {
        return;
    }
    if let Some(per_task) = chunks_per_task(out.len(), chunk) {
        out.par_chunks_mut(chunk * per_task)
            .enumerate()
            .for_each(|(task, bunch)| {
                with_wide_vectors(|| {
                    for (j, c) in bunch.chunks_mut(chunk).enumerate() {
                        f(task * per_task + j, c);
                    }
                })
            });
    } else {
        with_wide_vectors(|| out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c)));
    }
}

/// How [`for_each_chunk`] splits `len` values in chunks of `chunk`: the
/// number of chunks per parallel task, or `None` when there are too few
/// values to split across threads.
pub(super) fn chunks_per_task(len: usize, chunk: usize) -> Option<usize> {
    (len >= PARALLEL_THRESHOLD).then(|| (VALUES_PER_TASK / chunk.max(1)).max(1))
}

/// Defines a function whose body is compiled three times, for AVX-512, for
/// AVX2 and for the baseline, and which runs the version for the widest
/// vectors this CPU has ([`widest_vectors`]).
///
/// [`with_wide_vectors`] does the same for a closure, but only if the
/// compiler inlines the closure into its wide versions, and it declines
/// for large ones (an im2col, a block of batch norm): those then run with
/// the baseline's 4-wide vectors. Here the body is an `#[inline(always)]`
/// function, so every version holds the whole loop. Closures passed as
/// arguments should be small (a per-element formula). Each version does
/// the same operations in the same order (no fused multiply-add), so all
/// three give the same bits.
macro_rules! multiversioned {
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident $(<$(const $cg:ident: $cgt:ty),+>)?
        ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$attr])*
        $vis fn $name $(<$(const $cg: $cgt),+>)? ($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body $(<$(const $cg: $cgt),+>)? ($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512 $(<$(const $cg: $cgt),+>)? ($($arg: $ty),*) $(-> $ret)? {
                body $(::<$($cg),+>)? ($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            unsafe fn avx2 $(<$(const $cg: $cgt),+>)? ($($arg: $ty),*) $(-> $ret)? {
                body $(::<$($cg),+>)? ($($arg),*)
            }
            match $crate::autograd::kernels::widest_vectors() {
                // SAFETY: `widest_vectors` found the CPU to support the feature.
                #[cfg(target_arch = "x86_64")]
                $crate::autograd::kernels::Width::Avx512 => unsafe {
                    avx512 $(::<$($cg),+>)? ($($arg),*)
                },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                $crate::autograd::kernels::Width::Avx2 => unsafe {
                    avx2 $(::<$($cg),+>)? ($($arg),*)
                },
                $crate::autograd::kernels::Width::Baseline => body $(::<$($cg),+>)? ($($arg),*),
            }
        }
    };
}
pub(crate) use multiversioned;

/// Runs `f`, compiled for AVX-512 or AVX2 when the CPU has them, else as
/// built — *if the compiler inlines `f`*.
///
/// The crate is built for the x86-64 baseline, whose SSE2 vectors hold 4
/// `f32`; almost every x86-64 CPU of the last decade has AVX2 (8), many
/// AVX-512 (16). Code inlined into a `#[target_feature]` function is
/// compiled for that feature, but a closure is inlined only if the compiler
/// finds it small enough: short loops handed to this function get the wide
/// versions, long ones (a sigmoid with its `exp`, an im2col) were found in
/// a profile to run 4 values at a time. Loops that matter are therefore
/// written with [`multiversioned!`], which does not depend on that choice.
/// All versions give the same bits: each element sees the same operations
/// in the same order (no fused multiply-add; sums keep their lanes), only
/// more of them at once.
#[inline(always)]
pub(crate) fn with_wide_vectors<R>(f: impl FnOnce() -> R) -> R {
    match widest_vectors() {
        // SAFETY: `widest_vectors` found the CPU to support the feature.
        #[cfg(target_arch = "x86_64")]
        Width::Avx512 => unsafe { avx512(f) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Width::Avx2 => unsafe { avx2(f) },
        Width::Baseline => f(),
    }
}

/// The vector instruction sets a loop can be compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Width {
    /// 512-bit vectors: 16 `f32`.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// 256-bit vectors: 8 `f32`.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// What the crate is built for (SSE2's 4 `f32` on x86-64).
    Baseline,
}

/// The widest vectors this CPU has, asked once.
#[inline(always)]
pub(crate) fn widest_vectors() -> Width {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static WIDEST: OnceLock<Width> = OnceLock::new();
        *WIDEST.get_or_init(|| {
            if std::arch::is_x86_feature_detected!("avx512f") {
                Width::Avx512
            } else if std::arch::is_x86_feature_detected!("avx2") {
                Width::Avx2
            } else {
                Width::Baseline
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    Width::Baseline
}

/// `f()` compiled with AVX2 enabled (see [`with_wide_vectors`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `f()` compiled with AVX-512 enabled (see [`with_wide_vectors`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// A vector of `len` values produced chunk by chunk: `fill(index, chunk)`
/// must write every element of the chunk it is given (chunks of `chunk`
/// elements; the last may be shorter). Writing into fresh capacity skips
/// the zero-filling pass that `vec![0.0; len]` would spend on memory about
/// to be overwritten anyway.
pub(crate) fn build(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    assert!(
        chunk > 0 || len == 0,
        "build: {len} values cannot be filled in chunks of 0"
    );
    let mut v = Vec::with_capacity(len);
    for_each_chunk(&mut v.spare_capacity_mut()[..len], chunk, fill);
    // SAFETY: every caller's `fill` writes each element of its chunk, and the
    // chunks cover `0..len` (asserted above when chunk is 0).
    unsafe { v.set_len(len) };
    v
}

/// A vector of `len` values produced chunk by chunk like [`build`], for a
/// `fill(index, chunk)` that adds into its chunk (col2im) or hands it to a
/// matrix product: each chunk is set to zero by the task that fills it,
/// just before, while it is in cache. `vec![0.0; len]` would instead zero
/// the whole vector in a pass of its own, after which the lines of a large
/// vector have left the cache again before the fill comes to them.
pub(crate) fn build_from_zeros(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    build(len, chunk, |index, dst| {
        for v in dst.iter_mut() {
            v.write(0.0);
        }
        // SAFETY: every element of `dst` was written just above, and
        // `MaybeUninit<f32>` has the layout of `f32`.
        let dst = unsafe { &mut *(dst as *mut [MaybeUninit<f32>] as *mut [f32]) };
        fill(index, dst);
    })
}

/// A vector of `len` values laid out in the blocks of `plan`, produced
/// piece by piece: `fill(starts, at, piece)` must write every element of
/// `piece`, which holds the output values `at .. at + piece.len()`, and
/// `starts` says where the first `K` operands' values for it begin
/// ([`Plan::piece_starts`]). Pieces never cross a block boundary, and a
/// large block (an operation on two full-size arrays is one block of the
/// whole output) is cut into several pieces, so that it is still shared
/// among threads.
fn build_blocked<const K: usize>(
    len: usize,
    plan: &Plan,
    fill: impl Fn([usize; K], usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    build(len, VALUES_PER_TASK, |task, dst| {
        for_each_piece(plan, task * VALUES_PER_TASK, dst, &fill);
    })
}

/// Like [`build_blocked`], for an output that already holds values:
/// `update(starts, at, piece)` changes the values `at .. at + piece.len()`
/// of `out` in place.
fn update_blocked<const K: usize>(
    out: &mut [f32],
    plan: &Plan,
    update: impl Fn([usize; K], usize, &mut [f32]) + Sync,
) {
    for_each_chunk(out, VALUES_PER_TASK, |task, dst| {
        for_each_piece(plan, task * VALUES_PER_TASK, dst, &update);
    });
}

/// Cuts `dst`, the output values from `at` on, at the block boundaries of
/// `plan` and calls `f(starts, at, piece)` for each piece.
#[inline(always)]
fn for_each_piece<const K: usize, T>(
    plan: &Plan,
    mut at: usize,
    mut dst: &mut [T],
    f: &impl Fn([usize; K], usize, &mut [T]),
) {
    let block = plan.block;
    let mut within = at % block;
    let mut blocks = Blocks::<K>::starting_at(plan, at / block);
    while !dst.is_empty() {
        let n = (block - within).min(dst.len());
        let (piece, rest) = dst.split_at_mut(n);
        f(plan.piece_starts(blocks.offsets, within), at, piece);
        (at, dst) = (at + n, rest);
        within += n;
        if within == block {
            blocks.advance();
            within = 0;
        }
    }
}

/// `f(a, b)` with NumPy broadcasting into an array of shape `out`.
pub(super) fn zip_with(
    a: &ArrayD<f32>,
    b: &ArrayD<f32>,
    out: &[usize],
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> ArrayD<f32> {
    let plan = Plan::new(out, &[a.shape(), b.shape()]);
    let (xs, ys) = (contiguous(a), contiguous(b));
    let (xs, ys) = (&*xs, &*ys);
    let len: usize = out.iter().product();
    let (ca, cb) = (plan.operands[0].contiguous, plan.operands[1].contiguous);
    let result = build_blocked(len, &plan, |[oa, ob], _, dst| {
        let n = dst.len();
        let xs = &xs[oa..][..if ca { n } else { 1 }];
        let ys = &ys[ob..][..if cb { n } else { 1 }];
        zip_piece(dst, xs, ys, &f);
    });
    ArrayD::from_shape_vec(IxDyn(out), result).expect("sizes match")
}

multiversioned! {
    /// One piece of [`zip_with`]: `f(x, y)` for every value of `dst`, where
    /// each operand holds either one value per output value or a single
    /// constant (a slice of length 1).
    fn zip_piece(
        dst: &mut [MaybeUninit<f32>],
        xs: &[f32],
        ys: &[f32],
        f: &impl Fn(f32, f32) -> f32,
    ) {
        let n = dst.len();
        match (xs.len() == n, ys.len() == n) {
            (true, true) => {
                for ((d, &x), &y) in dst.iter_mut().zip(xs).zip(ys) {
                    d.write(f(x, y));
                }
            }
            (true, false) => {
                let y = ys[0];
                for (d, &x) in dst.iter_mut().zip(xs) {
                    d.write(f(x, y));
                }
            }
            (false, true) => {
                let x = xs[0];
                for (d, &y) in dst.iter_mut().zip(ys) {
                    d.write(f(x, y));
                }
            }
            (false, false) => {
                let v = f(xs[0], ys[0]);
                dst.iter_mut().for_each(|d| {
                    d.write(v);
                });
            }
        }
    }
}

/// `f(x)` element-wise (a single operand, any layout).
pub(super) fn map(a: &ArrayD<f32>, f: impl Fn(f32) -> f32 + Sync) -> ArrayD<f32> {
    let xs = contiguous(a);
    let chunk = PARALLEL_THRESHOLD;
    let result = build(xs.len(), chunk, |index, dst| {
        map_values(dst, &xs[index * chunk..][..dst.len()], &f);
    });
    ArrayD::from_shape_vec(a.raw_dim(), result).expect("sizes match")
}

multiversioned! {
    /// The loop of [`map`], compiled per vector width with `f` inlined:
    /// inside a closure handed to [`with_wide_vectors`], a sigmoid (whose
    /// `exp` is long) ran 4 values at a time.
    fn map_values(dst: &mut [MaybeUninit<f32>], xs: &[f32], f: &impl Fn(f32) -> f32) {
        for (d, &x) in dst.iter_mut().zip(xs) {
            d.write(f(x));
        }
    }
}

/// `g · df(x, y)` element-wise for three same-shape arrays (the backward
/// pass of a unary operation).
pub(super) fn unary_backward(
    g: &ArrayD<f32>,
    x: &ArrayD<f32>,
    y: &ArrayD<f32>,
    df: impl Fn(f32, f32) -> f32 + Sync,
) -> ArrayD<f32> {
    let (gs, xs, ys) = (contiguous(g), contiguous(x), contiguous(y));
    let (gs, xs, ys) = (&*gs, &*xs, &*ys);
    let chunk = PARALLEL_THRESHOLD;
    let result = build(gs.len(), chunk, |index, dst| {
        let start = index * chunk;
        let n = dst.len();
        let (gs, xs, ys) = (&gs[start..][..n], &xs[start..][..n], &ys[start..][..n]);
        backward_values(dst, gs, xs, ys, &df);
    });
    ArrayD::from_shape_vec(g.raw_dim(), result).expect("sizes match")
}

multiversioned! {
    /// The loop of [`unary_backward`], compiled per vector width as
    /// [`map_values`] is.
    fn backward_values(
        dst: &mut [MaybeUninit<f32>],
        gs: &[f32],
        xs: &[f32],
        ys: &[f32],
        df: &impl Fn(f32, f32) -> f32,
    ) {
        for (i, d) in dst.iter_mut().enumerate() {
            d.write(gs[i] * df(xs[i], ys[i]));
        }
    }
}

/// Sums `g` down to `shape` (the reverse of broadcasting `shape` up to
/// `g`'s shape).
pub(super) fn reduce_to(g: &ArrayD<f32>, shape: &[usize]) -> ArrayD<f32> {
    reduce_zip3(g.shape(), [g, g, g], shape, |x, _, _| x)
}

/// `acc += g` for two arrays of the same shape (gradient accumulation).
pub(super) fn add_assign(acc: &mut ArrayD<f32>, g: &ArrayD<f32>) {
    match (acc.as_slice_mut(), g.as_slice()) {
        (Some(acc), Some(g)) if acc.len() >= PARALLEL_THRESHOLD => {
            acc.par_chunks_mut(PARALLEL_THRESHOLD)
                .zip(g.par_chunks(PARALLEL_THRESHOLD))
                .for_each(|(a, g)| a.iter_mut().zip(g).for_each(|(a, g)| *a += g));
        }
        _ => *acc += g,
    }
}

/// Copies `a` broadcast to shape `out`.
pub(super) fn broadcast_to(a: &ArrayD<f32>, out: &[usize]) -> ArrayD<f32> {
    let zero = ArrayD::zeros(IxDyn(&[]));
    zip_with(a, &zero, out, |x, _| x)
}

multiversioned! {
    /// Sum of a slice with eight independent accumulators: vectorisable, and
    /// more accurate than one running total.
    pub(super) fn sum(xs: &[f32]) -> f32 {
        let mut acc = [0.0_f32; 8];
        let chunks = xs.chunks_exact(8);
        let tail: f32 = chunks.remainder().iter().sum();
        for c in chunks {
            for (a, &x) in acc.iter_mut().zip(c) {
                *a += x;
            }
        }
        acc.iter().sum::<f32>() + tail
    }
}

/// `Σ f(a, b, c)` over the broadcast shape `out`, summed down to `target`
/// (which must broadcast to `out`), without materialising the full-size
/// product. This is the backward pass of a broadcasting operation for its
/// smaller operand: e.g. `∂L/∂γ = Σ g·x̂` over batch and pixels.
pub(super) fn reduce_zip3(
    out: &[usize],
    operands: [&ArrayD<f32>; 3],
    target: &[usize],
    f: impl Fn(f32, f32, f32) -> f32 + Sync,
) -> ArrayD<f32> {
    reduce_groups::<false>(out, operands, target, &f, &|_, _, _| 0.0, &mut [])
}

/// [`reduce_zip3`]`(g.shape(), [g, a, b], target, f)` and, in the same pass
/// over the values, [`zip3`]`(g, a, b, h)`: the gradients of a binary
/// operation's broadcast input and of its full-size one, reading `g` and
/// the operands once for both. The same values, to the last bit, as the two
/// separate calls (the sums run over the same blocks in the same groups).
pub(super) fn reduce_zip3_and_zip3(
    [g, a, b]: [&ArrayD<f32>; 3],
    target: &[usize],
    f: impl Fn(f32, f32, f32) -> f32 + Sync,
    h: impl Fn(f32, f32, f32) -> f32 + Sync,
) -> (ArrayD<f32>, ArrayD<f32>) {
    let len = g.len();
    let mut full: Vec<f32> = Vec::with_capacity(len);
    let sums = reduce_groups::<true>(
        g.shape(),
        [g, a, b],
        target,
        &f,
        &h,
        &mut full.spare_capacity_mut()[..len],
    );
    // SAFETY: with `WRITE`, `reduce_groups` writes `h(…)` to every value of
    // each block it walks, and the blocks cover the whole output.
    unsafe { full.set_len(len) };
    let full = ArrayD::from_shape_vec(g.raw_dim(), full).expect("sizes match");
    (sums, full)
}

/// The loops of [`reduce_zip3`], and with `WRITE` also of
/// [`reduce_zip3_and_zip3`], which writes `h(…)` for every output value
/// to `written` (the whole output, in standard layout).
fn reduce_groups<const WRITE: bool>(
    out: &[usize],
    [a, b, c]: [&ArrayD<f32>; 3],
    target: &[usize],
    f: &(impl Fn(f32, f32, f32) -> f32 + Sync),
    h: &(impl Fn(f32, f32, f32) -> f32 + Sync),
    written: &mut [MaybeUninit<f32>],
) -> ArrayD<f32> {
    let plan = Plan::new(out, &[a.shape(), b.shape(), c.shape(), target]);
    let (xa, xb, xc) = (contiguous(a), contiguous(b), contiguous(c));
    // inner-loop stride of each operand: 1 if contiguous in a block, 0 if constant
    let step = |i: usize| usize::from(plan.operands[i].contiguous);
    let (sa, sb, sc) = (step(0), step(1), step(2));
    let target_len: usize = target.iter().product();
    let block = plan.block;
    let blocks = out
        .iter()
        .product::<usize>()
        .checked_div(block)
        .unwrap_or(0);
    let into_one = !plan.operands[3].contiguous;
    // Blocks are summed in fixed groups (sized from the shapes only, never
    // from the thread count) whose partial sums are then added in order:
    // parallel, yet the same bits on every run and every machine.
    let per_group = (PARALLEL_THRESHOLD / block.max(1)).max(1);
    let groups = blocks.div_ceil(per_group);
    let sum_group_of = |group: usize, written: &mut [MaybeUninit<f32>]| {
        let mut partial = vec![0.0_f32; target_len];
        let range = group * per_group..((group + 1) * per_group).min(blocks);
        // One monomorphised loop per combination of contiguous (stride 1) and
        // constant (stride 0) operands, so that the compiler can vectorise it.
        macro_rules! with_strides {
            ($($sa:literal $sb:literal $sc:literal),*) => {
                match (sa, sb, sc) {
                    $(($sa, $sb, $sc) => reduce_blocks::<$sa, $sb, $sc, WRITE>(
                        &plan, range, into_one, [&xa, &xb, &xc], &mut partial, f, h, written),)*
                    _ => unreachable!("strides are 0 or 1"),
                }
            };
        }
        with_strides!(0 0 0, 0 0 1, 0 1 0, 0 1 1, 1 0 0, 1 0 1, 1 1 0, 1 1 1);
        partial
    };
    let sum_group = |(group, written): (usize, &mut [MaybeUninit<f32>])| {
        with_wide_vectors(|| sum_group_of(group, written))
    };
    // each group's share of `written` (an empty one without `WRITE`)
    let mut shares: Vec<&mut [MaybeUninit<f32>]> = if WRITE {
        written.chunks_mut((per_group * block).max(1)).collect()
    } else {
        Vec::new()
    };
    shares.resize_with(groups, Default::default);
    let tasks = shares.into_iter().enumerate();
    let partials: Vec<Vec<f32>> = if groups > 1 {
        tasks
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(sum_group)
            .collect()
    } else {
        tasks.map(sum_group).collect()
    };
    let mut result = vec![0.0_f32; target_len];
    for partial in &partials {
        for (r, p) in result.iter_mut().zip(partial) {
            *r += p;
        }
    }
    ArrayD::from_shape_vec(IxDyn(target), result).expect("sizes match")
}

/// `f(g, a, b)` element-wise, where `g` has the output shape and `a`, `b`
/// broadcast to it (the full-size gradient of a binary operation).
pub(super) fn zip3(
    g: &ArrayD<f32>,
    a: &ArrayD<f32>,
    b: &ArrayD<f32>,
    f: impl Fn(f32, f32, f32) -> f32 + Sync,
) -> ArrayD<f32> {
    let out = g.shape();
    let plan = Plan::new(out, &[a.shape(), b.shape()]);
    let (xg, xa, xb) = (contiguous(g), contiguous(a), contiguous(b));
    let (xg, xa, xb) = (&*xg, &*xa, &*xb);
    let (ca, cb) = (plan.operands[0].contiguous, plan.operands[1].contiguous);
    let result = build_blocked(xg.len(), &plan, |[oa, ob], og, dst| {
        let n = dst.len();
        let gs = &xg[og..og + n];
        let xa = &xa[oa..][..if ca { n } else { 1 }];
        let xb = &xb[ob..][..if cb { n } else { 1 }];
        zip3_piece(dst, gs, xa, xb, &f);
    });
    ArrayD::from_shape_vec(g.raw_dim(), result).expect("sizes match")
}

/// `acc += f(g, a, b)` element-wise, where `g`, `a` and `b` broadcast to
/// `acc`'s shape: a full-size gradient added straight into the gradient a
/// tensor has gathered so far ([`BackwardContext::add_into`]), in one pass.
/// Each value is `f(…)` rounded to `f32` and then added, exactly as when
/// [`zip3`] writes `f(…)` to a new array that [`add_assign`] then adds.
///
/// [`BackwardContext::add_into`]: super::BackwardContext::add_into
pub(super) fn add_zip3(
    acc: &mut ArrayD<f32>,
    operands: [&ArrayD<f32>; 3],
    f: impl Fn(f32, f32, f32) -> f32 + Sync,
) {
    update_zip3(acc, operands, |acc, g, a, b| acc + f(g, a, b));
}

/// `out = f(out, x, y, z)` element-wise, in place, where `x`, `y` and `z`
/// broadcast to `out`'s shape (standard layout).
pub(super) fn update_zip3(
    out: &mut ArrayD<f32>,
    [x, y, z]: [&ArrayD<f32>; 3],
    f: impl Fn(f32, f32, f32, f32) -> f32 + Sync,
) {
    let plan = Plan::new(out.shape(), &[x.shape(), y.shape(), z.shape()]);
    let (xs, ys, zs) = (contiguous(x), contiguous(y), contiguous(z));
    let (xs, ys, zs) = (&*xs, &*ys, &*zs);
    let full = |i: usize| plan.operands[i].contiguous;
    let (cx, cy, cz) = (full(0), full(1), full(2));
    let out = out
        .as_slice_mut()
        .expect("update_zip3: the output must be in standard layout");
    update_blocked(out, &plan, |[ox, oy, oz], _, dst| {
        let n = dst.len();
        let len = |c: bool| if c { n } else { 1 };
        let (xs, ys, zs) = (
            &xs[ox..][..len(cx)],
            &ys[oy..][..len(cy)],
            &zs[oz..][..len(cz)],
        );
        macro_rules! with_strides {
            ($($sx:literal $sy:literal $sz:literal),*) => {
                match (usize::from(cx), usize::from(cy), usize::from(cz)) {
                    $(($sx, $sy, $sz) => update_piece::<$sx, $sy, $sz>(dst, [xs, ys, zs], &f),)*
                    _ => unreachable!("strides are 0 or 1"),
                }
            };
        }
        with_strides!(0 0 0, 0 0 1, 0 1 0, 0 1 1, 1 0 0, 1 0 1, 1 1 0, 1 1 1);
    });
}

multiversioned! {
    /// One piece of [`update_zip3`] for fixed strides (1: one value per
    /// output value, 0: a single constant).
    fn update_piece<const SX: usize, const SY: usize, const SZ: usize>(
        out: &mut [f32],
        operands: [&[f32]; 3],
        f: &impl Fn(f32, f32, f32, f32) -> f32,
    ) {
        let [xs, ys, zs] = operands;
        let n = out.len();
        let (xs, ys, zs) = (
            &xs[..(n - 1) * SX + 1],
            &ys[..(n - 1) * SY + 1],
            &zs[..(n - 1) * SZ + 1],
        );
        for (i, v) in out.iter_mut().enumerate() {
            *v = f(*v, xs[i * SX], ys[i * SY], zs[i * SZ]);
        }
    }
}

multiversioned! {
    /// One piece of [`zip3`]: `f(g, x, y)` for every value of `dst`, where
    /// `gs` holds one value per output value and each of `xa`, `xb` either
    /// as many or a single constant (a slice of length 1).
    fn zip3_piece(
        dst: &mut [MaybeUninit<f32>],
        gs: &[f32],
        xa: &[f32],
        xb: &[f32],
        f: &impl Fn(f32, f32, f32) -> f32,
    ) {
        let n = dst.len();
        match (xa.len() == n, xb.len() == n) {
            (true, true) => {
                for (((d, &g), &x), &y) in dst.iter_mut().zip(gs).zip(xa).zip(xb) {
                    d.write(f(g, x, y));
                }
            }
            (true, false) => {
                let y = xb[0];
                for ((d, &g), &x) in dst.iter_mut().zip(gs).zip(xa) {
                    d.write(f(g, x, y));
                }
            }
            (false, true) => {
                let x = xa[0];
                for ((d, &g), &y) in dst.iter_mut().zip(gs).zip(xb) {
                    d.write(f(g, x, y));
                }
            }
            (false, false) => {
                let (x, y) = (xa[0], xb[0]);
                for (d, &g) in dst.iter_mut().zip(gs) {
                    d.write(f(g, x, y));
                }
            }
        }
    }
}

multiversioned! {
    /// The loops of [`reduce_zip3`] for fixed inner strides `SA`, `SB`, `SC`;
    /// with `WRITE`, each value's `h(…)` also goes to `written`, which
    /// starts at the first block of `blocks`.
    #[allow(clippy::too_many_arguments)]
    fn reduce_blocks<const SA: usize, const SB: usize, const SC: usize, const WRITE: bool>(
        plan: &Plan,
        blocks: std::ops::Range<usize>,
        into_one: bool,
        operands: [&[f32]; 3],
        result: &mut [f32],
        f: &impl Fn(f32, f32, f32) -> f32,
        h: &impl Fn(f32, f32, f32) -> f32,
        written: &mut [MaybeUninit<f32>],
    ) {
        let [xa, xb, xc] = operands;
        let block = plan.block;
        let mut walk = Blocks::starting_at(plan, blocks.start);
        for k in 0..blocks.len() {
            let [oa, ob, oc, ot] = walk.offsets;
            walk.advance();
            // each operand's values for this block: `block` of them, or one constant
            let (xa, xb, xc) = (
                &xa[oa..][..(block - 1) * SA + 1],
                &xb[ob..][..(block - 1) * SB + 1],
                &xc[oc..][..(block - 1) * SC + 1],
            );
            let dst = if WRITE { &mut written[k * block..][..block] } else { &mut [] };
            if into_one {
                // the target is one number for the whole block: eight running
                // sums (lane `l` takes values l, l + 8, l + 16, …), added at the end
                let mut acc = [0.0_f32; 8];
                let full = block - block % 8;
                for start in (0..full).step_by(8) {
                    let (a, b, c) = (
                        lanes::<SA>(xa, start),
                        lanes::<SB>(xb, start),
                        lanes::<SC>(xc, start),
                    );
                    for lane in 0..8 {
                        acc[lane] += f(a[lane], b[lane], c[lane]);
                    }
                    if WRITE {
                        let dst: &mut [MaybeUninit<f32>; 8] =
                            (&mut dst[start..start + 8]).try_into().expect("eight values");
                        for lane in 0..8 {
                            dst[lane].write(h(a[lane], b[lane], c[lane]));
                        }
                    }
                }
                let tail: f32 = (full..block)
                    .map(|i| f(xa[i * SA], xb[i * SB], xc[i * SC]))
                    .sum();
                if WRITE {
                    for i in full..block {
                        dst[i].write(h(xa[i * SA], xb[i * SB], xc[i * SC]));
                    }
                }
                result[ot] += acc.iter().sum::<f32>() + tail;
            } else {
                for (i, r) in result[ot..ot + block].iter_mut().enumerate() {
                    *r += f(xa[i * SA], xb[i * SB], xc[i * SC]);
                }
                if WRITE {
                    for (i, d) in dst.iter_mut().enumerate() {
                        d.write(h(xa[i * SA], xb[i * SB], xc[i * SC]));
                    }
                }
            }
        }
    }
}

/// Values `start .. start + 8` of a contiguous operand (`S = 1`), or its
/// single value eight times (`S = 0`): one bounds check per eight values,
/// so that the loop above vectorises.
#[inline(always)]
fn lanes<const S: usize>(x: &[f32], start: usize) -> [f32; 8] {
    if S == 1 {
        x[start..start + 8].try_into().expect("eight values")
    } else {
        [x[0]; 8]
    }
}

/// `eˣ` in a form the compiler can vectorise (no library call): split
/// `x = k·ln 2 + r` with `|r| ≤ ln2/2`, approximate `eʳ` by its degree-6
/// Taylor polynomial (relative error < 2e-7, below `f32` precision at
/// 1.2e-7 per step), and multiply by `2ᵏ` through the exponent bits.
#[inline]
pub(crate) fn exp(x: f32) -> f32 {
    // beyond these, eˣ overflows to infinity or underflows to zero in f32
    let x = x.clamp(-87.3, 88.3);
    // Round x·log₂e to the nearest integer k by adding 1.5·2²³: the sum's
    // low mantissa bits then hold k itself. (f32::round and `as i32` would
    // be a library call and a saturating conversion, which stop the compiler
    // from vectorising the loop.)
    const ROUND: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let k = t - ROUND;
    let k_bits = t.to_bits().wrapping_sub(ROUND.to_bits()); // k as a two's-complement integer
    let r = x - k * 0.693_145_75 - k * 1.428_606_8e-6; // ln 2 split in two for precision
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2ᵏ: put k + 127 into the exponent field
    f32::from_bits(k_bits.wrapping_add(127) << 23) * p
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn};

    fn filled(shape: &[usize], seed: usize) -> ArrayD<f32> {
        let n: usize = shape.iter().product();
        let v = (0..n)
            .map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1000.0 - 1.0)
            .collect();
        ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
    }

    /// Both operands broadcast to `out` by ndarray, then `f` element by element.
    fn reference(out: &[usize], arrays: &[&ArrayD<f32>], f: impl Fn(&[f32]) -> f32) -> Vec<f32> {
        let views: Vec<_> = arrays
            .iter()
            .map(|a| {
                a.broadcast(IxDyn(out))
                    .unwrap()
                    .iter()
                    .copied()
                    .collect::<Vec<_>>()
            })
            .collect();
        (0..out.iter().product())
            .map(|i| f(&views.iter().map(|v| v[i]).collect::<Vec<_>>()))
            .collect()
    }

    /// Sums down to a smaller shape (the backward pass of broadcasting):
    /// one number per block (with and without a tail of fewer than eight
    /// values), whole rows per block, several groups of blocks (parallel).
    #[test]
    fn reductions_match_plain_sums() {
        let cases: [(&[usize], &[usize], &[usize]); 7] = [
            (&[256, 6, 24, 24], &[1, 6, 1, 1], &[1, 6, 1, 1]),
            (&[9, 3, 4, 500], &[9, 1, 4, 1], &[9, 1, 4, 1]),
            (&[4, 3, 5, 5], &[1, 3, 1, 1], &[1, 3, 1, 1]),
            (&[300, 120], &[120], &[1, 120]),
            (&[3, 20_000], &[3, 1], &[3, 1]),
            (&[70_001], &[1], &[]),
            (&[5, 7], &[5, 7], &[5, 7]),
        ];
        for (out, sb, target) in cases {
            let (g, b) = (filled(out, 4), filled(sb, 5));
            let a = filled(out, 6);
            let sum = super::reduce_zip3(out, [&g, &a, &b], target, |g, a, b| g * a - b);
            assert_eq!(sum.shape(), target);
            // the same sums, and the full-size values of zip3, from one pass
            let (one_pass, full) = super::reduce_zip3_and_zip3(
                [&g, &a, &b],
                target,
                |g, a, b| g * a - b,
                |g, a, b| g / (b + 3.0) - a,
            );
            assert_eq!(one_pass, sum, "{out:?} -> {target:?}");
            let two_passes = super::zip3(&g, &a, &b, |g, a, b| g / (b + 3.0) - a);
            assert_eq!(full, two_passes, "{out:?} -> {target:?}");
            // the same sums in f64, element by element
            let terms = reference(out, &[&g, &a, &b], |v| v[0] * v[1] - v[2]);
            let kept: Vec<usize> = (0..out.len())
                .map(|i| {
                    let t = target.len() + i;
                    if t < out.len() {
                        1
                    } else {
                        target[t - out.len()]
                    }
                })
                .collect();
            let mut expected = vec![0.0_f64; sum.len()];
            for (i, t) in terms.iter().enumerate() {
                // index of the target element that output element `i` adds into
                let (mut rest, mut at, mut stride) = (i, 0, 1);
                for axis in (0..out.len()).rev() {
                    let coord = rest % out[axis];
                    rest /= out[axis];
                    if kept[axis] != 1 {
                        at += coord * stride;
                    }
                    stride *= kept[axis];
                }
                expected[at] += f64::from(*t);
            }
            for (s, e) in sum.iter().zip(&expected) {
                assert!(
                    (f64::from(*s) - e).abs() <= 1e-4 * (1.0 + e.abs()),
                    "{out:?} -> {target:?}: {s} vs {e}"
                );
            }
        }
    }

    /// Small and large outputs (one thread, several threads), blocks that do
    /// and do not divide the work pieces, one block for the whole output
    /// (two full-size operands), broadcasting on either side.
    #[test]
    fn element_wise_kernels_match_plain_broadcasting() {
        let cases: [(&[usize], &[usize]); 8] = [
            (&[4, 3, 5, 5], &[1, 3, 1, 1]),
            // three outer axes, the middle one broadcast: the block walk
            // carries over two axes, and tasks start inside blocks
            (&[9, 3, 4, 500], &[9, 1, 4, 1]),
            (&[256, 6, 24, 24], &[1, 6, 1, 1]),
            (&[256, 16, 8, 8], &[256, 16, 8, 8]),
            (&[300, 120], &[120]),
            (&[1, 5], &[70_001, 1]),
            (&[3, 20_000], &[3, 1]),
            (&[], &[9, 9]),
        ];
        for (sa, sb) in cases {
            let (a, b) = (filled(sa, 1), filled(sb, 2));
            let out = crate::autograd::ops::broadcast_shape("test", sa, sb);
            let y = super::zip_with(&a, &b, &out, |x, y| x * 3.0 - y);
            let expected = reference(&out, &[&a, &b], |v| v[0] * 3.0 - v[1]);
            assert_eq!(y.shape(), &out[..]);
            assert_eq!(
                y.iter().copied().collect::<Vec<_>>(),
                expected,
                "{sa:?} {sb:?}"
            );
            let g = filled(&out, 3);
            let z = super::zip3(&g, &a, &b, |g, x, y| g * x + y);
            let expected = reference(&out, &[&g, &a, &b], |v| v[0] * v[1] + v[2]);
            assert_eq!(
                z.iter().copied().collect::<Vec<_>>(),
                expected,
                "{sa:?} {sb:?}"
            );
            // adding into a gradient in one pass gives the bits of writing
            // the term to a new array and adding that; also with the first
            // operand broadcast (the backward pass of a sum)
            for g in [g, filled(sb, 7)] {
                let mut fused = filled(&out, 8);
                super::add_zip3(&mut fused, [&g, &a, &b], |g, x, y| g * x - y);
                let mut two_passes = filled(&out, 8);
                let g_full = super::broadcast_to(&g, &out);
                let term = super::zip3(&g_full, &a, &b, |g, x, y| g * x - y);
                super::add_assign(&mut two_passes, &term);
                assert_eq!(fused, two_passes, "{sa:?} {sb:?} g {:?}", g.shape());
            }
        }
    }

    #[test]
    fn fast_exp_is_as_accurate_as_f32_allows() {
        let mut worst: f64 = 0.0;
        for i in -8000..=8000 {
            let x = i as f32 * 0.01;
            let exact = f64::from(x).exp();
            let rel = ((f64::from(super::exp(x)) - exact) / exact).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(super::exp(-1000.0), super::exp(-87.3));
        assert!(super::exp(1000.0).is_finite());
    }
}
