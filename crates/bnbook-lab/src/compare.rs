//! The experiments that compare batch, layer, instance and group norm, and
//! the command that writes their figures and tables:
//! `bnbook norms --out book/generated/norms`.
//!
//! *Book: chapter "BatchNorm, LayerNorm, InstanceNorm, GroupNorm".*
//!
//! Every experiment changes one factor at a time:
//!
//! * [`invariance_table`] — which transformations of the weights or the data
//!   leave batch norm's and layer norm's outputs unchanged (the table of
//!   Ba, Kiros & Hinton, 2016), measured;
//! * [`accuracy_runs`] — LeNet with each normalisation (or none), same
//!   architecture, learning rate, batch size, seeds and epochs;
//! * [`batch_size_sweep`] — batch sizes 2 … 256 for batch, group and layer
//!   norm, learning rate scaled linearly with the batch size (Goyal et al.,
//!   2017), same number of epochs (the experiment of Wu & He, 2018);
//! * [`timing`] — forward + backward time of each layer at LeNet's shapes,
//!   fused and composed.

use crate::largest_difference;
use crate::report::{Manifest, Writer, plural};
use crate::side_by_side::side_by_side;
use bnbook::Tensor;
use bnbook::concise::{BatchNorm1d, BatchNormOptions};
use bnbook::data::FashionMnist;
use bnbook::error::{Error, Result};
use bnbook::models::{ModelKind, Normalization};
use bnbook::nn::{Mode, Module, check_batch_size};
use bnbook::norms::{Implementation, LayerNorm, NormOptions};
use bnbook::plot::{Series, Svg, line_chart, line_chart_with_x_labels};
use bnbook::random::random_input;
use bnbook::train::{History, TrainConfig, train_model};
use ndarray::{Array2, ArrayD, Axis};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// The default output directory, relative to the repository root.
pub const DEFAULT_OUT_DIR: &str = "book/generated/norms";

/// What to run. `Default` is the book's full-size setting.
#[derive(Clone, Debug)]
pub struct CompareConfig {
    /// Where to write.
    pub out: PathBuf,
    /// Epochs of the accuracy comparison at batch 256 (d2l's 10).
    pub epochs: usize,
    /// Seeds of the accuracy comparison.
    pub seeds: Vec<u64>,
    /// Train and test on the first `n` examples only (quick checks).
    pub limit: Option<usize>,
    /// Batch sizes of the sweep.
    pub sweep_batch_sizes: Vec<usize>,
    /// Normalisations of the sweep.
    pub sweep_norms: Vec<Normalization>,
    /// Epochs of every sweep run (the same for every batch size).
    pub sweep_epochs: usize,
    /// Seeds of the sweep.
    pub sweep_seeds: Vec<u64>,
    /// Example limit of the sweep runs.
    pub sweep_limit: Option<usize>,
    /// Timed repetitions per layer and shape.
    pub timing_repeats: usize,
}

impl CompareConfig {
    /// Checks every setting against `data` before the first of many runs,
    /// so a bad value in the sweep does not surface after the hour-long
    /// accuracy comparison.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the setting: no seeds, zero epochs
    /// or timing repetitions, no sweep batch size, a sweep batch size of 0
    /// (or below 2 with batch norm in the sweep), or a limit that leaves too few
    /// examples ([`TrainConfig::validate`]).
    pub fn validate(&self, data: &FashionMnist) -> Result<()> {
        let invalid = |message: &str| Err(Error::InvalidArgument(message.to_string()));
        if self.seeds.is_empty() || self.sweep_seeds.is_empty() {
            return invalid("the accuracy comparison and the sweep need at least one seed each");
        }
        if self.epochs == 0 || self.sweep_epochs == 0 {
            return invalid("the accuracy comparison and the sweep need at least 1 epoch each");
        }
        if self.timing_repeats == 0 {
            return invalid("the timing needs at least 1 repetition");
        }
        if self.sweep_batch_sizes.is_empty() {
            return invalid("the sweep needs at least one batch size");
        }
        let smallest = self.sweep_batch_sizes.iter().min().copied().unwrap_or(0);
        let with_batch_norm = self.sweep_norms.contains(&Normalization::Batch);
        check_batch_size(smallest, "the sweep's batch norm", with_batch_norm).map_err(|e| {
            Error::InvalidArgument(format!(
                "the sweep's batch size {smallest} is too small: {e}"
            ))
        })?;
        for (part, limit) in [
            ("accuracy comparison", self.limit),
            ("batch-size sweep", self.sweep_limit),
        ] {
            let run = TrainConfig {
                limit,
                ..TrainConfig::d2l(ModelKind::LenetBn)
            };
            run.validate(data).map_err(|e| match e {
                Error::InvalidArgument(message) => {
                    Error::InvalidArgument(format!("{part}: {message}"))
                }
                other => other,
            })?;
        }
        Ok(())
    }
}

