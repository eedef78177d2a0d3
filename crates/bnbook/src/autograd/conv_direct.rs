//! Direct convolution for layers with few kernel entries per output, such
//! as LeNet's first convolution (one input channel, six `5 × 5` kernels).
//!
//! *Book: chapter "Autograd in a few hundred lines", section "Why it is fast".*
//!
//! Through im2col, such a layer copies every input pixel 25 times and then
//! runs a matrix product whose inner size is only 25. Here each output row
//! is computed in place: sixteen neighbouring outputs of every kernel in a
//! group (up to eight kernels) are kept in vector registers, and each of the
//! `C·KH·KW` kernel entries adds `w · x` into them with a fused
//! multiply-add, reading the sixteen input values straight from the image.
//! The sums run over the kernel entries in the same order as the matrix
//! product's (`(c, ky, kx)`, starting from zero, one fused multiply-add
//! each), so the outputs are the same bits as im2col + GEMM's (tested
//! below).
//!
//! The weight gradient `∂L/∂W[o, c, ky, kx] = Σ g[o, oy, ox] · x[c, oy + ky, ox + kx]`
//! is taken the same way, sixteen output columns at a time, into partial
//! sums per kernel entry that are added up at the end of a group of images.
//!
//! A row of 16 to 32 outputs (LeNet's 24 and 28) is covered by two blocks of
//! sixteen: one from its start, one ending at its end. They overlap unless
//! the row is 32 long; the forward pass simply writes the shared outputs
//! twice (with the same values), the weight gradient leaves the second
//! block's shared lanes out.
//!
//! Both are written with AVX-512 intrinsics: written as plain loops over
//! arrays, the compiler assembled the overlapping sixteen-value loads from
//! scalar pieces and the kernels ran several times slower than im2col +
//! GEMM. On CPUs without AVX-512 (and off x86-64) the convolution goes
//! through im2col + GEMM.

// Elsewhere `applies` is false, and the kernels are compiled out.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_variables))]

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Values per vector: one AVX-512 register of `f32` (two AVX2 registers).
const LANES: usize = 16;

/// Kernels whose outputs are kept in registers at once (two blocks of
/// sixteen for each: sixteen of the 32 vector registers).
const MAX_GROUP: usize = 8;

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

    /// Where the second block of a row starts (the first starts at 0).
    fn second_block(&self) -> usize {
        self.ow - LANES
    }

    /// For every kernel entry `(c, ky, kx)`, in order, where in the image
    /// the input for output `(0, 0)` lies; output `(oy, ox)` reads that
    /// entry's input `oy · W + ox` further on.
    fn entry_offsets(&self) -> Vec<usize> {
        let mut offsets = Vec::with_capacity(self.field());
        for c in 0..self.c {
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    offsets.push((c * self.h + ky) * self.w + kx);
                }
            }
        }
        offsets
    }
}

