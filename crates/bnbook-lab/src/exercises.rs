//! The measured answers to the chapters' exercises, from one command:
//! `bnbook exercises --out book/generated/exercises`.
//!
//! *Book: the "Exercises" sections of the chapters "Batch norm from
//! scratch", "The math of batch norm", "LeNet with BN on Fashion-MNIST",
//! "Concise BN" and "BatchNorm, LayerNorm, InstanceNorm, GroupNorm".*
//!
//! Where a short experiment answers an exercise, the chapter's unfoldable
//! answer includes a table written here instead of a typed-in number:
//!
//! * `bias-gradient.md` — the bias of a layer that feeds batch norm gets no
//!   gradient (one backward pass of LeNet-BN);
//! * `affine.md` — batch norm with fixed γ = 1, β = 0 against learned ones;
//! * `halves.md` — batch norm that only centres or only scales
//!   ([`HalfBatchNorm`]);
//! * `placement.md` — batch norm in every slot, in the convolutional or the
//!   fully connected slots only, or nowhere;
//! * `momentum.md` — the running averages' momentum, and the cumulative
//!   average, against how much the test accuracy jumps;
//! * `groups.md` — group norm with 1, 2 or one group per channel;
//! * `eval-modes.md` — a trained network evaluated in training mode (the
//!   forgotten `eval()`), at several batch sizes;
//! * `single-image.md` — batch norm of a batch of one image is instance norm.
//!
//! Every trained variant is LeNet-BN's network
//! ([`lenet_with_slots`]) with d2l's recipe (batch 256, lr 1.0) and the
//! fused batch norm with d2l's conventions, which trains like the scratch
//! one; only the slots change. `results.json` holds every number the
//! tables show (and the per-epoch histories), so tests can hold the
//! chapters' answers to them.

use crate::figures::{REESTIMATE_BATCHES, reestimated_test_acc};
use crate::report::{Manifest, Writer, plural};
use bnbook::Tensor;
use bnbook::concise::{BatchNorm1d, BatchNorm2d, BatchNormOptions};
use bnbook::data::{BatchOptions, FashionMnist, LastBatch, Split};
use bnbook::error::{Error, Result};
use bnbook::models::{GROUPS, ModelKind, lenet_with_slots};
use bnbook::nn::{
    Conv2d, Linear, MIN_BATCH_WITH_BATCH_NORM, Mode, Module, Momentum, Sequential, count_correct,
};
use bnbook::norms::{GroupNorm, InstanceNorm2d, NormOptions};
use bnbook::random::random_input;
use bnbook::scratch::{parameter_shape, statistics_axes};
use bnbook::train::{History, TrainConfig, evaluate, train};
use ndarray::ArrayD;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;

/// The default output directory, relative to the repository root.
pub const DEFAULT_OUT_DIR: &str = "book/generated/exercises";

/// Training examples per run of the full-size setting: enough for the
/// differences the exercises ask about, small enough that the whole command
/// (13 networks, 3 seeds each) takes minutes.
pub const DEFAULT_LIMIT: usize = 12_000;

/// What to run. `Default` is the book's full-size setting.
#[derive(Clone, Debug)]
pub struct ExercisesConfig {
    /// Where to write (e.g. `book/generated/exercises`).
    pub out: PathBuf,
    /// Epochs per training run (d2l's 10).
    pub epochs: usize,
    /// Seeds of every trained variant (at least three to show the spread).
    pub seeds: Vec<u64>,
    /// Train and test on the first `n` examples only ([`DEFAULT_LIMIT`]
    /// training examples by default; the test set has 10 000).
    pub limit: Option<usize>,
}

impl Default for ExercisesConfig {
    /// d2l's 10 epochs, seeds 0, 1 and 2, the first [`DEFAULT_LIMIT`]
    /// training examples and the whole test set.
    fn default() -> Self {
        ExercisesConfig {
            out: PathBuf::from(DEFAULT_OUT_DIR),
            epochs: TrainConfig::d2l(ModelKind::LenetBn).epochs,
            seeds: vec![0, 1, 2],
            limit: Some(DEFAULT_LIMIT),
        }
    }
}

impl ExercisesConfig {
    /// The training settings of every run with `seed`.
    fn run(&self, seed: u64) -> TrainConfig {
        TrainConfig {
            epochs: self.epochs,
            seed,
            limit: self.limit,
            progress: true,
            ..TrainConfig::d2l(ModelKind::LenetBn)
        }
    }

    /// Checks the settings against `data` before the first run.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if there is no seed, or no epoch, or the
    /// limit leaves too few examples ([`TrainConfig::validate`]).
    pub fn validate(&self, data: &FashionMnist) -> Result<()> {
        if self.seeds.is_empty() {
            return Err(Error::InvalidArgument(
                "the exercises need at least one seed".into(),
            ));
        }
        self.run(0).validate(data)
    }
}

