//! Every figure, table and number the chapters show, from one command:
//! `bnbook figures --out book/generated`.
//!
//! *Book: chapters "LeNet with BN on Fashion-MNIST" and "Concise BN".*
//!
//! The chapters never contain a typed-in result: they `{{#include}}` the
//! Markdown tables and show the SVG figures written here, and
//! `figures.json` lists every artefact with the command that made it.

use crate::bench::{BenchReport, bench};
use crate::largest_difference;
use crate::report::{Manifest, Writer, plural};
use crate::side_by_side::side_by_side;
use bnbook::Tensor;
use bnbook::concise::{BatchNorm2d, BatchNormOptions};
use bnbook::data::FashionMnist;
use bnbook::error::{Error, Result};
use bnbook::models::ModelKind;
use bnbook::nn::{Mode, Module, Momentum};
use bnbook::plot::{Series, line_chart};
use bnbook::random::random_input;
use bnbook::scratch::BatchNorm;
use bnbook::train::{EpochRecord, History, TrainConfig, train_model};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// What to run.
#[derive(Clone, Debug)]
pub struct FiguresConfig {
    /// Where to write (e.g. `book/generated`).
    pub out: PathBuf,
    /// Epochs per training run (the book uses d2l's 10).
    pub epochs: usize,
    /// Seeds of the LeNet-BN runs (at least three, to show the spread).
    pub seeds: Vec<u64>,
    /// Train on the first `n` examples only (quick checks; the book uses all).
    pub limit: Option<usize>,
    /// Timed batches per speed measurement.
    pub bench_batches: usize,
}

impl Default for FiguresConfig {
    /// The book's full-size run: d2l's 10 epochs, seeds 0, 1 and 2, all
    /// examples, 50 timed batches per speed measurement.
    fn default() -> Self {
        FiguresConfig {
            out: PathBuf::from(DEFAULT_OUT_DIR),
            epochs: TrainConfig::d2l(ModelKind::LenetBn).epochs,
            seeds: vec![0, 1, 2],
            limit: None,
            bench_batches: 50,
        }
    }
}

impl FiguresConfig {
    /// Checks the settings against `data` before the first run.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if there is no seed, no epoch, no timed
    /// batch, or the limit leaves too few examples
    /// ([`TrainConfig::validate`]).
    pub fn validate(&self, data: &FashionMnist) -> Result<()> {
        if self.seeds.is_empty() {
            return Err(Error::InvalidArgument(
                "the figures need at least one seed".into(),
            ));
        }
        if self.bench_batches == 0 {
            return Err(Error::InvalidArgument(
                "the speed measurements need at least 1 timed batch".into(),
            ));
        }
        let run = TrainConfig {
            epochs: self.epochs,
            limit: self.limit,
            ..TrainConfig::d2l(ModelKind::LenetBn)
        };
        run.validate(data)
    }
}

/// One number per epoch, read from a history record.
type Metric = fn(&EpochRecord) -> f64;

fn series(label: String, h: &History, f: Metric) -> Series {
    Series {
        label,
        points: h.history.iter().map(|r| (r.epoch as f64, f(r))).collect(),
    }
}

