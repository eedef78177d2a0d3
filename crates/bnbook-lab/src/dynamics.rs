//! The experiments behind the chapter "What batch norm does to training",
//! and the command that writes their tables and figures:
//! `bnbook dynamics --out book/generated/dynamics`.
//!
//! Every experiment compares `lenet-bn` with the controlled baseline
//! `lenet-no-norm` (the same network with batch norm removed, same learning
//! rate), over several seeds, and shows the spread:
//!
//! 1. [`lr_sweep`] — both networks at learning rates 0.01 … 10;
//! 2. activations — the input of one sigmoid of the last hidden layer over
//!    training (Ioffe & Szegedy, 2015, Figure 1) and the share of saturated
//!    sigmoids per layer, from [`traced_runs`];
//! 3. gradients — the gradient norm of every weight layer at the first and
//!    the last step, with Xavier's weights and with weights ×0.1 and ×10;
//! 4. noisy batch norm (Santurkar et al., 2018) — noise whose mean and
//!    variance change every step after each batch norm;
//! 5. the loss along the gradient (Santurkar et al., Figure 4);
//! 6. dropout with and without batch norm ([`plain_runs`]);
//! 7. the same two networks trained longer.

use crate::report::{Manifest, Writer, plural};
use crate::side_by_side::side_by_side;
use bnbook::data::FashionMnist;
use bnbook::dynamics::{Trace, TraceOptions, Variant, train_traced};
use bnbook::error::{Error, Result};
use bnbook::models::ModelKind;
use bnbook::nn::{Dropout, NoiseOptions, check_learning_rate};
use bnbook::plot::{Band, Svg, band_chart};
use bnbook::train::{EpochRecord, History, TrainConfig, train};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// The default output directory, relative to the repository root.
pub const DEFAULT_OUT_DIR: &str = "book/generated/dynamics";

/// What to run. `Default` is the book's full-size setting.
#[derive(Clone, Debug)]
pub struct DynamicsConfig {
    /// Where to write.
    pub out: PathBuf,
    /// Seeds of every experiment (at least three to show a spread).
    pub seeds: Vec<u64>,
    /// Train and test on the first `n` examples only (quick runs).
    pub limit: Option<usize>,
    /// Epochs of experiments 2–6 (d2l's 10).
    pub epochs: usize,
    /// Learning rates of the sweep (experiment 1).
    pub learning_rates: Vec<f32>,
    /// Epochs of every run of the sweep.
    pub sweep_epochs: usize,
    /// Epochs of the longer runs (experiment 7); at least `epochs`.
    pub long_epochs: usize,
    /// Factors on Xavier's initial weights (experiment 3); must include 1.
    pub weight_scales: Vec<f32>,
    /// Recorded steps per epoch in the traced runs.
    pub records_per_epoch: usize,
    /// Step sizes of the loss-landscape probe, as multiples of the
    /// learning rate (experiment 5).
    pub step_sizes: Vec<f32>,
    /// The noise of noisy batch norm (experiment 4).
    pub noise: NoiseOptions,
    /// Drop probability of the dropout runs (experiment 6).
    pub dropout: f32,
}

impl Default for DynamicsConfig {
    fn default() -> Self {
        DynamicsConfig {
            out: PathBuf::from(DEFAULT_OUT_DIR),
            seeds: vec![0, 1, 2],
            limit: None,
            epochs: TrainConfig::d2l(ModelKind::LenetBn).epochs,
            learning_rates: vec![0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0],
            sweep_epochs: 3,
            long_epochs: 30,
            weight_scales: vec![0.1, 1.0, 10.0],
            records_per_epoch: 10,
            step_sizes: vec![0.25, 0.5, 1.0, 2.0, 4.0],
            noise: NoiseOptions::default(),
            dropout: 0.5,
        }
    }
}

/// d2l's learning rate for LeNet-BN, used by both networks in experiments
/// 2–7: the baseline gets the same one.
pub fn learning_rate() -> f32 {
    ModelKind::LenetBn.default_lr()
}

impl DynamicsConfig {
    /// Checks every setting against `data` before the first run.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the setting.
    pub fn validate(&self, data: &FashionMnist) -> Result<()> {
        let invalid = |message: String| Err(Error::InvalidArgument(message));
        if self.seeds.is_empty() {
            return invalid("the experiments need at least one seed (the book uses 0,1,2)".into());
        }
        if self.epochs == 0 || self.sweep_epochs == 0 {
            return invalid("the runs and the sweep need at least 1 epoch each".into());
        }
        if self.long_epochs < self.epochs {
            return invalid(format!(
                "the longer runs must be at least as long as the others: --long-epochs {} is \
                 below --epochs {}",
                self.long_epochs, self.epochs
            ));
        }
        if self.learning_rates.is_empty() {
            return invalid("the learning-rate sweep needs at least one learning rate".into());
        }
        for &lr in &self.learning_rates {
            check_learning_rate(lr)
                .map_err(|e| Error::InvalidArgument(format!("learning-rate sweep: {e}")))?;
        }
        if !self.weight_scales.contains(&1.0) {
            return invalid(format!(
                "the weight scales {:?} must include 1 (Xavier's weights as they are): the \
                 activation and loss-landscape experiments use those runs",
                self.weight_scales
            ));
        }
        for variant in self.variants() {
            variant.validate()?;
        }
        Dropout::new(self.dropout, 0)?;
        let trace = TraceOptions {
            records_per_epoch: self.records_per_epoch,
            step_sizes: self.step_sizes.clone(),
            ..TraceOptions::default()
        };
        trace.validate()?;
        let run = TrainConfig {
            limit: self.limit,
            ..TrainConfig::d2l(ModelKind::LenetBn)
        };
        run.validate(data)
    }

