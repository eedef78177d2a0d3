//! Convolution and pooling over `(N, C, H, W)` images.
//!
//! Convolution is done the way fast libraries do it on a CPU: **im2col**
//! copies every receptive field of an image into one column of a matrix,
//! after which the image's whole convolution is a single matrix product
//! (GEMM) with the kernels.
//! The backward pass is two more GEMMs and the reverse copy, **col2im**,
//! which *adds* the pieces back into image positions (fields overlap, so a
//! pixel collects gradient from every window that saw it).
//!
//! On CPUs with AVX-512, LeNet's convolutions (small kernels, output rows
//! of 8 or 16 to 32 values) skip im2col for the forward pass and the
//! weight gradient: [`conv_direct`] computes them
//! directly, sixteen outputs at a time. The input gradient keeps GEMM and
//! col2im; for image rows of at most 16 pixels, col2im adds each row in a
//! vector register (`conv_direct::col2im_narrow`, same bits).

use super::conv_direct;
use super::gemm::{Mat, gemm};
use super::kernels::multiversioned;
use super::{Tensor, kernels, with_wide_vectors};
use crate::parallel::*;
use ndarray::{ArrayD, IxDyn};

/// Sizes of one convolution or pooling window sweep.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    padding: usize,
    oh: usize,
    ow: usize,
}

impl Geometry {
    fn new(
        op: &str,
        x_shape: &[usize],
        kh: usize,
        kw: usize,
        stride: usize,
        padding: usize,
    ) -> Self {
        assert_eq!(
            x_shape.len(),
            4,
            "{op}: input must be (N, C, H, W), got shape {x_shape:?}"
        );
        assert!(
            kh > 0 && kw > 0 && stride > 0,
            "{op}: kernel size and stride must be positive"
        );
        let (n, c, h, w) = (x_shape[0], x_shape[1], x_shape[2], x_shape[3]);
        assert!(
            h + 2 * padding >= kh && w + 2 * padding >= kw,
            "{op}: a {kh}x{kw} window does not fit a {h}x{w} input with padding {padding}"
        );
        let oh = (h + 2 * padding - kh) / stride + 1;
        let ow = (w + 2 * padding - kw) / stride + 1;
        Geometry {
            n,
            c,
            h,
            w,
            kh,
            kw,
            stride,
            padding,
            oh,
            ow,
        }
    }

    /// Number of kernel entries `(c, ky, kx)`: the rows of an image's im2col matrix.
    fn field(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Number of output positions `(oy, ox)` of one image: the columns of
    /// its im2col matrix.
    fn positions(&self) -> usize {
        self.oh * self.ow
    }

    /// Walks one image's im2col matrix one contiguous run at a time. For
    /// every kernel entry `(c, ky, kx)` (matrix row `r`) and output row `oy`
    /// whose input row lies inside the image, calls `f(r, start, x_start, len)`:
    /// entries `start .. start + len` of row `r` (output columns `ox`) come
    /// from input pixels `x_start + i · stride` of the image. Positions on
    /// the zero padding are skipped.
    fn for_each_run(&self, mut f: impl FnMut(usize, usize, usize, usize)) {
        let g = *self;
        for c in 0..g.c {
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let r = (c * g.kh + ky) * g.kw + kx;
                    // output columns whose input column ox·stride + kx − padding is inside
                    let lo = g.padding.saturating_sub(kx).div_ceil(g.stride);
                    let hi = if g.w + g.padding > kx {
                        ((g.w + g.padding - kx - 1) / g.stride + 1).min(g.ow)
                    } else {
                        0 // this kernel column only ever sees right-hand padding
                    };
                    if lo >= hi {
                        continue;
                    }
                    for oy in 0..g.oh {
                        // wrapping_sub turns a row above the image into a huge index
                        let iy = (oy * g.stride + ky).wrapping_sub(g.padding);
                        if iy >= g.h {
                            continue;
                        }
                        let start = oy * g.ow + lo;
                        let x_start = ((c * g.h + iy) * g.w + lo * g.stride + kx) - g.padding;
                        f(r, start, x_start, hi - lo);
                    }
                }
            }
        }
    }

    /// The geometry of the input framed by `padding` zeros on every side,
    /// with no padding: it has the same im2col matrix.
    fn framed(&self) -> Geometry {
        Geometry {
            h: self.h + 2 * self.padding,
            w: self.w + 2 * self.padding,
            padding: 0,
            ..*self
        }
    }

    /// Scratch values [`im2col`] needs for a framed image (none when it
    /// needs no frame).
    fn framed_len(&self) -> usize {
        if self.stride == 1 && self.padding > 0 {
            self.framed().image_len()
        } else {
            0
        }
    }

    /// Values in one input image.
    fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Copies image `x` into `framed` ([`Geometry::framed`]'s image: `x`
    /// surrounded by `padding` zeros).
    #[inline(always)]
    fn frame(&self, x: &[f32], framed: &mut [f32]) {
        let (p, framed_g) = (self.padding, self.framed());
        let framed = &mut framed[..framed_g.image_len()];
        framed.fill(0.0);
        for c in 0..self.c {
            for y in 0..self.h {
                let src = &x[(c * self.h + y) * self.w..][..self.w];
                let at = (c * framed_g.h + y + p) * framed_g.w + p;
                framed[at..at + self.w].copy_from_slice(src);
            }
        }
    }

    /// The sizes of the framed image's convolution, as [`conv_direct`]
    /// takes them (meaningful for stride 1).
    fn shape(&self) -> conv_direct::Shape {
        let f = self.framed();
        conv_direct::Shape {
            c: f.c,
            h: f.h,
            w: f.w,
            kh: f.kh,
            kw: f.kw,
            oh: f.oh,
            ow: f.ow,
        }
    }

    /// The plan of [`conv_direct`], when it applies to this convolution
    /// (stride 1; with padding, it convolves the framed image).
    fn direct(&self) -> Option<conv_direct::Plan> {
        (self.stride == 1)
            .then(|| conv_direct::Plan::new(self.shape()))
            .flatten()
    }
}

