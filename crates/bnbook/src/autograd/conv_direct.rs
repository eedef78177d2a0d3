//! Direct convolution for layers with few kernel entries per output and
//! narrow output rows: LeNet's two convolutions (one input channel and six
//! `5 × 5` kernels, 24 outputs per row; six channels and sixteen kernels,
//! 8 outputs per row).
//!
//! *Book: chapter "Autograd in a few hundred lines", section "Why it is fast".*
//!
//! Through im2col, such a layer copies every input pixel up to 25 times
//! and then runs matrix products whose inner sizes are small (25, or 16
//! and 64 in the backward pass). Here blocks of sixteen outputs of every
//! kernel in a group (up to eight kernels) are kept in vector registers,
//! and each of the `C·KH·KW` kernel entries adds `w · x` into them with a
//! fused multiply-add. The sums run over the kernel entries in the same
//! order as the matrix product's (`(c, ky, kx)`, starting from zero, one
//! fused multiply-add each), so the outputs are the same bits as im2col +
//! GEMM's (tested in `conv.rs`).
//!
//! The weight gradient `∂L/∂W[o, c, ky, kx] = Σ g[o, oy, ox] · x[c, oy + ky, ox + kx]`
//! is taken block by block too: for one kernel row `(c, ky)`, the sums of
//! its `KW` entries for a few kernels stay in registers over every block of
//! a group of images.
//!
//! Two layouts of a block:
//! - **Wide rows** (16 to 32 outputs: LeNet's 24 and 28): two blocks per
//!   row, one from its start, one ending at its end. They overlap unless
//!   the row is 32 long; the forward pass writes the shared outputs twice
//!   (with the same values), the weight gradient leaves the second block's
//!   shared lanes out. The input values of a block are sixteen neighbours
//!   in one input row, read straight from the image.
//! - **Row pairs** (8 outputs per row, an even number of rows): a block is
//!   two output rows. Its input values for one kernel entry are eight
//!   neighbours in one input row followed by eight in the next, so each
//!   image is first rearranged into those pairs, once for all entries
//!   ([`Shape::source_len`] values, about half of im2col's).
//!
//! A [`Plan`] holds what a convolution call works out once (offsets,
//! blocks); its methods run the kernels on one image or a group of images.
//!
//! The kernels are written with AVX-512 intrinsics: written as plain loops
//! over arrays, the compiler assembled the overlapping sixteen-value loads
//! from scalar pieces, and the kernels ran several times slower than the
//! matrix products. On CPUs without AVX-512 (and off x86-64) convolutions
//! go through im2col and GEMM.

// Elsewhere `applies` is false, and the kernels are compiled out.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_variables))]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Values per vector: one AVX-512 register of `f32`.
const LANES: usize = 16;

/// Kernels whose outputs are kept in registers at once (two blocks of
/// sixteen for each: sixteen of the 32 vector registers).
const MAX_GROUP: usize = 8;

/// Kernels whose weight gradients are summed in registers at once: one sum
/// per kernel column (five for LeNet) for each, plus the kernels' gradient
/// values, stay within the 32 vector registers.
const GRADIENT_GROUP: usize = 4;

/// The sizes of a stride-1, unpadded convolution of one image.
#[derive(Clone, Copy, Debug)]
pub(super) struct Shape {
    /// Input channels, rows and columns.
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    /// Kernel rows and columns.
    pub(super) kh: usize,
    pub(super) kw: usize,
    /// Output rows and columns.
    pub(super) oh: usize,
    pub(super) ow: usize,
}

/// Sixteen outputs of a plane computed together.
#[derive(Clone, Copy, Debug)]
struct Block {
    /// Output position (`oy · OW + ox`) of the first lane; the lanes are
    /// sixteen consecutive positions.
    out: usize,
    /// Where in the input source ([`Shape::source_len`]) the block's values
    /// for kernel entry `(c, ky, kx)` start, less [`Shape::entry_offset`].
    x: usize,
}

/// Blocks whose weight-gradient sums share registers: they count the same
/// lanes.
#[derive(Debug)]
struct BlockClass {
    /// The lanes the weight gradient counts (all but those another block
    /// already covers).
    counted: u16,
    blocks: Vec<Block>,
}