impl Default for CompareConfig {
    fn default() -> Self {
        CompareConfig {
            out: PathBuf::from(DEFAULT_OUT_DIR),
            epochs: TrainConfig::d2l(ModelKind::LenetBn).epochs,
            seeds: vec![0, 1, 2],
            limit: None,
            sweep_batch_sizes: vec![2, 4, 8, 16, 32, 64, 128, 256],
            sweep_norms: vec![
                Normalization::Batch,
                Normalization::Group,
                Normalization::Layer,
            ],
            sweep_epochs: 3,
            sweep_seeds: vec![0, 1, 2],
            sweep_limit: None,
            timing_repeats: 50,
        }
    }
}

// ----- invariances -----

/// How one transformation changes the outputs of batch norm and layer norm
/// (no affine part) after a fully connected layer `a = x·W`.
#[derive(Clone, Debug, Serialize)]
pub struct Invariance {
    /// What was transformed.
    pub transformation: String,
    /// Largest change of any batch-norm output.
    pub batch_norm_change: f32,
    /// Largest change of any layer-norm output.
    pub layer_norm_change: f32,
    /// Ba, Kiros & Hinton (2016), Table 1: is batch norm invariant?
    pub batch_norm_invariant_in_paper: bool,
    /// The same for layer norm.
    pub layer_norm_invariant_in_paper: bool,
}

/// Changes below this count as "unchanged": ε = 1e-5 in the variance and
/// `f32` rounding make exact invariance impossible (measured changes are
/// below 1e-4); real changes are of order 0.1–1.
pub const INVARIANCE_THRESHOLD: f32 = 1e-3;

impl Invariance {
    /// Whether the measured batch-norm change is below [`INVARIANCE_THRESHOLD`].
    pub fn batch_norm_invariant(&self) -> bool {
        self.batch_norm_change < INVARIANCE_THRESHOLD
    }
    /// Whether the measured layer-norm change is below [`INVARIANCE_THRESHOLD`].
    pub fn layer_norm_invariant(&self) -> bool {
        self.layer_norm_change < INVARIANCE_THRESHOLD
    }
}

/// Batch-norm and layer-norm outputs for inputs `x` `(N, D)` and weights
/// `w` `(D, H)`, both without γ and β, in training mode.
fn normalised(x: &Array2<f32>, w: &Array2<f32>) -> Result<(ArrayD<f32>, ArrayD<f32>)> {
    let units = w.ncols();
    let a = Tensor::new(x.clone().into_dyn()).matmul(&Tensor::new(w.clone().into_dyn()));
    let mut bn = BatchNorm1d::with_options(
        units,
        BatchNormOptions {
            affine: false,
            ..BatchNormOptions::d2l()
        },
    )?;
    let mut ln = LayerNorm::with_options(
        &[units],
        NormOptions {
            affine: false,
            ..NormOptions::default()
        },
    )?;
    let y_bn = bn.forward(&a, Mode::Train)?.value().clone();
    let y_ln = ln.forward(&a, Mode::Train)?.value().clone();
    Ok((y_bn, y_ln))
}

/// A seeded random matrix with entries in [-1, 1).
fn matrix(shape: &[usize; 2], seed: u64) -> Array2<f32> {
    random_input(shape, -1.0, 1.0, seed)
        .into_dimensionality()
        .expect("rank 2")
}

/// A transformation of `(x, W)`, with the paper's verdicts (BN, LN).
type Transform = (
    &'static str,
    fn(&mut Array2<f32>, &mut Array2<f32>),
    bool,
    bool,
);