    /// Every variant the experiments train.
    fn variants(&self) -> Vec<Variant> {
        let mut all: Vec<Variant> = self
            .weight_scales
            .iter()
            .flat_map(|&s| [Variant::BATCH_NORM, Variant::NO_NORM].map(|v| v.with_weight_scale(s)))
            .collect();
        all.push(Variant::BATCH_NORM.with_noise(self.noise));
        all.extend(self.dropout_variants());
        all
    }

    fn dropout_variants(&self) -> [Variant; 2] {
        [Variant::NO_NORM, Variant::BATCH_NORM].map(|v| v.with_dropout(self.dropout))
    }

    fn train_config(&self, epochs: usize, lr: f32, seed: u64) -> TrainConfig {
        TrainConfig {
            epochs,
            lr,
            seed,
            limit: self.limit,
            // runs go side by side (see side_by_side): their epoch lines are the progress
            progress: false,
            ..TrainConfig::d2l(ModelKind::LenetBn)
        }
    }

    /// `", first N training and test examples"` or `""`.
    fn limit_note(&self) -> String {
        match self.limit {
            Some(n) => format!(", first {n} training and test examples only"),
            None => String::new(),
        }
    }
}

// ----- the runs -----

fn announce(name: &str, config: &TrainConfig) -> impl FnMut(&EpochRecord) {
    let (name, lr, seed) = (name.to_string(), config.lr, config.seed);
    move |r| println!("{name} lr {lr} seed {seed}, {}", r.line())
}

/// Trains `variant` with `train` (nothing recorded).
fn plain_run(data: &FashionMnist, variant: Variant, config: &TrainConfig) -> Result<History> {
    let mut net = variant.build(config.seed)?;
    let name = variant.name();
    train(&mut net, &name, data, config, announce(&name, config))
}

/// Experiment 1: `lenet-bn` and `lenet-no-norm` at every learning rate and
/// seed, `sweep_epochs` each. Each history's `model` and `lr` say what ran.
///
/// # Errors
/// If a run fails.
pub fn lr_sweep(data: &FashionMnist, config: &DynamicsConfig) -> Result<Vec<History>> {
    let mut jobs = Vec::new();
    for variant in [Variant::BATCH_NORM, Variant::NO_NORM] {
        for &lr in &config.learning_rates {
            for &seed in &config.seeds {
                jobs.push((variant, config.train_config(config.sweep_epochs, lr, seed)));
            }
        }
    }
    side_by_side(jobs, |(variant, train)| plain_run(data, variant, &train))
}

/// A run that recorded activations and gradients.
#[derive(Clone, Debug, Serialize)]
pub struct TracedRun {
    /// The variant's name, e.g. `lenet-bn×0.1`.
    pub variant: String,
    /// The factor on Xavier's weights.
    pub weight_scale: f32,
    /// Whether the variant adds noise after batch norm.
    pub noise: bool,
    /// Per-epoch metrics.
    pub history: History,
    /// What was recorded.
    pub trace: Trace,
}

/// Experiments 2–5: `lenet-bn` and `lenet-no-norm` at every weight scale,
/// and noisy batch norm, `epochs` each at d2l's learning rate, traced (the
/// runs with Xavier's weights also probe the loss along the gradient).
///
/// # Errors
/// If a run fails.
pub fn traced_runs(data: &FashionMnist, config: &DynamicsConfig) -> Result<Vec<TracedRun>> {
    let lr = learning_rate();
    let mut variants: Vec<Variant> = config.variants()[..2 * config.weight_scales.len()].to_vec();
    variants.push(Variant::BATCH_NORM.with_noise(config.noise));
    let mut jobs = Vec::new();
    for variant in variants {
        for &seed in &config.seeds {
            jobs.push((variant, seed));
        }
    }
    side_by_side(jobs, |(variant, seed)| {
        let probe = variant.weight_scale == 1.0 && variant.noise.is_none();
        let options = TraceOptions {
            records_per_epoch: config.records_per_epoch,
            step_sizes: match probe {
                true => config.step_sizes.iter().map(|s| s * lr).collect(),
                false => Vec::new(),
            },
            ..TraceOptions::default()
        };
        let train = config.train_config(config.epochs, lr, seed);
        let mut net = variant.build(seed)?;
        let name = variant.name();
        let started = Instant::now();
        let (history, trace) = train_traced(
            &mut net,
            &name,
            data,
            &train,
            &options,
            announce(&name, &train),
        )?;
        println!(
            "{name} seed {seed}: {:.0} s",
            started.elapsed().as_secs_f64()
        );
        Ok(TracedRun {
            variant: name,
            weight_scale: variant.weight_scale,
            noise: variant.noise.is_some(),
            history,
            trace,
        })
    })
}