multiversioned! {
    /// im2col of one image into `cols`, a `(C·KH·KW, OH·OW)` row-major matrix:
    /// column `(oy, ox)` holds the receptive field of that output position.
    /// Every entry is written (zero where the window lies on the padding), so
    /// `cols` may hold anything before, such as the previous image's columns.
    /// `framed` is scratch space of [`Geometry::framed_len`] values.
    fn im2col(x: &[f32], g: &Geometry, cols: &mut [f32], framed: &mut [f32]) {
        if g.stride == 1 && g.padding == 0 {
            im2col_unpadded(x, g, cols);
            return;
        }
        if g.stride == 1 {
            // d2l's plain LeNet's first convolution (padding 2): the im2col matrix of an
            // image with padding is that of the image framed by `padding`
            // zeros, without padding. Framing costs one small copy and saves
            // the clipping of every run at the edges and a pass zeroing the
            // matrix.
            let framed_g = g.framed();
            let framed = &mut framed[..framed_g.image_len()];
            g.frame(x, framed);
            im2col_unpadded(framed, &framed_g, cols);
            return;
        }
        let positions = g.positions();
        if g.padding > 0 {
            cols[..g.field() * positions].fill(0.0);
        }
        g.for_each_run(|r, start, x_start, len| {
            let dst = &mut cols[r * positions + start..][..len];
            for (i, d) in dst.iter_mut().enumerate() {
                *d = x[x_start + i * g.stride];
            }
        });
    }
}

/// im2col with stride 1 and no padding, the case with the fewest index
/// calculations: row `(c, ky, kx)` of the matrix is, output row by output
/// row, the input rows `ky, ky + 1, …` of channel `c` from column `kx` on.
#[inline(always)]
fn im2col_unpadded(x: &[f32], g: &Geometry, cols: &mut [f32]) {
    let positions = g.positions();
    let mut rows = cols[..g.field() * positions].chunks_exact_mut(positions);
    for c in 0..g.c {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = rows.next().expect("one row per kernel entry");
                let from = (c * g.h + ky) * g.w + kx;
                for oy in 0..g.oh {
                    copy_short(&mut row[oy * g.ow..][..g.ow], &x[from + oy * g.w..][..g.ow]);
                }
            }
        }
    }
}

/// `dst.copy_from_slice(src)` for im2col's short runs (one output row: 24
/// and 8 values in LeNet-BN, 28 and 10 in d2l's LeNet), sixteen (or, for
/// runs shorter than 16, eight) values at a time. A remainder of exactly
/// eight is copied as eight (LeNet-BN's 24 = 16 + 8, measured a little
/// faster than two overlapping sixteens); any other remainder as the last
/// sixteen or eight values, ending at the run's end and overlapping the
/// ones before (those values are simply written twice).
/// `copy_from_slice` would call `memcpy`, whose set-up costs more than
/// copying so few values (it was the largest single item of a
/// convolution's profile).
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let len = dst.len();
    assert_eq!(len, src.len(), "copy_short: lengths differ");
    if len < 8 {
        dst.copy_from_slice(src);
        return;
    }
    if len >= 16 {
        // sixteen at a time: one 512-bit vector where the CPU has them
        let sixteen =
            |at: usize| -> [f32; 16] { src[at..at + 16].try_into().expect("sixteen values") };
        let mut at = 0;
        while at + 16 <= len {
            dst[at..at + 16].copy_from_slice(&sixteen(at));
            at += 16;
        }
        if at + 8 == len {
            let eight: [f32; 8] = src[at..len].try_into().expect("eight values");
            dst[at..len].copy_from_slice(&eight);
        } else if at < len {
            dst[len - 16..].copy_from_slice(&sixteen(len - 16));
        }
        return;
    }
    let eight = |at: usize| -> [f32; 8] { src[at..at + 8].try_into().expect("eight values") };
    dst[..8].copy_from_slice(&eight(0));
    if len > 8 {
        dst[len - 8..].copy_from_slice(&eight(len - 8));
    }
}

