//! A small reverse-mode automatic differentiation engine over `ndarray`.
//!
//! *Book: chapter "Autograd in a few hundred lines".*
//!
//! **The design in one paragraph.** A [`Tensor`] is a cheap, clonable handle
//! (an `Rc`) to a node that holds an `f32` array (`value`), an optional
//! gradient (`grad`), the tensors it was computed from (`parents`) and a
//! closure that knows the operation's local derivative (`backward`). Every
//! operation — `mul`, `matmul`, `conv2d`, … — is one function in which the
//! forward computation and its backward rule (a vector–Jacobian product) sit
//! side by side. Calling [`Tensor::backward`] on a scalar loss sorts the graph
//! once (children after parents), then walks it in reverse: each node hands
//! the gradient of the loss with respect to its output to its closure, which
//! returns one gradient per parent, and the engine *adds* (`+=`) those into
//! the parents' `grad`. Nodes are whole tensors, not single numbers, so a
//! LeNet step has a few dozen nodes, not millions. Parameters are leaf
//! tensors that you keep; the per-step graph hangs off the loss and is freed
//! when the loss is dropped, so memory does not grow over a training run.
//! Nothing borrows anything else, which is what a Jupyter (evcxr) notebook
//! needs to keep tensors from one cell to the next.
//!
//! ```
//! use bnbook::Tensor;
//! use bnbook::ndarray::array;
//!
//! let x = Tensor::parameter(array![1.0_f32, 2.0, 3.0].into_dyn());
//! let loss = (&x * &x).sum_all(); // x1² + x2² + x3²
//! loss.backward();
//! assert_eq!(x.grad().unwrap(), array![2.0_f32, 4.0, 6.0].into_dyn());
//! ```

mod conv;
mod conv_direct;
mod gemm;
pub(crate) mod kernels;
mod loss;
mod ops;
pub mod profile;

pub(crate) use kernels::{build, with_wide_vectors};
pub(crate) use loss::check_logits;

use ndarray::ArrayD;
use std::cell::{Cell, Ref, RefCell, RefMut};
use std::collections::HashSet;
use std::fmt;
use std::rc::Rc;

thread_local! {
    /// Whether operations on this thread record the graph (see [`no_grad`]).
    static RECORDING: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Whether operations on this thread currently record the graph: `true`,
/// except inside [`no_grad`].
pub fn is_recording() -> bool {
    RECORDING.with(std::cell::Cell::get)
}

/// Runs `f` without recording the graph, like PyTorch's `torch.no_grad()`:
/// every operation inside returns a constant, so nothing can be
/// differentiated, and each intermediate array is freed as soon as the next
/// operation has used it instead of being kept for a backward pass.
/// Evaluation ([`crate::train::evaluate`]) runs this way. The values computed
/// are exactly the same; recording resumes afterwards (also if `f` panics).
///
/// ```
/// use bnbook::Tensor;
/// use bnbook::autograd::no_grad;
/// use bnbook::ndarray::array;
///
/// let w = Tensor::parameter(array![2.0_f32].into_dyn());
/// let y = no_grad(|| &w * &w);
/// assert!(!y.requires_grad());
/// assert_eq!(y.item(), 4.0);
/// assert!((&w * &w).requires_grad(), "recording again");
/// ```
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    /// Restores the previous setting when dropped, even while unwinding.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            RECORDING.with(|r| r.set(self.0));
        }
    }
    let _restore = Restore(RECORDING.with(|r| r.replace(false)));
    f()
}

/// What an operation's backward closure receives.
///
/// `grad` is ∂loss/∂output (same shape as `output`); `inputs` are the values
/// of the operation's parents, in the order they were given to
/// [`Tensor::from_op`]; `needs_grad[i]` says whether parent `i` wants a
/// gradient at all (constants and detached tensors do not), so expensive
/// products can be skipped.
pub struct BackwardContext<'a> {
    /// Gradient of the loss with respect to this operation's output.
    pub grad: &'a ArrayD<f32>,
    /// The output value computed by the forward pass.
    pub output: &'a ArrayD<f32>,
    /// The values of the parents, in order.
    pub inputs: &'a [&'a ArrayD<f32>],
    /// Whether each parent needs a gradient.
    pub needs_grad: &'a [bool],
    /// The parent [`BackwardContext::hand_on`] gave `grad` to, if any.
    handed_on: Cell<Option<usize>>,
    /// The parents themselves, whose gradients [`BackwardContext::add_into`]
    /// adds to.
    parents: &'a [Tensor],
    /// Which parents [`BackwardContext::add_into`] has added to.
    added: RefCell<Vec<bool>>,
}