impl Shape {
    /// Kernel entries `(c, ky, kx)` per kernel.
    fn field(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Output positions per plane.
    fn positions(&self) -> usize {
        self.oh * self.ow
    }

    /// Values per input image.
    fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Whether the sizes are those of a stride-1, unpadded convolution.
    fn is_consistent(&self) -> bool {
        self.kh <= self.h
            && self.kw <= self.w
            && self.oh == self.h - self.kh + 1
            && self.ow == self.w - self.kw + 1
    }

    /// Whether blocks are row pairs (8 outputs per row) rather than wide rows.
    fn row_pairs(&self) -> bool {
        2 * self.ow == LANES
    }

    /// Scratch values the row-pair layout needs per image: for every
    /// channel, input row `i < H − 1` and kernel column, sixteen values
    /// (none for wide rows, which read the image itself).
    fn source_len(&self) -> usize {
        if self.row_pairs() {
            self.c * (self.h - 1) * self.kw * LANES
        } else {
            0
        }
    }

    /// Where the values of kernel entry `(c, ky, kx)` start in the source.
    fn entry_offset(&self, c: usize, ky: usize, kx: usize) -> usize {
        if self.row_pairs() {
            ((c * (self.h - 1) + ky) * self.kw + kx) * LANES
        } else {
            (c * self.h + ky) * self.w + kx
        }
    }

    /// The step between the sources of entries `kx` and `kx + 1`.
    fn kx_step(&self) -> usize {
        if self.row_pairs() { LANES } else { 1 }
    }

    /// [`Shape::entry_offset`] of every kernel entry, in order.
    fn entry_offsets(&self) -> Vec<usize> {
        let mut offsets = Vec::with_capacity(self.field());
        for c in 0..self.c {
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    offsets.push(self.entry_offset(c, ky, kx));
                }
            }
        }
        offsets
    }

    /// The blocks grouped by the lanes their weight gradient counts: for
    /// row pairs one class (all lanes), for wide rows the first blocks of
    /// the rows (all lanes) and the second ones (those the first does not
    /// cover).
    fn block_classes(&self) -> Vec<BlockClass> {
        if self.row_pairs() {
            let blocks = (0..self.oh / 2)
                .map(|pair| Block {
                    out: pair * LANES,
                    x: 2 * pair * self.kw * LANES,
                })
                .collect();
            return vec![BlockClass {
                counted: u16::MAX,
                blocks,
            }];
        }
        let second = self.ow - LANES;
        // 16 lanes shared when the row is 16 long: the blocks coincide
        let shared = (LANES - second) as u32;
        let starting_at = |start: usize| -> Vec<Block> {
            (0..self.oh)
                .map(|oy| Block {
                    out: oy * self.ow + start,
                    x: oy * self.w + start,
                })
                .collect()
        };
        vec![
            BlockClass {
                counted: u16::MAX,
                blocks: starting_at(0),
            },
            BlockClass {
                counted: u16::MAX.checked_shl(shared).unwrap_or(0),
                blocks: starting_at(second),
            },
        ]
    }

    /// The blocks of a plane in the order the forward pass takes them, two
    /// at a time: for wide rows both blocks of a row, row by row.
    fn blocks(&self) -> Vec<Block> {
        let classes = self.block_classes();
        match &classes[..] {
            [first, second] => first
                .blocks
                .iter()
                .zip(&second.blocks)
                .flat_map(|(&a, &b)| [a, b])
                .collect(),
            _ => classes.into_iter().flat_map(|class| class.blocks).collect(),
        }
    }

    /// Rearranges image `x` into `source` for the row-pair layout.
    ///
    /// # Panics
    /// If `x` is shorter than an image or `source` than
    /// [`Shape::source_len`].
    fn fill_source(&self, x: &[f32], source: &mut [f32]) {
        assert!(
            x.len() >= self.image_len() && source.len() >= self.source_len(),
            "direct convolution: slices too short to rearrange {self:?}"
        );
        #[cfg(target_arch = "x86_64")]
        if has_avx512() && self.w <= LANES {
            // SAFETY: the CPU supports AVX-512 (checked just above).
            unsafe { self.fill_source_avx512(x, source) };
            return;
        }
        self.fill_source_plain(x, source);
    }

    /// [`Shape::fill_source`] with slice copies (any CPU).
    fn fill_source_plain(&self, x: &[f32], source: &mut [f32]) {
        let half = LANES / 2;
        for c in 0..self.c {
            for i in 0..self.h - 1 {
                for kx in 0..self.kw {
                    let dst = &mut source[self.entry_offset(c, i, kx)..][..LANES];
                    let row = |y: usize| &x[(c * self.h + y) * self.w + kx..][..half];
                    dst[..half].copy_from_slice(row(i));
                    dst[half..].copy_from_slice(row(i + 1));
                }
            }
        }
    }

    /// [`Shape::fill_source`] in vector registers, for input rows of at
    /// most sixteen values: rows `i` and `i + 1` are loaded once, and each
    /// kernel column's sixteen values are picked out of the pair with one
    /// two-register permutation (instead of two short copies through
    /// memory per kernel column). The same values land in the same places.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn fill_source_avx512(&self, x: &[f32], source: &mut [f32]) {
        debug_assert!(self.w <= LANES && self.kw + LANES / 2 <= self.w + 1);
        let row_mask = first_lanes(self.w);
        // for kernel column kx: lanes kx .. kx + 8 of the first register
        // (row i), then lanes kx .. kx + 8 of the second (row i + 1, which
        // `_mm512_permutex2var_ps` numbers 16 .. 31)
        let first = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
        let mut picks = [first; LANES];
        for (kx, pick) in picks.iter_mut().enumerate().take(self.kw) {
            *pick = _mm512_add_epi32(first, _mm512_set1_epi32(kx as i32));
        }
        let picks = &picks[..self.kw];
        let row = |c: usize, y: usize| -> __m512 {
            let row = &x[(c * self.h + y) * self.w..][..self.w];
            // SAFETY: the mask enables exactly the row's `w` lanes, and
            // masked-off lanes are not accessed.
            unsafe { _mm512_maskz_loadu_ps(row_mask, row.as_ptr()) }
        };
        for c in 0..self.c {
            let mut upper = row(c, 0);
            for i in 0..self.h - 1 {
                let lower = row(c, i + 1);
                for (kx, &pick) in picks.iter().enumerate() {
                    let pair = _mm512_permutex2var_ps(upper, pick, lower);
                    store(source, self.entry_offset(c, i, kx), pair);
                }
                upper = lower;
            }
        }
    }
}