/// Applies each transformation of the layer-norm paper's Table 1 to a random
/// batch `x` (32 examples, 10 inputs) and weight matrix `W` (10 → 8 units),
/// and measures how much the normalised outputs of `a = x·W` move.
///
/// # Errors
/// Never in practice; the `Result` comes from the layer constructors.
pub fn invariance_table() -> Result<Vec<Invariance>> {
    let x = matrix(&[32, 10], 1) + 0.5; // inputs in [-0.5, 1.5)
    let w = matrix(&[10, 8], 2);
    let (bn, ln) = normalised(&x, &w)?;
    let transforms: [Transform; 6] = [
        (
            "weight matrix re-scaling: W → 3·W",
            |_, w| *w *= 3.0,
            true,
            true,
        ),
        (
            "weight matrix re-centring: the same vector added to every unit's weights",
            |_, w| *w += &matrix(&[10, 1], 3),
            false,
            true,
        ),
        (
            "weight vector re-scaling: one unit's weights × 3",
            |_, w| w.column_mut(0).mapv_inplace(|v| 3.0 * v),
            true,
            false,
        ),
        (
            "data set re-scaling: every x → 3·x",
            |x, _| *x *= 3.0,
            true,
            true,
        ),
        (
            "data set re-centring: the same vector added to every x",
            |x, _| *x += &matrix(&[1, 10], 4),
            true,
            false,
        ),
        (
            "single example re-scaling: one x → 3·x",
            |x, _| x.index_axis_mut(Axis(0), 0).mapv_inplace(|v| 3.0 * v),
            false,
            true,
        ),
    ];
    transforms
        .into_iter()
        .map(|(name, transform, bn_paper, ln_paper)| {
            let (mut x2, mut w2) = (x.clone(), w.clone());
            transform(&mut x2, &mut w2);
            let (bn2, ln2) = normalised(&x2, &w2)?;
            Ok(Invariance {
                transformation: name.to_string(),
                batch_norm_change: largest_difference(&bn, &bn2),
                layer_norm_change: largest_difference(&ln, &ln2),
                batch_norm_invariant_in_paper: bn_paper,
                layer_norm_invariant_in_paper: ln_paper,
            })
        })
        .collect()
}

// ----- training runs -----

fn train_run(data: &FashionMnist, model: ModelKind, config: &TrainConfig) -> Result<History> {
    let started = Instant::now();
    let (_, history) = train_model(model, data, config, |r| {
        println!(
            "{model} batch {} lr {} seed {}, {}",
            config.batch_size,
            config.lr,
            config.seed,
            r.line()
        )
    })?;
    println!(
        "{model} batch {} seed {}: {:.0} s",
        config.batch_size,
        config.seed,
        started.elapsed().as_secs_f64()
    );
    Ok(history)
}

/// LeNet with each normalisation (and none) at batch 256, lr 1.0, for every
/// seed of `config`; histories in the order of [`Normalization::ALL`].
///
/// # Errors
/// If a run fails.
pub fn accuracy_runs(data: &FashionMnist, config: &CompareConfig) -> Result<Vec<History>> {
    let mut jobs = Vec::new();
    for norm in Normalization::ALL {
        let model = ModelKind::with_normalization(norm);
        for &seed in &config.seeds {
            let train = TrainConfig {
                epochs: config.epochs,
                seed,
                limit: config.limit,
                // runs go side by side: their epoch lines are the progress
                progress: false,
                ..TrainConfig::d2l(model)
            };
            jobs.push((model, train));
        }
    }
    side_by_side(jobs, |(model, train)| train_run(data, model, &train))
}

/// One run of the batch-size sweep.
#[derive(Clone, Debug, Serialize)]
pub struct SweepRun {
    /// `BN`, `GN` or `LN`.
    pub normalization: String,
    /// The full history (its `lr` and `batch_size` say what was run).
    pub history: History,
}

// ANCHOR: sweep
/// The learning rate for `batch_size` under the linear scaling rule, from
/// the batch-256 value `base_lr`: `base_lr · batch_size / 256`.
pub fn scaled_lr(base_lr: f32, batch_size: usize) -> f32 {
    base_lr * batch_size as f32 / 256.0
}