multiversioned! {
    /// col2im: the adjoint of im2col — adds every matrix entry back onto the
    /// pixel of `dx` (one image) it was copied from; overlapping windows add up.
    /// The caller promises that `dx` holds zeros, so that a path that writes
    /// its sums instead of adding them onto `dx` gives the same values.
    fn col2im(cols: &[f32], g: &Geometry, dx: &mut [f32]) {
        debug_assert!(dx.iter().all(|&v| v == 0.0), "col2im adds onto zeros");
        let positions = g.positions();
        if g.stride == 1 && g.padding == 0 {
            // rows of at most 16 pixels: summed in vector registers from
            // zero and written, same bits
            if conv_direct::col2im_narrow(cols, &g.shape(), dx) {
                return;
            }
            // the same walk as im2col's fast path, adding instead of copying
            // (written out again rather than shared through a closure: a
            // closure is not reliably inlined into the wide versions)
            let mut rows = cols[..g.field() * positions].chunks_exact(positions);
            for c in 0..g.c {
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let row = rows.next().expect("one row per kernel entry");
                        let from = (c * g.h + ky) * g.w + kx;
                        for (src, dst) in row.chunks_exact(g.ow).zip(dx[from..].chunks_mut(g.w)) {
                            for (d, v) in dst[..g.ow].iter_mut().zip(src) {
                                *d += v;
                            }
                        }
                    }
                }
            }
            return;
        }
        g.for_each_run(|r, start, x_start, len| {
            let src = &cols[r * positions + start..][..len];
            if g.stride == 1 {
                for (d, v) in dx[x_start..x_start + len].iter_mut().zip(src) {
                    *d += v;
                }
            } else {
                for (i, v) in src.iter().enumerate() {
                    dx[x_start + i * g.stride] += v;
                }
            }
        });
    }
}

thread_local! {
    /// Each thread's scratch space for im2col matrices, kept from one call
    /// to the next: a training step would otherwise allocate (and zero) a
    /// fresh buffer for every piece of work.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch space, at least `len` values long
/// (contents: whatever the last user left).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        if scratch.len() < len {
            scratch.resize(len, 0.0);
        }
        f(&mut scratch[..len])
    })
}

/// Runs `f(cols, framed)` on this thread's scratch space: room for one
/// image's im2col matrix and for the framed image [`im2col`] may need.
fn with_im2col_scratch<R>(g: &Geometry, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    let cols_len = g.field() * g.positions();
    with_scratch(cols_len + g.framed_len(), |scratch| {
        let (cols, framed) = scratch.split_at_mut(cols_len);
        f(cols, framed)
    })
}

/// Images per work item of the weight-gradient sum. Fixed (not derived
/// from the thread count), so the floating-point sum is always taken in
/// the same order and training is bit-for-bit reproducible.
const IMAGES_PER_CHUNK: usize = 16;