/// Experiments 6 and 7: `variants` trained with `train` for `epochs` at
/// d2l's learning rate, every seed.
///
/// # Errors
/// If a run fails.
pub fn plain_runs(
    data: &FashionMnist,
    config: &DynamicsConfig,
    variants: &[Variant],
    epochs: usize,
) -> Result<Vec<History>> {
    let mut jobs = Vec::new();
    for &variant in variants {
        for &seed in &config.seeds {
            jobs.push((variant, config.train_config(epochs, learning_rate(), seed)));
        }
    }
    side_by_side(jobs, |(variant, train)| plain_run(data, variant, &train))
}

// ----- numbers over seeds -----

/// Mean, lowest and highest of some values (one per seed).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    /// The mean.
    pub mean: f64,
    /// The lowest value.
    pub min: f64,
    /// The highest value.
    pub max: f64,
}

impl Spread {
    /// Over `values`; NaN if one of them is NaN.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let values: Vec<f64> = values.into_iter().collect();
        let n = values.len().max(1) as f64;
        let nan = values.iter().any(|v| v.is_nan());
        let pick = |f: fn(f64, f64) -> f64, start: f64| {
            if nan {
                f64::NAN
            } else {
                values.iter().copied().fold(start, f)
            }
        };
        Spread {
            mean: values.iter().sum::<f64>() / n,
            min: pick(f64::min, f64::INFINITY),
            max: pick(f64::max, f64::NEG_INFINITY),
        }
    }

    /// `0.853 (0.850–0.857)`, with `digits` decimals (`diverged` for NaN
    /// or infinite values).
    pub fn show(&self, digits: usize) -> String {
        if !(self.mean.is_finite() && self.min.is_finite() && self.max.is_finite()) {
            return "diverged".into();
        }
        format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            self.mean, self.min, self.max
        )
    }

    /// The same in scientific notation, for gradient norms.
    pub fn show_sci(&self) -> String {
        if !self.mean.is_finite() {
            return "diverged".into();
        }
        format!("{:.1e} ({:.1e}–{:.1e})", self.mean, self.min, self.max)
    }

    /// `(x, min, mean, max)`, a point of a [`Band`].
    fn at(&self, x: f64) -> (f64, f64, f64, f64) {
        (x, self.min, self.mean, self.max)
    }
}

fn last(h: &History) -> &EpochRecord {
    h.last().expect("every run has at least one epoch")
}

/// The runs of one variant, optionally at one learning rate.
fn runs_of<'a>(runs: &'a [History], variant: &str, lr: Option<f32>) -> Vec<&'a History> {
    runs.iter()
        .filter(|h| h.model == variant && lr.is_none_or(|lr| h.lr == lr))
        .collect()
}

fn traced_of<'a>(runs: &'a [TracedRun], variant: &str) -> Vec<&'a TracedRun> {
    runs.iter().filter(|r| r.variant == variant).collect()
}

/// A spread of `metric` of the last epoch over `runs`.
fn final_spread(runs: &[&History], metric: fn(&EpochRecord) -> f64) -> Spread {
    Spread::of(runs.iter().map(|h| metric(last(h))))
}

/// A band of `metric` per epoch over `runs` (all of the same length).
fn epoch_band(label: &str, runs: &[&History], metric: fn(&EpochRecord) -> f64) -> Band {
    let epochs = runs.first().map_or(0, |h| h.history.len());
    Band {
        label: label.to_string(),
        points: (0..epochs)
            .map(|e| Spread::of(runs.iter().map(|h| metric(&h.history[e]))).at((e + 1) as f64))
            .collect(),
    }
}

/// A band over seeds of one number per recorded step.
fn step_band(
    label: &str,
    runs: &[&TracedRun],
    value: impl Fn(&bnbook::dynamics::TraceRecord) -> f64,
) -> Band {
    let steps = runs.first().map_or(0, |r| r.trace.records.len());
    Band {
        label: label.to_string(),
        points: (0..steps)
            .map(|i| {
                let step = runs[0].trace.records[i].step as f64;
                Spread::of(runs.iter().map(|r| value(&r.trace.records[i]))).at(step)
            })
            .collect(),
    }
}

fn integer_ticks(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        String::new()
    }
}

fn spread_note(config: &DynamicsConfig) -> String {
    format!(
        "mean over {} (lowest–highest){}",
        plural(config.seeds.len(), "seed"),
        config.limit_note()
    )
}

// ----- 1. learning rates -----

const BN: &str = "lenet-bn";
/// The accuracy of guessing among Fashion-MNIST's ten classes.
const CHANCE: f64 = 0.1;
const NO_NORM: &str = "lenet-no-norm";