/// Whether the direct convolution applies: the CPU has AVX-512, the sizes
/// are consistent, output rows hold 16 to 32 values (wide rows) or 8 with
/// an even number of rows (row pairs), and kernel rows are 3 or 5 long.
pub(super) fn applies(shape: &Shape) -> bool {
    let rows_fit = (LANES..=2 * LANES).contains(&shape.ow)
        || (shape.row_pairs() && shape.oh.is_multiple_of(2));
    has_avx512() && shape.is_consistent() && rows_fit && matches!(shape.kw, 3 | 5)
}

/// Whether the CPU has AVX-512 (asked once).
pub(super) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Sixteen values of `s` from `at` on, without a bounds check (the kernels
/// check their slices' lengths once, up front).
///
/// # Safety
/// `at + 16 <= s.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load(s: &[f32], at: usize) -> __m512 {
    debug_assert!(at + LANES <= s.len());
    // SAFETY: the caller guarantees the sixteen values lie inside `s`; the
    // load needs no alignment.
    unsafe { _mm512_loadu_ps(s.as_ptr().add(at)) }
}

/// [`load`], with the lanes not in `mask` set to zero.
///
/// # Safety
/// As for [`load`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load_masked(s: &[f32], at: usize, mask: __mmask16) -> __m512 {
    debug_assert!(at + LANES <= s.len());
    // SAFETY: as in `load`.
    unsafe { _mm512_maskz_loadu_ps(mask, s.as_ptr().add(at)) }
}

/// Writes sixteen values into `s` from `at` on (bounds-checked).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn store(s: &mut [f32], at: usize, v: __m512) {
    let s = &mut s[at..at + LANES];
    // SAFETY: `s` holds sixteen values; the store needs no alignment.
    unsafe { _mm512_storeu_ps(s.as_mut_ptr(), v) }
}

/// The mask of the first `n` lanes (`n` ≤ 16): a row of `n` values.
#[cfg(target_arch = "x86_64")]
fn first_lanes(n: usize) -> __mmask16 {
    debug_assert!(n <= LANES);
    ((1u32 << n) - 1) as u16
}

/// What one convolution call needs besides the data, worked out once: the
/// sizes, every kernel entry's offset in the input source, and the blocks.
#[derive(Debug)]
pub(super) struct Plan {
    shape: Shape,
    offsets: Vec<usize>,
    blocks: Vec<Block>,
    classes: Vec<BlockClass>,
    /// One past the last value the kernels read in a source.
    reach: usize,
}