/// Runs the trainings and measurements and writes every artefact into
/// `config.out`.
///
/// # Errors
/// If the data cannot be loaded, a run fails, or a file cannot be written.
pub fn generate(data: &FashionMnist, config: &FiguresConfig, command: &str) -> Result<Manifest> {
    config.validate(data)?;
    let started = Instant::now();
    let mut w = Writer::new(&config.out)?;

    // Every training run is independent, so they run side by side, one
    // thread each (`side_by_side`): the networks stay on their worker
    // threads, and what the tables need of them (the first BN layer's γ
    // and β, the test accuracy with re-estimated statistics) is read there.
    // The longest runs first (plain LeNet, whose padded first convolution
    // makes larger maps), so that the workers finish close together.
    let first = config.seeds[0];
    let mut jobs = vec![
        Job::Train(ModelKind::Lenet, first),
        Job::Train(ModelKind::LenetBnMaxpool, first),
    ];
    jobs.extend(
        config
            .seeds
            .iter()
            .map(|&seed| Job::Train(ModelKind::LenetBn, seed)),
    );
    jobs.extend([
        Job::Train(ModelKind::LenetBnConcise, first),
        // the controlled baseline: LeNet-BN's network with the batch norms
        // removed, same learning rate (plain LeNet also differs in its
        // padding and first fully connected layer, and trains at lr 0.9)
        Job::Train(ModelKind::LenetNoNorm, first),
        Job::MxnetRecipe,
    ]);
    let mut outcomes = side_by_side(jobs, |job| run_job(data, config, job))?.into_iter();
    let mut next = || outcomes.next().expect("one outcome per job");
    let (plain, maxpool) = (next().history, next().history);
    let bn_outcomes: Vec<(History, BatchNormReadings)> = config
        .seeds
        .iter()
        .map(|_| {
            let o = next();
            let readings = o.batch_norm.expect("lenet-bn runs read their batch norm");
            (o.history, readings)
        })
        .collect();
    let (concise, no_norm, mxnet) = (next().history, next().history, next().history);
    for (history, _) in &bn_outcomes {
        let seed = history.seed;
        w.json(
            &format!("lenet-bn-seed{seed}.json"),
            &format!("history of lenet-bn, seed {seed}"),
            history,
        )?;
    }
    w.json(
        "lenet-seed0.json",
        "history of plain LeNet (no BN, lr 0.9)",
        &plain,
    )?;
    w.json(
        "lenet-no-norm-seed0.json",
        "history of LeNet-BN's network without batch norm (lr 1.0)",
        &no_norm,
    )?;
    w.json(
        "lenet-bn-maxpool-seed0.json",
        "history of LeNet-BN with max-pooling",
        &maxpool,
    )?;
    w.json(
        "lenet-bn-concise-seed0.json",
        "history of LeNet-BN with the fused BN",
        &concise,
    )?;
    w.json(
        "lenet-bn-mxnet-recipe-seed0.json",
        "history of d2l's MXNet recipe: max pooling, lr 0.9, 5 epochs, momentum 0.9 on the new batch",
        &mxnet,
    )?;
    let bn_runs: Vec<&History> = bn_outcomes.iter().map(|(history, _)| history).collect();

    // the same runs twice: test accuracy, then training loss
    let charts: [(&str, &str, &str, Metric); 2] = [
        (
            "bn-vs-plain-test-acc.svg",
            "Test accuracy",
            "Test accuracy per epoch",
            |r| r.test_acc,
        ),
        (
            "bn-vs-plain-train-loss.svg",
            "Training loss",
            "Training loss per epoch",
            |r| r.loss,
        ),
    ];
    for (file, title, what, metric) in charts {
        let mut lines: Vec<Series> = bn_runs
            .iter()
            .map(|h| series(format!("with BN, seed {}", h.seed), h, metric))
            .collect();
        lines.push(series("same network, no BN".into(), &no_norm, metric));
        lines.push(series("d2l's plain LeNet (lr 0.9)".into(), &plain, metric));
        w.svg(
            file,
            &format!(
                "{what} of LeNet with batch norm (several seeds), the same network without \
                 it, and d2l's plain LeNet"
            ),
            &line_chart(title, "epoch", &lines, (560, 340))?,
        )?;
    }
    w.svg(
        "lenet-bn-curves.svg",
        "d2l's figure for LeNet-BN, first seed: train loss, train accuracy and test accuracy",
        &bnbook::plot::training_curves(bn_runs[0])?,
    )?;
    let pooling = [
        series("average pooling".into(), bn_runs[0], |r| r.test_acc),
        series("max pooling".into(), &maxpool, |r| r.test_acc),
    ];
    w.svg(
        "pooling-confound.svg",
        "Test accuracy of LeNet-BN with average and with max pooling, same seed",
        &line_chart(
            "LeNet-BN: average vs max pooling",
            "epoch",
            &pooling,
            (560, 340),
        )?,
    )?;

    let mut table = String::from(
        "| model | seed | lr | final loss | final train acc | final test acc | best test acc (epoch) | median examples/s |\n|---|---|---|---|---|---|---|---|\n",
    );
    for h in bn_runs
        .iter()
        .copied()
        .chain([&no_norm, &plain, &maxpool, &concise, &mxnet])
    {
        let last = h.last().expect("epochs > 0");
        let best = h
            .history
            .iter()
            .max_by(|a, b| a.test_acc.total_cmp(&b.test_acc))
            .expect("epochs > 0");
        table += &format!(
            "| `{}` | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} ({}) | {:.0} |\n",
            h.model,
            h.seed,
            h.lr,
            last.loss,
            last.train_acc,
            last.test_acc,
            best.test_acc,
            best.epoch,
            h.median_examples_per_sec()
        );
    }
    let mean_test = bn_runs
        .iter()
        .map(|h| h.last().expect("epochs").test_acc)
        .sum::<f64>()
        / bn_runs.len() as f64;
    table += &format!(
        "\nMean final test accuracy of `lenet-bn` over {}: {mean_test:.3}. \
         Examples/s: median over epochs, each run on one thread with {} \
         (see `side_by_side`).\n",
        plural(bn_runs.len(), "seed"),
        crate::side_by_side::arrangement()
    );
    w.write(
        "runs-table.md",
        "final metrics of every training run",
        &table,
    )?;

    // ----- learned γ and β of the first BN layer -----
    let first = &bn_outcomes[0].1;
    let mut gb = String::from("| channel | γ | β |\n|---|---|---|\n");
    for (c, (g, b)) in first.gamma.iter().zip(&first.beta).enumerate() {
        gb += &format!("| {c} | {g:.4} | {b:.4} |\n");
    }
    gb += &format!(
        "\n(layer {} of `lenet-bn`, seed {}, after {})\n",
        first.layer,
        config.seeds[0],
        plural(config.epochs, "epoch")
    );
    w.write(
        "gamma-beta.md",
        "γ and β of the first batch-norm layer after training",
        &gb,
    )?;

    // ----- running statistics that lag behind the weights -----
    let mut lag = format!(
        "| seed | test acc, running statistics | test acc, statistics re-estimated on {REESTIMATE_BATCHES} training batches |\n|---|---|---|\n",
    );
    for (history, readings) in &bn_outcomes {
        let before = history.last().expect("epochs > 0").test_acc;
        lag += &format!(
            "| {} | {before:.3} | {:.3} |\n",
            history.seed, readings.test_acc_reestimated
        );
    }
    w.write(
        "running-stats-lag.md",
        "final test accuracy with the running statistics and with statistics re-estimated for the final weights",
        &lag,
    )?;

    // ----- shapes layer by layer -----
    let mut shapes = String::new();
    for model in [ModelKind::LenetBn, ModelKind::Lenet] {
        let mut net =
            model.build(&mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0))?;
        let trace = net.shape_trace(&Tensor::new(ndarray::ArrayD::zeros(ndarray::IxDyn(&[
            1, 1, 28, 28,
        ]))))?;
        shapes +=
            &format!("`{model}`, input `[1, 1, 28, 28]`:\n\n| layer | output shape |\n|---|---|\n");
        for (layer, shape) in trace {
            shapes += &format!("| {layer} | `{shape:?}` |\n");
        }
        shapes += "\n";
    }
    w.write(
        "shapes.md",
        "output shape of every layer of lenet-bn and lenet",
        &shapes,
    )?;

    // ----- scratch vs fused: agreement and speed -----
    let agreement = agreement()?;
    w.json(
        "agreement.json",
        "scratch vs fused batch norm: largest differences",
        &agreement,
    )?;
    w.write(
        "agreement.md",
        "scratch vs fused batch norm: largest differences",
        &agreement.table(),
    )?;
    let speed: Vec<BenchReport> = [
        ModelKind::LenetBn,
        ModelKind::LenetBnConcise,
        ModelKind::LenetNoNorm,
        ModelKind::Lenet,
    ]
    .into_iter()
    .map(|m| bench(m, 256, config.bench_batches))
    .collect::<Result<_>>()?;
    w.json(
        "speed.json",
        "training-step timings of scratch BN, fused BN and no BN",
        &speed,
    )?;
    let mut speed_md = String::from(
        "| model | train step (ms) | training examples/s | eval forward (ms) |\n|---|---|---|---|\n",
    );
    for r in &speed {
        speed_md += &format!(
            "| `{}` | {:.2} | {:.0} | {:.2} |\n",
            r.model, r.train_step_ms, r.train_examples_per_sec, r.eval_forward_ms
        );
    }
    speed_md += &format!(
        "\nMedians of {} at batch {} after {} warm-up steps, on {}.\n",
        plural(config.bench_batches, "step"),
        256,
        crate::bench::WARM_UP_BATCHES,
        plural(rayon::current_num_threads(), "thread")
    );
    w.write(
        "speed.md",
        "training-step timings of scratch BN, fused BN and no BN",
        &speed_md,
    )?;
    let same = [
        series("scratch BN: test acc".into(), bn_runs[0], |r| r.test_acc),
        series("fused BN: test acc".into(), &concise, |r| r.test_acc),
        series("scratch BN: train loss".into(), bn_runs[0], |r| r.loss),
        series("fused BN: train loss".into(), &concise, |r| r.loss),
    ];
    w.svg(
        "scratch-vs-concise.svg",
        "LeNet-BN trained with the scratch and with the fused batch norm, same seed",
        &line_chart("Scratch vs fused batch norm", "epoch", &same, (560, 340))?,
    )?;

    w.finish(command, config.epochs, &config.seeds, config.limit, started)
}