/// How many groups the convolutional slots of a group-norm LeNet have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvGroups {
    /// One group (layer norm over a feature map's channels).
    One,
    /// [`GROUPS`] groups, as `lenet-gn`.
    Two,
    /// One group per channel (instance norm with per-channel γ and β).
    PerChannel,
}

/// A network the exercises train: LeNet-BN's layers with other slots.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Variant {
    /// Batch norm in all four slots, learned γ and β, d2l's running
    /// averages (weight 0.9 on the old value): the chapter's network.
    BatchNorm,
    /// Batch norm without γ and β (fixed at 1 and 0).
    FixedGammaBeta,
    /// Half of batch norm in every slot ([`HalfBatchNorm`]).
    Half(Half),
    /// Batch norm after the two convolutions only.
    ConvSlotsOnly,
    /// Batch norm after the two fully connected layers only.
    FcSlotsOnly,
    /// No normalisation (`lenet-no-norm`).
    NoNorm,
    /// Batch norm whose running averages keep this weight on the old value
    /// (d2l's is 0.9).
    OldWeight(f32),
    /// Batch norm whose running statistics are the plain average of every
    /// batch seen ([`Momentum::CumulativeAverage`]).
    CumulativeAverage,
    /// Group norm with these groups in the convolutional slots and
    /// [`GROUPS`] in the fully connected ones.
    GroupNorm(ConvGroups),
}

/// Every variant trained, in the order of the tables.
pub const VARIANTS: [Variant; 13] = [
    Variant::BatchNorm,
    Variant::FixedGammaBeta,
    Variant::Half(Half::CenterOnly),
    Variant::Half(Half::ScaleOnly),
    Variant::ConvSlotsOnly,
    Variant::FcSlotsOnly,
    Variant::NoNorm,
    Variant::OldWeight(0.5),
    Variant::OldWeight(0.99),
    Variant::CumulativeAverage,
    Variant::GroupNorm(ConvGroups::One),
    Variant::GroupNorm(ConvGroups::Two),
    Variant::GroupNorm(ConvGroups::PerChannel),
];

impl Variant {
    /// The name in the tables and in `results.json`.
    pub fn label(self) -> String {
        match self {
            Variant::BatchNorm => "BN in every slot".into(),
            Variant::FixedGammaBeta => "BN with γ = 1, β = 0 fixed".into(),
            Variant::Half(Half::CenterOnly) => "BN that only centres".into(),
            Variant::Half(Half::ScaleOnly) => "BN that only scales".into(),
            Variant::ConvSlotsOnly => "BN after the convolutions only".into(),
            Variant::FcSlotsOnly => "BN after the fully connected layers only".into(),
            Variant::NoNorm => "no normalisation".into(),
            Variant::OldWeight(w) => format!("BN, old-value weight {w}"),
            Variant::CumulativeAverage => "BN, cumulative average".into(),
            Variant::GroupNorm(ConvGroups::One) => "GN, 1 group".into(),
            Variant::GroupNorm(ConvGroups::Two) => format!("GN, {GROUPS} groups"),
            Variant::GroupNorm(ConvGroups::PerChannel) => "GN, 1 group per channel".into(),
        }
    }

    /// Builds the network with the weights drawn from `seed` (the same
    /// weights for every variant: the slots draw nothing).
    ///
    /// # Errors
    /// Never for these fixed architectures; the `Result` comes from the
    /// layer constructors.
    pub fn build(self, seed: u64) -> Result<Sequential> {
        let d2l = BatchNormOptions::d2l();
        let mut rng = StdRng::seed_from_u64(seed);
        lenet_with_slots(&mut rng, |features, rank| {
            let convolutional = rank == 4;
            Ok(match self {
                Variant::BatchNorm => Some(batch_norm(features, rank, d2l)?),
                Variant::FixedGammaBeta => Some(batch_norm(
                    features,
                    rank,
                    BatchNormOptions {
                        affine: false,
                        ..d2l
                    },
                )?),
                Variant::Half(half) => Some(Box::new(HalfBatchNorm::new(half, features, rank)?)),
                Variant::ConvSlotsOnly if convolutional => Some(batch_norm(features, rank, d2l)?),
                Variant::FcSlotsOnly if !convolutional => Some(batch_norm(features, rank, d2l)?),
                Variant::ConvSlotsOnly | Variant::FcSlotsOnly | Variant::NoNorm => None,
                Variant::OldWeight(w) => Some(batch_norm(
                    features,
                    rank,
                    BatchNormOptions {
                        momentum: Momentum::from_old_weight(w),
                        ..d2l
                    },
                )?),
                Variant::CumulativeAverage => Some(batch_norm(
                    features,
                    rank,
                    BatchNormOptions {
                        momentum: Momentum::CumulativeAverage,
                        ..d2l
                    },
                )?),
                Variant::GroupNorm(groups) => {
                    let g = match groups {
                        ConvGroups::One if convolutional => 1,
                        ConvGroups::PerChannel if convolutional => features,
                        _ => GROUPS,
                    };
                    Some(Box::new(GroupNorm::with_options(
                        g,
                        features,
                        NormOptions::default(),
                    )?))
                }
            })
        })
    }

