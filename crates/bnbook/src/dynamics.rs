//! Instruments for watching a network train: what each layer hands the
//! next ([`Sequential::forward_recorded`]), how far the sigmoids saturate,
//! the gradient norm of every weight layer, how smooth the loss is along
//! the gradient ([`probe_landscape`]), and a training loop that records all
//! of it every few steps ([`train_traced`]). [`Variant`] builds the
//! LeNet-BN variants the experiments compare: with or without batch norm,
//! with Santurkar et al.'s noise after every batch norm, with dropout, with
//! poorly scaled initial weights.
//!
//! *Book: chapter "What batch norm does to training".*
//!
//! Recording costs nothing when it is not used: [`Module::forward`] and
//! [`crate::train::train`] are unchanged, and [`train_traced`] runs the plain
//! forward pass on every step it does not record. Recording only reads, so
//! a traced run is the same bits as an untraced one (a test checks this).

use crate::autograd::Tensor;
use crate::data::{BatchOptions, FashionMnist, LastBatch};
use crate::error::{Error, Result};
use crate::models::ModelKind;
use crate::nn::{
    Conv2d, Dropout, Flatten, Linear, MIN_BATCH_WITH_BATCH_NORM, Mode, Module, Momentum,
    NoiseOptions, Sequential, Sgd, Sigmoid, count_correct,
};
use crate::nn::{DistributionNoise, check_batch_size};
use crate::train::{EpochRecord, History, TrainConfig, evaluate};
use ndarray::{ArrayD, Axis};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

// ----- recording a forward pass -----

/// What one layer did in a recorded forward pass.
pub struct LayerActivity<'a> {
    /// Position of the layer in the network (from 0).
    pub index: usize,
    /// The layer itself (downcast with `layer.as_any().is::<Sigmoid>()`).
    pub layer: &'a dyn Module,
    /// What the layer received.
    pub input: &'a Tensor,
    /// What the layer returned.
    pub output: &'a Tensor,
}