/// One training run of the figures.
#[derive(Clone, Copy, Debug)]
enum Job {
    /// `model` with its d2l recipe and `seed`.
    Train(ModelKind, u64),
    /// d2l's MXNet recipe ([`mxnet_recipe`]).
    MxnetRecipe,
}

/// What the figures need of one run: its history and, for `lenet-bn`, what
/// the tables read off the trained network before it is dropped.
struct Outcome {
    history: History,
    batch_norm: Option<BatchNormReadings>,
}

/// Read off a trained `lenet-bn` on its worker thread.
struct BatchNormReadings {
    /// Index of the first batch-norm layer in the network.
    layer: usize,
    /// Its γ and β.
    gamma: Vec<f32>,
    beta: Vec<f32>,
    /// The test accuracy once the running statistics are re-estimated for
    /// the final weights ([`reestimated_test_acc`]).
    test_acc_reestimated: f64,
}

/// Training batches over which the chapters' "precise BN" re-estimates the
/// running statistics ([`reestimated_test_acc`]).
pub(crate) const REESTIMATE_BATCHES: usize = 40;

/// The test accuracy of `net` (on the first `limit` test examples) once its
/// running statistics are re-estimated for its final weights over
/// [`REESTIMATE_BATCHES`] training batches drawn with `seed`.
///
/// # Errors
/// If `net` has no batch-norm layer or rejects the images.
pub(crate) fn reestimated_test_acc(
    net: &mut bnbook::nn::Sequential,
    data: &FashionMnist,
    limit: Option<usize>,
    seed: u64,
) -> Result<f64> {
    bnbook::train::reestimate_running_statistics(net, data, limit, seed, REESTIMATE_BATCHES)?;
    let test = match limit {
        Some(n) => data.test.head(n),
        None => data.test.clone(),
    };
    bnbook::train::evaluate(net, &test, 256)
}