/// Whether the direct convolution applies: the CPU has AVX-512, the sizes
/// are consistent, output rows hold 16 to 32 values, and the kernels are
/// small (rows of at most 5, at most 32 entries; for larger ones im2col +
/// GEMM does less copying per multiply-add).
pub(super) fn applies(shape: &Shape) -> bool {
    has_avx512()
        && shape.is_consistent()
        && (LANES..=2 * LANES).contains(&shape.ow)
        && shape.kw <= 5
        && shape.field() <= 32
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

/// The convolution of one image `x` (`C × H × W`) with `weights` (`O`
/// kernels of `C·KH·KW` entries, row-major) into `y` (`O` planes of
/// `OH × OW`). Every value of `y` is written.
///
/// # Panics
/// Unless [`applies`] holds, or if a slice is too short.
pub(super) fn forward_image(x: &[f32], weights: &[f32], shape: &Shape, y: &mut [f32]) {
    assert!(
        applies(shape),
        "direct convolution of {shape:?}: check `applies` first"
    );
    assert!(
        x.len() >= shape.image_len(),
        "direct convolution: image too short"
    );
    let o = weights.len() / shape.field();
    assert!(
        y.len() >= o * shape.positions(),
        "direct convolution: output too short"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `applies` found the CPU to support AVX-512.
    unsafe {
        forward_groups(x, weights, shape, y)
    }
}

/// [`forward_image`] for kernels in groups of up to [`MAX_GROUP`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn forward_groups(x: &[f32], weights: &[f32], shape: &Shape, y: &mut [f32]) {
    let (field, positions) = (shape.field(), shape.positions());
    let o = weights.len() / field;
    let offsets = shape.entry_offsets();
    let mut first = 0;
    while first < o {
        let size = (o - first).min(MAX_GROUP);
        let w = &weights[first * field..][..size * field];
        let y = &mut y[first * positions..][..size * positions];
        match size {
            1 => forward_group::<1>(x, w, shape, &offsets, y),
            2 => forward_group::<2>(x, w, shape, &offsets, y),
            3 => forward_group::<3>(x, w, shape, &offsets, y),
            4 => forward_group::<4>(x, w, shape, &offsets, y),
            5 => forward_group::<5>(x, w, shape, &offsets, y),
            6 => forward_group::<6>(x, w, shape, &offsets, y),
            7 => forward_group::<7>(x, w, shape, &offsets, y),
            _ => forward_group::<8>(x, w, shape, &offsets, y),
        }
        first += size;
    }
}

/// `G` kernels' output planes, both blocks of a row at once (`2·G`
/// independent chains of fused multiply-adds keep both of the processor's
/// FMA units busy).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn forward_group<const G: usize>(
    x: &[f32],
    w: &[f32],
    shape: &Shape,
    offsets: &[usize],
    y: &mut [f32],
) {
    let (field, positions) = (shape.field(), shape.positions());
    // the G weights of each kernel entry side by side
    let wt: Vec<[f32; G]> = (0..field)
        .map(|r| std::array::from_fn(|k| w[k * field + r]))
        .collect();
    let s1 = shape.second_block();
    for oy in 0..shape.oh {
        let (mut a0, mut a1) = ([_mm512_setzero_ps(); G], [_mm512_setzero_ps(); G]);
        for (&at, wr) in offsets.iter().zip(&wt) {
            let at = at + oy * shape.w;
            // SAFETY: with `applies`' consistent sizes, the last value read,
            // `at + s1 + 15 = (c·H + ky + oy)·W + kx + OW − 1`, lies in
            // channel c's rows (ky + oy < H, kx + OW ≤ W), inside the image
            // (`forward_image` checked its length).
            let (x0, x1) = unsafe { (load(x, at), load(x, at + s1)) };
            for k in 0..G {
                let wk = _mm512_set1_ps(wr[k]);
                a0[k] = _mm512_fmadd_ps(wk, x0, a0[k]);
                a1[k] = _mm512_fmadd_ps(wk, x1, a1[k]);
            }
        }
        let row = oy * shape.ow;
        for k in 0..G {
            store(y, k * positions + row, a0[k]);
            store(y, k * positions + row + s1, a1[k]);
        }
    }
}

/// Adds the weight gradient of `images` (pairs of one input image `x` and
/// its output gradient `g`, `O` planes) onto `dw` (`O × C·KH·KW`,
/// row-major). Per kernel entry, sixteen partial sums for each block of
/// a row run over all the images; at the end the first block's lanes are
/// added in order, then the second's, and the two totals.
///
/// # Panics
/// Unless [`applies`] holds, or if a slice is too short.
pub(super) fn weight_gradient<'a, 'b>(
    images: impl Iterator<Item = (&'a [f32], &'b [f32])> + Clone,
    shape: &Shape,
    o: usize,
    dw: &mut [f32],
) {
    assert!(
        applies(shape),
        "direct convolution of {shape:?}: check `applies` first"
    );
    assert!(
        dw.len() >= o * shape.field(),
        "direct convolution: gradient too short"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `applies` found the CPU to support AVX-512.
    unsafe {
        weight_gradient_groups(images, shape, o, dw)
    }
}

/// Kernels whose weight gradients are summed in registers at once: for
/// each, one sixteen-wide sum per kernel column (five for LeNet), plus the
/// kernels' gradient values, stay within the 32 vector registers.
const GRADIENT_GROUP: usize = 3;

/// [`weight_gradient`] for kernels in groups of up to [`GRADIENT_GROUP`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn weight_gradient_groups<'a, 'b>(
    images: impl Iterator<Item = (&'a [f32], &'b [f32])> + Clone,
    shape: &Shape,
    o: usize,
    dw: &mut [f32],
) {
    let field = shape.field();
    let mut first = 0;
    while first < o {
        let size = (o - first).min(GRADIENT_GROUP);
        let dw = &mut dw[first * field..][..size * field];
        let images = images.clone();
        match (size, shape.kw) {
            (1, 1) => weight_gradient_group::<1, 1>(images, shape, first, dw),
            (1, 2) => weight_gradient_group::<1, 2>(images, shape, first, dw),
            (1, 3) => weight_gradient_group::<1, 3>(images, shape, first, dw),
            (1, 4) => weight_gradient_group::<1, 4>(images, shape, first, dw),
            (1, _) => weight_gradient_group::<1, 5>(images, shape, first, dw),
            (2, 1) => weight_gradient_group::<2, 1>(images, shape, first, dw),
            (2, 2) => weight_gradient_group::<2, 2>(images, shape, first, dw),
            (2, 3) => weight_gradient_group::<2, 3>(images, shape, first, dw),
            (2, 4) => weight_gradient_group::<2, 4>(images, shape, first, dw),
            (2, _) => weight_gradient_group::<2, 5>(images, shape, first, dw),
            (_, 1) => weight_gradient_group::<3, 1>(images, shape, first, dw),
            (_, 2) => weight_gradient_group::<3, 2>(images, shape, first, dw),
            (_, 3) => weight_gradient_group::<3, 3>(images, shape, first, dw),
            (_, 4) => weight_gradient_group::<3, 4>(images, shape, first, dw),
            (_, _) => weight_gradient_group::<3, 5>(images, shape, first, dw),
        }
        first += size;
    }
}