// ANCHOR: forward_recorded
impl Sequential {
    /// [`Module::forward`], handing every layer's input and output to
    /// `record` as it goes. `record` only sees values, so the result and
    /// the gradients are those of `forward` (a gradient check and a
    /// bit-for-bit comparison in the tests show it); the ordinary
    /// `forward` stays as it is and costs nothing extra.
    ///
    /// # Errors
    /// If a layer rejects the shape it receives.
    pub fn forward_recorded(
        &mut self,
        x: &Tensor,
        mode: Mode,
        record: &mut dyn FnMut(LayerActivity<'_>),
    ) -> Result<Tensor> {
        let mut x = x.clone();
        for (index, layer) in self.layers_mut().iter_mut().enumerate() {
            let y = layer.forward(&x, mode)?;
            record(LayerActivity {
                index,
                layer: layer.as_ref(),
                input: &x,
                output: &y,
            });
            x = y;
        }
        Ok(x)
    }
}
// ANCHOR_END: forward_recorded

/// The `p`-th percentile (0–100) of `sorted` values, nearest rank.
fn percentile(sorted: &[f32], p: f64) -> f32 {
    if sorted.is_empty() {
        return f32::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What a sigmoid received in one recorded step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SigmoidInput {
    /// Share of the input values with `|z|` above the saturation threshold
    /// (where `σ'(z)` is small: 0.018 at `|z| = 4`).
    pub saturated: f64,
    /// 15th, 50th and 85th percentile of the watched unit's input over the
    /// batch (and the positions, for a convolutional channel) — Ioffe &
    /// Szegedy (2015), Figure 1(b, c).
    pub watched: [f32; 3],
}

/// Summarises the input `z` of a sigmoid: the share with `|z| > threshold`
/// and the percentiles of unit (feature or channel) `unit`.
///
/// # Errors
/// If `z` is not `(N, F)` or `(N, C, H, W)` or has no unit `unit`.
pub fn sigmoid_input(z: &ArrayD<f32>, unit: usize, threshold: f32) -> Result<SigmoidInput> {
    if z.ndim() != 2 && z.ndim() != 4 {
        return Err(Error::shape(
            "sigmoid_input",
            format!("expected (N, F) or (N, C, H, W), got {:?}", z.shape()),
        ));
    }
    let units = z.shape()[1];
    if unit >= units {
        return Err(Error::InvalidArgument(format!(
            "the watched unit {unit} does not exist: this sigmoid has {units} units (0 to {})",
            units.saturating_sub(1)
        )));
    }
    let saturated = z.iter().filter(|v| v.abs() > threshold).count() as f64 / z.len() as f64;
    let mut values: Vec<f32> = z.index_axis(Axis(1), unit).iter().copied().collect();
    values.sort_by(f32::total_cmp);
    let watched = [15.0, 50.0, 85.0].map(|p| percentile(&values, p));
    Ok(SigmoidInput { saturated, watched })
}

// ----- weights and their gradients -----

/// The weight of a `Linear` or `Conv2d` layer, `None` for any other layer.
fn weight_of(layer: &dyn Module) -> Option<&Tensor> {
    let any = layer.as_any();
    any.downcast_ref::<Linear>()
        .map(|l| &l.weight)
        .or_else(|| any.downcast_ref::<Conv2d>().map(|c| &c.weight))
}

/// The Euclidean (Frobenius) norm of an array, summed in `f64`.
fn norm(a: &ArrayD<f32>) -> f64 {
    a.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt()
}

/// One weight layer's gradient after a backward pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightGradient {
    /// The layer, e.g. `Linear(84 -> 10)`.
    pub layer: String,
    /// `‖∂loss/∂W‖` (0 if the weight has no gradient yet).
    pub gradient_norm: f64,
    /// `‖W‖`, to read the gradient against.
    pub weight_norm: f64,
}

/// The gradient norm of every `Linear` and `Conv2d` weight of `net`, in
/// order — read after `backward`, before the optimizer clears it.
pub fn weight_gradients(net: &Sequential) -> Vec<WeightGradient> {
    net.layers()
        .iter()
        .filter_map(|layer| {
            let w = weight_of(layer.as_ref())?;
            Some(WeightGradient {
                layer: layer.describe(),
                gradient_norm: w.grad_ref().as_ref().map_or(0.0, norm),
                weight_norm: norm(&w.value()),
            })
        })
        .collect()
}

/// Multiplies every `Linear` and `Conv2d` weight of `net` by `factor`
/// (biases and batch norm's γ, β stay): a poor initialisation, e.g. 0.1 or
/// 10 times Xavier's. Returns how many weights were scaled.
///
/// # Errors
/// If `factor` is not a positive finite number.
pub fn scale_weights(net: &Sequential, factor: f32) -> Result<usize> {
    check_weight_scale(factor)?;
    let mut scaled = 0;
    for layer in net.layers() {
        if let Some(w) = weight_of(layer.as_ref()) {
            w.value_mut().mapv_inplace(|v| v * factor);
            scaled += 1;
        }
    }
    Ok(scaled)
}

fn check_weight_scale(factor: f32) -> Result<()> {
    if factor.is_finite() && factor > 0.0 {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "the weight scale must be a positive number (1 keeps Xavier's weights), got {factor}"
    )))
}

// ----- the networks compared -----

/// A LeNet-BN-shaped network for the experiments: `lenet-bn` or, without
/// batch norm, `lenet-no-norm` (the same network with the four batch norms
/// removed), optionally with noise after every batch norm, dropout after
/// the hidden fully connected layers' sigmoids, and weights scaled after
/// Xavier's initialisation. With the same seed, every variant starts from
/// the same weights as [`crate::train::train_model`] gives its model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Variant {
    /// Batch norm in the four slots (`lenet-bn`) or nothing (`lenet-no-norm`).
    pub batch_norm: bool,
    /// Santurkar et al.'s [`DistributionNoise`] after every batch norm.
    pub noise: Option<NoiseOptions>,
    /// [`Dropout`] with this drop probability after the sigmoids of the two
    /// hidden fully connected layers.
    pub dropout: Option<f32>,
    /// Every weight multiplied by this after Xavier's initialisation.
    pub weight_scale: f32,
}