fn run_job(data: &FashionMnist, config: &FiguresConfig, job: Job) -> Result<Outcome> {
    let started = Instant::now();
    let (model, seed) = match job {
        Job::Train(model, seed) => (model, seed),
        Job::MxnetRecipe => {
            let history = mxnet_recipe(data, config)?;
            println!(
                "{}: {:.0} s",
                history.model,
                started.elapsed().as_secs_f64()
            );
            return Ok(Outcome {
                history,
                batch_norm: None,
            });
        }
    };
    let cfg = TrainConfig {
        epochs: config.epochs,
        seed,
        limit: config.limit,
        progress: false, // the epoch lines are the progress
        ..TrainConfig::d2l(model)
    };
    let (mut net, history) = train_model(model, data, &cfg, |r| {
        println!("{model} seed {seed}, {}", r.line())
    })?;
    println!(
        "{model} seed {seed}: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if model != ModelKind::LenetBn {
        return Ok(Outcome {
            history,
            batch_norm: None,
        });
    }
    let (layer, bn) = net.batch_norm_layers()[0];
    let (gamma, beta) = (
        bn.gamma().unwrap_or_default(),
        bn.beta().unwrap_or_default(),
    );
    let test_acc_reestimated = reestimated_test_acc(&mut net, data, config.limit, seed)?;
    Ok(Outcome {
        history,
        batch_norm: Some(BatchNormReadings {
            layer,
            gamma,
            beta,
            test_acc_reestimated,
        }),
    })
}