impl BackwardContext<'_> {
    /// Value of parent `i`.
    pub fn input(&self, i: usize) -> &ArrayD<f32> {
        self.inputs[i]
    }

    /// Whether parent `i` needs a gradient.
    pub fn needs(&self, i: usize) -> bool {
        self.needs_grad[i]
    }

    /// The gradient of parent `i` when it is `grad` itself, unchanged (a
    /// full-size operand of an addition, the first of a subtraction). The
    /// first such parent gets `grad` *moved* to it once the rule has
    /// returned, instead of a copy (this method returns `None` for it); any
    /// later one gets a copy. Nothing else needs `grad` by then: the reverse
    /// sweep frees an intermediate gradient as soon as it has been passed on.
    ///
    /// # Panics
    /// If parent `i` does not have the shape of `grad`.
    pub fn hand_on(&self, i: usize) -> Option<ArrayD<f32>> {
        assert_eq!(
            self.inputs[i].shape(),
            self.grad.shape(),
            "hand_on: parent {i} does not have the output's shape"
        );
        if !self.needs(i) {
            return None;
        }
        if self.handed_on.get().is_none() {
            self.handed_on.set(Some(i));
            return None;
        }
        Some(self.grad.clone())
    }

    /// Whether parent `i` has gathered a gradient already (from operations
    /// the reverse sweep visited before this one).
    pub fn has_grad(&self, i: usize) -> bool {
        self.parents[i].0.grad.borrow().is_some()
    }

    /// Adds parent `i`'s gradient straight into the gradient it has
    /// gathered so far, if it has one: `add(acc)` must do `acc += ∂loss/∂input
    /// i`. Returns whether it did; if so, the rule returns `None` for parent
    /// `i`. One pass over the values instead of two: the rule's result is
    /// not written to a fresh array for the engine to add afterwards, so a
    /// tensor used several times (batch norm's centred input, the input of a
    /// mean) gathers its gradient at the cost of one pass per use.
    ///
    /// Declines (returns `false`, without calling `add`) when the parent
    /// needs no gradient, has none yet (or one not in standard layout), or
    /// appears earlier among this operation's parents without having been
    /// added to this way (the second operand of `x − x`, whose first one is
    /// handed on): then the gradients reach it in parent order either way,
    /// so the sum is the same to the last bit as when the engine adds them.
    pub fn add_into(&self, i: usize, add: impl FnOnce(&mut ArrayD<f32>)) -> bool {
        if !self.needs(i) {
            return false;
        }
        let parent = &self.parents[i];
        let mut added = self.added.borrow_mut();
        let earlier_waits = (0..i).any(|j| Rc::ptr_eq(&self.parents[j].0, &parent.0) && !added[j]);
        if earlier_waits {
            return false;
        }
        let mut slot = parent.0.grad.borrow_mut();
        let Some(acc) = slot.as_mut().filter(|acc| acc.is_standard_layout()) else {
            return false;
        };
        add(acc);
        added[i] = true;
        true
    }
}

/// The local-derivative rule of one operation: given the context, return one
/// gradient per parent (`None` where the parent needs none).
pub type BackwardFn = Box<dyn Fn(&BackwardContext) -> Vec<Option<ArrayD<f32>>>>;

// ANCHOR: node
struct Node {
    value: RefCell<ArrayD<f32>>,
    grad: RefCell<Option<ArrayD<f32>>>,
    requires_grad: bool,
    op: &'static str,
    parents: Vec<Tensor>,
    backward: Option<BackwardFn>,
}

