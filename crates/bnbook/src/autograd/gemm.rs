//! Matrix products (GEMM) for convolution and fully connected layers.
//!
//! *Book: chapter "Autograd in a few hundred lines", section "Why it is fast".*
//!
//! Every `Linear` layer ends in matrix products, and so does a convolution
//! through im2col (all of them without AVX-512; with it, LeNet's forward
//! passes and weight gradients are direct, see `conv_direct.rs`). In LeNet
//! they are small and oddly shaped: `6 × 25` kernels against
//! `25 × 576` im2col matrices, `16 × 64` gradients against `64 × 150`
//! columns. Which library multiplies them was chosen by measurement
//! (`crates/bnbook-lab/examples/bench_conv.rs` and the book's speed
//! section): the [`gemm`] crate picks AVX2/FMA or AVX-512 kernels at run
//! time, needs no packing for small matrices and reads transposed operands
//! through their strides, and on these shapes it runs 1.5–15× faster than
//! the `matrixmultiply` crate behind ndarray's `dot` (the weight gradient
//! of the first convolution, `6 × 576` times `576 × 25`, went from 7.2 ms to
//! 0.45 ms per batch).
//!
//! Each [`gemm`] call runs on the calling thread; the callers split their work
//! over threads in fixed pieces, so results do not depend on the thread count.

use crate::parallel::*;

/// A read-only matrix inside a slice: entry `(r, c)` is
/// `data[r · row_stride + c · col_stride]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Mat<'a> {
    /// The row-major `rows × cols` matrix held in `data`.
    ///
    /// # Panics
    /// If `data` holds fewer than `rows · cols` values.
    pub(crate) fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(
            data.len() >= rows * cols,
            "gemm: a {rows}x{cols} matrix needs {} values, got {}",
            rows * cols,
            data.len()
        );
        Mat {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose: the same values read with the strides swapped.
    pub(crate) fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Rows `start .. end` (a block of rows keeps the strides).
    fn row_block(self, start: usize, end: usize) -> Self {
        assert!(
            start <= end && end <= self.rows,
            "gemm: rows {start}..{end} of {}",
            self.rows
        );
        Mat {
            data: if start == end {
                &[]
            } else {
                &self.data[start * self.row_stride..]
            },
            rows: end - start,
            ..self
        }
    }

    /// Index of the last entry plus one (0 for an empty matrix).
    fn span(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
        }
    }
}

/// `C = A·B` (or `C += A·B` when `accumulate`), with `C` the row-major
/// `A.rows × B.cols` matrix at the start of `c`.
///
/// # Panics
/// If the inner sizes differ or `c` is too short.
pub(crate) fn gemm(c: &mut [f32], a: Mat, b: Mat, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(
        k, b.rows,
        "gemm: inner sizes differ: {m}x{k} times {}x{n}",
        b.rows
    );
    assert!(
        c.len() >= m * n,
        "gemm: the {m}x{n} product needs {} values, got {}",
        m * n,
        c.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    // Checked above: every entry read or written lies inside its slice.
    assert!(a.span() <= a.data.len() && b.span() <= b.data.len());
    let stride = |s: usize| isize::try_from(s).expect("strides of an in-memory matrix fit isize");
    // SAFETY: the pointers come from live slices that hold every entry the
    // strides address (asserted above), `c` is exclusively borrowed and does
    // not overlap `a` or `b` (it is `&mut`), and `Parallelism::None` keeps all
    // accesses on this thread.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            stride(n),
            accumulate,
            a.data.as_ptr(),
            stride(a.col_stride),
            stride(a.row_stride),
            b.data.as_ptr(),
            stride(b.col_stride),
            stride(b.row_stride),
            1.0, // weight of the old C (read only when accumulating)
            1.0, // weight of A·B
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Rows of `A` per parallel task of [`product`]: fixed, so that the bits of
/// a product never depend on the number of threads.
const ROWS_PER_TASK: usize = 64;

/// `A·B` as a new row-major `A.rows × B.cols` vector, blocks of
/// [`ROWS_PER_TASK`] rows of `A` on all threads.
pub(crate) fn product(a: Mat, b: Mat) -> Vec<f32> {
    let n = b.cols;
    let mut c = vec![0.0_f32; a.rows * n];
    if n == 0 {
        return c;
    }
    c.par_chunks_mut(ROWS_PER_TASK * n)
        .enumerate()
        .for_each(|(task, c)| {
            let start = task * ROWS_PER_TASK;
            gemm(c, a.row_block(start, start + c.len() / n), b, false);
        });
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook triple loop.
    fn reference(a: Mat, b: Mat) -> Vec<f32> {
        let mut c = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                for p in 0..a.cols {
                    c[i * b.cols + j] += a.data[i * a.row_stride + p * a.col_stride]
                        * b.data[p * b.row_stride + j * b.col_stride];
                }
            }
        }
        c
    }

    #[test]
    fn products_and_transposes_match_the_triple_loop() {
        let values = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 7 + seed * 13) % 11) as f32 - 5.0)
                .collect()
        };
        for (m, k, n) in [(6, 25, 576), (16, 150, 64), (3, 1, 2), (1, 7, 1), (5, 0, 4)] {
            let (a, b) = (values(m * k, 1), values(k * n, 2));
            let (at, bt) = (values(k * m, 3), values(n * k, 4));
            let cases = [
                (Mat::row_major(&a, m, k), Mat::row_major(&b, k, n)),
                (Mat::row_major(&at, k, m).t(), Mat::row_major(&b, k, n)),
                (Mat::row_major(&a, m, k), Mat::row_major(&bt, n, k).t()),
            ];
            for (a, b) in cases {
                let want = reference(a, b);
                assert_eq!(product(a, b), want, "{m}x{k}x{n} by row blocks");
                let mut c = vec![f32::NAN; m * n];
                gemm(&mut c, a, b, false);
                // small integers: every product and sum is exact in f32
                assert_eq!(c, want, "{m}x{k}x{n}");
                gemm(&mut c, a, b, true);
                let twice: Vec<f32> = want.iter().map(|v| 2.0 * v).collect();
                assert_eq!(c, twice, "{m}x{k}x{n} accumulated");
            }
        }
    }
}