/// Epochs of d2l's MXNet version of the chapter.
const MXNET_EPOCHS: usize = 5;

/// d2l's MXNet version of the chapter, as its code runs: LeNet-BN with max
/// pooling, lr 0.9, 5 epochs (fewer if the figures run fewer), and its
/// scratch `batch_norm`'s update `moving = (1 − momentum)·moving +
/// momentum·batch` with momentum 0.9, i.e. 0.9 on the *new* batch.
fn mxnet_recipe(data: &FashionMnist, config: &FiguresConfig) -> Result<History> {
    let model = ModelKind::LenetBnMaxpool;
    let seed = config.seeds[0];
    let mut net =
        model.build(&mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed))?;
    for bn in net.batch_norm_layers_mut() {
        bn.set_momentum(Momentum::NewBatchWeight(0.9))?;
    }
    let cfg = TrainConfig {
        epochs: config.epochs.min(MXNET_EPOCHS),
        lr: 0.9,
        seed,
        limit: config.limit,
        progress: false, // the epoch lines are the progress
        ..TrainConfig::d2l(model)
    };
    let name = "lenet-bn-maxpool (d2l MXNet recipe)";
    bnbook::train::train(&mut net, name, data, &cfg, |r| {
        println!("{name}, {}", r.line())
    })
}

/// Largest differences between the scratch and the fused batch norm on one
/// LeNet-sized batch `(256, 6, 24, 24)`, in training mode.
#[derive(Clone, Debug, Serialize)]
pub struct Agreement {
    /// Input shape used.
    pub shape: Vec<usize>,
    /// max |y_scratch − y_fused|.
    pub output: f32,
    /// max |∂x_scratch − ∂x_fused|.
    pub input_grad: f32,
    /// max |∂γ_scratch − ∂γ_fused|.
    pub gamma_grad: f32,
    /// max |∂β_scratch − ∂β_fused|.
    pub beta_grad: f32,
    /// Scratch forward + backward, milliseconds (median of 20).
    pub scratch_ms: f64,
    /// Fused forward + backward, milliseconds (median of 20).
    pub fused_ms: f64,
}

impl Agreement {
    fn table(&self) -> String {
        format!(
            "| quantity | largest difference |\n|---|---|\n| output y | {:.1e} |\n| ∂L/∂x | {:.1e} |\n| ∂L/∂γ | {:.1e} |\n| ∂L/∂β | {:.1e} |\n\n\
             Input shape {:?}. Forward + backward: scratch {:.2} ms, fused {:.2} ms (median of 20).\n",
            self.output,
            self.input_grad,
            self.gamma_grad,
            self.beta_grad,
            self.shape,
            self.scratch_ms,
            self.fused_ms
        )
    }
}