impl Plan {
    /// The plan for `shape`, or `None` when the direct convolution does not
    /// apply (see [`applies`]).
    pub(super) fn new(shape: Shape) -> Option<Plan> {
        if !applies(&shape) {
            return None;
        }
        let (offsets, blocks) = (shape.entry_offsets(), shape.blocks());
        let last_entry = offsets.iter().max().copied().unwrap_or(0);
        let last_block = blocks.iter().map(|b| b.x).max().unwrap_or(0);
        Some(Plan {
            shape,
            offsets,
            blocks,
            classes: shape.block_classes(),
            reach: last_entry + last_block + LANES,
        })
    }

    /// Scratch values [`Plan::forward_image`] needs: the row pairs of one
    /// image.
    pub(super) fn forward_scratch_len(&self) -> usize {
        self.shape.source_len()
    }

    /// Scratch values [`Plan::weight_gradient`] needs for `images` images
    /// and `o` kernels: their row pairs and the partial sums.
    pub(super) fn gradient_scratch_len(&self, images: usize, o: usize) -> usize {
        let partial = o * self.shape.field() * self.classes.len() * LANES;
        images * self.shape.source_len() + partial
    }

    /// The weights rearranged for [`Plan::forward_image`]: within each group
    /// of up to [`MAX_GROUP`] kernels, entry by entry, the group's weights
    /// side by side.
    pub(super) fn entry_major(&self, weights: &[f32]) -> Vec<f32> {
        let field = self.shape.field();
        let o = weights.len() / field;
        let mut out = Vec::with_capacity(o * field);
        for first in (0..o).step_by(MAX_GROUP) {
            let size = (o - first).min(MAX_GROUP);
            for r in 0..field {
                out.extend((first..first + size).map(|k| weights[k * field + r]));
            }
        }
        out
    }

    /// The values the kernels read for image `x`: the image itself for
    /// wide rows, else `scratch` filled with its row pairs.
    ///
    /// # Panics
    /// If `x` is shorter than an image, or the kernels would read past the
    /// source (which [`Plan::new`]'s sizes rule out).
    fn source<'a>(&self, x: &'a [f32], scratch: &'a mut [f32]) -> &'a [f32] {
        let shape = &self.shape;
        assert!(
            x.len() >= shape.image_len(),
            "direct convolution: image too short"
        );
        let x = if shape.row_pairs() {
            let scratch = &mut scratch[..shape.source_len()];
            shape.fill_source(x, scratch);
            scratch
        } else {
            x
        };
        assert!(
            self.reach <= x.len(),
            "direct convolution of {shape:?}: reads past its input"
        );
        x
    }