/// Test accuracy and final loss of one network at one learning rate.
#[derive(Clone, Debug, Serialize)]
pub struct SweepCell {
    /// `lenet-bn` or `lenet-no-norm`.
    pub variant: String,
    /// The learning rate.
    pub lr: f32,
    /// Training loss of the last epoch over seeds.
    pub loss: Spread,
    /// Test accuracy after the last epoch over seeds.
    pub test_acc: Spread,
    /// Seeds whose loss became NaN or infinite.
    pub diverged: usize,
}

/// The sweep's table in numbers, one cell per network and learning rate.
pub fn sweep_cells(runs: &[History], config: &DynamicsConfig) -> Vec<SweepCell> {
    let mut cells = Vec::new();
    for variant in [BN, NO_NORM] {
        for &lr in &config.learning_rates {
            let of = runs_of(runs, variant, Some(lr));
            cells.push(SweepCell {
                variant: variant.to_string(),
                lr,
                loss: final_spread(&of, |r| r.loss),
                test_acc: final_spread(&of, |r| r.test_acc),
                diverged: of
                    .iter()
                    .filter(|h| h.history.iter().any(|r| !r.loss.is_finite()))
                    .count(),
            });
        }
    }
    cells
}

fn sweep_markdown(cells: &[SweepCell], config: &DynamicsConfig) -> String {
    let mut md = String::from(
        "| lr | `lenet-bn` loss | `lenet-bn` test acc | `lenet-no-norm` loss | `lenet-no-norm` test acc |\n|---|---|---|---|---|\n",
    );
    let cell = |variant: &str, lr: f32| {
        cells
            .iter()
            .find(|c| c.variant == variant && c.lr == lr)
            .expect("a cell per network and learning rate")
    };
    let show = |c: &SweepCell| {
        let note = match c.diverged {
            0 => String::new(),
            n => format!(" ({n} of {} diverged)", config.seeds.len()),
        };
        (c.loss.show(3) + &note, c.test_acc.show(3))
    };
    for &lr in &config.learning_rates {
        let (bn_loss, bn_acc) = show(cell(BN, lr));
        let (no_loss, no_acc) = show(cell(NO_NORM, lr));
        md += &format!("| {lr} | {bn_loss} | {bn_acc} | {no_loss} | {no_acc} |\n");
    }
    for variant in [BN, NO_NORM] {
        let of: Vec<&SweepCell> = cells.iter().filter(|c| c.variant == variant).collect();
        let best = of
            .iter()
            .filter(|c| c.test_acc.mean.is_finite())
            .max_by(|a, b| a.test_acc.mean.total_cmp(&b.test_acc.mean));
        let diverged: Vec<String> = of
            .iter()
            .filter(|c| c.diverged > 0)
            .map(|c| c.lr.to_string())
            .collect();
        let diverged = match diverged.is_empty() {
            true => "no run diverged".to_string(),
            false => format!("runs diverged at lr {}", diverged.join(", ")),
        };
        match best {
            Some(best) if best.test_acc.mean >= CHANCE + 0.1 => {
                let near: Vec<String> = of
                    .iter()
                    .filter(|c| c.test_acc.mean >= best.test_acc.mean - 0.02)
                    .map(|c| c.lr.to_string())
                    .collect();
                md += &format!(
                    "\n`{variant}`: best at lr {} (test acc {:.3}); within 2 points of that at lr {}; {diverged}.",
                    best.lr,
                    best.test_acc.mean,
                    near.join(", ")
                );
            }
            _ => {
                md += &format!(
                    "\n`{variant}`: no learning rate lifts the test accuracy 10 points above chance \
                     ({CHANCE}) in this budget; {diverged}."
                )
            }
        }
    }
    md += &format!(
        "\n\nTraining loss of the last epoch and test accuracy after it, {} per run, batch 256; {}.\n",
        plural(config.sweep_epochs, "epoch"),
        spread_note(config)
    );
    md
}

fn sweep_chart(cells: &[SweepCell]) -> Result<Svg> {
    let bands: Vec<Band> = [BN, NO_NORM]
        .iter()
        .map(|&variant| Band {
            label: format!("{variant}: test acc"),
            points: cells
                .iter()
                .filter(|c| c.variant == variant)
                .map(|c| c.test_acc.at(f64::from(c.lr).log10()))
                .collect(),
        })
        .collect();
    band_chart(
        "Test accuracy vs learning rate",
        "learning rate (log scale)",
        &bands,
        (560, 340),
        &|x| {
            if (x - x.round()).abs() < 1e-9 {
                format!("{}", 10f64.powf(x.round()))
            } else {
                String::new()
            }
        },
    )
}

// ----- 2. activations -----

/// The input of the watched sigmoid of the last hidden layer (its
/// percentiles) and the saturated share of every sigmoid layer, per
/// variant.
#[derive(Clone, Debug, Serialize)]
pub struct ActivationSummary {
    /// The variant.
    pub variant: String,
    /// The median of the watched unit's input at the first step.
    pub median_first: Spread,
    /// The same at the last step.
    pub median_last: Spread,
    /// How far the median moved over the run (largest minus smallest).
    pub median_drift: Spread,
    /// The 85th minus the 15th percentile at the last step.
    pub width_last: Spread,
    /// Share of saturated inputs per sigmoid layer at the first step.
    pub saturated_first: Vec<Spread>,
    /// The same at the last step.
    pub saturated_last: Vec<Spread>,
}

