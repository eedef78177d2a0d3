//! Layers, composition, initialisation and the SGD optimizer.
//!
//! *Book: chapters "BN from scratch" and "LeNet with BN".*
//!
//! Every layer implements [`Module`]. Its `forward` takes the [`Mode`]
//! explicitly: whether a network is training or predicting is an argument
//! you can see at the call site, never a hidden flag (forgetting to switch a
//! batch-norm network to prediction mode is the most common BN bug).

mod dropout;
mod init;
mod layers;
mod noise;
mod optim;

pub use dropout::{Dropout, dropout};
pub use init::{uniform, xavier_uniform};
pub use layers::{AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sigmoid};
pub use noise::{DistributionNoise, NoiseOptions, scale_and_shift};
pub use optim::{Sgd, check_learning_rate};

use crate::autograd::{Tensor, check_logits};
use crate::error::Result;
use std::any::Any;

/// Whether a network is learning or predicting.
///
/// Only layers with batch statistics (batch norm) behave differently: in
/// `Train` they normalise with the current batch's statistics and update
/// their running averages; in `Eval` they use the running averages and
/// change nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Training: use batch statistics, update running statistics.
    Train,
    /// Prediction (evaluation, inference): use running statistics only.
    Eval,
}

/// Lets `dyn Module` values be downcast to their concrete layer type, e.g.
/// to read a batch-norm layer's γ and β out of a [`Sequential`].
pub trait AsAny: Any {
    /// `self` as `&dyn Any`.
    fn as_any(&self) -> &dyn Any;
    /// `self` as `&mut dyn Any`.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Any> AsAny for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// A layer or a network: something with a forward pass and parameters.
pub trait Module: AsAny {
    /// Computes the output for a batch `x` in the given mode.
    ///
    /// Takes `&mut self` because some layers (batch norm) update state in
    /// training mode.
    ///
    /// # Errors
    /// If `x` does not have the shape the layer expects.
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor>;

    /// The trainable parameters (handles, not copies: an optimizer that
    /// changes them changes the layer).
    fn parameters(&self) -> Vec<Tensor> {
        Vec::new()
    }

    /// A one-line description, e.g. `Linear(256 -> 120)`.
    fn describe(&self) -> String;

    /// `Some` for batch-norm layers, so their γ, β and running statistics
    /// can be read from inside any network (see
    /// [`Sequential::batch_norm_layers`]).
    fn as_batch_norm(&self) -> Option<&dyn BatchNormLayer> {
        None
    }

    /// `Some` for batch-norm layers: their momentum can be changed from
    /// inside any network (see [`Sequential::batch_norm_layers_mut`]).
    fn as_batch_norm_mut(&mut self) -> Option<&mut dyn BatchNormLayer> {
        None
    }
}

/// What every batch-norm layer (scratch or concise) lets you read.
///
/// Values are returned flattened to one entry per feature / channel.
pub trait BatchNormLayer {
    /// Number of features (fully connected) or channels (convolutional).
    fn num_features(&self) -> usize;
    /// The learned scale γ (`None` when the layer has no affine part).
    fn gamma(&self) -> Option<Vec<f32>>;
    /// The learned shift β (`None` when the layer has no affine part).
    fn beta(&self) -> Option<Vec<f32>>;
    /// The running mean used in [`Mode::Eval`].
    fn running_mean(&self) -> Vec<f32>;
    /// The running variance used in [`Mode::Eval`].
    fn running_var(&self) -> Vec<f32>;
    /// The ε added to the variance before the square root.
    fn eps(&self) -> f32;
    /// How the running statistics follow the batch statistics, in the
    /// new-batch-weight terms of [`Momentum`] whatever the layer's own
    /// convention (the scratch layer's `momentum = 0.9` is
    /// `NewBatchWeight(0.1)`).
    fn momentum(&self) -> Momentum;
    /// Sets how the next training steps update the running statistics
    /// (precise BN, [`crate::train::reestimate_running_statistics`], uses
    /// it). Setting back what [`BatchNormLayer::momentum`] returned restores
    /// the layer exactly for the usual old-value weights of 0.5 and above.
    ///
    /// # Errors
    /// If the weight is outside `[0, 1]`, or the layer cannot follow that
    /// rule (the scratch layer keeps no step count for
    /// [`Momentum::CumulativeAverage`]).
    fn set_momentum(&mut self, momentum: Momentum) -> Result<()>;
}

/// How the running statistics follow the batch statistics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Momentum {
    /// `running ← (1 − w)·running + w·batch`, with `w` the weight of the
    /// **new** batch (PyTorch's `momentum`, default 0.1). The seeds' and
    /// Keras' `momentum` is the weight of the *old* value; convert with
    /// [`Momentum::from_old_weight`] (`0.9` becomes `NewBatchWeight(0.1)`).
    NewBatchWeight(f32),
    /// The plain average of all batches seen so far (PyTorch's
    /// `momentum=None`): `w = 1/k` at the `k`-th training step.
    CumulativeAverage,
}