    /// The convolution of one image `x` (`C × H × W`) with the kernels
    /// `weights` ([`Plan::entry_major`] of `O` kernels) into `y` (`O`
    /// planes of `OH × OW`). Every value of `y` is written. `scratch` holds
    /// at least [`Plan::forward_scratch_len`] values.
    ///
    /// # Panics
    /// If a slice is too short.
    pub(super) fn forward_image(
        &self,
        x: &[f32],
        weights: &[f32],
        y: &mut [f32],
        scratch: &mut [f32],
    ) {
        let o = weights.len() / self.shape.field();
        assert!(
            y.len() >= o * self.shape.positions(),
            "direct convolution: output too short"
        );
        let x = self.source(x, scratch);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Plan::new` checked that the CPU supports AVX-512.
        unsafe {
            self.forward_groups(x, weights, y)
        }
    }

    /// [`Plan::forward_image`] for kernels in groups of up to [`MAX_GROUP`].
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn forward_groups(&self, x: &[f32], weights: &[f32], y: &mut [f32]) {
        let (field, positions) = (self.shape.field(), self.shape.positions());
        let o = weights.len() / field;
        let mut first = 0;
        while first < o {
            let size = (o - first).min(MAX_GROUP);
            let w = &weights[first * field..][..size * field];
            let y = &mut y[first * positions..][..size * positions];
            match size {
                1 => self.forward_group::<1>(x, w, y),
                2 => self.forward_group::<2>(x, w, y),
                3 => self.forward_group::<3>(x, w, y),
                4 => self.forward_group::<4>(x, w, y),
                5 => self.forward_group::<5>(x, w, y),
                6 => self.forward_group::<6>(x, w, y),
                7 => self.forward_group::<7>(x, w, y),
                _ => self.forward_group::<8>(x, w, y),
            }
            first += size;
        }
    }

    /// `G` kernels' output planes (weights entry by entry, `G` side by
    /// side), two blocks at a time: `2·G` independent chains of fused
    /// multiply-adds keep both of the processor's FMA units busy (an odd
    /// last block is computed twice, which costs no more than alone).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn forward_group<const G: usize>(&self, x: &[f32], w: &[f32], y: &mut [f32]) {
        let positions = self.shape.positions();
        for pair in self.blocks.chunks(2) {
            let (b0, b1) = (pair[0], pair[pair.len() - 1]);
            let (mut a0, mut a1) = ([_mm512_setzero_ps(); G], [_mm512_setzero_ps(); G]);
            for (&at, wr) in self.offsets.iter().zip(w.chunks_exact(G)) {
                // SAFETY: `source` checked that every entry offset plus
                // every block offset plus sixteen lies inside `x`.
                let (x0, x1) = unsafe { (load(x, at + b0.x), load(x, at + b1.x)) };
                for k in 0..G {
                    let wk = _mm512_set1_ps(wr[k]);
                    a0[k] = _mm512_fmadd_ps(wk, x0, a0[k]);
                    a1[k] = _mm512_fmadd_ps(wk, x1, a1[k]);
                }
            }
            for k in 0..G {
                store(y, k * positions + b0.out, a0[k]);
                store(y, k * positions + b1.out, a1[k]);
            }
        }
    }

    /// Adds the weight gradient of `images` (pairs of one input image `x`
    /// and its output gradient `g`, `O` planes) onto `dw` (`O × C·KH·KW`,
    /// row-major). Per kernel entry and class of blocks, sixteen partial
    /// sums run over all the images; at the end each class's lanes are
    /// added in order, and the classes' totals in order. `scratch` holds at
    /// least [`Plan::gradient_scratch_len`] values.
    ///
    /// # Panics
    /// If a slice is too short.
    pub(super) fn weight_gradient(
        &self,
        images: &[(&[f32], &[f32])],
        o: usize,
        dw: &mut [f32],
        scratch: &mut [f32],
    ) {
        let (field, positions) = (self.shape.field(), self.shape.positions());
        assert!(
            dw.len() >= o * field,
            "direct convolution: gradient too short"
        );
        let source_len = self.shape.source_len();
        let (sources, partial) = scratch.split_at_mut(images.len() * source_len);
        // the values the kernels read, image by image
        let xs: Vec<&[f32]> = if source_len == 0 {
            images
                .iter()
                .map(|&(x, _)| self.source(x, &mut []))
                .collect()
        } else {
            let sources = sources.chunks_exact_mut(source_len);
            images
                .iter()
                .zip(sources)
                .map(|(&(x, _), s)| self.source(x, s))
                .collect()
        };
        let gs: Vec<&[f32]> = images.iter().map(|&(_, g)| g).collect();
        for g in &gs {
            assert!(
                g.len() >= o * positions,
                "direct convolution: gradient too short"
            );
        }
        // per (kernel, entry, class of blocks): sixteen partial sums, each
        // written once
        let partial = &mut partial[..o * field * self.classes.len() * LANES];
        let (partial, _) = partial.as_chunks_mut::<LANES>();
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Plan::new` checked that the CPU supports AVX-512.
        unsafe {
            weight_gradient_groups(&xs, &gs, &self.shape, o, &self.classes, partial)
        }
        for (r, per_class) in partial.chunks_exact(self.classes.len()).enumerate() {
            let total: f32 = per_class
                .iter()
                .map(|lanes| lanes.iter().sum::<f32>())
                .sum();
            dw[r] += total;
        }
    }
}