/// A handle to an `f32` array that remembers how it was computed.
///
/// Cloning a `Tensor` clones the handle, not the data: both clones see the
/// same value and the same gradient. See the [module docs](self) for the
/// design.
#[derive(Clone)]
pub struct Tensor(Rc<Node>);
// ANCHOR_END: node

impl Tensor {
    /// A constant: gradients never flow into it (input images, labels, …).
    pub fn new(value: ArrayD<f32>) -> Tensor {
        Tensor::leaf(value, false)
    }

    /// A parameter: a leaf whose gradient is kept after
    /// [`backward`](Tensor::backward) (weights, biases, γ, β).
    pub fn parameter(value: ArrayD<f32>) -> Tensor {
        Tensor::leaf(value, true)
    }

    /// A scalar constant (shape `[]`).
    pub fn scalar(value: f32) -> Tensor {
        Tensor::new(ndarray::arr0(value).into_dyn())
    }

    fn leaf(value: ArrayD<f32>, requires_grad: bool) -> Tensor {
        Tensor(Rc::new(Node {
            value: RefCell::new(value),
            grad: RefCell::new(None),
            requires_grad,
            op: if requires_grad {
                "parameter"
            } else {
                "constant"
            },
            parents: Vec::new(),
            backward: None,
        }))
    }

    // ANCHOR: from_op
    /// Records the result of an operation.
    ///
    /// `value` is the forward result, `parents` the tensors it was computed
    /// from and `backward` its vector–Jacobian product. If no parent needs a
    /// gradient, or inside [`no_grad`], the graph is not extended at all (the
    /// result is a constant), so such computations cost no bookkeeping.
    ///
    /// This is public so that readers can add their own operations, as the
    /// book does for the fused batch-norm layer.
    pub fn from_op(
        op: &'static str,
        value: ArrayD<f32>,
        parents: &[&Tensor],
        backward: impl Fn(&BackwardContext) -> Vec<Option<ArrayD<f32>>> + 'static,
    ) -> Tensor {
        let requires_grad = parents.iter().any(|p| p.requires_grad());
        if !requires_grad || !is_recording() {
            return Tensor::new(value);
        }
        Tensor(Rc::new(Node {
            value: RefCell::new(value),
            grad: RefCell::new(None),
            requires_grad,
            op,
            parents: parents.iter().map(|&p| p.clone()).collect(),
            backward: Some(Box::new(backward)),
        }))
    }
    // ANCHOR_END: from_op