impl Variant {
    /// `lenet-bn` as it is.
    pub const BATCH_NORM: Variant = Variant {
        batch_norm: true,
        noise: None,
        dropout: None,
        weight_scale: 1.0,
    };

    /// `lenet-no-norm`: the same network without batch norm.
    pub const NO_NORM: Variant = Variant {
        batch_norm: false,
        ..Variant::BATCH_NORM
    };

    /// The same variant with noise after every batch norm.
    pub fn with_noise(self, noise: NoiseOptions) -> Self {
        Variant {
            noise: Some(noise),
            ..self
        }
    }

    /// The same variant with dropout of probability `p`.
    pub fn with_dropout(self, p: f32) -> Self {
        Variant {
            dropout: Some(p),
            ..self
        }
    }

    /// The same variant with its weights scaled by `factor`.
    pub fn with_weight_scale(self, factor: f32) -> Self {
        Variant {
            weight_scale: factor,
            ..self
        }
    }

    /// The model it is built from.
    pub fn model(&self) -> ModelKind {
        if self.batch_norm {
            ModelKind::LenetBn
        } else {
            ModelKind::LenetNoNorm
        }
    }

    /// A name for tables and files: `lenet-bn`, `lenet-bn+noise`,
    /// `lenet-no-norm+dropout`, `lenet-bn×0.1`.
    pub fn name(&self) -> String {
        let mut name = self.model().name().to_string();
        if self.noise.is_some() {
            name += "+noise";
        }
        if self.dropout.is_some() {
            name += "+dropout";
        }
        if self.weight_scale != 1.0 {
            name += &format!("×{}", self.weight_scale);
        }
        name
    }

    /// Checks the variant before anything is built or trained.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for noise without batch norm, a bad noise
    /// range, a drop probability outside `[0, 1)` or a weight scale that is
    /// not a positive number.
    pub fn validate(&self) -> Result<()> {
        if let Some(noise) = self.noise {
            if !self.batch_norm {
                return Err(Error::InvalidArgument(
                    "noisy batch norm adds its noise after each batch norm, and this variant \
                     has none; use Variant::BATCH_NORM.with_noise(..)"
                        .into(),
                ));
            }
            noise.validate()?;
        }
        if let Some(p) = self.dropout {
            Dropout::new(p, 0)?;
        }
        check_weight_scale(self.weight_scale)
    }

    /// Builds the network: weights from `seed` exactly as `train_model`
    /// draws them, then the extra layers (their random streams derived from
    /// `seed` and their position), then the weight scale.
    ///
    /// # Errors
    /// If the variant is invalid ([`Variant::validate`]).
    pub fn build(&self, seed: u64) -> Result<Sequential> {
        self.validate()?;
        let base = self.model().build(&mut StdRng::seed_from_u64(seed))?;
        let stream = |i: usize| seed ^ 0x9E37_79B9_7F4A_7C15_u64.wrapping_mul(i as u64 + 1);
        let mut net = Sequential::new();
        let mut fully_connected = false;
        for (i, layer) in base.into_layers().into_iter().enumerate() {
            let is_batch_norm = layer.as_batch_norm().is_some();
            let is_sigmoid = layer.as_any().is::<Sigmoid>();
            fully_connected |= layer.as_any().is::<Flatten>();
            net.push_boxed(layer);
            if let (true, Some(noise)) = (is_batch_norm, self.noise) {
                net.push(DistributionNoise::new(noise, stream(i))?);
            }
            if let (true, true, Some(p)) = (is_sigmoid, fully_connected, self.dropout) {
                net.push(Dropout::new(p, stream(i))?);
            }
        }
        scale_weights(&net, self.weight_scale)?;
        Ok(net)
    }
}

// ----- the loss along the gradient -----