impl Momentum {
    /// From the "weight of the old value" convention used by d2l's scratch
    /// code (0.9) and Keras (0.99).
    pub fn from_old_weight(old_weight: f32) -> Self {
        Momentum::NewBatchWeight(1.0 - old_weight)
    }
}

/// Layers applied one after another.
#[derive(Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Module>>,
}

impl Sequential {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a layer (builder style: `Sequential::new().with(a).with(b)`).
    pub fn with(mut self, layer: impl Module + 'static) -> Self {
        self.layers.push(Box::new(layer));
        self
    }

    /// Appends a layer in place.
    pub fn push(&mut self, layer: impl Module + 'static) {
        self.layers.push(Box::new(layer));
    }

    /// Appends an already boxed layer (for layers chosen at run time).
    pub fn push_boxed(&mut self, layer: Box<dyn Module>) {
        self.layers.push(layer);
    }

    /// The layers, in order.
    pub fn layers(&self) -> &[Box<dyn Module>] {
        &self.layers
    }

    /// Mutable access to the layers.
    pub fn layers_mut(&mut self) -> &mut [Box<dyn Module>] {
        &mut self.layers
    }

    /// The layers, taken out of the network (to build a changed copy, as
    /// [`crate::fold::fold_batch_norm`] does).
    pub fn into_layers(self) -> Vec<Box<dyn Module>> {
        self.layers
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// All layers of type `T`, in order (e.g. every batch-norm layer).
    pub fn find<T: Module>(&self) -> Vec<&T> {
        self.layers
            .iter()
            .filter_map(|l| l.as_ref().as_any().downcast_ref::<T>())
            .collect()
    }

    /// Every batch-norm layer, in order, with its index in the network.
    pub fn batch_norm_layers(&self) -> Vec<(usize, &dyn BatchNormLayer)> {
        self.layers
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.as_batch_norm().map(|bn| (i, bn)))
            .collect()
    }

    /// Every batch-norm layer, in order, to change (e.g. its momentum).
    pub fn batch_norm_layers_mut(&mut self) -> Vec<&mut dyn BatchNormLayer> {
        self.layers
            .iter_mut()
            .filter_map(|l| l.as_batch_norm_mut())
            .collect()
    }

    /// Runs `x` through every layer in `Eval` mode and returns each layer's
    /// description with its output shape — the table d2l prints to show how
    /// LeNet shrinks a 28×28 image.
    ///
    /// # Errors
    /// If a layer rejects the shape it receives.
    pub fn shape_trace(&mut self, x: &Tensor) -> Result<Vec<(String, Vec<usize>)>> {
        let mut x = x.detach();
        let mut rows = Vec::with_capacity(self.layers.len());
        for layer in &mut self.layers {
            x = layer.forward(&x, Mode::Eval)?.detach();
            rows.push((layer.describe(), x.shape()));
        }
        Ok(rows)
    }
}

impl Module for Sequential {
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut x = x.clone();
        for layer in &mut self.layers {
            x = layer.forward(&x, mode)?;
        }
        Ok(x)
    }

    fn parameters(&self) -> Vec<Tensor> {
        self.layers.iter().flat_map(|l| l.parameters()).collect()
    }

    fn describe(&self) -> String {
        let inner: Vec<String> = self.layers.iter().map(|l| l.describe()).collect();
        format!("Sequential({})", inner.join(", "))
    }
}