    /// The current value. The returned guard borrows the tensor; drop it
    /// before changing the value with [`value_mut`](Tensor::value_mut).
    pub fn value(&self) -> Ref<'_, ArrayD<f32>> {
        self.0.value.borrow()
    }

    /// Mutable access to the value, e.g. for an optimizer step.
    ///
    /// Changing a tensor that is part of a graph which has not run
    /// `backward` yet would make that graph's gradients wrong; optimizers
    /// only change parameters after `backward`.
    pub fn value_mut(&self) -> RefMut<'_, ArrayD<f32>> {
        self.0.value.borrow_mut()
    }

    /// A copy of the gradient accumulated by `backward`, if any.
    pub fn grad(&self) -> Option<ArrayD<f32>> {
        self.0.grad.borrow().clone()
    }

    /// Borrow the gradient without copying it.
    pub fn grad_ref(&self) -> Ref<'_, Option<ArrayD<f32>>> {
        self.0.grad.borrow()
    }

    /// Forgets the accumulated gradient (call before the next `backward`,
    /// because gradients add up).
    pub fn zero_grad(&self) {
        *self.0.grad.borrow_mut() = None;
    }

    /// Whether gradients flow into this tensor.
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }

    /// Whether this tensor was made directly (a parameter or a constant)
    /// rather than computed by a recorded operation. Only leaves keep a
    /// gradient after [`backward`](Tensor::backward).
    pub fn is_leaf(&self) -> bool {
        self.0.backward.is_none()
    }

    /// The name of the operation that produced this tensor
    /// (`"parameter"` and `"constant"` for leaves).
    pub fn op(&self) -> &'static str {
        self.0.op
    }

    /// The tensors this one was computed from (empty for leaves).
    pub fn parents(&self) -> &[Tensor] {
        &self.0.parents
    }

    /// The shape of the value.
    pub fn shape(&self) -> Vec<usize> {
        self.value().shape().to_vec()
    }

    /// Number of dimensions.
    pub fn ndim(&self) -> usize {
        self.value().ndim()
    }

    /// The single number of a tensor with one element.
    ///
    /// # Panics
    /// If the tensor has more or fewer than one element.
    pub fn item(&self) -> f32 {
        let v = self.value();
        assert_eq!(
            v.len(),
            1,
            "item(): tensor has shape {:?}, not a single element",
            v.shape()
        );
        *v.iter().next().expect("one element")
    }

    /// A constant copy of the value, cut off from the graph: gradients do
    /// not flow back through it.
    pub fn detach(&self) -> Tensor {
        Tensor::new(self.value().clone())
    }

    /// Whether two handles point to the same node.
    pub fn same_node(&self, other: &Tensor) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }

    /// Back-propagates from a scalar (e.g. the loss): after this call every
    /// leaf of the graph that requires a gradient (a parameter, or an input
    /// made with [`Tensor::parameter`]) holds ∂self/∂leaf in its `grad`,
    /// *added* to what was there. Results of operations keep no gradient:
    /// each one's is freed as soon as it has been passed on (PyTorch, too,
    /// keeps `.grad` only on leaves).
    ///
    /// # Panics
    /// If `self` has more than one element; use
    /// [`backward_with`](Tensor::backward_with) to seed a non-scalar output.
    pub fn backward(&self) {
        let seed = {
            let v = self.value();
            assert_eq!(
                v.len(),
                1,
                "backward(): output has shape {:?}; call backward_with(seed) for non-scalar outputs",
                v.shape()
            );
            ArrayD::ones(v.raw_dim())
        };
        self.backward_with(seed);
    }

    // ANCHOR: backward_with
    /// Back-propagates starting from ∂loss/∂self = `seed`.
    ///
    /// # Panics
    /// If `seed` does not have the shape of `self`.
    pub fn backward_with(&self, seed: ArrayD<f32>) {
        assert_eq!(
            seed.shape(),
            self.value().shape(),
            "backward_with(): seed shape must equal the output shape"
        );
        if !self.requires_grad() {
            return;
        }
        accumulate(&self.0.grad, seed);
        // One reverse sweep over the nodes in topological order.
        for node in self.topological_order().iter().rev() {
            node.propagate();
            if !node.is_leaf() {
                // An intermediate result's gradient has been passed on and is
                // needed no more: free it now, as PyTorch does, instead of
                // keeping a full-size array per operation until the graph goes.
                node.0.grad.borrow_mut().take();
            }
        }
    }
    // ANCHOR_END: backward_with

    // ANCHOR: topological_order
    /// All nodes that lead to `self` and need gradients, parents before
    /// children (an iterative depth-first search, so deep graphs cannot
    /// overflow the stack).
    fn topological_order(&self) -> Vec<Tensor> {
        let mut order = Vec::new();
        let mut seen: HashSet<*const Node> = HashSet::new();
        // (node, whether its parents have been pushed already)
        let mut stack = vec![(self.clone(), false)];
        while let Some((t, expanded)) = stack.pop() {
            if expanded {
                order.push(t);
                continue;
            }
            if !seen.insert(Rc::as_ptr(&t.0)) {
                continue;
            }
            stack.push((t.clone(), true));
            for p in t.parents() {
                if p.requires_grad() && !seen.contains(&Rc::as_ptr(&p.0)) {
                    stack.push((p.clone(), false));
                }
            }
        }
        order
    }
    // ANCHOR_END: topological_order

    // ANCHOR: propagate
    /// Hands this node's gradient to its backward rule and adds the results
    /// into the parents' gradients.
    fn propagate(&self) {
        let Some(backward) = &self.0.backward else {
            return; // a leaf
        };
        let values: Vec<Ref<ArrayD<f32>>> = self.0.parents.iter().map(|p| p.value()).collect();
        let inputs: Vec<&ArrayD<f32>> = values.iter().map(|v| &**v).collect();
        let needs: Vec<bool> = self.0.parents.iter().map(|p| p.requires_grad()).collect();
        let (parent_grads, handed_on) = {
            let grad = self.0.grad.borrow();
            let Some(grad) = grad.as_ref() else {
                return; // not reached by the loss
            };
            let output = self.value();
            let ctx = BackwardContext {
                grad,
                output: &output,
                inputs: &inputs,
                needs_grad: &needs,
                handed_on: Cell::new(None),
                parents: &self.0.parents,
                added: RefCell::new(vec![false; self.0.parents.len()]),
            };
            (self.run_backward(backward, &ctx), ctx.handed_on.get())
        };
        assert_eq!(
            parent_grads.len(),
            self.0.parents.len(),
            "op `{}`: backward returned {} gradients for {} parents",
            self.0.op,
            parent_grads.len(),
            self.0.parents.len()
        );
        let pairs = self.0.parents.iter().zip(parent_grads).zip(&inputs);
        for (i, ((parent, g), input)) in pairs.enumerate() {
            // a rule that hands this node's gradient on unchanged gets it moved
            let g = if handed_on == Some(i) {
                self.0.grad.borrow_mut().take()
            } else {
                g
            };
            if let (true, Some(g)) = (parent.requires_grad(), g) {
                assert_eq!(
                    g.shape(),
                    input.shape(),
                    "op `{}`: backward produced a gradient of the wrong shape",
                    self.0.op
                );
                accumulate(&parent.0.grad, g);
            }
        }
    }
    // ANCHOR_END: propagate

    /// Calls this node's backward rule: `backward(ctx)`, timed per
    /// operation when [`profile`] is enabled.
    fn run_backward(
        &self,
        backward: &BackwardFn,
        ctx: &BackwardContext,
    ) -> Vec<Option<ArrayD<f32>>> {
        let started = profile::start();
        let parent_grads = backward(ctx);
        profile::record(self.0.op, started);
        parent_grads
    }
}