/// Trains every normalisation of the sweep at every batch size, with the
/// learning rate scaled linearly and the same number of epochs.
///
/// # Errors
/// If a run fails.
pub fn batch_size_sweep(data: &FashionMnist, config: &CompareConfig) -> Result<Vec<SweepRun>> {
    let mut jobs = Vec::new();
    for &norm in &config.sweep_norms {
        for &batch_size in &config.sweep_batch_sizes {
            for &seed in &config.sweep_seeds {
                jobs.push((norm, batch_size, seed));
            }
        }
    }
    // independent runs, one thread each, as many at once as there are threads
    side_by_side(jobs, |(norm, batch_size, seed)| {
        let model = ModelKind::with_normalization(norm);
        let train = TrainConfig {
            epochs: config.sweep_epochs,
            batch_size,
            lr: scaled_lr(model.default_lr(), batch_size),
            seed,
            limit: config.sweep_limit,
            progress: false, // the epoch lines are the progress
        };
        let history = train_run(data, model, &train)?;
        Ok(SweepRun {
            normalization: norm.label().to_string(),
            history,
        })
    })
}
// ANCHOR_END: sweep

// ----- timing -----

/// LeNet's four normalisation slots at batch 256: after each convolution
/// and after the first two fully connected layers.
pub const LENET_SLOTS: [(&str, [usize; 4], usize); 4] = [
    ("conv 1: (256, 6, 24, 24)", [256, 6, 24, 24], 4),
    ("conv 2: (256, 16, 8, 8)", [256, 16, 8, 8], 4),
    ("fc 1: (256, 120)", [256, 120, 1, 1], 2),
    ("fc 2: (256, 84)", [256, 84, 1, 1], 2),
];

/// Forward + backward time of one normalisation at LeNet's shapes.
#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    /// `BN`, `LN`, `IN` or `GN`.
    pub normalization: String,
    /// `fused` or `composed` (for batch norm: the concise and the scratch layer).
    pub implementation: String,
    /// Median milliseconds per slot, in the order of [`LENET_SLOTS`].
    pub slot_ms: Vec<f64>,
}

impl Timing {
    /// The time of all four slots together.
    pub fn total_ms(&self) -> f64 {
        self.slot_ms.iter().sum()
    }
}

/// Times training-mode forward + backward of every normalisation layer the
/// models use, both implementations, at [`LENET_SLOTS`] (median of
/// `repeats` after one warm-up round, the cases taking turns).
///
/// # Errors
/// Never in practice; the `Result` comes from the layer constructors.
pub fn timing(repeats: usize) -> Result<Vec<Timing>> {
    // every (normalisation, implementation, slot) with its input, built once
    struct Case {
        row: usize,
        layer: Box<dyn Module>,
        x: ArrayD<f32>,
        upstream: ArrayD<f32>,
        times: Vec<f64>,
    }
    let mut rows = Vec::new();
    let mut cases = Vec::new();
    for norm in &Normalization::ALL[1..] {
        for implementation in [Implementation::Composed, Implementation::Fused] {
            for (i, (_, shape, rank)) in LENET_SLOTS.into_iter().enumerate() {
                let shape = &shape[..rank];
                cases.push(Case {
                    row: rows.len(),
                    layer: norm
                        .layer(shape[1], rank, implementation)?
                        .expect("a normalisation"),
                    x: random_input(shape, -2.0, 3.0, i as u64),
                    upstream: random_input(shape, -1.0, 1.0, 10 + i as u64),
                    times: Vec::with_capacity(repeats + 1),
                });
            }
            rows.push(Timing {
                normalization: norm.label().to_string(),
                implementation: match (norm, implementation) {
                    (Normalization::Batch, Implementation::Composed) => "composed (scratch)",
                    (Normalization::Batch, Implementation::Fused) => "fused (concise)",
                    (_, Implementation::Composed) => "composed",
                    (_, Implementation::Fused) => "fused",
                }
                .to_string(),
                slot_ms: Vec::new(),
            });
        }
    }
    // Round robin: a disturbance on the machine hits every case alike
    // instead of one row of the table.
    for _ in 0..=repeats {
        for case in &mut cases {
            // fresh arrays every time, so that no case keeps a lucky or
            // unlucky placement in memory for the whole measurement
            let x = Tensor::parameter(case.x.clone());
            let seed = case.upstream.clone();
            let start = Instant::now();
            let y = case.layer.forward(&x, Mode::Train)?;
            y.backward_with(seed);
            drop(y); // freeing the graph is part of a step
            case.times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    for mut case in cases {
        case.times.remove(0); // warm-up
        case.times.sort_by(f64::total_cmp);
        rows[case.row]
            .slot_ms
            .push(case.times[case.times.len() / 2]);
    }
    Ok(rows)
}

// ----- tables and figures -----

pub(crate) fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0), |(s, n), v| (s + v, n + 1));
    sum / n.max(1) as f64
}