impl Tensor {
    /// 2-D convolution (strictly: cross-correlation, as in every DL library)
    /// of `self`, shaped `(N, C, H, W)`, with `weight` shaped
    /// `(O, C, KH, KW)` and an optional `bias` of shape `(O,)`. The output
    /// is `(N, O, OH, OW)` with `OH = (H + 2·padding − KH) / stride + 1`.
    ///
    /// Per image: im2col gives a `(C·KH·KW, OH·OW)` matrix, and one GEMM with
    /// the `(O, C·KH·KW)` kernel matrix gives the `(O, OH·OW)` output, which
    /// is already that image's slice of the `(N, O, OH, OW)` result. Images
    /// are spread over threads.
    ///
    /// # Panics
    /// On mismatched shapes; the [`Conv2d`](crate::nn::Conv2d) layer checks
    /// its input first and returns an error instead.
    pub fn conv2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
    ) -> Tensor {
        let w_shape = weight.shape();
        assert_eq!(
            w_shape.len(),
            4,
            "conv2d: weight must be (O, C, KH, KW), got {w_shape:?}"
        );
        let (o, kh, kw) = (w_shape[0], w_shape[2], w_shape[3]);
        let g = Geometry::new("conv2d", &self.shape(), kh, kw, stride, padding);
        assert_eq!(
            w_shape[1], g.c,
            "conv2d: input has {} channels, weight expects {}",
            g.c, w_shape[1]
        );
        if let Some(b) = bias {
            assert_eq!(b.shape(), [o], "conv2d: bias must have shape [{o}]");
        }
        let (field, positions) = (g.field(), g.positions());

        let y = {
            let x = self.value();
            let x = x.as_standard_layout();
            let x = x.as_slice().expect("standard layout");
            let w = weight.value();
            let w = w.as_standard_layout();
            let w_mat = Mat::row_major(w.as_slice().expect("standard layout"), o, field);
            let b: Option<Vec<f32>> = bias.map(|b| b.value().iter().copied().collect());
            let w = w.as_slice().expect("standard layout");
            let direct = g.direct();
            let w_direct = direct.as_ref().map(|plan| plan.entry_major(w));
            kernels::build_from_zeros(g.n * o * positions, o * positions, |i, y_i| {
                let x_i = &x[i * g.image_len()..][..g.image_len()];
                match (&direct, &w_direct) {
                    (Some(plan), Some(w)) => {
                        with_scratch(g.framed_len() + plan.forward_scratch_len(), |scratch| {
                            let (framed, source) = scratch.split_at_mut(g.framed_len());
                            let x_i = if g.padding > 0 {
                                g.frame(x_i, framed);
                                &*framed
                            } else {
                                x_i
                            };
                            plan.forward_image(x_i, w, y_i, source);
                        })
                    }
                    _ => with_im2col_scratch(&g, |cols, framed| {
                        im2col(x_i, &g, cols, framed);
                        let cols = Mat::row_major(cols, field, positions);
                        gemm(y_i, w_mat, cols, false); // Y_i = W · cols_i
                    }),
                }
                if let Some(b) = &b {
                    for (row, &b) in y_i.chunks_exact_mut(positions).zip(b) {
                        row.iter_mut().for_each(|v| *v += b);
                    }
                }
            })
        };
        let y = ArrayD::from_shape_vec(IxDyn(&[g.n, o, g.oh, g.ow]), y).expect("sizes");

        let mut parents = vec![self, weight];
        parents.extend(bias);
        Tensor::from_op("conv2d", y, &parents, move |ctx| {
            let x = ctx.input(0).as_standard_layout();
            let x = x.as_slice().expect("standard layout");
            let grad = ctx.grad.as_standard_layout();
            let grad = grad.as_slice().expect("standard layout");
            let w = ctx.input(1).as_standard_layout();
            let w_mat = Mat::row_major(w.as_slice().expect("standard layout"), o, field);
            let g_image = |i: usize| Mat::row_major(&grad[i * o * positions..], o, positions);
            // Y_i = W·cols_i:  ∂L/∂cols_i = Wᵀ·G_i,  ∂L/∂W = Σ_i G_i·cols_iᵀ,  ∂L/∂b = Σ rows of G_i
            let dx = ctx.needs(0).then(|| {
                let dx =
                    kernels::build_from_zeros(g.n * g.image_len(), g.image_len(), |i, dx_i| {
                        with_scratch(field * positions, |dcols| {
                            gemm(dcols, w_mat.t(), g_image(i), false);
                            col2im(dcols, &g, dx_i);
                        })
                    });
                ArrayD::from_shape_vec(IxDyn(&[g.n, g.c, g.h, g.w]), dx).expect("sizes")
            });
            let dw_direct = |plan: conv_direct::Plan| {
                // Partial sums over fixed chunks of images, added in chunk
                // order, as below, but taken straight from the images.
                let chunks: Vec<Vec<f32>> = (0..g.n.div_ceil(IMAGES_PER_CHUNK))
                    .into_par_iter()
                    .map(|chunk| {
                        let mut dw = vec![0.0_f32; o * field];
                        let images =
                            chunk * IMAGES_PER_CHUNK..((chunk + 1) * IMAGES_PER_CHUNK).min(g.n);
                        let grad_of = |i: usize| &grad[i * o * positions..][..o * positions];
                        let image = |i: usize| &x[i * g.image_len()..][..g.image_len()];
                        // framed copies of the chunk's images (none without padding)
                        let framed_len = g.framed_len();
                        let framed_all = framed_len * images.len();
                        let scratch_len = framed_all + plan.gradient_scratch_len(images.len(), o);
                        with_scratch(scratch_len, |scratch| {
                            let (framed, scratch) = scratch.split_at_mut(framed_all);
                            let pairs: Vec<(&[f32], &[f32])> = if g.padding == 0 {
                                images.map(|i| (image(i), grad_of(i))).collect()
                            } else {
                                let chunks = framed.chunks_exact_mut(framed_len);
                                for (i, framed) in images.clone().zip(chunks) {
                                    g.frame(image(i), framed);
                                }
                                let framed = framed.chunks_exact(framed_len);
                                framed.zip(images.map(grad_of)).collect()
                            };
                            plan.weight_gradient(&pairs, o, &mut dw, scratch);
                        });
                        dw
                    })
                    .collect();
                let mut dw = vec![0.0_f32; o * field];
                for part in &chunks {
                    dw.iter_mut().zip(part).for_each(|(d, p)| *d += p);
                }
                ArrayD::from_shape_vec(IxDyn(&[o, g.c, g.kh, g.kw]), dw).expect("same size")
            };
            let dw = ctx.needs(1).then(|| {
                if let Some(plan) = g.direct() {
                    return dw_direct(plan);
                }
                // Partial sums over fixed chunks of images, added in chunk
                // order. Each chunk sums (∂L/∂W)ᵀ = Σ cols_i·G_iᵀ, the product
                // shape the GEMM runs fastest on (measured), and the total is
                // transposed back once at the end.
                let chunks: Vec<Vec<f32>> = (0..g.n.div_ceil(IMAGES_PER_CHUNK))
                    .into_par_iter()
                    .map(|chunk| {
                        let mut dw_t = vec![0.0_f32; field * o];
                        let images =
                            chunk * IMAGES_PER_CHUNK..((chunk + 1) * IMAGES_PER_CHUNK).min(g.n);
                        with_wide_vectors(|| {
                            with_im2col_scratch(&g, |cols, framed| {
                                for i in images {
                                    let x_i = &x[i * g.image_len()..][..g.image_len()];
                                    im2col(x_i, &g, cols, framed);
                                    let cols = Mat::row_major(cols, field, positions);
                                    gemm(&mut dw_t, cols, g_image(i).t(), true);
                                }
                            })
                        });
                        dw_t
                    })
                    .collect();
                let mut dw_t = vec![0.0_f32; field * o];
                for part in &chunks {
                    dw_t.iter_mut().zip(part).for_each(|(d, p)| *d += p);
                }
                let mut dw = vec![0.0_f32; o * field];
                for (f, row) in dw_t.chunks_exact(o).enumerate() {
                    for (d, &v) in row.iter().enumerate() {
                        dw[d * field + f] = v;
                    }
                }
                ArrayD::from_shape_vec(IxDyn(&[o, g.c, g.kh, g.kw]), dw).expect("same size")
            });
            let mut grads = vec![dx, dw];
            if ctx.inputs.len() == 3 {
                grads.push(ctx.needs(2).then(|| {
                    // each output plane's sum on any thread, then the planes
                    // added per kernel in image order (the same bits on any
                    // number of threads)
                    let mut plane_sums = vec![0.0_f32; g.n * o];
                    let per_task = (kernels::VALUES_PER_TASK / positions).max(1);
                    let tasks = plane_sums.par_chunks_mut(per_task).enumerate();
                    tasks.for_each(|(task, sums)| {
                        for (j, sum) in sums.iter_mut().enumerate() {
                            let plane = task * per_task + j;
                            *sum = kernels::sum(&grad[plane * positions..][..positions]);
                        }
                    });
                    let mut db = vec![0.0_f32; o];
                    for (&plane_sum, d) in plane_sums.iter().zip((0..o).cycle()) {
                        db[d] += plane_sum;
                    }
                    ArrayD::from_shape_vec(IxDyn(&[o]), db).expect("o values")
                }));
            }
            grads
        })
    }

    /// Average pooling with a `kernel × kernel` window moved by `stride`
    /// (no padding) over `(N, C, H, W)`.
    ///
    /// # Panics
    /// If the input is not 4-D or the window does not fit.
    pub fn avg_pool2d(&self, kernel: usize, stride: usize) -> Tensor {
        let g = Geometry::new("avg_pool2d", &self.shape(), kernel, kernel, stride, 0);
        let area = (kernel * kernel) as f32;
        let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
        // LeNet's (and d2l's default) 2×2 window with stride 2 gets loops the
        // compiler can vectorise; they do the same additions in the same
        // order as the general loops, so the results are the same bits.
        let two_by_two = g.kh == 2 && g.kw == 2 && g.stride == 2;
        let y = {
            let x = self.value();
            let x = x.as_standard_layout();
            let x = x.as_slice().expect("standard layout");
            let y = if two_by_two {
                kernels::build(g.n * g.c * plane_out, plane_out, |p, y| {
                    let x = &x[p * plane_in..][..plane_in];
                    for (oy, y_row) in y.chunks_exact_mut(g.ow).enumerate() {
                        let top = x[2 * oy * g.w..][..2 * g.ow].chunks_exact(2);
                        let bottom = x[(2 * oy + 1) * g.w..][..2 * g.ow].chunks_exact(2);
                        for ((v, t), b) in y_row.iter_mut().zip(top).zip(bottom) {
                            v.write((0.0 + (t[0] + t[1]) + (b[0] + b[1])) / area);
                        }
                    }
                })
            } else {
                let mut y = vec![0.0; g.n * g.c * plane_out];
                // planes never share windows, so they are independent tasks
                kernels::for_each_chunk(&mut y, plane_out, |p, y| {
                    let x = &x[p * plane_in..][..plane_in];
                    for (oy, y_row) in y.chunks_exact_mut(g.ow).enumerate() {
                        for ky in 0..g.kh {
                            let x_row = &x[(oy * g.stride + ky) * g.w..][..g.w];
                            for (ox, v) in y_row.iter_mut().enumerate() {
                                *v += x_row[ox * g.stride..][..g.kw].iter().sum::<f32>();
                            }
                        }
                        y_row.iter_mut().for_each(|v| *v /= area);
                    }
                });
                y
            };
            ArrayD::from_shape_vec(IxDyn(&[g.n, g.c, g.oh, g.ow]), y).expect("sizes match")
        };
        // Each input in a window contributed 1/area of the window's output.
        let tiled = two_by_two && g.h == 2 * g.oh && g.w == 2 * g.ow;
        Tensor::from_op("avg_pool2d", y, &[self], move |ctx| {
            let gy = ctx.grad.as_standard_layout();
            let gy = gy.as_slice().expect("standard layout");
            let dx = if tiled {
                // every input pixel lies in exactly one window: write it once
                kernels::build(g.n * g.c * plane_in, plane_in, |p, dx| {
                    let gy = &gy[p * plane_out..][..plane_out];
                    for (rows, gy_row) in dx.chunks_exact_mut(2 * g.w).zip(gy.chunks_exact(g.ow)) {
                        let (top, bottom) = rows.split_at_mut(g.w);
                        let pairs = top.chunks_exact_mut(2).zip(bottom.chunks_exact_mut(2));
                        for ((t, b), &v) in pairs.zip(gy_row) {
                            let share = 0.0 + v / area; // the general loop adds onto 0.0
                            t[0].write(share);
                            t[1].write(share);
                            b[0].write(share);
                            b[1].write(share);
                        }
                    }
                })
            } else {
                let mut dx = vec![0.0; g.n * g.c * plane_in];
                kernels::for_each_chunk(&mut dx, plane_in, |p, dx| {
                    let gy = &gy[p * plane_out..][..plane_out];
                    for (oy, gy_row) in gy.chunks_exact(g.ow).enumerate() {
                        for ky in 0..g.kh {
                            let dx_row = &mut dx[(oy * g.stride + ky) * g.w..][..g.w];
                            for (ox, &v) in gy_row.iter().enumerate() {
                                let share = v / area;
                                dx_row[ox * g.stride..][..g.kw]
                                    .iter_mut()
                                    .for_each(|d| *d += share);
                            }
                        }
                    }
                });
                dx
            };
            vec![Some(
                ArrayD::from_shape_vec(IxDyn(&[g.n, g.c, g.h, g.w]), dx).expect("sizes match"),
            )]
        })
    }

    /// Max pooling with a `kernel × kernel` window moved by `stride` (no
    /// padding). In the backward pass each window's gradient goes to the
    /// position of its maximum; on a tie, to the *first* maximum in
    /// row-major order (PyTorch's CPU kernel does the same).
    ///
    /// # Panics
    /// If the input is not 4-D or the window does not fit.
    pub fn max_pool2d(&self, kernel: usize, stride: usize) -> Tensor {
        let g = Geometry::new("max_pool2d", &self.shape(), kernel, kernel, stride, 0);
        let (plane_in, plane_out) = (g.h * g.w, g.oh * g.ow);
        assert!(
            u32::try_from(kernel * kernel).is_ok(),
            "max_pool2d: a {kernel}x{kernel} window is too large"
        );
        let two_by_two = g.kh == 2 && g.kw == 2 && g.stride == 2;
        let outputs = g.n * g.c * plane_out;
        let (y, argmax) = {
            let x = self.value();
            let x = x.as_standard_layout();
            let x = x.as_slice().expect("standard layout");
            let mut y = vec![0.0_f32; outputs];
            // where each window's maximum is within its window: ky·kw + kx
            let mut argmax = vec![0_u32; outputs];
            // planes never share windows, so they are independent tasks
            for_each_plane_pair(&mut y, &mut argmax, plane_out, |p, y, argmax| {
                let x = &x[p * plane_in..][..plane_in];
                if two_by_two {
                    max_pool_plane_2x2(x, &g, y, argmax);
                } else {
                    max_pool_plane(x, &g, y, argmax);
                }
            });
            (
                ArrayD::from_shape_vec(IxDyn(&[g.n, g.c, g.oh, g.ow]), y).expect("sizes match"),
                argmax,
            )
        };
        // Only the winning input of each window influenced the output.
        let tiled = two_by_two && g.h == 2 * g.oh && g.w == 2 * g.ow;
        Tensor::from_op("max_pool2d", y, &[self], move |ctx| {
            let gy = ctx.grad.as_standard_layout();
            let gy = gy.as_slice().expect("standard layout");
            let dx = if tiled {
                // every input pixel lies in exactly one window: write it once
                kernels::build(g.n * g.c * plane_in, plane_in, |p, dx| {
                    let range = p * plane_out..(p + 1) * plane_out;
                    max_pool_backward_2x2(dx, &gy[range.clone()], &argmax[range], g.w);
                })
            } else {
                let mut dx = vec![0.0; g.n * g.c * plane_in];
                kernels::for_each_chunk(&mut dx, plane_in, |p, dx| {
                    let range = p * plane_out..(p + 1) * plane_out;
                    let windows = gy[range.clone()].iter().zip(&argmax[range]);
                    for (out, (&grad, &slot)) in windows.enumerate() {
                        let (slot, (oy, ox)) = (slot as usize, (out / g.ow, out % g.ow));
                        let (ky, kx) = (slot / g.kw, slot % g.kw);
                        dx[(oy * g.stride + ky) * g.w + ox * g.stride + kx] += grad;
                    }
                });
                dx
            };
            vec![Some(
                ArrayD::from_shape_vec(IxDyn(&[g.n, g.c, g.h, g.w]), dx).expect("sizes match"),
            )]
        })
    }
}