    /// Whether the momentum table re-estimates this variant's running
    /// statistics.
    fn in_momentum_table(self) -> bool {
        matches!(
            self,
            Variant::BatchNorm | Variant::OldWeight(_) | Variant::CumulativeAverage
        )
    }
}

/// The fused batch norm for a slot of `features` features of a rank-`rank`
/// input.
fn batch_norm(features: usize, rank: usize, options: BatchNormOptions) -> Result<Box<dyn Module>> {
    Ok(if rank == 4 {
        Box::new(BatchNorm2d::with_options(features, options)?)
    } else {
        Box::new(BatchNorm1d::with_options(features, options)?)
    })
}

/// Which half of batch norm a [`HalfBatchNorm`] keeps: d2l's exercise
/// "a lite batch norm that only centres, and one that only scales".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half {
    /// `y = x − μ_B + β`: the batch mean subtracted and a learned shift
    /// added, no division; the running mean stands in for `μ_B` in
    /// prediction.
    CenterOnly,
    /// `y = γ · x / sqrt(σ²_B + ε)`: divided by the batch standard
    /// deviation and scaled by a learned γ, no mean subtracted; the running
    /// variance stands in for `σ²_B` in prediction.
    ScaleOnly,
}

// ANCHOR: half_batch_norm
/// Half of [`bnbook::scratch::batch_norm`], built from the same autograd
/// operations: `x` is `(N, C)` or `(N, C, H, W)`, `param` (β for
/// [`Half::CenterOnly`], γ for [`Half::ScaleOnly`]) and `running` (the
/// running mean, or the running variance) are `(1, C)` or `(1, C, 1, 1)`,
/// and `momentum` is the weight of the old running value (d2l's 0.9).
/// Returns the output and the new running statistic.
///
/// *Book: chapter "Batch norm from scratch", exercise 3.*
///
/// # Errors
/// If `x` is not rank 2 or 4, `param` or `running` does not match its
/// channels, or a training batch has fewer than two values per channel.
#[allow(clippy::too_many_arguments)]
pub fn half_batch_norm(
    x: &Tensor,
    param: &Tensor,
    running: &ArrayD<f32>,
    half: Half,
    eps: f32,
    momentum: f32,
    mode: Mode,
) -> Result<(Tensor, ArrayD<f32>)> {
    let shape = x.shape();
    let axes = statistics_axes(shape.len()).ok_or_else(|| {
        Error::shape(
            "half_batch_norm",
            format!("expected (N, C) or (N, C, H, W), got shape {shape:?}"),
        )
    })?;
    let expected = parameter_shape(shape[1], shape.len());
    if param.shape() != expected || running.shape() != expected.as_slice() {
        return Err(Error::shape(
            "half_batch_norm",
            format!(
                "the parameter has shape {:?} and the running statistic {:?}; for input \
                 {shape:?} both must be {expected:?}",
                param.shape(),
                running.shape()
            ),
        ));
    }
    if mode == Mode::Eval {
        let statistic = Tensor::new(running.clone());
        let y = match half {
            Half::CenterOnly => &(x - &statistic) + param,
            Half::ScaleOnly => &(x / &(&statistic + eps).sqrt()) * param,
        };
        return Ok((y, running.clone()));
    }
    if axes.iter().map(|&a| shape[a]).product::<usize>() < 2 {
        return Err(Error::shape(
            "half_batch_norm",
            format!("training needs more than one value per channel, got input shape {shape:?}"),
        ));
    }
    let mean = x.mean(axes, true);
    let (y, batch_statistic) = match half {
        Half::CenterOnly => (&(x - &mean) + param, mean.value().clone()),
        Half::ScaleOnly => {
            let centered = x - &mean;
            let var = (&centered * &centered).mean(axes, true);
            let y = &(x / &(&var + eps).sqrt()) * param;
            let var = var.value().clone();
            (y, var)
        }
    };
    let new_running = running * momentum + &batch_statistic * (1.0 - momentum);
    Ok((y, new_running))
}
// ANCHOR_END: half_batch_norm

/// A layer with half of batch norm ([`half_batch_norm`]): one learned
/// parameter per channel and one running statistic, d2l's conventions
/// (old-value weight 0.9, ε = 1e-5).
pub struct HalfBatchNorm {
    /// Which half.
    pub half: Half,
    /// β (starts at 0) for [`Half::CenterOnly`], γ (starts at 1) for
    /// [`Half::ScaleOnly`].
    pub param: Tensor,
    /// The running mean (starts at 0) or the running variance (starts at 1).
    pub running: ArrayD<f32>,
}