fn watched(r: &bnbook::dynamics::TraceRecord) -> [f32; 3] {
    r.sigmoids.last().map_or([f32::NAN; 3], |s| s.watched)
}

fn first_and_last(
    run: &TracedRun,
) -> (
    &bnbook::dynamics::TraceRecord,
    &bnbook::dynamics::TraceRecord,
) {
    let records = &run.trace.records;
    (&records[0], &records[records.len() - 1])
}

/// The activation summary of every traced variant, in run order.
pub fn activation_summaries(runs: &[TracedRun]) -> Vec<ActivationSummary> {
    let mut names: Vec<&str> = runs.iter().map(|r| r.variant.as_str()).collect();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let of = traced_of(runs, name);
            let over = |f: &dyn Fn(&TracedRun) -> f64| Spread::of(of.iter().map(|r| f(r)));
            let layers = of[0].trace.records[0].sigmoids.len();
            let saturated = |at_end: bool| -> Vec<Spread> {
                (0..layers)
                    .map(|l| {
                        over(&|r| {
                            let (first, last) = first_and_last(r);
                            let record = if at_end { last } else { first };
                            record.sigmoids[l].saturated
                        })
                    })
                    .collect()
            };
            ActivationSummary {
                variant: name.to_string(),
                median_first: over(&|r| f64::from(watched(first_and_last(r).0)[1])),
                median_last: over(&|r| f64::from(watched(first_and_last(r).1)[1])),
                median_drift: over(&|r| {
                    let medians = r.trace.records.iter().map(|rec| f64::from(watched(rec)[1]));
                    let (lo, hi) = medians.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), m| {
                        (a.min(m), b.max(m))
                    });
                    hi - lo
                }),
                width_last: over(&|r| {
                    let [p15, _, p85] = watched(first_and_last(r).1);
                    f64::from(p85 - p15)
                }),
                saturated_first: saturated(false),
                saturated_last: saturated(true),
            }
        })
        .collect()
}

fn activations_markdown(rows: &[ActivationSummary], config: &DynamicsConfig) -> String {
    let mut md = String::from(
        "| network | median at step 0 | median at the end | drift of the median | 85th − 15th at the end |\n|---|---|---|---|---|\n",
    );
    for r in rows.iter().filter(|r| !r.variant.contains('×')) {
        md += &format!(
            "| `{}` | {} | {} | {} | {} |\n",
            r.variant,
            r.median_first.show(2),
            r.median_last.show(2),
            r.median_drift.show(2),
            r.width_last.show(2)
        );
    }
    md += &format!(
        "\nInput of unit 0 of the last hidden layer's sigmoid (84 units), over the step's batch of 256; \
         drift = largest minus smallest median over the recorded steps; {} at lr {}; {}.\n",
        plural(config.epochs, "epoch"),
        learning_rate(),
        spread_note(config)
    );
    md
}

fn saturation_markdown(rows: &[ActivationSummary], config: &DynamicsConfig) -> String {
    let layers = rows.first().map_or(0, |r| r.saturated_first.len());
    let names = ["conv 1", "conv 2", "fc 1", "fc 2"];
    let mut md = String::from("| network |");
    for l in 0..layers {
        md += &format!(
            " {}: step 0 → end |",
            names.get(l).copied().unwrap_or("layer")
        );
    }
    md += "\n|---|";
    md += &"---|".repeat(layers);
    md += "\n";
    for r in rows {
        md += &format!("| `{}` |", r.variant);
        for (first, last) in r.saturated_first.iter().zip(&r.saturated_last) {
            md += &format!(
                " {:.1} % → {:.1} % |",
                100.0 * first.mean,
                100.0 * last.mean
            );
        }
        md += "\n";
    }
    md += &format!(
        "\nShare of sigmoid inputs with |z| > 4 (where σ′(z) < 0.018) in each sigmoid layer, \
         at the first and the last training step, mean over {}; ×0.1 and ×10: \
         weights scaled after Xavier's initialisation{}.\n",
        plural(config.seeds.len(), "seed"),
        config.limit_note()
    );
    md
}

fn percentile_chart(runs: &[TracedRun], variant: &str) -> Result<Svg> {
    let of = traced_of(runs, variant);
    let bands: Vec<Band> = ["15th", "50th", "85th"]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            step_band(&format!("{p} percentile"), &of, |r| {
                f64::from(watched(r)[i])
            })
        })
        .collect();
    band_chart(
        &format!("{variant}: input of one sigmoid of the last hidden layer"),
        "training step",
        &bands,
        (560, 340),
        &integer_ticks,
    )
}

// ----- 3. gradients -----