/// Whether `v` replaces `best` as a window's maximum: only if it is larger
/// (strict `>`: a later equal value does not replace the first maximum) or
/// a NaN (a NaN wins, as in PyTorch, so a diverged network shows). Written
/// as a value rather than a branch: which input wins is as good as random,
/// and a mispredicted branch per input made max pooling 30 times slower
/// than average pooling.
#[inline(always)]
fn replaces(v: f32, best: f32) -> bool {
    v > best || v.is_nan()
}

/// Calls `f(plane, y, argmax)` for the `plane`-sized pieces of `y` and
/// `argmax` that belong to each image plane: [`kernels::for_each_chunk`]
/// for two outputs at once, bunched into parallel tasks the same way
/// ([`kernels::chunks_per_task`]).
fn for_each_plane_pair(
    y: &mut [f32],
    argmax: &mut [u32],
    plane: usize,
    f: impl Fn(usize, &mut [f32], &mut [u32]) + Sync,
) {
    if plane == 0 {
        return;
    }
    let Some(per_task) = kernels::chunks_per_task(y.len(), plane) else {
        for (p, (y, argmax)) in y
            .chunks_mut(plane)
            .zip(argmax.chunks_mut(plane))
            .enumerate()
        {
            f(p, y, argmax);
        }
        return;
    };
    y.par_chunks_mut(plane * per_task)
        .zip(argmax.par_chunks_mut(plane * per_task))
        .enumerate()
        .for_each(|(task, (y, argmax))| {
            for (j, (y, argmax)) in y
                .chunks_mut(plane)
                .zip(argmax.chunks_mut(plane))
                .enumerate()
            {
                f(task * per_task + j, y, argmax);
            }
        });
}