/// `mean` alone for one value, `mean (min–max)` for several.
pub(crate) fn mean_and_range(values: impl Iterator<Item = f64>) -> String {
    let values: Vec<f64> = values.collect();
    let m = mean(values.iter().copied());
    if values.len() < 2 {
        return format!("{m:.3}");
    }
    let (lo, hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    format!("{m:.3} ({lo:.3}–{hi:.3})")
}

fn last(h: &History) -> &bnbook::train::EpochRecord {
    h.last().expect("at least one epoch")
}

fn invariance_markdown(rows: &[Invariance]) -> String {
    let verdict = |change: f32, paper: bool| {
        let measured = change < INVARIANCE_THRESHOLD;
        format!(
            "{} ({change:.0e}){}",
            if measured { "invariant" } else { "changes" },
            if measured == paper {
                ""
            } else {
                " — differs from the paper"
            }
        )
    };
    let mut md = String::from(
        "| transformation | batch norm (largest change) | layer norm (largest change) |\n|---|---|---|\n",
    );
    for r in rows {
        md += &format!(
            "| {} | {} | {} |\n",
            r.transformation,
            verdict(r.batch_norm_change, r.batch_norm_invariant_in_paper),
            verdict(r.layer_norm_change, r.layer_norm_invariant_in_paper)
        );
    }
    md += &format!(
        "\nOutputs of `a = x·W` (32 examples, 10 inputs, 8 units) normalised without γ and β; \
         \"invariant\" means no output moved by {INVARIANCE_THRESHOLD:.0e} or more.\n"
    );
    md
}

fn accuracy_markdown(runs: &[History], config: &CompareConfig) -> String {
    let mut md = String::from(
        "| normalisation | model | final test acc per seed | mean test acc | mean train acc | mean loss | examples/s |\n|---|---|---|---|---|---|---|\n",
    );
    for norm in Normalization::ALL {
        let model = ModelKind::with_normalization(norm).name();
        let of: Vec<&History> = runs.iter().filter(|h| h.model == model).collect();
        let per_seed: Vec<String> = of
            .iter()
            .map(|h| format!("{:.3}", last(h).test_acc))
            .collect();
        md += &format!(
            "| {} | `{model}` | {} | {:.3} | {:.3} | {:.3} | {:.0} |\n",
            norm.label(),
            per_seed.join(" / "),
            mean(of.iter().map(|h| last(h).test_acc)),
            mean(of.iter().map(|h| last(h).train_acc)),
            mean(of.iter().map(|h| last(h).loss)),
            mean(of.iter().map(|h| h.median_examples_per_sec())),
        );
    }
    md += &format!(
        "\nBatch 256, lr 1.0, {}, seeds {:?}{}; accuracy after the last epoch. \
         Examples/s: median over epochs, mean over seeds, each run on one thread with {} \
         (see `side_by_side`).\n",
        plural(config.epochs, "epoch"),
        config.seeds,
        match config.limit {
            Some(n) => format!(", first {n} training and test examples only"),
            None => String::new(),
        },
        crate::side_by_side::arrangement()
    );
    md
}

/// The runs of one normalisation at one batch size (one per seed).
fn sweep_cell(runs: &[SweepRun], norm: Normalization, batch_size: usize) -> Vec<&History> {
    runs.iter()
        .filter(|r| r.normalization == norm.label() && r.history.batch_size == batch_size)
        .map(|r| &r.history)
        .collect()
}

fn sweep_markdown(runs: &[SweepRun], config: &CompareConfig) -> String {
    let mut md = String::from("| batch size | lr |");
    for norm in &config.sweep_norms {
        md += &format!(" {} test acc | {} train acc |", norm.label(), norm.label());
    }
    md += "\n|---|---|";
    md += &"---|---|".repeat(config.sweep_norms.len());
    md += "\n";
    for &b in &config.sweep_batch_sizes {
        md += &format!("| {b} | {} |", scaled_lr(1.0, b));
        for norm in &config.sweep_norms {
            let of = sweep_cell(runs, *norm, b);
            md += &format!(
                " {} | {} |",
                mean_and_range(of.iter().map(|h| last(h).test_acc)),
                mean_and_range(of.iter().map(|h| last(h).train_acc))
            );
        }
        md += "\n";
    }
    md += &format!(
        "\n{} per run at every batch size, lr = 1.0 · batch/256, seeds {:?}{}; \
         accuracy after the last epoch (train acc: running average over the last epoch); \
         with several seeds, mean (lowest–highest).\n",
        plural(config.sweep_epochs, "epoch"),
        config.sweep_seeds,
        match config.sweep_limit {
            Some(n) => format!(", first {n} training and test examples only"),
            None => ", full training and test sets".to_string(),
        }
    );
    md
}

fn timing_markdown(rows: &[Timing], repeats: usize) -> String {
    let mut md = String::from("| normalisation | implementation |");
    for (slot, _, _) in LENET_SLOTS {
        md += &format!(" {slot} |");
    }
    md += " all four slots |\n|---|---|---|---|---|---|---|\n";
    for r in rows {
        md += &format!("| {} | {} |", r.normalization, r.implementation);
        for ms in &r.slot_ms {
            md += &format!(" {ms:.2} |");
        }
        md += &format!(" **{:.2}** |\n", r.total_ms());
    }
    md += &format!(
        "\nMilliseconds for forward + backward in training mode, median of {repeats}, on {}. \
         IN's fully connected slots hold layer norm, as in `lenet-in`.\n",
        crate::report::plural(rayon::current_num_threads(), "thread")
    );
    md
}

/// One number per epoch, read from a history record.
pub type Metric = fn(&bnbook::train::EpochRecord) -> f64;

/// `metric` per epoch, averaged over seeds, of one model's runs.
fn mean_curve(runs: &[History], model: &str, f: Metric) -> Vec<(f64, f64)> {
    let of: Vec<&History> = runs.iter().filter(|h| h.model == model).collect();
    let epochs = of.first().map_or(0, |h| h.history.len());
    (0..epochs)
        .map(|e| ((e + 1) as f64, mean(of.iter().map(|h| f(&h.history[e])))))
        .collect()
}

/// `metric` against the epoch for each normalisation of
/// [`accuracy_runs`] (averaged over seeds), one line per normalisation.
///
/// # Errors
/// If there are no runs to draw.
pub fn accuracy_chart(runs: &[History], title: &str, metric: Metric) -> Result<Svg> {
    let lines: Vec<Series> = Normalization::ALL
        .iter()
        .map(|&norm| Series {
            label: norm.label().to_string(),
            points: mean_curve(runs, ModelKind::with_normalization(norm).name(), metric),
        })
        .collect();
    line_chart(title, "epoch", &lines, (560, 340))
}

/// Final test accuracy (averaged over seeds) against the batch size on a
/// log scale, one line per normalisation of the sweep.
///
/// # Errors
/// If there are no runs to draw.
pub fn sweep_chart(runs: &[SweepRun], config: &CompareConfig) -> Result<Svg> {
    let lines: Vec<Series> = config
        .sweep_norms
        .iter()
        .map(|&norm| Series {
            label: format!("{}: test acc", norm.label()),
            points: config
                .sweep_batch_sizes
                .iter()
                .map(|&b| {
                    let acc = mean(sweep_cell(runs, norm, b).iter().map(|h| last(h).test_acc));
                    ((b as f64).log2(), acc)
                })
                .collect(),
        })
        .collect();
    line_chart_with_x_labels(
        "Test accuracy vs batch size",
        "batch size",
        &lines,
        (560, 340),
        &|x| {
            if x.fract() == 0.0 {
                format!("{}", 2f64.powf(x))
            } else {
                String::new()
            }
        },
    )
}

/// Runs every experiment and writes its tables (Markdown), data (JSON) and
/// figures (SVG) into `config.out`, with a manifest `figures.json`.
///
/// # Errors
/// If a run fails or a file cannot be written.
pub fn generate(data: &FashionMnist, config: &CompareConfig, command: &str) -> Result<Manifest> {
    config.validate(data)?;
    let started = Instant::now();
    let mut w = Writer::new(&config.out)?;

    let invariances = invariance_table()?;
    w.json(
        "invariance.json",
        "invariances of batch norm and layer norm",
        &invariances,
    )?;
    w.write(
        "invariance.md",
        "which transformations leave batch norm's and layer norm's outputs unchanged",
        &invariance_markdown(&invariances),
    )?;

    let timings = timing(config.timing_repeats)?;
    w.json(
        "timing.json",
        "forward + backward time of each normalisation",
        &timings,
    )?;
    w.write(
        "timing.md",
        "forward + backward time of each normalisation at LeNet's shapes",
        &timing_markdown(&timings, config.timing_repeats),
    )?;

    let runs = accuracy_runs(data, config)?;
    w.json(
        "accuracy-runs.json",
        "histories of the accuracy comparison",
        &runs,
    )?;
    w.write(
        "accuracy.md",
        "final accuracy of LeNet with each normalisation",
        &accuracy_markdown(&runs, config),
    )?;
    for (file, title, metric, what) in [
        (
            "accuracy-test.svg",
            "Test accuracy (mean over seeds)",
            (|r| r.test_acc) as Metric,
            "test accuracy",
        ),
        (
            "accuracy-loss.svg",
            "Training loss (mean over seeds)",
            |r| r.loss,
            "training loss",
        ),
    ] {
        w.svg(
            file,
            &format!("{what} per epoch of LeNet with no normalisation, BN, LN, IN and GN, mean over seeds"),
            &accuracy_chart(&runs, title, metric)?,
        )?;
    }

    let sweep = batch_size_sweep(data, config)?;
    w.json(
        "batch-size-sweep.json",
        "histories of the batch-size sweep",
        &sweep,
    )?;
    w.write(
        "batch-size-sweep.md",
        "final accuracy against batch size for BN, GN and LN",
        &sweep_markdown(&sweep, config),
    )?;
    w.svg(
        "batch-size-sweep.svg",
        "final test accuracy against batch size (log scale) for BN, GN and LN",
        &sweep_chart(&sweep, config)?,
    )?;

    w.finish(command, config.epochs, &config.seeds, config.limit, started)
}

#[cfg(test)]
mod validation_tests {
    use super::*;

    use crate::refusal;

    #[test]
    fn the_book_settings_are_valid() {
        assert!(
            CompareConfig::default()
                .validate(&FashionMnist::blank(300))
                .is_ok()
        );
    }

    #[test]
    fn bad_settings_are_refused_before_any_run() {
        let book = CompareConfig::default();
        let batch_one = CompareConfig {
            sweep_batch_sizes: vec![4, 1],
            ..book.clone()
        };
        assert!(
            refusal(batch_one.validate(&FashionMnist::blank(300)))
                .contains("batch size 1 is too small")
        );
        let without_bn = CompareConfig {
            sweep_norms: vec![Normalization::Group, Normalization::Layer],
            ..batch_one
        };
        assert!(
            without_bn.validate(&FashionMnist::blank(300)).is_ok(),
            "group and layer norm train on single examples"
        );
        let zero = CompareConfig {
            sweep_batch_sizes: vec![0],
            ..without_bn
        };
        assert!(refusal(zero.validate(&FashionMnist::blank(300))).contains("at least 1, got 0"));
        let no_sizes = CompareConfig {
            sweep_batch_sizes: vec![],
            ..book.clone()
        };
        assert!(
            refusal(no_sizes.validate(&FashionMnist::blank(300)))
                .contains("at least one batch size")
        );
        let no_seeds = CompareConfig {
            sweep_seeds: vec![],
            ..book.clone()
        };
        assert!(
            refusal(no_seeds.validate(&FashionMnist::blank(300))).contains("at least one seed")
        );
        let no_epochs = CompareConfig {
            epochs: 0,
            ..book.clone()
        };
        assert!(
            refusal(no_epochs.validate(&FashionMnist::blank(300))).contains("at least 1 epoch")
        );
        let no_repeats = CompareConfig {
            timing_repeats: 0,
            ..book.clone()
        };
        assert!(
            refusal(no_repeats.validate(&FashionMnist::blank(300)))
                .contains("at least 1 repetition")
        );
        let tiny_sweep = CompareConfig {
            sweep_limit: Some(1),
            ..book
        };
        let message = refusal(tiny_sweep.validate(&FashionMnist::blank(300)));
        assert!(
            message.starts_with("batch-size sweep: the limit leaves 1"),
            "{message}"
        );
    }
}