/// How the loss and its gradient change along the gradient direction at
/// one point of training — Santurkar et al. (2018), Figure 4.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LandscapeProbe {
    /// The loss at the current weights `w`.
    pub loss: f64,
    /// `‖g‖`, the norm of the gradient `g` at `w` (all parameters).
    pub gradient_norm: f64,
    /// The step sizes `η` tried.
    pub step_sizes: Vec<f32>,
    /// `L(w − η·g)` for each `η`.
    pub loss_at: Vec<f64>,
    /// `‖∇L(w − η·g) − g‖` for each `η`: how far the gradient a step away
    /// differs from the one at `w` (small: the gradient is predictive).
    pub gradient_change: Vec<f64>,
}

impl LandscapeProbe {
    /// Largest minus smallest loss among `w` and the points stepped to.
    pub fn loss_range(&self) -> f64 {
        let all = || std::iter::once(self.loss).chain(self.loss_at.iter().copied());
        all().fold(f64::NEG_INFINITY, f64::max) - all().fold(f64::INFINITY, f64::min)
    }

    /// The largest gradient change over the step sizes.
    pub fn max_gradient_change(&self) -> f64 {
        self.gradient_change
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }

    /// "Effective β-smoothness": the largest `‖∇L(w − η·g) − g‖ / ‖η·g‖`
    /// over the step sizes, a local Lipschitz constant of the gradient.
    pub fn smoothness(&self) -> f64 {
        self.step_sizes
            .iter()
            .zip(&self.gradient_change)
            .map(|(&eta, change)| change / (f64::from(eta) * self.gradient_norm))
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

/// Loss and gradient of `net` on one batch in [`Mode::Train`], with every
/// parameter's gradient left in place.
fn loss_and_gradient(net: &mut Sequential, x: &Tensor, labels: &[usize]) -> Result<f64> {
    let loss = net.forward(x, Mode::Train)?.softmax_cross_entropy(labels)?;
    loss.backward();
    Ok(f64::from(loss.item()))
}

/// Steps from the current weights `w` along the gradient `g` of the loss on
/// the batch `(x, labels)` by each `η` of `step_sizes` and measures the loss
/// and the gradient there ([`LandscapeProbe`]). Afterwards the weights are
/// `w` again, every gradient is cleared and the running statistics are
/// unchanged (batch norm's momentum is set to keep them during the probe),
/// so a training run that probes is the same bits as one that does not.
/// Call it between steps, when no gradient is pending.
///
/// # Errors
/// If `step_sizes` is empty or holds a step that is not a positive number,
/// the network has random layers (dropout, noise: probing would draw from
/// their generators and change the run), or it rejects the batch.
pub fn probe_landscape(
    net: &mut Sequential,
    x: &Tensor,
    labels: &[usize],
    step_sizes: &[f32],
) -> Result<LandscapeProbe> {
    check_step_sizes(step_sizes)?;
    if !net.find::<Dropout>().is_empty() || !net.find::<DistributionNoise>().is_empty() {
        return Err(Error::InvalidArgument(
            "the loss-landscape probe runs extra forward passes, which would draw new dropout \
             masks or noise and so change the training run; probe a network without them"
                .into(),
        ));
    }
    let params = net.parameters();
    let saved: Vec<Momentum> = net
        .batch_norm_layers()
        .iter()
        .map(|(_, bn)| bn.momentum())
        .collect();
    for bn in net.batch_norm_layers_mut() {
        bn.set_momentum(Momentum::NewBatchWeight(0.0))?;
    }
    let w: Vec<ArrayD<f32>> = params.iter().map(|p| p.value().clone()).collect();
    let mut probe = || -> Result<LandscapeProbe> {
        let loss = loss_and_gradient(net, x, labels)?;
        let g: Vec<Option<ArrayD<f32>>> = params.iter().map(Tensor::grad).collect();
        let gradient_norm = g
            .iter()
            .flatten()
            .map(|g| norm(g).powi(2))
            .sum::<f64>()
            .sqrt();
        let (mut loss_at, mut gradient_change) = (Vec::new(), Vec::new());
        for &eta in step_sizes {
            for ((p, w), g) in params.iter().zip(&w).zip(&g) {
                let mut value = p.value_mut();
                value.assign(w);
                if let Some(g) = g {
                    value.scaled_add(-eta, g);
                }
                drop(value);
                p.zero_grad();
            }
            loss_at.push(loss_and_gradient(net, x, labels)?);
            let change: f64 = params
                .iter()
                .zip(&g)
                .filter_map(|(p, g)| Some(norm(&(p.grad()? - g.as_ref()?)).powi(2)))
                .sum();
            gradient_change.push(change.sqrt());
        }
        Ok(LandscapeProbe {
            loss,
            gradient_norm,
            step_sizes: step_sizes.to_vec(),
            loss_at,
            gradient_change,
        })
    };
    let result = probe();
    for (p, w) in params.iter().zip(w) {
        *p.value_mut() = w;
        p.zero_grad();
    }
    for (bn, momentum) in net.batch_norm_layers_mut().into_iter().zip(saved) {
        bn.set_momentum(momentum)?;
    }
    result
}

fn check_step_sizes(step_sizes: &[f32]) -> Result<()> {
    if step_sizes.is_empty() || step_sizes.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(Error::InvalidArgument(format!(
            "the loss-landscape probe needs one or more positive step sizes, got {step_sizes:?}"
        )));
    }
    Ok(())
}

// ----- a training run that records -----

/// What [`train_traced`] records, and how often.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceOptions {
    /// Recorded steps per epoch (spread evenly; the first and the last step
    /// of the run are always recorded).
    pub records_per_epoch: usize,
    /// The unit (feature or channel) whose sigmoid input is summarised by
    /// percentiles, in every sigmoid layer.
    pub watch_unit: usize,
    /// `|z|` above which a sigmoid input counts as saturated.
    pub saturation: f32,
    /// Step sizes of the loss-landscape probe at every recorded step
    /// (empty: no probe). Each probe costs one forward and backward pass per
    /// step size plus one.
    pub step_sizes: Vec<f32>,
}