/// Gradient norms of every weight layer of one variant, first and last step.
#[derive(Clone, Debug, Serialize)]
pub struct GradientSummary {
    /// The variant.
    pub variant: String,
    /// The layers, e.g. `Conv2d(1 -> 6, kernel 5)`.
    pub layers: Vec<String>,
    /// `‖∂loss/∂W‖` per layer at the first step.
    pub first: Vec<Spread>,
    /// The same at the last step.
    pub last: Vec<Spread>,
    /// Test accuracy after the last epoch.
    pub test_acc: Spread,
}

/// The gradient summary of every traced variant without noise.
pub fn gradient_summaries(runs: &[TracedRun]) -> Vec<GradientSummary> {
    let mut names: Vec<&str> = runs
        .iter()
        .filter(|r| !r.noise)
        .map(|r| r.variant.as_str())
        .collect();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let of = traced_of(runs, name);
            let layers: Vec<String> = of[0].trace.records[0]
                .gradients
                .iter()
                .map(|g| g.layer.clone())
                .collect();
            let at = |end: bool| -> Vec<Spread> {
                (0..layers.len())
                    .map(|l| {
                        Spread::of(of.iter().map(|r| {
                            let (first, last) = first_and_last(r);
                            let record = if end { last } else { first };
                            record.gradients[l].gradient_norm
                        }))
                    })
                    .collect()
            };
            let histories: Vec<&History> = of.iter().map(|r| &r.history).collect();
            GradientSummary {
                variant: name.to_string(),
                first: at(false),
                last: at(true),
                layers,
                test_acc: final_spread(&histories, |r| r.test_acc),
            }
        })
        .collect()
}

fn gradients_markdown(rows: &[GradientSummary], end: bool, config: &DynamicsConfig) -> String {
    let names = ["conv 1", "conv 2", "fc 1", "fc 2", "fc 3"];
    let layers = rows.first().map_or(0, |r| r.layers.len());
    let mut md = String::from("| network |");
    for l in 0..layers {
        md += &format!(" {} |", names.get(l).copied().unwrap_or("layer"));
    }
    md += if end { " test acc |\n|---|" } else { "\n|---|" };
    md += &"---|".repeat(layers + usize::from(end));
    md += "\n";
    for r in rows {
        let norms = if end { &r.last } else { &r.first };
        md += &format!("| `{}` |", r.variant);
        for s in norms {
            md += &format!(" {} |", s.show_sci());
        }
        if end {
            md += &format!(" {} |", r.test_acc.show(3));
        }
        md += "\n";
    }
    md += &format!(
        "\n‖∂loss/∂W‖ of each weight layer at the {} training step, on that step's batch; \
         {} at lr {}; {}.\n",
        if end { "last" } else { "first" },
        plural(config.epochs, "epoch"),
        learning_rate(),
        spread_note(config)
    );
    md
}

fn gradient_chart(rows: &[GradientSummary], end: bool) -> Result<Svg> {
    let bands: Vec<Band> = rows
        .iter()
        .map(|r| Band {
            label: r.variant.clone(),
            points: (if end { &r.last } else { &r.first })
                .iter()
                .enumerate()
                .map(|(l, s)| {
                    let log = Spread {
                        mean: s.mean.log10(),
                        min: s.min.log10(),
                        max: s.max.log10(),
                    };
                    log.at((l + 1) as f64)
                })
                .collect(),
        })
        .collect();
    band_chart(
        &format!(
            "log10 ‖∂loss/∂W‖ per layer, {} step",
            if end { "last" } else { "first" }
        ),
        "weight layer (1-2 conv, 3-5 fully connected)",
        &bands,
        (560, 380),
        &integer_ticks,
    )
}

// ----- 4. noisy batch norm, 6. dropout, 7. longer -----

fn runs_markdown(rows: &[(&str, Vec<&History>)], config: &DynamicsConfig, epochs: usize) -> String {
    let mut md = String::from(
        "| network | train loss | train acc | test acc | train acc − test acc |\n|---|---|---|---|---|\n",
    );
    for (name, runs) in rows {
        md += &format!(
            "| `{name}` | {} | {} | {} | {} |\n",
            final_spread(runs, |r| r.loss).show(3),
            final_spread(runs, |r| r.train_acc).show(3),
            final_spread(runs, |r| r.test_acc).show(3),
            final_spread(runs, |r| r.train_acc - r.test_acc).show(3),
        );
    }
    md += &format!(
        "\nAfter {} at lr {}, batch 256 (train loss and accuracy: running averages over the last epoch); {}.\n",
        plural(epochs, "epoch"),
        learning_rate(),
        spread_note(config)
    );
    md
}

fn histories<'a>(runs: &[&'a TracedRun]) -> Vec<&'a History> {
    runs.iter().map(|r| &r.history).collect()
}