/// [`Plan::weight_gradient`]'s sums, for kernels in groups of up to
/// [`GRADIENT_GROUP`]. `partial` holds, per kernel and entry (as `dw`),
/// the sums of every class of blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn weight_gradient_groups(
    xs: &[&[f32]],
    gs: &[&[f32]],
    shape: &Shape,
    o: usize,
    classes: &[BlockClass],
    partial: &mut [[f32; LANES]],
) {
    let per_kernel = shape.field() * classes.len();
    let mut first = 0;
    while first < o {
        let size = (o - first).min(GRADIENT_GROUP);
        let partial = &mut partial[first * per_kernel..][..size * per_kernel];
        let g_at = first * shape.positions();
        match (size, shape.kw) {
            (1, 3) => weight_gradient_group::<1, 3>(xs, gs, g_at, shape, classes, partial),
            (2, 3) => weight_gradient_group::<2, 3>(xs, gs, g_at, shape, classes, partial),
            (3, 3) => weight_gradient_group::<3, 3>(xs, gs, g_at, shape, classes, partial),
            (_, 3) => weight_gradient_group::<4, 3>(xs, gs, g_at, shape, classes, partial),
            (1, _) => weight_gradient_group::<1, 5>(xs, gs, g_at, shape, classes, partial),
            (2, _) => weight_gradient_group::<2, 5>(xs, gs, g_at, shape, classes, partial),
            (3, _) => weight_gradient_group::<3, 5>(xs, gs, g_at, shape, classes, partial),
            (_, _) => weight_gradient_group::<4, 5>(xs, gs, g_at, shape, classes, partial),
        }
        first += size;
    }
}

/// The weight gradient sums of `G` kernels (whose output gradients start
/// at `g_at` in each image's) with rows of `KW` entries. For one kernel
/// row `(c, ky)` and one class of blocks, `KW·G` sums stay in registers
/// over every block of every image; for each block the kernels' output
/// gradients are loaded once and multiplied with the `KW` shifted inputs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn weight_gradient_group<const G: usize, const KW: usize>(
    xs: &[&[f32]],
    gs: &[&[f32]],
    g_at: usize,
    shape: &Shape,
    classes: &[BlockClass],
    partial: &mut [[f32; LANES]],
) {
    debug_assert_eq!(shape.kw, KW);
    let (field, positions, step) = (shape.field(), shape.positions(), shape.kx_step());
    let at = |k: usize, r: usize, class: usize| (k * field + r) * classes.len() + class;
    for c in 0..shape.c {
        for ky in 0..shape.kh {
            let (row, r0) = (shape.entry_offset(c, ky, 0), (c * shape.kh + ky) * KW);
            for (class, BlockClass { counted, blocks }) in classes.iter().enumerate() {
                let mut sums = [[_mm512_setzero_ps(); G]; KW];
                for (&x, &g) in xs.iter().zip(gs) {
                    for block in blocks {
                        // SAFETY: `g` holds at least `g_at + G` planes (the
                        // caller checked O planes) and a block's sixteen lanes
                        // lie inside its plane; `Plan::source` checked that
                        // every entry offset (`row + kx·step` is entry
                        // (c, ky, kx)'s) plus every block offset plus sixteen
                        // lies inside `x`.
                        unsafe {
                            let gv: [__m512; G] = std::array::from_fn(|k| {
                                load_masked(g, g_at + k * positions + block.out, *counted)
                            });
                            for (kx, sums) in sums.iter_mut().enumerate() {
                                let xv = load(x, row + kx * step + block.x);
                                for k in 0..G {
                                    sums[k] = _mm512_fmadd_ps(gv[k], xv, sums[k]);
                                }
                            }
                        }
                    }
                }
                for (kx, sums) in sums.iter().enumerate() {
                    for (k, &sum) in sums.iter().enumerate() {
                        store(&mut partial[at(k, r0 + kx, class)], 0, sum);
                    }
                }
            }
        }
    }
}