fn agreement() -> Result<Agreement> {
    let shape = vec![256, 6, 24, 24];
    let x = random_input(&shape, -2.0, 3.0, 1);
    let upstream = random_input(&shape, -1.0, 1.0, 2);
    let mut scratch = BatchNorm::new(6, 4)?;
    let mut fused = BatchNorm2d::with_options(6, BatchNormOptions::d2l())?;
    let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let mut v = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            f()?;
            v.push(t.elapsed().as_secs_f64() * 1e3);
        }
        v.sort_by(f64::total_cmp);
        Ok(v[v.len() / 2])
    };
    let xs = Tensor::parameter(x.clone());
    let xf = Tensor::parameter(x);
    let ys = scratch.forward(&xs, Mode::Train)?;
    let yf = fused.forward(&xf, Mode::Train)?;
    ys.backward_with(upstream.clone());
    yf.backward_with(upstream.clone());
    let grad = |t: &Tensor| t.grad().unwrap_or_default();
    let fused_gamma = fused.gamma.clone().expect("affine");
    let fused_beta = fused.beta.clone().expect("affine");
    let flat = |a: ndarray::ArrayD<f32>| {
        a.into_shape_with_order(ndarray::IxDyn(&[6]))
            .expect("6 channels")
    };
    let agreement = Agreement {
        shape: shape.clone(),
        output: largest_difference(&ys.value(), &yf.value()),
        input_grad: largest_difference(&grad(&xs), &grad(&xf)),
        gamma_grad: largest_difference(&flat(grad(&scratch.gamma)), &grad(&fused_gamma)),
        beta_grad: largest_difference(&flat(grad(&scratch.beta)), &grad(&fused_beta)),
        scratch_ms: time(&mut || {
            let y = scratch.forward(&xs, Mode::Train)?;
            y.backward_with(upstream.clone());
            Ok(())
        })?,
        fused_ms: time(&mut || {
            let y = fused.forward(&xf, Mode::Train)?;
            y.backward_with(upstream.clone());
            Ok(())
        })?,
    };
    Ok(agreement)
}

/// The default output directory, relative to the repository root.
pub const DEFAULT_OUT_DIR: &str = "book/generated";

#[cfg(test)]
mod validation_tests {
    use super::*;

    use crate::refusal;

    fn book() -> FiguresConfig {
        FiguresConfig {
            out: PathBuf::from("unused"),
            epochs: 10,
            seeds: vec![0, 1, 2],
            limit: None,
            bench_batches: 50,
        }
    }

    #[test]
    fn bad_settings_are_refused_before_any_run() {
        assert!(book().validate(&FashionMnist::blank(300)).is_ok());
        let no_seeds = FiguresConfig {
            seeds: vec![],
            ..book()
        };
        assert!(
            refusal(no_seeds.validate(&FashionMnist::blank(300))).contains("at least one seed")
        );
        let no_batches = FiguresConfig {
            bench_batches: 0,
            ..book()
        };
        assert!(
            refusal(no_batches.validate(&FashionMnist::blank(300)))
                .contains("at least 1 timed batch")
        );
        let no_epochs = FiguresConfig {
            epochs: 0,
            ..book()
        };
        assert!(
            refusal(no_epochs.validate(&FashionMnist::blank(300)))
                .contains("epochs must be at least 1")
        );
        let tiny = FiguresConfig {
            limit: Some(1),
            ..book()
        };
        assert!(
            refusal(tiny.validate(&FashionMnist::blank(300)))
                .contains("at least 2 training examples")
        );
    }

    #[test]
    fn run_time_is_quoted_in_whole_minutes() {
        assert_eq!(
            crate::report::run_time_phrase(10.0, 1),
            "about 1 minute on 1 thread"
        );
        assert_eq!(
            crate::report::run_time_phrase(289.0, 2),
            "about 5 minutes on 2 threads"
        );
        assert_eq!(
            crate::report::run_time_phrase(2651.0, 2),
            "about 44 minutes on 2 threads"
        );
    }
}