impl Default for TraceOptions {
    /// Ten records per epoch, unit 0, saturation at `|z| > 4`, no probe.
    fn default() -> Self {
        TraceOptions {
            records_per_epoch: 10,
            watch_unit: 0,
            saturation: 4.0,
            step_sizes: Vec::new(),
        }
    }
}

impl TraceOptions {
    /// Checks the options.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if there are no records per epoch, the
    /// threshold is not a positive number, or a step size is not positive.
    pub fn validate(&self) -> Result<()> {
        if self.records_per_epoch == 0 {
            return Err(Error::InvalidArgument(
                "a traced run needs at least 1 record per epoch".into(),
            ));
        }
        if !(self.saturation.is_finite() && self.saturation > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "the saturation threshold must be a positive number such as 4, got {}",
                self.saturation
            )));
        }
        if !self.step_sizes.is_empty() {
            check_step_sizes(&self.step_sizes)?;
        }
        Ok(())
    }
}

/// One recorded training step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// Training step (from 0: the first step, at the initial weights).
    pub step: usize,
    /// The loss of this step's batch.
    pub loss: f64,
    /// The input of every sigmoid layer, in order.
    pub sigmoids: Vec<SigmoidInput>,
    /// The gradient of every weight layer, in order.
    pub gradients: Vec<WeightGradient>,
    /// The loss along the gradient, if probed.
    pub landscape: Option<LandscapeProbe>,
}

/// Everything a traced run recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// The network's name.
    pub model: String,
    /// Training steps per epoch.
    pub steps_per_epoch: usize,
    /// The recorded steps, in order.
    pub records: Vec<TraceRecord>,
}

/// The running sums of one epoch, as `train` keeps them.
#[derive(Default)]
struct Tally {
    loss_sum: f64,
    correct: usize,
    seen: usize,
    busy: Duration,
}

