//! Element-wise, reduction, shape and matrix operations.
//!
//! Each function computes its forward value and hands [`Tensor::from_op`] the
//! rule for its backward pass, right next to it. Notation in comments: `g` is
//! ∂loss/∂y for the output `y`, and each rule returns ∂loss/∂x per input `x`.

use super::gemm::{Mat, product};
use super::{BackwardContext, Tensor, kernels};
use ndarray::{ArrayD, CowArray, Ix2, IxDyn};
use std::ops;

/// The shape two arrays broadcast to, or a panic that names the operation.
pub(super) fn broadcast_shape(op: &str, a: &[usize], b: &[usize]) -> Vec<usize> {
    let n = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| {
        if i + s.len() < n {
            1
        } else {
            s[i + s.len() - n]
        }
    };
    (0..n)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => panic!("{op}: shapes {a:?} and {b:?} cannot be broadcast together"),
        })
        .collect()
}

/// Applies `f` element-wise to `a` and `b` broadcast to a common shape.
fn zip_broadcast(
    op: &str,
    a: &ArrayD<f32>,
    b: &ArrayD<f32>,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> ArrayD<f32> {
    let shape = broadcast_shape(op, a.shape(), b.shape());
    kernels::zip_with(a, b, &shape, f)
}

// ANCHOR: grad_of
/// The gradient of input `i` (0 = `a`, 1 = `b`) of a broadcasting binary
/// operation whose local rule is `rule(g, a, b)` per output element, summed
/// back to the input's shape where it was broadcast. `None` if the input
/// needs no gradient.
fn grad_of(
    ctx: &BackwardContext,
    i: usize,
    rule: impl Fn(f32, f32, f32) -> f32 + Sync,
) -> Option<ArrayD<f32>> {
    if !ctx.needs(i) {
        return None;
    }
    let (g, a, b) = (ctx.grad, ctx.input(0), ctx.input(1));
    let shape = ctx.input(i).shape();
    Some(if shape == g.shape() {
        // full size: one fused element-wise pass, straight into the gradient
        // the input has gathered so far if it has one
        if ctx.add_into(i, |acc| kernels::add_zip3(acc, [g, a, b], &rule)) {
            return None;
        }
        kernels::zip3(g, a, b, rule)
    } else {
        // broadcast input: sum the rule over the copies without a temporary
        kernels::reduce_zip3(g.shape(), [g, a, b], shape, rule)
    })
}
// ANCHOR_END: grad_of

/// Both inputs' gradients of a broadcasting binary operation whose local
/// rules are `rule_a` and `rule_b`: [`grad_of`] for each, except that when
/// one input is broadcast and the other, full-size, has no gradient yet (γ
/// and `x̂` in `γ·x̂`, `centered` and the standard deviation in
/// `centered / std`), both are computed in one pass over `g` and the
/// operands instead of two. The same values either way.
fn grads_of(
    ctx: &BackwardContext,
    rule_a: impl Fn(f32, f32, f32) -> f32 + Sync,
    rule_b: impl Fn(f32, f32, f32) -> f32 + Sync,
) -> Vec<Option<ArrayD<f32>>> {
    let (g, a, b) = (ctx.grad, ctx.input(0), ctx.input(1));
    let full = |x: &ArrayD<f32>| x.shape() == g.shape();
    let one_pass = ctx.needs(0) && ctx.needs(1) && full(a) != full(b);
    if one_pass && !ctx.has_grad(usize::from(full(b))) {
        if full(a) {
            let (db, da) = kernels::reduce_zip3_and_zip3([g, a, b], b.shape(), rule_b, rule_a);
            return vec![Some(da), Some(db)];
        }
        let (da, db) = kernels::reduce_zip3_and_zip3([g, a, b], a.shape(), rule_a, rule_b);
        return vec![Some(da), Some(db)];
    }
    vec![grad_of(ctx, 0, rule_a), grad_of(ctx, 1, rule_b)]
}

/// The gradient of input `i` of a broadcasting binary operation whose local
/// derivative for it is 1 (`a + b`, `a` in `a − b`): `g` itself for a
/// full-size input, handed on without a copy
/// ([`BackwardContext::hand_on`]); `g` summed over the copies for a
/// broadcast one.
fn unchanged(ctx: &BackwardContext, i: usize) -> Option<ArrayD<f32>> {
    if ctx.input(i).shape() == ctx.grad.shape() {
        ctx.hand_on(i)
    } else {
        grad_of(ctx, i, |g, _, _| g)
    }
}

impl Tensor {
    // ----- element-wise binary operations (with broadcasting) -----

    /// `self + other`, broadcasting like NumPy.
    ///
    /// # Panics
    /// If the shapes cannot be broadcast together.
    pub fn add(&self, other: &Tensor) -> Tensor {
        let y = zip_broadcast("add", &self.value(), &other.value(), |a, b| a + b);
        // y = a + b:  ∂y/∂a = 1, ∂y/∂b = 1
        Tensor::from_op("add", y, &[self, other], |ctx| {
            vec![unchanged(ctx, 0), unchanged(ctx, 1)]
        })
    }

    /// `self - other`, broadcasting like NumPy.
    ///
    /// # Panics
    /// If the shapes cannot be broadcast together.
    pub fn sub(&self, other: &Tensor) -> Tensor {
        let y = zip_broadcast("sub", &self.value(), &other.value(), |a, b| a - b);
        // y = a - b:  ∂y/∂a = 1, ∂y/∂b = -1
        Tensor::from_op("sub", y, &[self, other], |ctx| {
            vec![unchanged(ctx, 0), grad_of(ctx, 1, |g, _, _| -g)]
        })
    }

    // ANCHOR: mul
    /// Element-wise `self * other`, broadcasting like NumPy.
    ///
    /// # Panics
    /// If the shapes cannot be broadcast together.
    pub fn mul(&self, other: &Tensor) -> Tensor {
        if self.same_node(other) {
            return self.times_itself(); // x·x: both gradients in one pass
        }
        let y = zip_broadcast("mul", &self.value(), &other.value(), |a, b| a * b);
        // y = a·b:  ∂y/∂a = b, ∂y/∂b = a
        Tensor::from_op("mul", y, &[self, other], |ctx| {
            grads_of(ctx, |g, _, b| g * b, |g, a, _| g * a)
        })
    }
    // ANCHOR_END: mul

    /// `x·x`, which [`mul`](Self::mul) computes when both operands are the
    /// same tensor (batch norm's `centered * centered`). The values are
    /// those of `mul`, and so is the gradient, `∂L/∂x = g·x + g·x` (one term
    /// per factor), but both terms reach `x` in one pass: added to the
    /// gradient `x` has gathered so far as `(acc + g·x) + g·x`, the order
    /// and rounding of two separate passes, so the same bits.
    fn times_itself(&self) -> Tensor {
        let y = kernels::map(&self.value(), |x| x * x);
        Tensor::from_op("mul", y, &[self, self], |ctx| {
            if !ctx.needs(0) {
                return vec![None, None];
            }
            let (g, x) = (ctx.grad, ctx.input(0));
            let both = |acc: &mut ArrayD<f32>| {
                kernels::update_zip3(acc, [g, x, x], |acc, g, x, _| (acc + g * x) + g * x);
            };
            if ctx.add_into(0, both) {
                return vec![None, None];
            }
            vec![Some(kernels::zip3(g, x, x, |g, x, _| g * x + g * x)), None]
        })
    }

    // ANCHOR: div
    /// Element-wise `self / other`, broadcasting like NumPy.
    ///
    /// # Panics
    /// If the shapes cannot be broadcast together.
    pub fn div(&self, other: &Tensor) -> Tensor {
        let y = zip_broadcast("div", &self.value(), &other.value(), |a, b| a / b);
        // y = a / b:  ∂y/∂a = 1/b, ∂y/∂b = -a/b²
        Tensor::from_op("div", y, &[self, other], |ctx| {
            grads_of(ctx, |g, _, b| g / b, |g, a, b| -g * a / (b * b))
        })
    }
    // ANCHOR_END: div

    // ----- element-wise unary operations -----

    /// Applies `f` element-wise and records `df(x, y)` as the local
    /// derivative, so `∂loss/∂x = g · df(x, y)`.
    fn unary(
        &self,
        op: &'static str,
        f: impl Fn(f32) -> f32 + Sync,
        df: impl Fn(f32, f32) -> f32 + Sync + 'static,
    ) -> Tensor {
        let y = kernels::map(&self.value(), f);
        Tensor::from_op(op, y, &[self], move |ctx| {
            let dx = kernels::unary_backward(ctx.grad, ctx.input(0), ctx.output, &df);
            vec![Some(dx)]
        })
    }

    /// `-self`.
    pub fn neg(&self) -> Tensor {
        self.unary("neg", |x| -x, |_, _| -1.0)
    }

    /// `eˣ`; its derivative is the output itself.
    pub fn exp(&self) -> Tensor {
        self.unary("exp", kernels::exp, |_, y| y)
    }

    /// Natural logarithm; derivative `1/x`.
    pub fn ln(&self) -> Tensor {
        self.unary("ln", f32::ln, |x, _| 1.0 / x)
    }

    /// Square root; derivative `1/(2√x) = 1/(2y)`.
    pub fn sqrt(&self) -> Tensor {
        self.unary("sqrt", f32::sqrt, |_, y| 0.5 / y)
    }

    /// `xᵖ` for a constant exponent `p`; derivative `p·xᵖ⁻¹`.
    pub fn powf(&self, p: f32) -> Tensor {
        self.unary("powf", move |x| x.powf(p), move |x, _| p * x.powf(p - 1.0))
    }

    /// Logistic sigmoid `1/(1+e⁻ˣ)`; derivative `y(1-y)`.
    pub fn sigmoid(&self) -> Tensor {
        self.unary(
            "sigmoid",
            |x| 1.0 / (1.0 + kernels::exp(-x)),
            |_, y| y * (1.0 - y),
        )
    }

    /// Rectified linear unit `max(x, 0)`; derivative 1 where `x > 0`, else 0.
    pub fn relu(&self) -> Tensor {
        self.unary(
            "relu",
            |x| x.max(0.0),
            |x, _| if x > 0.0 { 1.0 } else { 0.0 },
        )
    }

    /// `self + c` for a constant `c`.
    pub fn add_scalar(&self, c: f32) -> Tensor {
        self.unary("add_scalar", move |x| x + c, |_, _| 1.0)
    }

    /// `self · c` for a constant `c`.
    pub fn mul_scalar(&self, c: f32) -> Tensor {
        self.unary("mul_scalar", move |x| x * c, move |_, _| c)
    }

    // ----- reductions -----

    // ANCHOR: sum
    /// Sum over `axes`; with `keepdims` the summed axes stay with size 1
    /// (handy for broadcasting the result back, as batch norm does).
    ///
    /// # Panics
    /// If an axis is out of range or repeated.
    pub fn sum(&self, axes: &[usize], keepdims: bool) -> Tensor {
        let in_shape = self.shape();
        let mut sorted = axes.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), axes.len(), "sum: axis repeated in {axes:?}");
        if let Some(&a) = sorted.last() {
            assert!(
                a < in_shape.len(),
                "sum: axis {a} out of range for shape {in_shape:?}"
            );
        }
        // The shape with summed axes kept as 1: the gradient broadcasts from it.
        let kept: Vec<usize> = (0..in_shape.len())
            .map(|i| if sorted.contains(&i) { 1 } else { in_shape[i] })
            .collect();
        let mut y = kernels::reduce_to(&self.value(), &kept);
        if !keepdims {
            let out: Vec<usize> = (0..in_shape.len())
                .filter(|i| !sorted.contains(i))
                .map(|i| in_shape[i])
                .collect();
            y = y.into_shape_with_order(IxDyn(&out)).expect("same size");
        }
        // y = Σ x over axes:  every x contributes with weight 1, so ∂loss/∂x is
        // g copied (broadcast) back over the summed axes.
        Tensor::from_op("sum", y, &[self], move |ctx| {
            let g = ctx
                .grad
                .to_shape(IxDyn(&kept))
                .expect("same size")
                .into_owned();
            // added straight into the input's gradient if it has one
            if ctx.add_into(0, |acc| kernels::add_zip3(acc, [&g, &g, &g], |g, _, _| g)) {
                return vec![None];
            }
            vec![Some(kernels::broadcast_to(&g, &in_shape))]
        })
    }
    // ANCHOR_END: sum

    /// Sum of all elements (a scalar of shape `[]`).
    pub fn sum_all(&self) -> Tensor {
        let axes: Vec<usize> = (0..self.ndim()).collect();
        self.sum(&axes, false)
    }

    /// Mean over `axes` (see [`sum`](Tensor::sum) for `keepdims`): the sum
    /// times `1/count`, built from two recorded operations.
    ///
    /// # Panics
    /// As [`sum`](Tensor::sum); also if the axes hold no elements.
    pub fn mean(&self, axes: &[usize], keepdims: bool) -> Tensor {
        let shape = self.shape();
        let count: usize = axes
            .iter()
            .map(|&a| shape.get(a).copied().unwrap_or(1))
            .product();
        assert!(
            count > 0,
            "mean: no elements over axes {axes:?} of shape {shape:?}"
        );
        self.sum(axes, keepdims).mul_scalar(1.0 / count as f32)
    }

    /// Mean of all elements (a scalar).
    pub fn mean_all(&self) -> Tensor {
        let axes: Vec<usize> = (0..self.ndim()).collect();
        self.mean(&axes, false)
    }

    // ----- shape -----

    /// The same elements (in row-major order) with a new shape.
    ///
    /// # Panics
    /// If the number of elements differs.
    pub fn reshape(&self, shape: &[usize]) -> Tensor {
        let in_shape = self.shape();
        let n: usize = shape.iter().product();
        assert_eq!(
            n,
            in_shape.iter().product::<usize>(),
            "reshape: cannot view shape {in_shape:?} as {shape:?}"
        );
        let y = self
            .value()
            .to_shape(IxDyn(shape))
            .expect("same size")
            .into_owned();
        // Reshaping moves no numbers, so the gradient is reshaped back.
        Tensor::from_op("reshape", y, &[self], move |ctx| {
            vec![Some(
                ctx.grad
                    .to_shape(IxDyn(&in_shape))
                    .expect("same size")
                    .into_owned(),
            )]
        })
    }

    /// Keeps the first (batch) axis and flattens the rest:
    /// `(N, C, H, W) → (N, C·H·W)`.
    ///
    /// # Panics
    /// If the tensor has no axes.
    pub fn flatten(&self) -> Tensor {
        let shape = self.shape();
        assert!(!shape.is_empty(), "flatten: a scalar has no batch axis");
        let rest: usize = shape[1..].iter().product();
        self.reshape(&[shape[0], rest])
    }

    // ----- linear algebra -----

    /// Matrix product of `(n, k)` and `(k, m)` tensors, computed by a real
    /// GEMM from the `gemm` crate (chosen by measurement: see the book section
    /// "Why it is fast" in the chapter "Autograd in a few hundred lines").
    ///
    /// # Panics
    /// If either tensor is not 2-D or the inner sizes differ.
    pub fn matmul(&self, other: &Tensor) -> Tensor {
        let y = {
            let (a, b) = (self.value(), other.value());
            let (a, b) = (as_matrix("matmul", &a), as_matrix("matmul", &b));
            assert_eq!(
                a.ncols(),
                b.nrows(),
                "matmul: inner sizes differ: {:?} x {:?}",
                a.shape(),
                b.shape()
            );
            let y = product(mat(&a), mat(&b));
            ArrayD::from_shape_vec(IxDyn(&[a.nrows(), b.ncols()]), y).expect("sizes match")
        };
        // Y = A·B:  ∂loss/∂A = G·Bᵀ,  ∂loss/∂B = Aᵀ·G
        Tensor::from_op("matmul", y, &[self, other], |ctx| {
            let g = as_matrix("matmul", ctx.grad);
            let a = as_matrix("matmul", ctx.input(0));
            let b = as_matrix("matmul", ctx.input(1));
            let (ga, gb) = (mat(&g), (mat(&a), mat(&b)));
            let (a_shape, b_shape) = (a.shape(), b.shape());
            vec![
                ctx.needs(0).then(|| {
                    ArrayD::from_shape_vec(IxDyn(a_shape), product(ga, gb.1.t()))
                        .expect("sizes match")
                }),
                ctx.needs(1).then(|| {
                    ArrayD::from_shape_vec(IxDyn(b_shape), product(gb.0.t(), ga))
                        .expect("sizes match")
                }),
            ]
        })
    }
}