impl HalfBatchNorm {
    /// The layer for `num_features` channels of a rank-`rank` input (2
    /// after a linear layer, 4 after a convolution).
    ///
    /// # Errors
    /// If `num_features` is 0 or `rank` is neither 2 nor 4.
    pub fn new(half: Half, num_features: usize, rank: usize) -> Result<Self> {
        if num_features == 0 || statistics_axes(rank).is_none() {
            return Err(Error::InvalidArgument(format!(
                "HalfBatchNorm: needs at least one feature and rank 2 or 4, got {num_features} \
                 features and rank {rank}"
            )));
        }
        let shape = ndarray::IxDyn(&parameter_shape(num_features, rank));
        let (param, running) = match half {
            Half::CenterOnly => (ArrayD::zeros(shape.clone()), ArrayD::zeros(shape)),
            Half::ScaleOnly => (ArrayD::ones(shape.clone()), ArrayD::ones(shape)),
        };
        Ok(HalfBatchNorm {
            half,
            param: Tensor::parameter(param),
            running,
        })
    }
}

impl Module for HalfBatchNorm {
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let (y, running) =
            half_batch_norm(x, &self.param, &self.running, self.half, 1e-5, 0.9, mode)?;
        self.running = running;
        Ok(y)
    }

    fn parameters(&self) -> Vec<Tensor> {
        vec![self.param.clone()]
    }

    fn describe(&self) -> String {
        format!("{:?}BatchNorm({})", self.half, self.param.shape()[1])
    }
}

/// One training run of a [`Variant`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    /// [`Variant::label`].
    pub variant: String,
    /// Settings and per-epoch metrics.
    pub history: History,
    /// Test accuracy after re-estimating the running statistics on
    /// training batches with the final weights (momentum variants only).
    pub reestimated_test_acc: Option<f64>,
}

impl Run {
    /// Final test accuracy.
    pub fn test_acc(&self) -> f64 {
        self.history.last().map_or(f64::NAN, |r| r.test_acc)
    }

    /// Final training loss.
    pub fn loss(&self) -> f64 {
        self.history.last().map_or(f64::NAN, |r| r.loss)
    }

    /// How much test accuracy the run lost on the way: the sum of the falls
    /// from one epoch to the next (0 for a curve that never falls, however
    /// fast it rises).
    pub fn falls(&self) -> f64 {
        self.history
            .history
            .windows(2)
            .map(|w| (w[0].test_acc - w[1].test_acc).max(0.0))
            .sum()
    }
}

/// The gradient of one convolution's or linear layer's parameters after one
/// backward pass.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BiasGradient {
    /// The layer, as the network describes it.
    pub layer: String,
    /// Whether a batch-norm layer follows it.
    pub feeds_batch_norm: bool,
    /// Largest |∂L/∂b|.
    pub bias_grad: f32,
    /// Largest |∂L/∂W|.
    pub weight_grad: f32,
}

/// Test accuracy of a trained network evaluated one way.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalMode {
    /// How it was evaluated.
    pub evaluation: String,
    /// The accuracy, or `None` if the network refused.
    pub test_acc: Option<f64>,
    /// The error, if the network refused.
    pub refused: Option<String>,
}

/// Largest difference between batch norm and instance norm (neither with
/// γ, β) on the same batch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SingleImage {
    /// Images in the batch.
    pub batch: usize,
    /// max |BN(x) − IN(x)|.
    pub difference: f32,
}

/// Everything the tables show.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    /// One backward pass of LeNet-BN.
    pub bias_gradients: Vec<BiasGradient>,
    /// Every training run.
    pub runs: Vec<Run>,
    /// The first seed's trained [`Variant::BatchNorm`] network evaluated
    /// in both modes.
    pub eval_modes: Vec<EvalMode>,
    /// Batch norm of a batch of one against instance norm.
    pub single_image: Vec<SingleImage>,
}

impl Results {
    /// The runs of `variant`, one per seed.
    pub fn of(&self, variant: Variant) -> Vec<&Run> {
        let label = variant.label();
        self.runs.iter().filter(|r| r.variant == label).collect()
    }
}

/// The largest absolute entry (0 for none).
fn largest(a: &ndarray::ArrayD<f32>) -> f32 {
    a.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// One backward pass of the chapter's LeNet-BN (scratch batch norm, seed 0)
/// on the first 256 training images: the largest gradient entry of every
/// convolution's and linear layer's bias and weight.
///
/// # Errors
/// If the network rejects the batch.
pub fn bias_gradients(data: &FashionMnist) -> Result<Vec<BiasGradient>> {
    let mut net = ModelKind::LenetBn.build(&mut StdRng::seed_from_u64(0))?;
    let batch = data
        .train
        .batches(256, &BatchOptions::default())?
        .next()
        .ok_or_else(|| Error::InvalidArgument("no training images".into()))?;
    let logits = net.forward(&Tensor::new(batch.images.into_dyn()), Mode::Train)?;
    logits.softmax_cross_entropy(&batch.labels)?.backward();
    let layers = net.layers();
    let mut rows = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let any = layer.as_ref().as_any();
        let (weight, bias) = if let Some(conv) = any.downcast_ref::<Conv2d>() {
            (&conv.weight, &conv.bias)
        } else if let Some(linear) = any.downcast_ref::<Linear>() {
            (&linear.weight, &linear.bias)
        } else {
            continue;
        };
        let grad = |t: &Tensor| t.grad().map_or(f32::NAN, |g| largest(&g));
        rows.push(BiasGradient {
            layer: layer.describe(),
            feeds_batch_norm: layers
                .get(i + 1)
                .is_some_and(|next| next.as_batch_norm().is_some()),
            bias_grad: grad(bias),
            weight_grad: grad(weight),
        });
    }
    Ok(rows)
}