impl Tally {
    /// The epoch's record, as `train` reports it.
    fn epoch(&self, epoch: usize, test_acc: f64) -> EpochRecord {
        let seen = self.seen.max(1) as f64;
        EpochRecord {
            epoch,
            loss: self.loss_sum / seen,
            train_acc: self.correct as f64 / seen,
            test_acc,
            examples_per_sec: self.seen as f64 / self.busy.as_secs_f64().max(1e-9),
        }
    }
}

/// [`crate::train::train`] that also records, every few steps, what the
/// sigmoids receive, the gradient of every weight layer and (optionally)
/// the loss along the gradient — measured on the step's own batch, in the
/// step's own forward and backward pass. Steps that are not recorded run
/// exactly as in `train`, and recording only reads, so the history is the
/// same bits as `train`'s (the throughput aside).
///
/// # Errors
/// If the settings or the options are invalid, or the network rejects the
/// data.
pub fn train_traced(
    net: &mut Sequential,
    name: &str,
    data: &FashionMnist,
    config: &TrainConfig,
    options: &TraceOptions,
    mut on_epoch: impl FnMut(&EpochRecord),
) -> Result<(History, Trace)> {
    config.validate(data)?;
    options.validate()?;
    let batch_statistics = !net.batch_norm_layers().is_empty();
    check_batch_size(config.batch_size, name, batch_statistics)?;
    let params = net.parameters();
    let sgd = Sgd::new(config.lr)?;
    let test = data.test.head(config.test_examples(data));
    let batch_options = |epoch: usize| BatchOptions {
        shuffle_seed: Some(config.seed),
        epoch: epoch as u64,
        limit: config.limit,
        last_batch: LastBatch::DropIfSmallerThan(MIN_BATCH_WITH_BATCH_NORM),
    };
    let steps_per_epoch = data
        .train
        .num_batches(config.batch_size, &batch_options(0))?;
    let last_step = steps_per_epoch * config.epochs - 1;
    let every = (steps_per_epoch / options.records_per_epoch).max(1);
    let mut history = History::start(name, config, data);
    let mut trace = Trace {
        model: name.to_string(),
        steps_per_epoch,
        records: Vec::new(),
    };
    let mut step = 0;
    for epoch in 0..config.epochs {
        let mut tally = Tally::default();
        for batch in data
            .train
            .batches(config.batch_size, &batch_options(epoch))?
        {
            let start = Instant::now();
            let x = Tensor::new(batch.images.into_dyn());
            let recording = step % every == 0 || step == last_step;
            let landscape = match recording && !options.step_sizes.is_empty() {
                true => Some(probe_landscape(
                    net,
                    &x,
                    &batch.labels,
                    &options.step_sizes,
                )?),
                false => None,
            };
            let mut sigmoids = Vec::new();
            let logits = if recording {
                let mut failure = None;
                let logits = net.forward_recorded(&x, Mode::Train, &mut |a| {
                    if a.layer.as_any().is::<Sigmoid>() {
                        match sigmoid_input(
                            &a.input.value(),
                            options.watch_unit,
                            options.saturation,
                        ) {
                            Ok(s) => sigmoids.push(s),
                            Err(e) => failure = Some(e),
                        }
                    }
                })?;
                failure.map_or(Ok(()), Err)?;
                logits
            } else {
                net.forward(&x, Mode::Train)?
            };
            let loss = logits.softmax_cross_entropy(&batch.labels)?;
            loss.backward();
            if recording {
                trace.records.push(TraceRecord {
                    step,
                    loss: f64::from(loss.item()),
                    sigmoids,
                    gradients: weight_gradients(net),
                    landscape,
                });
            }
            sgd.step(&params);
            sgd.zero_grad(&params);
            let n = batch.labels.len();
            tally.loss_sum += f64::from(loss.item()) * n as f64;
            tally.correct += count_correct(&logits, &batch.labels)?;
            tally.seen += n;
            tally.busy += start.elapsed();
            step += 1;
        }
        let record = tally.epoch(epoch + 1, evaluate(net, &test, config.batch_size)?);
        on_epoch(&record);
        history.history.push(record);
    }
    Ok((history, trace))
}