/// One image plane of a general max pooling: each window's inputs in
/// row-major order, the first one taken, every later one only if it
/// [`replaces`] the maximum so far.
fn max_pool_plane(x: &[f32], g: &Geometry, y: &mut [f32], argmax: &mut [u32]) {
    for (out, (v, a)) in y.iter_mut().zip(argmax.iter_mut()).enumerate() {
        let (oy, ox) = (out / g.ow, out % g.ow);
        let first = oy * g.stride * g.w + ox * g.stride;
        let (mut best, mut at) = (x[first], 0);
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let value = x[first + ky * g.w + kx];
                let take = replaces(value, best);
                best = if take { value } else { best };
                at = if take { ky * g.kw + kx } else { at };
            }
        }
        *v = best;
        *a = at as u32; // checked: the window has fewer than 2^32 inputs
    }
}

multiversioned! {
    /// One image plane of LeNet's (and d2l's default) 2×2 max pooling with
    /// stride 2: the same comparisons in the same order as
    /// [`max_pool_plane`], in loops the compiler can vectorise.
    fn max_pool_plane_2x2(x: &[f32], g: &Geometry, y: &mut [f32], argmax: &mut [u32]) {
        for (oy, (y_row, a_row)) in y
            .chunks_exact_mut(g.ow)
            .zip(argmax.chunks_exact_mut(g.ow))
            .enumerate()
        {
            let top = x[2 * oy * g.w..][..2 * g.ow].chunks_exact(2);
            let bottom = x[(2 * oy + 1) * g.w..][..2 * g.ow].chunks_exact(2);
            for (((v, a), t), b) in y_row.iter_mut().zip(a_row.iter_mut()).zip(top).zip(bottom) {
                let (mut best, mut at) = (t[0], 0);
                for (value, slot) in [(t[1], 1), (b[0], 2), (b[1], 3)] {
                    let take = replaces(value, best);
                    best = if take { value } else { best };
                    at = if take { slot } else { at };
                }
                *v = best;
                *a = at;
            }
        }
    }
}