// ANCHOR: accumulate
/// `grad += g`, starting from nothing.
fn accumulate(slot: &RefCell<Option<ArrayD<f32>>>, g: ArrayD<f32>) {
    let mut slot = slot.borrow_mut();
    match slot.as_mut() {
        Some(acc) => kernels::add_assign(acc, &g),
        None => *slot = Some(g),
    }
}
// ANCHOR_END: accumulate

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.value();
        write!(
            f,
            "Tensor(op={}, shape={:?}, requires_grad={})\n{:.4}",
            self.op(),
            v.shape(),
            self.requires_grad(),
            *v
        )
    }
}

impl From<ArrayD<f32>> for Tensor {
    fn from(value: ArrayD<f32>) -> Tensor {
        Tensor::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn no_grad_records_nothing_computes_the_same_and_always_restores() {
        let w = Tensor::parameter(array![1.5_f32, -2.0].into_dyn());
        let recorded = (&w * &w).sum_all();
        let unrecorded = no_grad(|| (&w * &w).sum_all());
        assert!(recorded.requires_grad() && !unrecorded.requires_grad());
        assert_eq!(recorded.item(), unrecorded.item());
        assert!(is_recording());
        let unwound = std::panic::catch_unwind(|| no_grad(|| panic!("inside no_grad")));
        assert!(unwound.is_err());
        assert!(is_recording(), "recording resumes after a panic");
        assert!(!no_grad(|| no_grad(is_recording) || is_recording()));
    }

    #[test]
    fn handed_on_gradients_arrive_once_per_use() {
        // x + x: the first operand gets the output's gradient moved, the
        // second a copy; both must arrive (dL/dx = 2 per element)
        let x = Tensor::parameter(array![[1.0_f32, -2.0], [0.5, 3.0]].into_dyn());
        (&x + &x).sum_all().backward();
        assert_eq!(
            x.grad().unwrap(),
            array![[2.0_f32, 2.0], [2.0, 2.0]].into_dyn()
        );
        // (a + b) − c with b broadcast and c full size, then scaled, so the
        // handed-on gradient is not all ones: a gets it moved, b summed, c negated
        let a = Tensor::parameter(array![[1.0_f32, 2.0], [3.0, 4.0]].into_dyn());
        let b = Tensor::parameter(array![[10.0_f32, 20.0]].into_dyn());
        let c = Tensor::parameter(array![[0.5_f32, 0.25], [1.0, 2.0]].into_dyn());
        let w = Tensor::new(array![[1.0_f32, 2.0], [3.0, 4.0]].into_dyn());
        ((&a + &b) - &c).mul(&w).sum_all().backward();
        assert_eq!(a.grad().unwrap(), w.value().clone());
        assert_eq!(b.grad().unwrap(), array![[4.0_f32, 6.0]].into_dyn());
        assert_eq!(c.grad().unwrap(), w.value().mapv(|v| -v));
        // a constant operand needs nothing and is skipped; the other still gets g
        let d = Tensor::parameter(array![1.0_f32, 2.0].into_dyn());
        let k = Tensor::new(array![5.0_f32, 6.0].into_dyn());
        (&k + &d).sum_all().backward();
        assert_eq!(d.grad().unwrap(), array![1.0_f32, 1.0].into_dyn());
    }

    #[test]
    fn gradients_added_in_place_arrive_in_parent_order() {
        // x already holds a gradient of 1 (from a first backward pass); each
        // use of x in the next one adds 4e-8, which 1 + 4e-8 rounds away but
        // 1 - 4e-8 does not: the result tells the order of the additions
        let t = 4e-8_f32;
        let x = Tensor::parameter(array![1.0_f32].into_dyn());
        let k = Tensor::new(array![t].into_dyn());
        let from_one = |loss: Tensor| {
            x.zero_grad();
            x.sum_all().backward();
            loss.backward();
            x.grad().unwrap()[0]
        };
        // x·x: both terms are added straight into x's gradient, in order
        assert_eq!(from_one((&x * &x).mul(&k).sum_all()), (1.0 + t) + t);
        assert_ne!(
            (1.0 + t) + t,
            1.0 + (t + t),
            "the test can tell orders apart"
        );
        // x·x with no gradient yet: g·x + g·x, as two separate factors give
        let z = Tensor::parameter(array![0.3_f32, -1.7, 2.9].into_dyn());
        let w = Tensor::new(array![1.1_f32, 0.7, -0.13].into_dyn());
        (&z * &z).mul(&w).sum_all().backward();
        let (a, b) = (
            Tensor::parameter(z.value().clone()),
            Tensor::parameter(z.value().clone()),
        );
        (&a * &b).mul(&w).sum_all().backward();
        assert_eq!(z.grad().unwrap(), a.grad().unwrap() + b.grad().unwrap());
        // x − x: the first operand's gradient is handed on (the engine adds
        // it after the rule), so the second must wait for it, not go first
        assert_eq!(from_one((&x - &x).mul(&k).sum_all()), (1.0 + t) - t);
        assert_ne!(
            (1.0 + t) - t,
            (1.0 - t) + t,
            "the test can tell orders apart"
        );
        // the mean of y, added to each of y's four values, after y's own
        // gradient (3): its broadcast gradient (4 × 1/4) is added in place
        let y = Tensor::parameter(array![[1.0_f32, 2.0], [3.0, 4.0]].into_dyn());
        (y.mul_scalar(3.0) + y.mean(&[0, 1], true))
            .sum_all()
            .backward();
        assert_eq!(
            y.grad().unwrap(),
            ArrayD::from_elem(ndarray::IxDyn(&[2, 2]), 4.0)
        );
    }

    #[test]
    fn per_step_graph_is_freed_when_the_loss_is_dropped() {
        let w = Tensor::parameter(array![1.0_f32, 2.0].into_dyn());
        for _ in 0..3 {
            let hidden = &w * &w;
            let watch = Rc::downgrade(&hidden.0);
            let loss = hidden.sum_all();
            drop(hidden);
            loss.backward();
            assert!(watch.upgrade().is_some(), "the loss keeps its graph alive");
            drop(loss);
            assert!(
                watch.upgrade().is_none(),
                "dropping the loss frees the graph"
            );
            // nothing but our own handle refers to the parameter any more
            assert_eq!(Rc::strong_count(&w.0), 1);
            w.zero_grad();
        }
    }
}