/// col2im for stride 1, no padding and input rows of at most sixteen
/// values (LeNet-BN's second convolution: rows of 12): sums every entry of
/// `cols` (one image's `C·KH·KW × OH·OW` matrix) into the pixel of `dx` it
/// came from, one input row at a time in a vector register, instead of
/// adding short runs into memory where the next run, shifted by one, has
/// to wait for the store before. Each pixel receives its terms in the same
/// order as in im2col's row order (kernel row, then kernel column),
/// starting from zero, so the result is the same bits as the plain loop's
/// on a `dx` of zeros. `dx`'s old values are neither read nor kept (the
/// backward pass hands over zeros; reading them back right behind the
/// store of the row before stalled the loop). The same row of up to eight
/// channels is summed at once: each sum waits for the addition before it,
/// so independent sums side by side keep the adder busy. Returns `false`,
/// without touching `dx`, where it does not apply.
///
/// # Panics
/// If `cols` or `dx` is too short.
pub(super) fn col2im_narrow(cols: &[f32], shape: &Shape, dx: &mut [f32]) -> bool {
    if !(has_avx512() && shape.is_consistent() && shape.w <= LANES) {
        return false;
    }
    assert!(
        cols.len() >= shape.field() * shape.positions() && dx.len() >= shape.image_len(),
        "col2im: slices too short for {shape:?}"
    );
    #[cfg(target_arch = "x86_64")]
    {
        let mut first = 0;
        while first < shape.c {
            let size = (shape.c - first).min(MAX_GROUP);
            // SAFETY: `has_avx512` found the CPU to support AVX-512.
            unsafe {
                match size {
                    1 => col2im_rows::<1>(cols, shape, dx, first),
                    2 => col2im_rows::<2>(cols, shape, dx, first),
                    3 => col2im_rows::<3>(cols, shape, dx, first),
                    4 => col2im_rows::<4>(cols, shape, dx, first),
                    5 => col2im_rows::<5>(cols, shape, dx, first),
                    6 => col2im_rows::<6>(cols, shape, dx, first),
                    7 => col2im_rows::<7>(cols, shape, dx, first),
                    _ => col2im_rows::<8>(cols, shape, dx, first),
                }
            }
            first += size;
        }
    }
    true
}

/// [`col2im_narrow`]'s loop for the `G` channels from `first` on.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn col2im_rows<const G: usize>(cols: &[f32], shape: &Shape, dx: &mut [f32], first: usize) {
    let positions = shape.positions();
    let (row_mask, run_mask) = (first_lanes(shape.w), first_lanes(shape.ow));
    let entries = shape.kh * shape.kw; // rows of `cols` per channel
    // for kernel column kx: lane l takes the run's value l − kx
    let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let mut shifts = [iota; LANES];
    for (kx, shift) in shifts.iter_mut().enumerate().take(shape.kw) {
        *shift = _mm512_sub_epi32(iota, _mm512_set1_epi32(kx as i32));
    }
    for iy in 0..shape.h {
        let mut acc = [_mm512_setzero_ps(); G];
        // kernel rows ky whose output row oy = iy − ky exists
        for ky in iy.saturating_sub(shape.oh - 1)..=iy.min(shape.kh - 1) {
            let oy = iy - ky;
            for (kx, &shift) in shifts[..shape.kw].iter().enumerate() {
                let r = (first * shape.kh + ky) * shape.kw + kx;
                let at = r * positions + oy * shape.ow;
                for (k, acc) in acc.iter_mut().enumerate() {
                    let run = &cols[at + k * entries * positions..][..shape.ow];
                    // SAFETY: the mask enables exactly the run's `ow` lanes,
                    // and masked-off lanes are not accessed.
                    let v = unsafe { _mm512_maskz_loadu_ps(run_mask, run.as_ptr()) };
                    // the run's values moved to lanes kx .. kx + ow (a load
                    // from kx values before the run would often straddle two
                    // cache lines, which measured slower)
                    let v = _mm512_maskz_permutexvar_ps(run_mask << kx, shift, v);
                    *acc = _mm512_add_ps(*acc, v);
                }
            }
        }
        for (k, acc) in acc.into_iter().enumerate() {
            let row = &mut dx[((first + k) * shape.h + iy) * shape.w..][..shape.w];
            // SAFETY: the mask enables exactly the row's `w` lanes, and
            // masked-off lanes are not accessed.
            unsafe { _mm512_mask_storeu_ps(row.as_mut_ptr(), row_mask, acc) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_pairs_in_registers_match_the_slice_copies() {
        // LeNet-BN's second convolution (kernel rows of 5) and one with
        // kernel rows of 3
        if !has_avx512() {
            eprintln!("no AVX-512 here: the rearrangement in registers is not used");
            return;
        }
        for (c, h, kw) in [(6, 12, 5), (2, 10, 3)] {
            let shape = Shape {
                c,
                h,
                w: 8 + kw - 1,
                kh: kw,
                kw,
                oh: h - kw + 1,
                ow: 8,
            };
            assert!(shape.row_pairs());
            let x: Vec<f32> = (0..shape.image_len())
                .map(|i| i as f32 * 0.5 - 3.0)
                .collect();
            let mut plain = vec![f32::NAN; shape.source_len()];
            shape.fill_source_plain(&x, &mut plain);
            let mut got = vec![f32::NAN; shape.source_len()];
            shape.fill_source(&x, &mut got);
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&plain), "{shape:?}");
        }
    }
}