multiversioned! {
    /// The backward pass of 2×2 max pooling with stride 2 on one image
    /// plane tiled exactly by its windows: each input pixel gets its
    /// window's gradient if it was the window's maximum, else zero.
    fn max_pool_backward_2x2(
        dx: &mut [std::mem::MaybeUninit<f32>],
        gy: &[f32],
        argmax: &[u32],
        w: usize,
    ) {
        let ow = w / 2;
        for ((rows, gy_row), a_row) in dx
            .chunks_exact_mut(2 * w)
            .zip(gy.chunks_exact(ow))
            .zip(argmax.chunks_exact(ow))
        {
            let (top, bottom) = rows.split_at_mut(w);
            let pairs = top.chunks_exact_mut(2).zip(bottom.chunks_exact_mut(2));
            for ((t, b), (&g, &a)) in pairs.zip(gy_row.iter().zip(a_row)) {
                let share = |slot: u32| if a == slot { g } else { 0.0 };
                t[0].write(share(0));
                t[1].write(share(1));
                b[0].write(share(2));
                b[1].write(share(3));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values in [-1, 1) from a small linear congruential sequence.
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32) / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// (input channels, height, width, kernel, padding, output channels):
    /// LeNet-BN's and plain LeNet's first convolutions, several kernel
    /// groups (9 = 8 + 1 and 3 + 3 + 3), a 32-wide row (blocks that do not
    /// overlap), a 16-wide one (blocks that coincide), 3×3 kernels over
    /// three channels; row pairs: LeNet-BN's second convolution and 3×3
    /// kernels over two channels.
    const SHAPES: [(usize, usize, usize, usize, usize, usize); 8] = [
        (1, 28, 28, 5, 0, 6),
        (1, 28, 28, 5, 2, 6),
        (1, 12, 36, 5, 0, 9),
        (1, 20, 20, 5, 0, 3),
        (3, 10, 18, 3, 0, 16),
        (1, 9, 30, 3, 1, 1),
        (6, 12, 12, 5, 0, 16),
        (2, 6, 10, 3, 0, 5),
    ];

    /// The direct convolution's sizes for `g`, or `None` (with a note) on a
    /// CPU without AVX-512, where it is never used.
    fn direct_or_skip(g: &Geometry) -> Option<conv_direct::Plan> {
        if !conv_direct::has_avx512() {
            eprintln!("no AVX-512 here: the direct convolution is not used, nothing to compare");
            return None;
        }
        Some(
            g.direct()
                .expect("the direct convolution applies to these shapes"),
        )
    }

    #[test]
    fn direct_convolution_gives_the_bits_of_im2col_and_gemm() {
        for (c, h, w, k, padding, o) in SHAPES {
            let g = Geometry::new("test", &[1, c, h, w], k, k, 1, padding);
            let Some(plan) = direct_or_skip(&g) else {
                return;
            };
            let (x, weights) = (values(g.image_len(), 1), values(o * g.field(), 2));
            let mut want = vec![0.0; o * g.positions()];
            with_im2col_scratch(&g, |cols, framed| {
                im2col(&x, &g, cols, framed);
                let cols = Mat::row_major(cols, g.field(), g.positions());
                gemm(
                    &mut want,
                    Mat::row_major(&weights, o, g.field()),
                    cols,
                    false,
                );
            });
            let mut framed = vec![0.0; g.framed().image_len()];
            g.frame(&x, &mut framed);
            let mut got = vec![f32::NAN; o * g.positions()];
            let mut scratch = vec![0.0; plan.forward_scratch_len()];
            plan.forward_image(&framed, &plan.entry_major(&weights), &mut got, &mut scratch);
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{c}x{h}x{w}, {o} kernels of {k}x{k}, padding {padding}"
            );
        }
    }

    #[test]
    fn narrow_col2im_gives_the_bits_of_the_plain_loop() {
        // LeNet-BN's second convolution, 3×3 kernels on 16-wide rows, 5×5
        // on rows of 7 (output rows of 3), 11 channels (a group of eight
        // and one of three)
        for (c, h, w, k) in [(6, 12, 12, 5), (2, 9, 16, 3), (3, 7, 7, 5), (11, 6, 6, 3)] {
            let g = Geometry::new("test", &[1, c, h, w], k, k, 1, 0);
            let cols = values(g.field() * g.positions(), 5);
            // the plain loop: every entry added onto its pixel, in row order
            let plain = |mut dx: Vec<f32>| {
                let mut rows = cols.chunks_exact(g.positions());
                for ch in 0..c {
                    for ky in 0..k {
                        for kx in 0..k {
                            let row = rows.next().expect("one row per entry");
                            for oy in 0..g.oh {
                                for ox in 0..g.ow {
                                    dx[(ch * h + oy + ky) * w + ox + kx] += row[oy * g.ow + ox];
                                }
                            }
                        }
                    }
                }
                dx
            };
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            // the sums start from zero, whatever `dx` held
            let mut got = values(g.image_len(), 7);
            if !conv_direct::col2im_narrow(&cols, &g.shape(), &mut got) {
                eprintln!("no AVX-512 here: the narrow col2im is not used, nothing to compare");
                return;
            }
            let zeros = vec![0.0; g.image_len()];
            assert_eq!(bits(&got), bits(&plain(zeros)), "{c}x{h}x{w}, {k}x{k}");
        }
    }

    #[test]
    fn direct_weight_gradient_matches_a_sum_in_f64() {
        for (c, h, w, k, padding, o) in SHAPES {
            let n = 5;
            let g = Geometry::new("test", &[n, c, h, w], k, k, 1, padding);
            let Some(plan) = direct_or_skip(&g) else {
                return;
            };
            let framed_g = g.framed();
            let x = values(n * g.image_len(), 3);
            let grad = values(n * o * g.positions(), 4);
            let mut framed = vec![0.0; n * framed_g.image_len()];
            for (x, f) in x
                .chunks_exact(g.image_len())
                .zip(framed.chunks_exact_mut(framed_g.image_len()))
            {
                g.frame(x, f);
            }
            let pairs = framed
                .chunks_exact(framed_g.image_len())
                .zip(grad.chunks_exact(o * g.positions()));
            let mut got = vec![0.0; o * g.field()];
            let pairs: Vec<(&[f32], &[f32])> = pairs.collect();
            let mut scratch = vec![0.0; plan.gradient_scratch_len(n, o)];
            plan.weight_gradient(&pairs, o, &mut got, &mut scratch);
            for kernel in 0..o {
                for ch in 0..c {
                    for ky in 0..k {
                        for kx in 0..k {
                            let mut want = 0.0_f64;
                            for (img, f) in framed.chunks_exact(framed_g.image_len()).enumerate() {
                                for oy in 0..g.oh {
                                    for ox in 0..g.ow {
                                        let gv = grad[((img * o + kernel) * g.oh + oy) * g.ow + ox];
                                        let xv =
                                            f[(ch * framed_g.h + oy + ky) * framed_g.w + ox + kx];
                                        want += f64::from(gv) * f64::from(xv);
                                    }
                                }
                            }
                            let got = got[((kernel * c + ch) * k + ky) * k + kx];
                            assert!(
                                (f64::from(got) - want).abs() <= 1e-4 * (1.0 + want.abs()),
                                "{c}x{h}x{w}, kernel {kernel}, entry ({ch}, {ky}, {kx}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
