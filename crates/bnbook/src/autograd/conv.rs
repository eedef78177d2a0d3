//! Convolution and pooling over `(N, C, H, W)` images.
//!
//! Convolution is done the way fast libraries do it on a CPU: **im2col**
//! copies every receptive field into one column of a matrix, after which the
//! whole convolution is a single matrix product (GEMM) with the kernels.
//! The backward pass is two more GEMMs and the reverse copy, **col2im**,
//! which *adds* the pieces back into image positions (fields overlap, so a
//! pixel collects gradient from every window that saw it).

use super::Tensor;
use ndarray::{Array2, ArrayD, Axis, IxDyn};

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

    /// Number of kernel entries `(c, ky, kx)`: the rows of the im2col matrix.
    fn field(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Number of output positions `(n, oy, ox)`: the columns of the im2col matrix.
    fn positions(&self) -> usize {
        self.n * self.oh * self.ow
    }

    /// Walks the im2col matrix one contiguous run at a time. For every
    /// kernel entry `(c, ky, kx)` (matrix row `r`), image `n` and output row
    /// `oy` whose input row lies inside the image, calls
    /// `f(r, start, x_start, len)`: the matrix entries
    /// `start .. start + len` of row `r` (output columns `ox`) come from the
    /// input pixels `x_start + ox_step · stride` of one image row.
    /// Positions that fall on the zero padding are skipped.
    fn for_each_run(&self, mut f: impl FnMut(usize, usize, usize, usize)) {
        let g = *self;
        for c in 0..g.c {
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let r = (c * g.kh + ky) * g.kw + kx;
                    // output columns whose input column ix = ox·stride + kx − padding is inside
                    let lo = g.padding.saturating_sub(kx).div_ceil(g.stride);
                    let hi = if g.w + g.padding > kx {
                        ((g.w + g.padding - kx - 1) / g.stride + 1).min(g.ow)
                    } else {
                        0 // this kernel column only ever sees right-hand padding
                    };
                    if lo >= hi {
                        continue;
                    }
                    for n in 0..g.n {
                        for oy in 0..g.oh {
                            // wrapping_sub turns a row above the image into a huge index
                            let iy = (oy * g.stride + ky).wrapping_sub(g.padding);
                            if iy >= g.h {
                                continue;
                            }
                            let start = (n * g.oh + oy) * g.ow + lo;
                            let x_start =
                                (((n * g.c + c) * g.h + iy) * g.w + lo * g.stride + kx) - g.padding;
                            f(r, start, x_start, hi - lo);
                        }
                    }
                }
            }
        }
    }
}

/// im2col, in the layout that suits a row-major GEMM: one **row** per kernel
/// entry `(c, ky, kx)`, one **column** per output position `(n, oy, ox)`.
/// Column `(n, oy, ox)` holds the receptive field of that output; padding
/// positions stay zero.
fn im2col(x: &[f32], g: &Geometry) -> Array2<f32> {
    let cols = g.positions();
    let mut m = Array2::zeros((g.field(), cols));
    let out = m.as_slice_mut().expect("fresh array is contiguous");
    g.for_each_run(|r, start, x_start, len| {
        let dst = &mut out[r * cols + start..][..len];
        for (i, d) in dst.iter_mut().enumerate() {
            *d = x[x_start + i * g.stride];
        }
    });
    m
}

/// col2im: the adjoint of im2col — adds every matrix entry back onto the
/// pixel it was copied from (overlapping windows add up).
fn col2im(m: &Array2<f32>, g: &Geometry) -> ArrayD<f32> {
    let cols = g.positions();
    let src = m.as_slice().expect("GEMM result is contiguous");
    let mut dx = vec![0.0; g.n * g.c * g.h * g.w];
    g.for_each_run(|r, start, x_start, len| {
        for (i, v) in src[r * cols + start..][..len].iter().enumerate() {
            dx[x_start + i * g.stride] += v;
        }
    });
    ArrayD::from_shape_vec(IxDyn(&[g.n, g.c, g.h, g.w]), dx).expect("sizes match")
}

/// `(O, N·OH·OW)` matrix → `(N, O, OH, OW)` batch (swaps the two outer axes).
fn channels_first_to_nchw(m: Array2<f32>, g: &Geometry, o: usize) -> ArrayD<f32> {
    m.into_shape_with_order((o, g.n, g.oh * g.ow))
        .expect("columns are (n, oy, ox)")
        .permuted_axes([1, 0, 2])
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(&[g.n, o, g.oh, g.ow]))
        .expect("same size")
}

/// `(N, O, OH, OW)` batch → `(O, N·OH·OW)` matrix.
fn nchw_to_channels_first(a: &ArrayD<f32>, g: &Geometry, o: usize) -> Array2<f32> {
    a.to_shape((g.n, o, g.oh * g.ow))
        .expect("same size")
        .permuted_axes([1, 0, 2])
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((o, g.positions()))
        .expect("same size")
}