impl std::fmt::Debug for Sequential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "Sequential(")?;
        for (i, l) in self.layers.iter().enumerate() {
            writeln!(f, "  ({i}): {}", l.describe())?;
        }
        write!(f, ")")
    }
}

/// The fewest examples a training batch needs when a network normalises
/// with batch statistics: batch norm estimates a variance from each batch,
/// and one example has none.
pub const MIN_BATCH_WITH_BATCH_NORM: usize = 2;

/// The one rule for batch sizes: at least 1, and at least
/// [`MIN_BATCH_WITH_BATCH_NORM`] when `network` (named in the message)
/// trains with batch statistics. Every caller — training, models, the
/// benchmarks, the sweeps, the command line — asks this function.
///
/// # Errors
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument) saying which
/// size is wrong and what to use instead.
pub fn check_batch_size(batch_size: usize, network: &str, batch_statistics: bool) -> Result<()> {
    if batch_size == 0 {
        return Err(crate::Error::InvalidArgument(
            "the batch size must be at least 1, got 0 (d2l uses 256)".into(),
        ));
    }
    if batch_statistics && batch_size < MIN_BATCH_WITH_BATCH_NORM {
        return Err(crate::Error::InvalidArgument(format!(
            "a batch size of {batch_size} cannot train {network}: batch norm estimates a mean \
             and a variance from each batch and needs at least {MIN_BATCH_WITH_BATCH_NORM} \
             examples per batch; use a batch size of {MIN_BATCH_WITH_BATCH_NORM} or more \
             (d2l uses 256), or a model without batch norm"
        )));
    }
    Ok(())
}

/// Checks a normalisation layer's ε: it must be a positive, finite number
/// (0 divides by zero on a constant channel, a negative or NaN ε gives NaN,
/// an infinite one erases the input).
pub(crate) fn check_eps(layer: &str, eps: f32) -> Result<()> {
    if eps.is_finite() && eps > 0.0 {
        return Ok(());
    }
    Err(crate::Error::InvalidArgument(format!(
        "{layer}: eps must be a small positive number such as 1e-5, got {eps}"
    )))
}

/// Checks that a layer's parameter still has the shape the layer was built
/// with (the fields are public, so a user may have replaced it). `layer`
/// names the layer, only when there is an error to report.
pub(crate) fn check_parameter(
    layer: impl Fn() -> String,
    name: &str,
    p: &Tensor,
    expected: &[usize],
) -> Result<()> {
    // compared in place: runs on every forward pass, so no copy of the shape
    if p.value().shape() == expected {
        return Ok(());
    }
    let got = p.shape();
    Err(crate::Error::shape(
        layer(),
        format!(
            "{name} has shape {got:?} but the layer needs {expected:?}; \
             a replacement must keep the shape"
        ),
    ))
}

/// Checks a momentum-like weight: a number in `[0, 1]` (`what` names the
/// convention, e.g. "weight of the old moving value").
pub(crate) fn check_weight(layer: &str, what: &str, weight: f32) -> Result<()> {
    if (0.0..=1.0).contains(&weight) {
        return Ok(());
    }
    Err(crate::Error::InvalidArgument(format!(
        "{layer}: momentum ({what}) must be in [0, 1], got {weight}"
    )))
}

/// How many rows of `logits` (shape `(N, K)`) have their largest entry at
/// the true label — the numerator of accuracy. A row containing NaN (a
/// diverged network) counts as wrong rather than as a vote for class 0.
///
/// # Errors
/// If `logits` is not 2-D, the number of labels differs from `N`, or a
/// label is not below `K`.
pub fn count_correct(logits: &Tensor, labels: &[usize]) -> Result<usize> {
    let v = logits.value();
    check_logits("count_correct", v.shape(), labels)?;
    let correct = v
        .outer_iter()
        .zip(labels)
        .filter(|(row, label)| {
            if row.iter().any(|x| x.is_nan()) {
                return false;
            }
            let best = row
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
                    if x > bv { (i, x) } else { (bi, bv) }
                });
            best.0 == **label
        })
        .count();
    Ok(correct)
}