/// A [`Mat`] reading a 2-D view in place: every view this module makes is
/// standard-layout (see [`as_matrix`]).
fn mat<'a>(a: &'a CowArray<'_, f32, Ix2>) -> Mat<'a> {
    let data = a.as_slice().expect("as_matrix gives standard-layout views");
    Mat::row_major(data, a.nrows(), a.ncols())
}

/// A 2-D view of a dynamic-rank array, or a panic naming the operation.
/// The view is standard-layout (row-major), copied only if it was not.
fn as_matrix<'a>(op: &str, a: &'a ArrayD<f32>) -> CowArray<'a, f32, Ix2> {
    let view = a
        .view()
        .into_dimensionality::<Ix2>()
        .unwrap_or_else(|_| panic!("{op}: expected a 2-D tensor, got shape {:?}", a.shape()));
    if view.is_standard_layout() {
        CowArray::from(view)
    } else {
        CowArray::from(view.as_standard_layout().into_owned())
    }
}

// Operator sugar, so that book code reads like the math: `&x - &mean`.
macro_rules! binary_operator {
    ($trait:ident, $method:ident) => {
        impl ops::$trait<&Tensor> for &Tensor {
            type Output = Tensor;
            fn $method(self, rhs: &Tensor) -> Tensor {
                Tensor::$method(self, rhs)
            }
        }
        impl ops::$trait<Tensor> for Tensor {
            type Output = Tensor;
            fn $method(self, rhs: Tensor) -> Tensor {
                Tensor::$method(&self, &rhs)
            }
        }
        impl ops::$trait<&Tensor> for Tensor {
            type Output = Tensor;
            fn $method(self, rhs: &Tensor) -> Tensor {
                Tensor::$method(&self, rhs)
            }
        }
        impl ops::$trait<Tensor> for &Tensor {
            type Output = Tensor;
            fn $method(self, rhs: Tensor) -> Tensor {
                Tensor::$method(self, &rhs)
            }
        }
    };
}

binary_operator!(Add, add);
binary_operator!(Sub, sub);
binary_operator!(Mul, mul);
binary_operator!(Div, div);

impl ops::Neg for &Tensor {
    type Output = Tensor;
    fn neg(self) -> Tensor {
        Tensor::neg(self)
    }
}

impl ops::Neg for Tensor {
    type Output = Tensor;
    fn neg(self) -> Tensor {
        Tensor::neg(&self)
    }
}

impl ops::Add<f32> for &Tensor {
    type Output = Tensor;
    fn add(self, c: f32) -> Tensor {
        self.add_scalar(c)
    }
}

impl ops::Add<f32> for Tensor {
    type Output = Tensor;
    fn add(self, c: f32) -> Tensor {
        self.add_scalar(c)
    }
}

impl ops::Mul<f32> for &Tensor {
    type Output = Tensor;
    fn mul(self, c: f32) -> Tensor {
        self.mul_scalar(c)
    }
}

impl ops::Mul<f32> for Tensor {
    type Output = Tensor;
    fn mul(self, c: f32) -> Tensor {
        self.mul_scalar(c)
    }
}