/// Accuracy of `net` on `split` in `mode`, in batches of `batch_size` (in
/// [`Mode::Train`] a last batch of one example is left out).
fn accuracy_in(net: &mut Sequential, split: &Split, batch_size: usize, mode: Mode) -> Result<f64> {
    if mode == Mode::Eval {
        return evaluate(net, split, batch_size);
    }
    let options = BatchOptions {
        last_batch: LastBatch::DropIfSmallerThan(MIN_BATCH_WITH_BATCH_NORM.min(batch_size)),
        ..BatchOptions::default()
    };
    let (mut correct, mut seen) = (0, 0);
    for batch in split.batches(batch_size, &options)? {
        let logits = net.forward(&Tensor::new(batch.images.into_dyn()), mode)?;
        correct += count_correct(&logits, &batch.labels)?;
        seen += batch.labels.len();
    }
    Ok(correct as f64 / seen.max(1) as f64)
}

/// The trained `net` evaluated on `test` in [`Mode::Eval`], then in
/// [`Mode::Train`] at batches of 256 and 8 (which also moves the running
/// statistics toward the test data), in [`Mode::Eval`] again, and in
/// [`Mode::Train`] at batches of 1.
fn eval_modes(net: &mut Sequential, test: &Split) -> Result<Vec<EvalMode>> {
    let mut rows = Vec::new();
    for (evaluation, batch_size, mode) in [
        (
            "`Mode::Eval`, batches of 256 (running statistics)",
            256,
            Mode::Eval,
        ),
        ("`Mode::Train`, batches of 256", 256, Mode::Train),
        ("`Mode::Train`, batches of 8", 8, Mode::Train),
        (
            "`Mode::Eval` again, after the two passes in `Mode::Train` moved the running statistics",
            256,
            Mode::Eval,
        ),
        ("`Mode::Train`, batches of 1", 1, Mode::Train),
    ] {
        let (test_acc, refused) = match accuracy_in(net, test, batch_size, mode) {
            Ok(acc) => (Some(acc), None),
            Err(e) if batch_size == 1 => (None, Some(e.to_string())),
            Err(e) => return Err(e),
        };
        rows.push(EvalMode {
            evaluation: evaluation.to_string(),
            test_acc,
            refused,
        });
    }
    Ok(rows)
}

/// Batch norm in training mode and instance norm, neither with γ and β, on
/// the same `(N, 6, 24, 24)` batch for N = 1 and N = 8.
///
/// # Errors
/// Never for these shapes; the `Result` comes from the layers.
pub fn single_image() -> Result<Vec<SingleImage>> {
    [1, 8]
        .into_iter()
        .map(|batch| {
            let x = Tensor::new(random_input(&[batch, 6, 24, 24], -2.0, 3.0, 5));
            let mut bn = BatchNorm2d::with_options(
                6,
                BatchNormOptions {
                    affine: false,
                    ..BatchNormOptions::d2l()
                },
            )?;
            let mut instance = InstanceNorm2d::with_options(6, NormOptions::instance_norm())?;
            let difference = crate::largest_difference(
                &bn.forward(&x, Mode::Train)?.value(),
                &instance.forward(&x, Mode::Train)?.value(),
            );
            Ok(SingleImage { batch, difference })
        })
        .collect()
}

/// Runs every experiment.
///
/// # Errors
/// If the settings are invalid ([`ExercisesConfig::validate`]) or a run
/// fails.
pub fn run(data: &FashionMnist, config: &ExercisesConfig) -> Result<Results> {
    config.validate(data)?;
    let bias_gradients = bias_gradients(data)?;
    let test = match config.limit {
        Some(n) => data.test.head(n),
        None => data.test.clone(),
    };
    let mut runs = Vec::new();
    let mut eval_rows = Vec::new();
    for variant in VARIANTS {
        for &seed in &config.seeds {
            let label = variant.label();
            let mut net = variant.build(seed)?;
            let started = Instant::now();
            let history = train(&mut net, &label, data, &config.run(seed), |r| {
                println!("{label}, seed {seed}, {}", r.line())
            })?;
            println!(
                "{label}, seed {seed}: {:.0} s",
                started.elapsed().as_secs_f64()
            );
            if variant == Variant::BatchNorm && seed == config.seeds[0] {
                // first, since it moves the running statistics; the
                // re-estimation below replaces them entirely
                eval_rows = eval_modes(&mut net, &test)?;
            }
            let reestimated_test_acc = if variant.in_momentum_table() {
                // as the LeNet chapter's "precise BN" does
                Some(reestimated_test_acc(&mut net, data, config.limit, seed)?)
            } else {
                None
            };
            runs.push(Run {
                variant: label,
                history,
                reestimated_test_acc,
            });
        }
    }
    Ok(Results {
        bias_gradients,
        runs,
        eval_modes: eval_rows,
        single_image: single_image()?,
    })
}