fn long_markdown(runs: &[History], config: &DynamicsConfig) -> String {
    let mut md = format!(
        "| network | test acc after {} | after {} | best epoch's test acc | gain from the extra epochs |\n|---|---|---|---|---|\n",
        plural(config.epochs, "epoch"),
        plural(config.long_epochs, "epoch")
    );
    for variant in [BN, NO_NORM] {
        let of = runs_of(runs, variant, None);
        let at = |e: usize| Spread::of(of.iter().map(|h| h.history[e - 1].test_acc));
        let best = Spread::of(of.iter().map(|h| {
            h.history
                .iter()
                .map(|r| r.test_acc)
                .fold(f64::NEG_INFINITY, f64::max)
        }));
        let gain = Spread::of(of.iter().map(|h| {
            h.history[config.long_epochs - 1].test_acc - h.history[config.epochs - 1].test_acc
        }));
        md += &format!(
            "| `{variant}` | {} | {} | {} | {} |\n",
            at(config.epochs).show(3),
            at(config.long_epochs).show(3),
            best.show(3),
            gain.show(3)
        );
    }
    md += &format!(
        "\nOne run per seed of {}, lr {}, batch 256; {}.\n",
        plural(config.long_epochs, "epoch"),
        learning_rate(),
        spread_note(config)
    );
    md
}

fn epoch_chart(
    title: &str,
    rows: &[(&str, Vec<&History>)],
    metric: fn(&EpochRecord) -> f64,
) -> Result<Svg> {
    let bands: Vec<Band> = rows
        .iter()
        .map(|(name, runs)| epoch_band(name, runs, metric))
        .collect();
    band_chart(title, "epoch", &bands, (560, 340), &integer_ticks)
}

// ----- 5. the loss along the gradient -----