impl Tensor {
    /// 2-D convolution (strictly: cross-correlation, as in every DL library)
    /// of `self`, shaped `(N, C, H, W)`, with `weight` shaped
    /// `(O, C, KH, KW)` and an optional `bias` of shape `(O,)`. The output
    /// is `(N, O, OH, OW)` with `OH = (H + 2·padding − KH) / stride + 1`.
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

        let cols = im2col(
            self.value()
                .as_standard_layout()
                .as_slice()
                .expect("standard layout"),
            &g,
        );
        let mut y = {
            let w = weight.value();
            let w_mat = w.to_shape((o, g.field())).expect("same size");
            w_mat.dot(&cols) // (O, N·OH·OW): the whole convolution in one GEMM
        };
        if let Some(b) = bias {
            let b = b.value();
            for (mut row, &b) in y.outer_iter_mut().zip(b.iter()) {
                row += b;
            }
        }
        let y = channels_first_to_nchw(y, &g, o);

        let mut parents = vec![self, weight];
        parents.extend(bias);
        Tensor::from_op("conv2d", y, &parents, move |ctx| {
            let g_mat = nchw_to_channels_first(ctx.grad, &g, o); // (O, N·OH·OW)
            let w_mat = ctx.input(1).to_shape((o, g.field())).expect("same size");
            // Y = W·cols:  ∂loss/∂cols = Wᵀ·G,  ∂loss/∂W = G·colsᵀ,  ∂loss/∂b = row sums of G
            let dx = ctx.needs(0).then(|| col2im(&w_mat.t().dot(&g_mat), &g));
            let dw = ctx.needs(1).then(|| {
                g_mat
                    .dot(&cols.t())
                    .into_shape_with_order(IxDyn(&[o, g.c, g.kh, g.kw]))
                    .expect("same size")
            });
            let mut grads = vec![dx, dw];
            if ctx.inputs.len() == 3 {
                grads.push(ctx.needs(2).then(|| g_mat.sum_axis(Axis(1)).into_dyn()));
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
        let y = {
            let x = self.value();
            let x = x.as_standard_layout();
            let x = x.as_slice().expect("standard layout");
            let mut y = vec![0.0; g.n * g.c * g.oh * g.ow];
            pool_windows(&g, |out, i| y[out] += x[i] / area);
            ArrayD::from_shape_vec(IxDyn(&[g.n, g.c, g.oh, g.ow]), y).expect("sizes match")
        };
        // Each input in a window contributed 1/area of the window's output.
        Tensor::from_op("avg_pool2d", y, &[self], move |ctx| {
            let gy = ctx.grad.as_standard_layout();
            let gy = gy.as_slice().expect("standard layout");
            let mut dx = vec![0.0; g.n * g.c * g.h * g.w];
            pool_windows(&g, |out, i| dx[i] += gy[out] / area);
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
        let outputs = g.n * g.c * g.oh * g.ow;
        let (y, argmax) = {
            let x = self.value();
            let x = x.as_standard_layout();
            let x = x.as_slice().expect("standard layout");
            let mut y = vec![f32::NEG_INFINITY; outputs];
            let mut argmax = vec![usize::MAX; outputs];
            pool_windows(&g, |out, i| {
                // strict `>`: a later equal value does not replace the first maximum
                if x[i] > y[out] || argmax[out] == usize::MAX {
                    y[out] = x[i];
                    argmax[out] = i;
                }
            });
            (
                ArrayD::from_shape_vec(IxDyn(&[g.n, g.c, g.oh, g.ow]), y).expect("sizes match"),
                argmax,
            )
        };
        // Only the winning input of each window influenced the output.
        Tensor::from_op("max_pool2d", y, &[self], move |ctx| {
            let mut dx = ArrayD::zeros(IxDyn(&[g.n, g.c, g.h, g.w]));
            let d = dx.as_slice_mut().expect("fresh array");
            for (gy, &i) in ctx.grad.iter().zip(&argmax) {
                d[i] += gy;
            }
            vec![Some(dx)]
        })
    }
}

/// Calls `f(output_index, input_index)` for every input of every pooling
/// window (row-major order inside each window).
fn pool_windows(g: &Geometry, mut f: impl FnMut(usize, usize)) {
    for plane in 0..g.n * g.c {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let out = (plane * g.oh + oy) * g.ow + ox;
                for ky in 0..g.kh {
                    let row = (plane * g.h + oy * g.stride + ky) * g.w;
                    for kx in 0..g.kw {
                        f(out, row + ox * g.stride + kx);
                    }
                }
            }
        }
    }
}