// ----- tables -----

/// The settings every training table states under it.
fn setting(config: &ExercisesConfig, data: &FashionMnist) -> String {
    let run = config.run(0);
    let seeds: Vec<String> = config.seeds.iter().map(u64::to_string).collect();
    format!(
        "LeNet-BN's network with the slots as named (batch norm: the fused layer with d2l's \
         conventions, which trains like the scratch one), batch {}, lr {}, {}, seeds {}, \
         {} training and {} test examples{}; values after the last epoch, {}.",
        run.batch_size,
        run.lr,
        plural(config.epochs, "epoch"),
        seeds.join(", "),
        run.train_examples(data),
        run.test_examples(data),
        if run.train_examples(data) < data.train.len() {
            format!(
                " (the first {} of {}, to keep the runs short)",
                run.train_examples(data),
                data.train.len()
            )
        } else {
            String::new()
        },
        if config.seeds.len() > 1 {
            "mean (lowest–highest) over the seeds"
        } else {
            "one seed"
        }
    )
}

/// A column of a training table: its header and its value from the runs of
/// one variant (one per seed).
type Column = (&'static str, fn(&[&Run]) -> String);

fn summary(runs: &[&Run], metric: fn(&Run) -> f64) -> String {
    crate::compare::mean_and_range(runs.iter().map(|r| metric(r)))
}

const TEST_ACC: Column = ("final test acc", |runs| summary(runs, Run::test_acc));
const LOSS: Column = ("final training loss", |runs| summary(runs, Run::loss));
const PER_SEED: Column = ("test acc per seed", |runs| {
    let v: Vec<String> = runs
        .iter()
        .map(|r| format!("{:.3}", r.test_acc()))
        .collect();
    v.join(" / ")
});

/// One row per `(label, variant)`, one column per [`Column`].
fn runs_table(
    results: &Results,
    first: &str,
    rows: &[(String, Variant)],
    columns: &[Column],
    caption: &str,
) -> String {
    let mut md = format!("| {first} |");
    for (header, _) in columns {
        md += &format!(" {header} |");
    }
    md += &format!("\n|---|{}\n", "---|".repeat(columns.len()));
    for (label, variant) in rows {
        let runs = results.of(*variant);
        md += &format!("| {label} |");
        for (_, value) in columns {
            md += &format!(" {} |", value(&runs));
        }
        md += "\n";
    }
    md + "\n" + caption + "\n"
}

fn labelled(variants: &[Variant]) -> Vec<(String, Variant)> {
    variants.iter().map(|v| (v.label(), *v)).collect()
}

fn bias_gradient_markdown(rows: &[BiasGradient]) -> String {
    let mut md = String::from(
        "| layer | feeds batch norm | largest \\|∂L/∂b\\| | largest \\|∂L/∂W\\| |\n|---|---|---|---|\n",
    );
    for r in rows {
        md += &format!(
            "| `{}` | {} | {:.1e} | {:.1e} |\n",
            r.layer,
            if r.feeds_batch_norm { "yes" } else { "no" },
            r.bias_grad,
            r.weight_grad
        );
    }
    md + "\nOne backward pass of `lenet-bn` (scratch batch norm, weights from seed 0) in training \
          mode on the first 256 training images, softmax cross-entropy loss.\n"
}

fn eval_modes_markdown(rows: &[EvalMode], config: &ExercisesConfig, test: usize) -> String {
    let mut md = String::from("| evaluation, in this order | test accuracy |\n|---|---|\n");
    for r in rows {
        let value = match (&r.test_acc, &r.refused) {
            (Some(acc), _) => format!("{acc:.3}"),
            (None, Some(e)) => format!("refused: {}", e.replace('|', "\\|")),
            (None, None) => "—".into(),
        };
        md += &format!("| {} | {value} |\n", r.evaluation);
    }
    md + &format!(
        "\nThe network `{}`, seed {}, trained as in the other tables, evaluated on {test} test \
         examples; every row runs on the same network, after the rows above it.\n",
        Variant::BatchNorm.label(),
        config.seeds[0]
    )
}

fn single_image_markdown(rows: &[SingleImage]) -> String {
    let mut md = String::from("| images in the batch | largest \\|BN(x) − IN(x)\\| |\n|---|---|\n");
    for r in rows {
        md += &format!("| {} | {:.1e} |\n", r.batch, r.difference);
    }
    md + "\nBatch norm in training mode and instance norm, both without γ and β and with \
          ε = 1e-5, on the same random batch of shape (N, 6, 24, 24).\n"
}

/// Runs every experiment and writes its tables (Markdown) and numbers
/// (`results.json`) into `config.out`, with a manifest `figures.json`.
///
/// # Errors
/// If the settings are invalid, a run fails, or a file cannot be written.
pub fn generate(data: &FashionMnist, config: &ExercisesConfig, command: &str) -> Result<Manifest> {
    config.validate(data)?;
    let started = Instant::now();
    let mut w = Writer::new(&config.out)?;
    let results = run(data, config)?;
    let setting = setting(config, data);

    w.write(
        "bias-gradient.md",
        "largest bias and weight gradients of LeNet-BN's layers after one backward pass",
        &bias_gradient_markdown(&results.bias_gradients),
    )?;
    w.write(
        "affine.md",
        "batch norm with learned γ, β against fixed γ = 1, β = 0",
        &runs_table(
            &results,
            "network",
            &labelled(&[Variant::BatchNorm, Variant::FixedGammaBeta]),
            &[TEST_ACC, LOSS, PER_SEED],
            &setting,
        ),
    )?;
    w.write(
        "halves.md",
        "batch norm that only centres or only scales, against the whole and none",
        &runs_table(
            &results,
            "network",
            &labelled(&[
                Variant::BatchNorm,
                Variant::Half(Half::CenterOnly),
                Variant::Half(Half::ScaleOnly),
                Variant::NoNorm,
            ]),
            &[TEST_ACC, LOSS, PER_SEED],
            &format!(
                "{setting} \"Only centres\": y = x − μ_B + β; \"only scales\": y = γ·x / sqrt(σ²_B + ε)."
            ),
        ),
    )?;
    w.write(
        "placement.md",
        "batch norm in every slot, in some slots, or in none",
        &runs_table(
            &results,
            "network",
            &labelled(&[
                Variant::BatchNorm,
                Variant::ConvSlotsOnly,
                Variant::FcSlotsOnly,
                Variant::NoNorm,
            ]),
            &[TEST_ACC, LOSS, PER_SEED],
            &setting,
        ),
    )?;
    w.write(
        "momentum.md",
        "momentum of the running statistics against how much the test accuracy jumps",
        &runs_table(
            &results,
            "running statistics",
            &[
                ("old-value weight 0.5".into(), Variant::OldWeight(0.5)),
                ("old-value weight 0.9 (d2l)".into(), Variant::BatchNorm),
                ("old-value weight 0.99 (Keras)".into(), Variant::OldWeight(0.99)),
                (
                    "cumulative average (`Momentum::CumulativeAverage`)".into(),
                    Variant::CumulativeAverage,
                ),
            ],
            &[
                TEST_ACC,
                ("test acc lost in falls between epochs", |runs| {
                    summary(runs, Run::falls)
                }),
                ("test acc, statistics re-estimated", |runs| {
                    summary(runs, |r| r.reestimated_test_acc.unwrap_or(f64::NAN))
                }),
                LOSS,
            ],
            &format!(
                "{setting} \"Re-estimated\": the running statistics replaced by the average over \
                 {REESTIMATE_BATCHES} training batches with the final weights (the LeNet chapter's \
                 precise BN). \"Lost in falls\": the sum of the drops of the test accuracy from one epoch \
                 to the next. The momentum only decides which running statistics the evaluation \
                 uses: training never reads them, so all rows train the same network, with the \
                 same training loss and the same re-estimated accuracy."
            ),
        ),
    )?;
    w.write(
        "groups.md",
        "group norm with 1 group, 2 groups and one group per channel in the convolutional slots",
        &runs_table(
            &results,
            "groups in the 6- and 16-channel slots",
            &[
                ("1 and 1 (layer norm)".into(), Variant::GroupNorm(ConvGroups::One)),
                (
                    format!("{GROUPS} and {GROUPS} (`lenet-gn`)"),
                    Variant::GroupNorm(ConvGroups::Two),
                ),
                (
                    "6 and 16 (one per channel: instance norm)".into(),
                    Variant::GroupNorm(ConvGroups::PerChannel),
                ),
            ],
            &[TEST_ACC, LOSS, PER_SEED],
            &format!(
                "{setting} The fully connected slots have group norm with {GROUPS} groups in all three."
            ),
        ),
    )?;
    w.write(
        "eval-modes.md",
        "a trained LeNet-BN evaluated in evaluation and in training mode",
        &eval_modes_markdown(
            &results.eval_modes,
            config,
            config.run(0).test_examples(data),
        ),
    )?;
    w.write(
        "single-image.md",
        "batch norm of a batch of one image against instance norm",
        &single_image_markdown(&results.single_image),
    )?;
    w.json(
        "results.json",
        "every number of the tables, with the histories of the training runs",
        &results,
    )?;
    w.finish(command, config.epochs, &config.seeds, config.limit, started)
}

#[cfg(test)]
mod validation_tests {
    use super::*;
    use crate::refusal;

    #[test]
    fn bad_settings_are_refused_before_any_run() {
        let data = FashionMnist::blank(300);
        assert!(ExercisesConfig::default().validate(&data).is_ok());
        let no_seeds = ExercisesConfig {
            seeds: vec![],
            ..Default::default()
        };
        assert!(refusal(no_seeds.validate(&data)).contains("at least one seed"));
        let no_epochs = ExercisesConfig {
            epochs: 0,
            ..Default::default()
        };
        assert!(refusal(no_epochs.validate(&data)).contains("epochs must be at least 1"));
        let tiny = ExercisesConfig {
            limit: Some(1),
            ..Default::default()
        };
        assert!(refusal(tiny.validate(&data)).contains("at least 2 training examples"));
    }

    #[test]
    fn every_variant_is_lenet_with_its_slots() {
        let x = Tensor::new(random_input(&[4, 1, 28, 28], 0.0, 1.0, 3));
        let weights = |net: &Sequential| -> Vec<ndarray::ArrayD<f32>> {
            net.find::<Conv2d>()
                .iter()
                .map(|c| c.weight.value().clone())
                .collect()
        };
        let reference = weights(&Variant::NoNorm.build(7).unwrap());
        for variant in VARIANTS {
            let mut net = variant.build(7).unwrap();
            // the slots draw nothing: the same weights for every variant
            assert_eq!(weights(&net), reference, "{variant:?}");
            let batch_norms = net.batch_norm_layers().len();
            let halves = net.find::<HalfBatchNorm>().len();
            assert_eq!(
                halves,
                if matches!(variant, Variant::Half(_)) {
                    4
                } else {
                    0
                },
                "{variant:?}"
            );
            let expected = match variant {
                Variant::NoNorm | Variant::GroupNorm(_) | Variant::Half(_) => 0,
                Variant::ConvSlotsOnly | Variant::FcSlotsOnly => 2,
                _ => 4,
            };
            assert_eq!(batch_norms, expected, "{variant:?}");
            assert_eq!(
                net.forward(&x, Mode::Train).unwrap().shape(),
                vec![4, 10],
                "{variant:?}"
            );
        }
    }

    #[test]
    fn half_batch_norms_pass_the_gradient_check_and_do_their_half() {
        use bnbook::gradcheck::GradCheck;
        for shape in [vec![6, 4], vec![3, 2, 4, 3]] {
            let p = parameter_shape(shape[1], shape.len());
            let x = random_input(&shape, -2.0, 3.0, 1);
            let param = random_input(&p, 0.5, 1.5, 2);
            let running = random_input(&p, 0.5, 1.5, 3);
            for half in [Half::CenterOnly, Half::ScaleOnly] {
                for mode in [Mode::Train, Mode::Eval] {
                    let report = GradCheck::default().run(&[x.clone(), param.clone()], |t| {
                        half_batch_norm(&t[0], &t[1], &running, half, 1e-5, 0.9, mode)
                            .unwrap()
                            .0
                    });
                    assert!(report.passed(), "{half:?} {shape:?} {mode:?}:\n{report}");
                }
            }
        }
        // training mode, fresh layers on a (8, 3) batch far from standardised:
        // centring gives each feature mean β = 0 and keeps its spread;
        // scaling gives it variance γ² ≈ 1 and keeps its mean's sign
        let x = Tensor::new(random_input(&[8, 3], 4.0, 10.0, 4));
        let column_stats = |y: &Tensor| {
            let y = y.value().clone();
            let mean = y.mean_axis(ndarray::Axis(0)).unwrap();
            let var = y.var_axis(ndarray::Axis(0), 0.0);
            (mean, var)
        };
        let (x_mean, x_var) = column_stats(&x);
        let mut centre = HalfBatchNorm::new(Half::CenterOnly, 3, 2).unwrap();
        let (mean, var) = column_stats(&centre.forward(&x, Mode::Train).unwrap());
        for j in 0..3 {
            assert!(mean[j].abs() < 1e-4 && (var[j] - x_var[j]).abs() < 1e-3);
        }
        let mut scale = HalfBatchNorm::new(Half::ScaleOnly, 3, 2).unwrap();
        let (mean, var) = column_stats(&scale.forward(&x, Mode::Train).unwrap());
        for j in 0..3 {
            assert!((var[j] - 1.0).abs() < 1e-3 && mean[j] > 1.0 && x_mean[j] > 4.0);
        }
        // one example per feature is refused in training, fine in prediction
        let one = Tensor::new(random_input(&[1, 3], 0.0, 1.0, 5));
        assert!(centre.forward(&one, Mode::Train).is_err());
        assert!(scale.forward(&one, Mode::Eval).is_ok());
        assert!(HalfBatchNorm::new(Half::ScaleOnly, 3, 3).is_err());
    }
}