/// The loss-landscape measurements of one network, each first reduced to
/// its median over the recorded steps of a run, then spread over seeds.
#[derive(Clone, Debug, Serialize)]
pub struct LandscapeSummary {
    /// The variant.
    pub variant: String,
    /// Largest minus smallest loss along the gradient.
    pub loss_range: Spread,
    /// Largest `‖∇L(w − η·g) − g‖`.
    pub gradient_change: Spread,
    /// Largest `‖∇L(w − η·g) − g‖ / ‖η·g‖`.
    pub smoothness: Spread,
    /// `‖g‖`.
    pub gradient_norm: Spread,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The landscape summary of the probed runs (`lenet-bn`, `lenet-no-norm`).
pub fn landscape_summaries(runs: &[TracedRun]) -> Vec<LandscapeSummary> {
    [BN, NO_NORM]
        .iter()
        .map(|&name| {
            let of = traced_of(runs, name);
            let over = |f: fn(&bnbook::dynamics::LandscapeProbe) -> f64| {
                Spread::of(of.iter().map(|r| {
                    median(
                        r.trace
                            .records
                            .iter()
                            .filter_map(|rec| rec.landscape.as_ref().map(f))
                            .collect(),
                    )
                }))
            };
            LandscapeSummary {
                variant: name.to_string(),
                loss_range: over(|p| p.loss_range()),
                gradient_change: over(|p| p.max_gradient_change()),
                smoothness: over(|p| p.smoothness()),
                gradient_norm: over(|p| p.gradient_norm),
            }
        })
        .collect()
}

fn landscape_markdown(rows: &[LandscapeSummary], config: &DynamicsConfig) -> String {
    let mut md = String::from(
        "| network | loss range along the gradient | largest gradient change | effective β-smoothness | ‖g‖ |\n|---|---|---|---|---|\n",
    );
    for r in rows {
        md += &format!(
            "| `{}` | {} | {} | {} | {} |\n",
            r.variant,
            r.loss_range.show(3),
            r.gradient_change.show(3),
            r.smoothness.show(3),
            r.gradient_norm.show(3)
        );
    }
    let steps: Vec<String> = config
        .step_sizes
        .iter()
        .map(|s| format!("{}", s * learning_rate()))
        .collect();
    md += &format!(
        "\nAt every recorded step, steps of η·g with η = {} from the current weights, on the \
         step's batch; each run's median over its recorded steps, {}.\n",
        steps.join(", "),
        spread_note(config)
    );
    md
}

fn landscape_chart(
    runs: &[TracedRun],
    title: &str,
    f: fn(&bnbook::dynamics::LandscapeProbe) -> f64,
) -> Result<Svg> {
    let bands: Vec<Band> = [BN, NO_NORM]
        .iter()
        .map(|&name| {
            step_band(name, &traced_of(runs, name), |r| {
                r.landscape.as_ref().map_or(f64::NAN, f)
            })
        })
        .collect();
    band_chart(title, "training step", &bands, (560, 340), &integer_ticks)
}

// ----- everything -----

/// Runs every experiment and writes its tables (Markdown), data (JSON) and
/// figures (SVG) into `config.out`, with `run-time.md` and the manifest
/// `figures.json`. Every setting is checked before the first run.
///
/// # Errors
/// If a setting is invalid, a run fails or a file cannot be written.
pub fn generate(data: &FashionMnist, config: &DynamicsConfig, command: &str) -> Result<Manifest> {
    config.validate(data)?;
    let started = Instant::now();
    let mut w = Writer::new(&config.out)?;

    // 1. learning rates
    let sweep = lr_sweep(data, config)?;
    w.json(
        "lr-sweep.json",
        "histories of the learning-rate sweep",
        &sweep,
    )?;
    let cells = sweep_cells(&sweep, config);
    w.write(
        "lr-sweep.md",
        "final loss and test accuracy of lenet-bn and lenet-no-norm per learning rate",
        &sweep_markdown(&cells, config),
    )?;
    w.svg(
        "lr-sweep.svg",
        "test accuracy against the learning rate (log scale), band: lowest to highest seed",
        &sweep_chart(&cells)?,
    )?;

    // 2-5. traced runs
    let traced = traced_runs(data, config)?;
    let compact =
        serde_json::to_string(&traced).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    w.write(
        "traced-runs.json",
        "histories and traces (activations, gradients, loss along the gradient) of the traced runs",
        &(compact + "\n"),
    )?;
    let activations = activation_summaries(&traced);
    w.json("activations.json", "activation summaries", &activations)?;
    w.write(
        "activations.md",
        "the watched sigmoid input's median and spread over training",
        &activations_markdown(&activations, config),
    )?;
    w.write(
        "saturation.md",
        "share of saturated sigmoid inputs per layer, first and last step",
        &saturation_markdown(&activations, config),
    )?;
    let noisy = Variant::BATCH_NORM.with_noise(config.noise).name();
    for variant in [BN, NO_NORM, noisy.as_str()] {
        let file = format!("percentiles-{}.svg", variant.replace('+', "-"));
        w.svg(
            &file,
            &format!(
                "15th, 50th and 85th percentile of one sigmoid input over training, {variant}"
            ),
            &percentile_chart(&traced, variant)?,
        )?;
    }
    let gradients = gradient_summaries(&traced);
    w.json("gradients.json", "gradient summaries", &gradients)?;
    for (end, which) in [(false, "first"), (true, "last")] {
        w.write(
            &format!("gradients-{which}.md"),
            &format!("gradient norm per weight layer at the {which} step"),
            &gradients_markdown(&gradients, end, config),
        )?;
        w.svg(
            &format!("gradients-{which}.svg"),
            &format!("log10 gradient norm per weight layer at the {which} step"),
            &gradient_chart(&gradients, end)?,
        )?;
    }
    let landscape = landscape_summaries(&traced);
    w.json("landscape.json", "loss-landscape summaries", &landscape)?;
    w.write(
        "landscape.md",
        "loss range, gradient change and smoothness along the gradient",
        &landscape_markdown(&landscape, config),
    )?;
    w.svg(
        "landscape-loss-range.svg",
        "range of the loss along the gradient over training",
        &landscape_chart(&traced, "Loss range along the gradient", |p| p.loss_range())?,
    )?;
    w.svg(
        "landscape-gradient-change.svg",
        "largest gradient change along the gradient over training",
        &landscape_chart(&traced, "Gradient change along the gradient", |p| {
            p.max_gradient_change()
        })?,
    )?;
    let noisy_rows = [
        (BN, histories(&traced_of(&traced, BN))),
        (noisy.as_str(), histories(&traced_of(&traced, &noisy))),
        (NO_NORM, histories(&traced_of(&traced, NO_NORM))),
    ];
    w.write(
        "noisy-bn.md",
        "batch norm, noisy batch norm and no normalisation after the same training",
        &runs_markdown(&noisy_rows, config, config.epochs),
    )?;
    w.svg(
        "noisy-bn-loss.svg",
        "training loss per epoch of batch norm, noisy batch norm and no normalisation",
        &epoch_chart("Training loss", &noisy_rows, |r| r.loss)?,
    )?;

    // 6. dropout
    let dropout = plain_runs(data, config, &config.dropout_variants(), config.epochs)?;
    w.json(
        "dropout-runs.json",
        "histories of the dropout runs",
        &dropout,
    )?;
    let [no_drop, bn_drop] = config.dropout_variants().map(|v| v.name());
    let dropout_rows = [
        (NO_NORM, histories(&traced_of(&traced, NO_NORM))),
        (no_drop.as_str(), runs_of(&dropout, &no_drop, None)),
        (BN, histories(&traced_of(&traced, BN))),
        (bn_drop.as_str(), runs_of(&dropout, &bn_drop, None)),
    ];
    w.write(
        "dropout.md",
        "batch norm, dropout and both after the same training",
        &runs_markdown(&dropout_rows, config, config.epochs),
    )?;

    // 7. longer
    let long = plain_runs(
        data,
        config,
        &[Variant::BATCH_NORM, Variant::NO_NORM],
        config.long_epochs,
    )?;
    w.json("long-runs.json", "histories of the longer runs", &long)?;
    w.write(
        "long-run.md",
        "test accuracy after the usual and after the longer training",
        &long_markdown(&long, config),
    )?;
    let long_rows = [BN, NO_NORM].map(|v| (v, runs_of(&long, v, None)));
    w.svg(
        "long-run.svg",
        "test accuracy per epoch of the longer runs",
        &epoch_chart("Test accuracy", &long_rows, |r| r.test_acc)?,
    )?;

    w.finish(command, config.epochs, &config.seeds, config.limit, started)
}