/// The weight gradient of kernels `first .. first + G`, whose rows have
/// `KW` entries. For one kernel row `(c, ky)` and one block of an output
/// row, the `G` kernels' output gradients are loaded once and multiplied
/// with the `KW` shifted input rows: `KW·G` sums in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn weight_gradient_group<'a, 'b, const G: usize, const KW: usize>(
    images: impl Iterator<Item = (&'a [f32], &'b [f32])>,
    shape: &Shape,
    first: usize,
    dw: &mut [f32],
) {
    debug_assert_eq!(shape.kw, KW);
    let (field, positions) = (shape.field(), shape.positions());
    let s1 = shape.second_block();
    // the second block's lanes the first already covers count only once
    let overlap = (LANES - s1) as u32; // 16 when the row is 16 long: the blocks coincide
    let masks: [__mmask16; 2] = [u16::MAX, u16::MAX.checked_shl(overlap).unwrap_or(0)];
    let kernel_rows = shape.c * shape.kh;
    // per (block, kernel row (c, ky), kx, kernel): sixteen partial sums
    let mut partial = vec![[[[0.0_f32; LANES]; G]; KW]; 2 * kernel_rows];
    for (x, g) in images {
        assert!(
            x.len() >= shape.image_len(),
            "direct convolution: image too short"
        );
        let g = &g[first * positions..][..G * positions];
        for (block, (start, mask)) in [(0, masks[0]), (s1, masks[1])].into_iter().enumerate() {
            for row in 0..kernel_rows {
                let (c, ky) = (row / shape.kh, row % shape.kh);
                let acc = &mut partial[block * kernel_rows + row];
                // SAFETY: `acc[kx][k]` holds sixteen values.
                let mut sums: [[__m512; G]; KW] = std::array::from_fn(|kx| {
                    std::array::from_fn(|k| unsafe { load(&acc[kx][k], 0) })
                });
                for oy in 0..shape.oh {
                    let at = (c * shape.h + ky + oy) * shape.w + start;
                    // SAFETY: `g` holds G planes of OH·OW and the last value
                    // read is `k·OH·OW + oy·OW + start + 15 < (k + 1)·OH·OW`;
                    // the last value of `x` read is
                    // `(c·H + ky + oy)·W + start + kx + 15 ≤ (c·H + ky + oy)·W + W − 1`
                    // (kx < KW, start + 16 ≤ OW = W − KW + 1), inside the
                    // image, whose length was checked above.
                    unsafe {
                        let gs: [__m512; G] = std::array::from_fn(|k| {
                            load_masked(g, k * positions + oy * shape.ow + start, mask)
                        });
                        for (kx, sums) in sums.iter_mut().enumerate() {
                            let xs = load(x, at + kx);
                            for k in 0..G {
                                sums[k] = _mm512_fmadd_ps(gs[k], xs, sums[k]);
                            }
                        }
                    }
                }
                for (kx, sums) in sums.iter().enumerate() {
                    for k in 0..G {
                        store(&mut acc[kx][k], 0, sums[k]);
                    }
                }
            }
        }
    }
    // entry r = (c, ky, kx) of kernel k: the first block's lanes in order,
    // then the second's, then the two totals
    for row in 0..kernel_rows {
        for kx in 0..KW {
            for k in 0..G {
                let first_block: f32 = partial[row][kx][k].iter().sum();
                let second_block: f32 = partial[kernel_rows + row][kx][k].iter().sum();
                dw[k * field + row * KW + kx] += first_block + second_block;
            }
        }
    }
}
