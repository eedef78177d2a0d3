//! The experiments of the chapter on batch norm at inference and with small
//! batches, and the command that writes their figures and tables:
//! `bnbook inference --out book/generated/inference`.
//!
//! *Book: chapter "Batch norm at inference and with small batches".*
//!
//! * [`momentum_runs`] — LeNet-BN trained once per momentum convention;
//!   after every epoch, test accuracy with the running statistics and with
//!   statistics re-estimated for the current weights ("precise BN"), and how
//!   far the running statistics lag behind those;
//! * [`pitfalls`] — a trained network evaluated the wrong ways: in training
//!   mode, on single examples, with running statistics updated by the test
//!   set;
//! * [`folding`] — batch norm folded into the layer before it: agreement
//!   and evaluation speed;
//! * [`small_batch_sweep`] — batch norm, batch renormalization and frozen
//!   batch norm across batch sizes;
//! * [`per_worker_runs`] and [`sync_exactness`] — a batch of 256 split over
//!   workers: per-worker (ghost) batch norm and synchronised batch norm.

use crate::bench::median;
use crate::compare::{mean, mean_and_range, scaled_lr};
use crate::report::{Manifest, Writer, plural};
use crate::side_by_side::side_by_side;
use bnbook::Tensor;
use bnbook::autograd::no_grad;
use bnbook::concise::{BatchNorm1d, BatchNorm2d, BatchNormOptions, ConciseBatchNorm};
use bnbook::data::{FashionMnist, Split};
use bnbook::error::{Error, Result};
use bnbook::fold::fold_batch_norm;
use bnbook::models::ModelKind;
use bnbook::nn::{MIN_BATCH_WITH_BATCH_NORM, Mode, Module, Momentum, Sequential, count_correct};
use bnbook::plot::{Series, Svg, line_chart, line_chart_with_x_labels};
use bnbook::random::random_input;
use bnbook::small_batch::{
    BatchNormKind, grouped_batch_norm, lenet_bn_with, sync_batch_norm, worker_shares,
};
use bnbook::train::{
    EpochRecord, History, TrainConfig, evaluate, reestimate_running_statistics, train,
};
use ndarray::ArrayD;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// The default output directory, relative to the repository root.
pub const DEFAULT_OUT_DIR: &str = "book/generated/inference";

/// The batch size the per-worker experiment splits over its workers.
pub const SPLIT_BATCH: usize = 256;

/// What to run. `Default` is the book's full-size setting.
#[derive(Clone, Debug)]
pub struct InferenceConfig {
    /// Where to write.
    pub out: PathBuf,
    /// Epochs of the momentum runs (d2l's 10).
    pub epochs: usize,
    /// Seeds of every experiment.
    pub seeds: Vec<u64>,
    /// Train and test on the first `n` examples only (quick checks).
    pub limit: Option<usize>,
    /// Training batches of 256 that precise BN averages over.
    pub precise_batches: usize,
    /// Batch sizes of the small-batch sweep.
    pub sweep_batch_sizes: Vec<usize>,
    /// Epochs of every sweep run and per-worker run.
    pub sweep_epochs: usize,
    /// Example limit of the sweep and per-worker runs.
    pub sweep_limit: Option<usize>,
    /// Per-worker batch sizes of the per-worker experiment (batch 256 split
    /// over 256/size workers).
    pub worker_batch_sizes: Vec<usize>,
    /// Workers of the synchronised run at batch 256.
    pub sync_workers: usize,
    /// Timed repetitions of each evaluation pass.
    pub timing_repeats: usize,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            out: PathBuf::from(DEFAULT_OUT_DIR),
            epochs: TrainConfig::d2l(ModelKind::LenetBn).epochs,
            seeds: vec![0, 1, 2],
            limit: None,
            precise_batches: 40,
            sweep_batch_sizes: vec![2, 4, 8, 16, 32, 64, 128, 256],
            sweep_epochs: 3,
            sweep_limit: None,
            worker_batch_sizes: vec![2, 4, 8, 16, 32, 64, 128, 256],
            sync_workers: 8,
            timing_repeats: 50,
        }
    }
}

impl InferenceConfig {
    /// Checks every setting against `data` before the first run.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the setting: no seed, zero epochs,
    /// precise batches or timing repetitions, an empty list of batch sizes, a
    /// batch size below 2 (batch norm needs two examples), a per-worker batch
    /// size that does not divide 256, a worker count outside 1..=256, or a
    /// limit that leaves too few examples ([`TrainConfig::validate`]).
    pub fn validate(&self, data: &FashionMnist) -> Result<()> {
        let invalid = |m: String| Err(Error::InvalidArgument(m));
        if self.seeds.is_empty() {
            return invalid("the experiments need at least one seed".into());
        }
        if self.epochs == 0 || self.sweep_epochs == 0 {
            return invalid("the momentum runs and the sweep need at least 1 epoch each".into());
        }
        if self.precise_batches == 0 || self.timing_repeats == 0 {
            return invalid(
                "precise BN needs at least 1 batch and the timing at least 1 repetition".into(),
            );
        }
        for (what, sizes) in [
            ("sweep batch sizes", &self.sweep_batch_sizes),
            ("per-worker batch sizes", &self.worker_batch_sizes),
        ] {
            if sizes.is_empty() {
                return invalid(format!("the {what} are empty; give at least one"));
            }
            if let Some(&b) = sizes.iter().find(|&&b| b < MIN_BATCH_WITH_BATCH_NORM) {
                return invalid(format!(
                    "{what}: {b} is too small; batch norm needs at least \
                     {MIN_BATCH_WITH_BATCH_NORM} examples per batch"
                ));
            }
        }
        if let Some(&b) = self
            .worker_batch_sizes
            .iter()
            .find(|&&b| !SPLIT_BATCH.is_multiple_of(b))
        {
            return invalid(format!(
                "per-worker batch size {b} does not divide the batch of {SPLIT_BATCH}; use a power of 2 up to {SPLIT_BATCH}"
            ));
        }
        if !(1..=SPLIT_BATCH).contains(&self.sync_workers) {
            return invalid(format!(
                "a batch of {SPLIT_BATCH} can be split over 1 to {SPLIT_BATCH} workers, got {}",
                self.sync_workers
            ));
        }
        for (part, limit) in [("momentum runs", self.limit), ("sweep", self.sweep_limit)] {
            let run = TrainConfig {
                limit,
                ..TrainConfig::d2l(ModelKind::LenetBn)
            };
            run.validate(data).map_err(|e| match e {
                Error::InvalidArgument(m) => Error::InvalidArgument(format!("{part}: {m}")),
                other => other,
            })?;
        }
        Ok(())
    }

    fn test_split(&self, data: &FashionMnist, limit: Option<usize>) -> Split {
        match limit {
            Some(n) => data.test.head(n),
            None => data.test.clone(),
        }
    }
}

// ----- helpers -----

/// A concise LeNet-BN holding `net`'s parameters and running statistics
/// (`net` is LeNet-BN with any batch-norm layers, concise or
/// [`BatchNormKind`]): a copy to evaluate or change without touching `net`.
///
/// # Errors
/// If `net` is not LeNet-BN shaped.
pub fn twin(net: &Sequential) -> Result<Sequential> {
    Snapshot::of(net).restore()
}

/// The numbers of a trained LeNet-BN, as plain arrays: unlike the network
/// (whose parameters are `Rc`s) they can leave the worker thread that
/// trained it ([`side_by_side`]).
pub struct Snapshot {
    parameters: Vec<ndarray::ArrayD<f32>>,
    /// Running mean and variance of each batch-norm layer, in order.
    statistics: Vec<(Vec<f32>, Vec<f32>)>,
}

impl Snapshot {
    /// Copies `net`'s parameters and running statistics.
    pub fn of(net: &Sequential) -> Snapshot {
        Snapshot {
            parameters: net.parameters().iter().map(|p| p.value().clone()).collect(),
            statistics: net
                .batch_norm_layers()
                .iter()
                .map(|(_, bn)| (bn.running_mean(), bn.running_var()))
                .collect(),
        }
    }

    /// A concise LeNet-BN (d2l's conventions) with these numbers.
    ///
    /// # Errors
    /// If the snapshot is not of a LeNet-BN.
    pub fn restore(self) -> Result<Sequential> {
        let mut copy = ModelKind::LenetBnConcise.build(&mut StdRng::seed_from_u64(0))?;
        let to = copy.parameters();
        let shapes_match = self.parameters.len() == to.len()
            && self
                .parameters
                .iter()
                .zip(&to)
                .all(|(a, b)| a.shape() == b.value().shape());
        if !shapes_match || self.statistics.len() != copy.batch_norm_layers().len() {
            return Err(Error::InvalidArgument(
                "twin: the network is not LeNet-BN shaped".into(),
            ));
        }
        for (a, b) in self.parameters.into_iter().zip(&to) {
            *b.value_mut() = a;
        }
        let targets = copy
            .layers_mut()
            .iter_mut()
            .filter(|l| l.as_batch_norm().is_some());
        for (layer, (mean, var)) in targets.zip(self.statistics) {
            let any = layer.as_any_mut();
            if let Some(bn) = any.downcast_mut::<BatchNorm2d>() {
                (bn.running_mean, bn.running_var) = (mean, var);
            } else if let Some(bn) = any.downcast_mut::<BatchNorm1d>() {
                (bn.running_mean, bn.running_var) = (mean, var);
            }
        }
        Ok(copy)
    }
}

/// Test accuracy of `net`'s weights with precise BN: running statistics
/// re-estimated (on a copy) over `batches` training batches of 256. Returns
/// the copy too.
///
/// # Errors
/// If a forward pass fails.
fn precise(
    net: &Sequential,
    data: &FashionMnist,
    limit: Option<usize>,
    seed: u64,
    batches: usize,
    test: &Split,
) -> Result<(f64, Sequential)> {
    let mut copy = twin(net)?;
    reestimate_running_statistics(&mut copy, data, limit, seed, batches)?;
    Ok((evaluate(&mut copy, test, 256)?, copy))
}

/// How far the running statistics of `net` are from `reference`'s, averaged
/// over every batch-norm channel: `(|μ − μ*| / σ*, |ln(σ²/σ*²)|)`.
fn lag(net: &Sequential, reference: &Sequential) -> (f64, f64) {
    let (mut shift, mut ratio, mut n) = (0.0, 0.0, 0);
    for ((_, a), (_, b)) in net
        .batch_norm_layers()
        .iter()
        .zip(reference.batch_norm_layers())
    {
        let (eps, (m, v), (m_ref, v_ref)) = (
            f64::from(b.eps()),
            (a.running_mean(), a.running_var()),
            (b.running_mean(), b.running_var()),
        );
        for c in 0..m.len() {
            let sd = (f64::from(v_ref[c]) + eps).sqrt();
            shift += (f64::from(m[c]) - f64::from(m_ref[c])).abs() / sd;
            ratio += ((f64::from(v[c]) + eps) / (f64::from(v_ref[c]) + eps))
                .ln()
                .abs();
            n += 1;
        }
    }
    (shift / n.max(1) as f64, ratio / n.max(1) as f64)
}

/// Trains `net` for `config.epochs` epochs, one call of
/// [`bnbook::train::train`] per epoch (epoch `e` shuffled with the seed
/// `config.seed · 1000 + e`), and calls `after_epoch` with the network and
/// the epoch's record after each.
fn train_epochs(
    net: &mut Sequential,
    name: &str,
    data: &FashionMnist,
    config: &TrainConfig,
    mut after_epoch: impl FnMut(&mut Sequential, &EpochRecord) -> Result<()>,
) -> Result<History> {
    let mut history = History::start(name, config, data);
    for epoch in 0..config.epochs {
        let one = TrainConfig {
            epochs: 1,
            seed: config.seed * 1000 + epoch as u64,
            ..config.clone()
        };
        let mut record = train(net, name, data, &one, |_| ())?
            .history
            .pop()
            .expect("one epoch");
        record.epoch = epoch + 1;
        after_epoch(net, &record)?;
        history.history.push(record);
    }
    Ok(history)
}

// ----- 1 and 2: momentum, running vs precise statistics -----

/// The momentum conventions compared, each with its label.
pub fn momenta() -> Vec<(&'static str, Momentum)> {
    vec![
        ("old 0.99 (Keras)", Momentum::from_old_weight(0.99)),
        ("old 0.9 (d2l; PyTorch 0.1)", Momentum::from_old_weight(0.9)),
        ("old 0.5", Momentum::from_old_weight(0.5)),
        (
            "new 0.9 (seed 000's formula)",
            Momentum::NewBatchWeight(0.9),
        ),
        ("cumulative average", Momentum::CumulativeAverage),
    ]
}

/// The label of d2l's convention in [`momenta`], whose trained networks the
/// pitfalls and folding experiments use.
pub const D2L_MOMENTUM: &str = "old 0.9 (d2l; PyTorch 0.1)";

/// A trained network and its seed.
pub type Trained = (u64, Sequential);

/// One epoch of a momentum run.
#[derive(Clone, Debug, Serialize)]
pub struct MomentumEpoch {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss of the epoch.
    pub loss: f64,
    /// Test accuracy with the running statistics.
    pub test_acc_running: f64,
    /// Test accuracy with statistics re-estimated for the epoch's weights.
    pub test_acc_precise: f64,
    /// Mean over channels of |running mean − precise mean| / precise σ.
    pub mean_lag_sd: f64,
    /// Mean over channels of |ln(running var / precise var)|.
    pub var_lag_log: f64,
}

/// One training run with one momentum convention.
#[derive(Clone, Debug, Serialize)]
pub struct MomentumRun {
    /// Label from [`momenta`].
    pub momentum: String,
    /// Seed of weights and shuffling.
    pub seed: u64,
    /// One record per epoch.
    pub epochs: Vec<MomentumEpoch>,
}

/// LeNet-BN (concise, d2l's conventions but the momentum) trained with each
/// of [`momenta`] for every seed; returns the runs and, per seed, the
/// trained network of d2l's convention.
///
/// # Errors
/// If a run fails.
pub fn momentum_runs(
    data: &FashionMnist,
    config: &InferenceConfig,
) -> Result<(Vec<MomentumRun>, Vec<Trained>)> {
    let test = config.test_split(data, config.limit);
    let jobs: Vec<(u64, &str, Momentum)> = config
        .seeds
        .iter()
        .flat_map(|&seed| momenta().into_iter().map(move |(l, m)| (seed, l, m)))
        .collect();
    // side by side, one thread each: the d2l-convention networks come back
    // as snapshots and are rebuilt here
    let outcomes = side_by_side(jobs, |(seed, label, momentum)| {
        let mut net = ModelKind::LenetBnConcise.build(&mut StdRng::seed_from_u64(seed))?;
        for bn in net.batch_norm_layers_mut() {
            bn.set_momentum(momentum)?;
        }
        let train_config = TrainConfig {
            epochs: config.epochs,
            seed,
            limit: config.limit,
            progress: false, // the epoch lines are the progress
            ..TrainConfig::d2l(ModelKind::LenetBnConcise)
        };
        let mut epochs = Vec::new();
        train_epochs(
            &mut net,
            "lenet-bn-concise",
            data,
            &train_config,
            |net, r| {
                let (test_acc_precise, reference) =
                    precise(net, data, config.limit, seed, config.precise_batches, &test)?;
                let (mean_lag_sd, var_lag_log) = lag(net, &reference);
                println!(
                    "momentum {label}, seed {seed}, epoch {}: test acc {:.3} (running), {:.3} (precise), lag {:.3} sd",
                    r.epoch, r.test_acc, test_acc_precise, mean_lag_sd
                );
                epochs.push(MomentumEpoch {
                    epoch: r.epoch,
                    loss: r.loss,
                    test_acc_running: r.test_acc,
                    test_acc_precise,
                    mean_lag_sd,
                    var_lag_log,
                });
                Ok(())
            },
        )?;
        let run = MomentumRun {
            momentum: label.to_string(),
            seed,
            epochs,
        };
        Ok((run, (label == D2L_MOMENTUM).then(|| Snapshot::of(&net))))
    })?;
    let (mut runs, mut trained) = (Vec::new(), Vec::new());
    for (run, snapshot) in outcomes {
        if let Some(snapshot) = snapshot {
            trained.push((run.seed, snapshot.restore()?));
        }
        runs.push(run);
    }
    Ok((runs, trained))
}

/// Mean absolute change of `values` from one epoch to the next.
fn jumpiness(values: &[f64]) -> f64 {
    mean(values.windows(2).map(|w| (w[1] - w[0]).abs()))
}

fn of_momentum<'a>(runs: &'a [MomentumRun], label: &str) -> Vec<&'a MomentumRun> {
    runs.iter().filter(|r| r.momentum == label).collect()
}

fn momentum_markdown(runs: &[MomentumRun], config: &InferenceConfig) -> String {
    let mut md = String::from(
        "| momentum | final test acc, running | final test acc, precise | epoch-to-epoch change, running | epoch-to-epoch change, precise | final lag of the running mean (σ) |\n|---|---|---|---|---|---|\n",
    );
    for (label, _) in momenta() {
        let of = of_momentum(runs, label);
        let last = |r: &&MomentumRun| r.epochs.last().cloned().expect("epochs");
        let series = |r: &&MomentumRun, f: fn(&MomentumEpoch) -> f64| -> Vec<f64> {
            r.epochs.iter().map(f).collect()
        };
        md += &format!(
            "| {label} | {} | {} | {} | {} | {} |\n",
            mean_and_range(of.iter().map(|r| last(r).test_acc_running)),
            mean_and_range(of.iter().map(|r| last(r).test_acc_precise)),
            mean_and_range(
                of.iter()
                    .map(|r| jumpiness(&series(r, |e| e.test_acc_running)))
            ),
            mean_and_range(
                of.iter()
                    .map(|r| jumpiness(&series(r, |e| e.test_acc_precise)))
            ),
            mean_and_range(of.iter().map(|r| last(r).mean_lag_sd)),
        );
    }
    let identical = config.seeds.iter().all(|&seed| {
        let losses: Vec<Vec<f64>> = runs
            .iter()
            .filter(|r| r.seed == seed)
            .map(|r| r.epochs.iter().map(|e| e.loss).collect())
            .collect();
        losses.windows(2).all(|w| w[0] == w[1])
    });
    md += &format!(
        "\nLeNet-BN (concise, d2l's conventions), batch 256, lr 1.0, {}, seeds {:?}{}; \
         with several seeds, mean (lowest–highest). \"Precise\": the running statistics \
         re-estimated for the epoch's weights over {} training batches of 256 (on a copy). \
         Epoch-to-epoch change: mean |test acc(e) − test acc(e−1)|. Lag: mean over all \
         batch-norm channels of |running mean − precise mean| / precise σ. The training \
         losses of the five momenta are {} for every seed: momentum only changes what \
         prediction uses.\n",
        plural(config.epochs, "epoch"),
        config.seeds,
        limit_note(config.limit),
        config.precise_batches,
        if identical {
            "identical, bit for bit,"
        } else {
            "NOT identical"
        },
    );
    md
}

fn limit_note(limit: Option<usize>) -> String {
    match limit {
        Some(n) => format!(", first {n} training and test examples only"),
        None => ", full training and test sets".into(),
    }
}

fn momentum_trap_markdown(runs: &[MomentumRun]) -> String {
    let mut md = String::from(
        "| convention | update | weight on the new batch | batches that carry 90 % of the average | final test acc, running | epoch-to-epoch change |\n|---|---|---|---|---|---|\n",
    );
    for (label, update, w) in [
        (
            D2L_MOMENTUM,
            "`moving = 0.9 * moving + 0.1 * batch`",
            0.1_f64,
        ),
        (
            "new 0.9 (seed 000's formula)",
            "`moving = (1 - 0.9) * moving + 0.9 * batch`",
            0.9,
        ),
    ] {
        let of = of_momentum(runs, label);
        // the newest k batches carry 1 − (1 − w)^k of the weight
        let batches = (0.1_f64.ln() / (1.0 - w).ln()).ceil();
        md += &format!(
            "| {label} | {update} | {w} | {batches} | {} | {} |\n",
            mean_and_range(
                of.iter()
                    .map(|r| r.epochs.last().expect("epochs").test_acc_running)
            ),
            mean_and_range(of.iter().map(|r| {
                jumpiness(
                    &r.epochs
                        .iter()
                        .map(|e| e.test_acc_running)
                        .collect::<Vec<_>>(),
                )
            })),
        );
    }
    md
}

fn momentum_charts(runs: &[MomentumRun]) -> Result<(Svg, Svg)> {
    let curve = |label: &str, f: fn(&MomentumEpoch) -> f64| -> Vec<(f64, f64)> {
        let of = of_momentum(runs, label);
        let epochs = of.first().map_or(0, |r| r.epochs.len());
        (0..epochs)
            .map(|e| ((e + 1) as f64, mean(of.iter().map(|r| f(&r.epochs[e])))))
            .collect()
    };
    let mut accuracy: Vec<Series> = momenta()
        .iter()
        .map(|(label, _)| Series {
            label: format!("running, {label}"),
            points: curve(label, |e| e.test_acc_running),
        })
        .collect();
    accuracy.push(Series {
        label: "precise BN".into(),
        points: curve(D2L_MOMENTUM, |e| e.test_acc_precise),
    });
    let lags: Vec<Series> = momenta()
        .iter()
        .map(|(label, _)| Series {
            label: label.to_string(),
            points: curve(label, |e| e.mean_lag_sd),
        })
        .collect();
    Ok((
        line_chart(
            "Test accuracy (mean over seeds)",
            "epoch",
            &accuracy,
            (620, 380),
        )?,
        line_chart("Lag of the running mean (in σ)", "epoch", &lags, (620, 380))?,
    ))
}

// ----- 3: train/eval pitfalls -----

/// One way of evaluating a trained network.
#[derive(Clone, Debug, Serialize)]
pub struct Pitfall {
    /// What was done.
    pub situation: String,
    /// Test accuracy per seed; `None` where the crate refused.
    pub test_acc: Vec<Option<f64>>,
    /// The refusal, where there was one.
    pub refusal: Option<String>,
}

/// Accuracy of `net` on `split` with forward passes in `mode` at `batch`.
fn accuracy_in(net: &mut Sequential, split: &Split, batch: usize, mode: Mode) -> Result<f64> {
    if mode == Mode::Eval {
        return evaluate(net, split, batch);
    }
    let (mut correct, mut seen) = (0, 0);
    for b in split.batches(batch, &Default::default())? {
        let logits = net
            .forward(&Tensor::new(b.images.into_dyn()), mode)?
            .detach();
        correct += count_correct(&logits, &b.labels)?;
        seen += b.labels.len();
    }
    Ok(correct as f64 / seen.max(1) as f64)
}

/// The ways of evaluating each trained network (d2l's convention, one per
/// seed): prediction mode at test batches 256, 8 and 1; training mode (the
/// forgotten `eval()`) at 256, 8 and 1; and prediction after a pass over
/// the test set in training mode has overwritten the running statistics.
///
/// # Errors
/// If an evaluation fails for another reason than the refusal measured.
pub fn pitfalls(trained: &[Trained], test: &Split) -> Result<Vec<Pitfall>> {
    type Measure = Box<dyn Fn(&mut Sequential, &Split) -> Result<f64>>;
    let eval = |b: usize| -> Measure { Box::new(move |n, t| accuracy_in(n, t, b, Mode::Eval)) };
    let train = |b: usize| -> Measure { Box::new(move |n, t| accuracy_in(n, t, b, Mode::Train)) };
    let overwritten = |b: usize| -> Measure {
        Box::new(move |n, t| {
            accuracy_in(n, t, b, Mode::Train)?;
            evaluate(n, t, 256)
        })
    };
    let cases: Vec<(String, Measure)> = vec![
        ("prediction mode, test batch 256".into(), eval(256)),
        ("prediction mode, test batch 8".into(), eval(8)),
        ("prediction mode, one example at a time".into(), eval(1)),
        (
            "training mode (eval forgotten), test batch 256".into(),
            train(256),
        ),
        ("training mode, test batch 8".into(), train(8)),
        ("training mode, one example at a time".into(), train(1)),
        (
            "prediction mode after a training-mode pass over the test set in batches of 256".into(),
            overwritten(256),
        ),
        (
            "prediction mode after a training-mode pass over the test set in batches of 8".into(),
            overwritten(8),
        ),
    ];
    let mut rows = Vec::new();
    for (situation, measure) in cases {
        let (mut accs, mut refusal) = (Vec::new(), None);
        for (_, net) in trained {
            let mut copy = twin(net)?;
            match measure(&mut copy, test) {
                Ok(acc) => accs.push(Some(acc)),
                Err(Error::Shape { context, message }) => {
                    refusal = Some(format!("{context}: {message}"));
                    accs.push(None);
                }
                Err(other) => return Err(other),
            }
        }
        println!("{situation}: {accs:?}");
        rows.push(Pitfall {
            situation,
            test_acc: accs,
            refusal,
        });
    }
    Ok(rows)
}

fn pitfalls_markdown(rows: &[Pitfall], seeds: &[u64]) -> String {
    let mut md = String::from("| how the test set was evaluated | test accuracy |\n|---|---|\n");
    for r in rows {
        let cell = match &r.refusal {
            Some(message) => format!("refused: *{message}*"),
            None => mean_and_range(r.test_acc.iter().flatten().copied()),
        };
        md += &format!("| {} | {cell} |\n", r.situation);
    }
    md += &format!(
        "\nThe LeNet-BN networks of the momentum runs with d2l's convention (seeds {seeds:?}), \
         each evaluated on a fresh copy; mean (lowest–highest) over seeds.\n"
    );
    md
}

// ----- 4: folding -----

/// Folding batch norm into the layers before it, measured.
#[derive(Clone, Debug, Serialize)]
pub struct Folding {
    /// Per seed: largest |folded − unfolded| over the test logits, relative
    /// to the largest logit.
    pub relative_difference: Vec<f64>,
    /// Per seed: test accuracy unfolded and folded.
    pub test_acc: Vec<(f64, f64)>,
    /// Median milliseconds of one evaluation forward pass, per network and
    /// batch size: `(network, batch size, ms)`.
    pub timing: Vec<(String, usize, f64)>,
    /// Timed repetitions per network and batch size.
    pub repeats: usize,
}

/// Folds every trained network, compares its outputs and accuracy with the
/// unfolded network's, and times evaluation of LeNet-BN (scratch and fused
/// batch norm), the folded network, the same network without batch norm
/// and d2l's plain LeNet at batches 256 and 1.
///
/// # Errors
/// If a forward pass fails.
pub fn folding(trained: &[Trained], test: &Split, repeats: usize) -> Result<Folding> {
    let (mut relative_difference, mut test_acc) = (Vec::new(), Vec::new());
    let x = Tensor::new(test.images().into_dyn());
    for (_, net) in trained {
        let mut unfolded = twin(net)?;
        let mut folded = fold_batch_norm(twin(net)?)?;
        let a = unfolded.forward(&x, Mode::Eval)?.value().clone();
        let b = folded.forward(&x, Mode::Eval)?.value().clone();
        let largest = a.iter().fold(0.0_f32, |m, v| m.max(v.abs())).max(1e-30);
        relative_difference.push(f64::from(crate::largest_difference(&a, &b) / largest));
        test_acc.push((
            evaluate(&mut unfolded, test, 256)?,
            evaluate(&mut folded, test, 256)?,
        ));
    }
    let mut nets: Vec<(String, Sequential)> = vec![
        (
            "lenet-bn (scratch BN)".into(),
            ModelKind::LenetBn.build(&mut StdRng::seed_from_u64(0))?,
        ),
        ("lenet-bn-concise (fused BN)".into(), twin(&trained[0].1)?),
        (
            "lenet-bn-concise, BN folded".into(),
            fold_batch_norm(twin(&trained[0].1)?)?,
        ),
        (
            "lenet-no-norm (same network, no BN)".into(),
            ModelKind::LenetNoNorm.build(&mut StdRng::seed_from_u64(0))?,
        ),
        (
            "lenet (d2l's plain LeNet)".into(),
            ModelKind::Lenet.build(&mut StdRng::seed_from_u64(0))?,
        ),
    ];
    let mut timing = Vec::new();
    for batch in [256, 1] {
        let input = Tensor::new(random_input(&[batch, 1, 28, 28], 0.0, 1.0, 5));
        let mut times = vec![Vec::with_capacity(repeats); nets.len()];
        // round robin, after one warm-up round: a disturbance hits all alike
        for round in 0..=repeats {
            for ((_, net), t) in nets.iter_mut().zip(&mut times) {
                let start = Instant::now();
                drop(no_grad(|| net.forward(&input, Mode::Eval))?);
                if round > 0 {
                    t.push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        for ((name, _), t) in nets.iter().zip(times) {
            timing.push((name.clone(), batch, median(t)));
        }
    }
    Ok(Folding {
        relative_difference,
        test_acc,
        timing,
        repeats,
    })
}

impl Folding {
    /// Median milliseconds of `network` (a prefix of its name) at `batch`.
    pub fn ms(&self, network: &str, batch: usize) -> f64 {
        self.timing
            .iter()
            .find(|(n, b, _)| n.starts_with(network) && *b == batch)
            .map_or(f64::NAN, |t| t.2)
    }

    fn markdown(&self) -> String {
        let mut md = String::from(
            "| network | eval forward, batch 256 (ms) | vs no BN | eval forward, batch 1 (ms) | vs no BN |\n|---|---|---|---|---|\n",
        );
        let names: Vec<&String> = self
            .timing
            .iter()
            .filter(|t| t.1 == 256)
            .map(|t| &t.0)
            .collect();
        for name in names {
            let cells: Vec<String> = [256, 1]
                .iter()
                .map(|&b| {
                    let (ms, base) = (self.ms(name, b), self.ms("lenet-no-norm", b));
                    format!("{ms:.3} | {:+.0} %", 100.0 * (ms / base - 1.0))
                })
                .collect();
            md += &format!("| {name} | {} |\n", cells.join(" | "));
        }
        let worst = self
            .relative_difference
            .iter()
            .fold(0.0_f64, |m, &v| m.max(v));
        let same_acc = self.test_acc.iter().all(|(a, b)| a == b);
        md += &format!(
            "\nMedians of {} timed passes after one warm-up round, the networks taking turns, on {}. \
             Folded vs unfolded prediction over the whole test set: largest difference of a \
             logit {worst:.1e} of the largest logit; test accuracy {} for every seed.\n",
            self.repeats,
            plural(rayon::current_num_threads(), "thread"),
            if same_acc {
                "identical"
            } else {
                "NOT identical"
            },
        );
        md
    }
}

// ----- 5: small batches -----

/// One training run of the small-batch experiments.
#[derive(Clone, Debug, Serialize)]
pub struct VariantRun {
    /// [`BatchNormKind::label`].
    pub variant: String,
    /// Examples per training batch.
    pub batch_size: usize,
    /// Examples per group that shares statistics (the per-worker batch size
    /// of the per-worker runs; the batch size otherwise).
    pub statistics_batch: usize,
    /// Final test accuracy with precise BN.
    pub test_acc_precise: f64,
    /// The history (final test accuracy with the running statistics).
    pub history: History,
}

/// The running-statistics momentum of batch renorm and frozen batch norm at
/// `batch_size`: a new-batch weight of `batch_size / 2560` (at most 0.1, d2l's
/// value at batch 256), so the running averages span about the last 2,560
/// examples whatever the batch size.
pub fn averaging_momentum(batch_size: usize) -> Momentum {
    Momentum::NewBatchWeight((batch_size as f32 / 2560.0).min(0.1))
}

/// Trains LeNet-BN with `variant` and evaluates it with its running and
/// with precise statistics.
fn variant_run(
    data: &FashionMnist,
    config: &InferenceConfig,
    variant: BatchNormKind,
    options: BatchNormOptions,
    (batch_size, statistics_batch, seed): (usize, usize, u64),
) -> Result<VariantRun> {
    let mut net = lenet_bn_with(variant, options, &mut StdRng::seed_from_u64(seed))?;
    let train_config = TrainConfig {
        epochs: config.sweep_epochs,
        batch_size,
        lr: scaled_lr(1.0, batch_size),
        seed,
        limit: config.sweep_limit,
        progress: false, // runs go side by side: their epoch lines are the progress
    };
    let label = variant.label();
    let started = Instant::now();
    let history = train(&mut net, &label, data, &train_config, |r| {
        println!(
            "{label} batch {batch_size} seed {seed} epoch {}: test acc {:.3}",
            r.epoch, r.test_acc
        )
    })?;
    let test = config.test_split(data, config.sweep_limit);
    let (test_acc_precise, _) = precise(
        &net,
        data,
        config.sweep_limit,
        seed,
        config.precise_batches,
        &test,
    )?;
    println!(
        "{label} batch {batch_size} seed {seed}: precise {test_acc_precise:.3}, {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(VariantRun {
        variant: label,
        batch_size,
        statistics_batch,
        test_acc_precise,
        history,
    })
}

/// Training steps of one epoch at `batch_size` (a last batch of one example
/// is dropped).
fn steps_per_epoch(data: &FashionMnist, limit: Option<usize>, batch_size: usize) -> u64 {
    let n = limit.map_or(data.train.len(), |l| l.min(data.train.len()));
    let left = n % batch_size;
    (n / batch_size + usize::from(left >= MIN_BATCH_WITH_BATCH_NORM)) as u64
}

/// Batch norm, batch renormalization (r_max 3, d_max 5, after a first
/// epoch of plain batch norm) and frozen batch norm (frozen after the first
/// epoch) at every sweep batch size and seed, learning rate scaled linearly.
///
/// # Errors
/// If a run fails.
pub fn small_batch_sweep(data: &FashionMnist, config: &InferenceConfig) -> Result<Vec<VariantRun>> {
    let mut jobs = Vec::new();
    for &b in &config.sweep_batch_sizes {
        let warm_up_steps = steps_per_epoch(data, config.sweep_limit, b);
        let averaging = BatchNormOptions {
            momentum: averaging_momentum(b),
            ..BatchNormOptions::d2l()
        };
        let variants = [
            (BatchNormKind::Batch, BatchNormOptions::d2l()),
            (
                BatchNormKind::Renorm {
                    r_max: 3.0,
                    d_max: 5.0,
                    warm_up_steps,
                },
                averaging,
            ),
            (BatchNormKind::FrozenAfter { warm_up_steps }, averaging),
        ];
        for (variant, options) in variants {
            for &seed in &config.seeds {
                jobs.push((variant, options, (b, b, seed)));
            }
        }
    }
    // independent runs, one thread each, as many at once as there are threads
    side_by_side(jobs, |(variant, options, sizes)| {
        variant_run(data, config, variant, options, sizes)
    })
}

/// Batch 256 split over workers: per-worker batch norm (ghost batches of
/// each per-worker batch size) and synchronised batch norm over
/// `config.sync_workers` workers, every seed.
///
/// # Errors
/// If a run fails.
pub fn per_worker_runs(data: &FashionMnist, config: &InferenceConfig) -> Result<Vec<VariantRun>> {
    let mut jobs = Vec::new();
    for &size in &config.worker_batch_sizes {
        for &seed in &config.seeds {
            let ghost = BatchNormKind::Ghost {
                ghost_batch_size: size,
            };
            jobs.push((ghost, (SPLIT_BATCH, size, seed)));
        }
    }
    let sync = BatchNormKind::Synchronised {
        workers: config.sync_workers,
    };
    for &seed in &config.seeds {
        jobs.push((sync, (SPLIT_BATCH, SPLIT_BATCH, seed)));
    }
    // independent runs, one thread each, as many at once as there are threads
    side_by_side(jobs, |(variant, sizes)| {
        variant_run(data, config, variant, BatchNormOptions::d2l(), sizes)
    })
}

/// How far synchronised and per-worker batch norm are from full-batch batch
/// norm, for one input shape and worker count.
#[derive(Clone, Debug, Serialize)]
pub struct SyncExactness {
    /// Input shape.
    pub shape: Vec<usize>,
    /// Simulated workers.
    pub workers: usize,
    /// Largest |sync − full| of the output.
    pub sync_output: f32,
    /// Largest |sync − full| of ∂L/∂x.
    pub sync_input_grad: f32,
    /// Largest |per-worker − full| of the output.
    pub per_worker_output: f32,
}

/// Synchronised and per-worker batch norm against the concise batch norm on
/// one LeNet-sized batch after the first convolution `(256, 6, 24, 24)` and
/// after the first fully connected layer `(256, 120)`.
///
/// # Errors
/// If a forward pass fails.
pub fn sync_exactness() -> Result<Vec<SyncExactness>> {
    let mut rows = Vec::new();
    for shape in [vec![256, 6, 24, 24], vec![256, 120]] {
        let c = shape[1];
        let x = random_input(&shape, -2.0, 3.0, 1).mapv(|v| 3.0 * v + 1.0);
        let upstream = random_input(&shape, -1.0, 1.0, 2);
        let full_step = |layer: &mut dyn Module| -> Result<(ArrayD<f32>, ArrayD<f32>)> {
            let p = Tensor::parameter(x.clone());
            let y = layer.forward(&p, Mode::Train)?;
            y.backward_with(upstream.clone());
            let grad = p.grad().unwrap_or_default();
            Ok((y.value().clone(), grad))
        };
        let options = BatchNormOptions {
            affine: false,
            ..BatchNormOptions::d2l()
        };
        let (y_full, dx_full) = if shape.len() == 4 {
            full_step(&mut ConciseBatchNorm::<4>::with_options(c, options)?)?
        } else {
            full_step(&mut ConciseBatchNorm::<2>::with_options(c, options)?)?
        };
        for workers in [1, 2, 4, 8, 16, 32, 64, 128] {
            let p = Tensor::parameter(x.clone());
            let (y, _) = sync_batch_norm(&p, None, workers, options.eps)?;
            y.backward_with(upstream.clone());
            let shares = worker_shares(shape[0], workers)?;
            let (local, _) =
                grouped_batch_norm(&Tensor::new(x.clone()), None, &shares, false, options.eps)?;
            rows.push(SyncExactness {
                shape: shape.clone(),
                workers,
                sync_output: crate::largest_difference(&y.value(), &y_full),
                sync_input_grad: crate::largest_difference(&p.grad().unwrap_or_default(), &dx_full),
                per_worker_output: crate::largest_difference(&local.value(), &y_full),
            });
        }
    }
    Ok(rows)
}

fn sync_markdown(rows: &[SyncExactness]) -> String {
    let mut md = String::from(
        "| input | workers | examples per worker | sync BN vs full batch: output | sync BN: ∂L/∂x | per-worker BN vs full batch: output |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        md += &format!(
            "| `{:?}` | {} | {} | {:.1e} | {:.1e} | {:.1e} |\n",
            r.shape,
            r.workers,
            r.shape[0] / r.workers,
            r.sync_output,
            r.sync_input_grad,
            r.per_worker_output
        );
    }
    md += "\nLargest absolute differences from the concise batch norm over the whole batch \
           (no γ, β; inputs of order 1 to 10; outputs of order 1).\n";
    md
}

fn variant_cell<'a>(
    runs: &'a [VariantRun],
    variant: &str,
    b: usize,
    s: usize,
) -> Vec<&'a VariantRun> {
    runs.iter()
        .filter(|r| r.variant == variant && r.batch_size == b && r.statistics_batch == s)
        .collect()
}

fn final_acc(r: &&VariantRun) -> f64 {
    r.history.last().expect("epochs").test_acc
}

fn sweep_markdown(runs: &[VariantRun], config: &InferenceConfig) -> String {
    let labels = distinct(runs.iter().map(|r| r.variant.clone()));
    let mut md = String::from("| batch size | lr |");
    for l in &labels {
        md += &format!(" {l}: running | {l}: precise |");
    }
    md += "\n|---|---|";
    md += &"---|---|".repeat(labels.len());
    md += "\n";
    for &b in &config.sweep_batch_sizes {
        md += &format!("| {b} | {} |", scaled_lr(1.0, b));
        for l in &labels {
            let of = variant_cell(runs, l, b, b);
            md += &format!(
                " {} | {} |",
                mean_and_range(of.iter().map(final_acc)),
                mean_and_range(of.iter().map(|r| r.test_acc_precise))
            );
        }
        md += "\n";
    }
    md += &format!(
        "\nFinal test accuracy after {} at every batch size, lr = 1.0 · batch/256, seeds {:?}{}; \
         mean (lowest–highest). \"Running\": prediction with the layer's running statistics; \
         \"precise\": with statistics re-estimated over {} training batches of 256. Batch norm \
         keeps d2l's momentum (new-batch weight 0.1); batch renorm and frozen BN average over \
         about the last 2,560 examples (new-batch weight batch/2560) and leave plain batch norm \
         after the first epoch.\n",
        plural(config.sweep_epochs, "epoch"),
        config.seeds,
        limit_note(config.sweep_limit),
        config.precise_batches,
    );
    md
}

fn distinct(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    seen
}

fn per_worker_markdown(runs: &[VariantRun], config: &InferenceConfig) -> String {
    let mut md = String::from(
        "| batch 256 split as | examples per worker | final test acc, running | final test acc, precise |\n|---|---|---|---|\n",
    );
    let mut rows: Vec<(String, usize)> = config
        .worker_batch_sizes
        .iter()
        .map(|&s| {
            (
                BatchNormKind::Ghost {
                    ghost_batch_size: s,
                }
                .label(),
                s,
            )
        })
        .collect();
    rows.push((
        BatchNormKind::Synchronised {
            workers: config.sync_workers,
        }
        .label(),
        SPLIT_BATCH,
    ));
    for (label, s) in rows {
        let of = variant_cell(runs, &label, SPLIT_BATCH, s);
        let workers = if label.starts_with("sync") {
            config.sync_workers
        } else {
            SPLIT_BATCH / s
        };
        let name = if label.starts_with("sync") {
            format!("{}, all-reduced", plural(workers, "worker"))
        } else {
            format!("{}, per-worker BN", plural(workers, "worker"))
        };
        md += &format!(
            "| {name} | {} | {} | {} |\n",
            if label.starts_with("sync") {
                SPLIT_BATCH / workers
            } else {
                s
            },
            mean_and_range(of.iter().map(final_acc)),
            mean_and_range(of.iter().map(|r| r.test_acc_precise)),
        );
    }
    md += &format!(
        "\nEvery run: batch 256, lr 1.0, {}, seeds {:?}{}; per-worker BN is ghost batch norm \
         with the per-worker batch size as the ghost batch size; 1 worker is plain batch norm.\n",
        plural(config.sweep_epochs, "epoch"),
        config.seeds,
        limit_note(config.sweep_limit),
    );
    md
}

fn log2_chart(title: &str, x_label: &str, lines: &[Series]) -> Result<Svg> {
    line_chart_with_x_labels(title, x_label, lines, (620, 380), &|x| {
        if x.fract() == 0.0 {
            format!("{}", 2f64.powf(x))
        } else {
            String::new()
        }
    })
}

fn sweep_chart(runs: &[VariantRun], config: &InferenceConfig) -> Result<Svg> {
    let mut lines = Vec::new();
    for label in distinct(runs.iter().map(|r| r.variant.clone())) {
        for (what, f) in [
            ("running", final_acc as fn(&&VariantRun) -> f64),
            ("precise", |r: &&VariantRun| r.test_acc_precise),
        ] {
            lines.push(Series {
                label: format!("{label}, {what}"),
                points: config
                    .sweep_batch_sizes
                    .iter()
                    .map(|&b| {
                        (
                            (b as f64).log2(),
                            mean(variant_cell(runs, &label, b, b).iter().map(f)),
                        )
                    })
                    .collect(),
            });
        }
    }
    log2_chart("Final test accuracy vs batch size", "batch size", &lines)
}

fn per_worker_chart(runs: &[VariantRun], config: &InferenceConfig) -> Result<Svg> {
    let ghost = |f: fn(&&VariantRun) -> f64| -> Vec<(f64, f64)> {
        config
            .worker_batch_sizes
            .iter()
            .map(|&s| {
                let label = BatchNormKind::Ghost {
                    ghost_batch_size: s,
                }
                .label();
                (
                    (s as f64).log2(),
                    mean(variant_cell(runs, &label, SPLIT_BATCH, s).iter().map(f)),
                )
            })
            .collect()
    };
    let sync_label = BatchNormKind::Synchronised {
        workers: config.sync_workers,
    }
    .label();
    let sync = mean(
        variant_cell(runs, &sync_label, SPLIT_BATCH, SPLIT_BATCH)
            .iter()
            .map(final_acc),
    );
    let (lo, hi) =
        config
            .worker_batch_sizes
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &s| {
                let x = (s as f64).log2();
                (a.min(x), b.max(x))
            });
    let lines = [
        Series {
            label: "per-worker BN, running".into(),
            points: ghost(final_acc),
        },
        Series {
            label: "per-worker BN, precise".into(),
            points: ghost(|r| r.test_acc_precise),
        },
        Series {
            label: format!("{sync_label}, running"),
            points: vec![(lo, sync), (hi, sync)],
        },
    ];
    log2_chart(
        "Batch 256 over workers: final test accuracy",
        "examples per worker",
        &lines,
    )
}

// ----- the command -----

/// Runs every experiment and writes its tables (Markdown), data (JSON) and
/// figures (SVG) into `config.out`, with a manifest `figures.json`.
///
/// # Errors
/// If the settings are invalid, a run fails or a file cannot be written.
pub fn generate(data: &FashionMnist, config: &InferenceConfig, command: &str) -> Result<Manifest> {
    config.validate(data)?;
    let started = Instant::now();
    let mut w = Writer::new(&config.out)?;

    let exactness = sync_exactness()?;
    w.json(
        "sync-exactness.json",
        "synchronised and per-worker batch norm vs full-batch batch norm",
        &exactness,
    )?;
    w.write(
        "sync-exactness.md",
        "synchronised and per-worker batch norm vs full-batch batch norm",
        &sync_markdown(&exactness),
    )?;

    let (runs, trained) = momentum_runs(data, config)?;
    w.json(
        "momentum-runs.json",
        "per-epoch test accuracy with running and precise statistics, per momentum",
        &runs,
    )?;
    w.write(
        "momentum.md",
        "running vs precise statistics per momentum convention",
        &momentum_markdown(&runs, config),
    )?;
    w.write(
        "momentum-trap.md",
        "the two readings of momentum 0.9",
        &momentum_trap_markdown(&runs),
    )?;
    let (accuracy, lags) = momentum_charts(&runs)?;
    w.svg(
        "momentum-test-acc.svg",
        "test accuracy per epoch with running statistics per momentum, and with precise statistics",
        &accuracy,
    )?;
    w.svg(
        "momentum-lag.svg",
        "lag of the running mean behind the precise mean per epoch, per momentum",
        &lags,
    )?;

    let test = config.test_split(data, config.limit);
    let rows = pitfalls(&trained, &test)?;
    w.json(
        "pitfalls.json",
        "test accuracy of trained networks evaluated the wrong ways",
        &rows,
    )?;
    w.write(
        "pitfalls.md",
        "test accuracy of trained networks evaluated the wrong ways",
        &pitfalls_markdown(&rows, &config.seeds),
    )?;

    let fold = folding(&trained, &test, config.timing_repeats)?;
    w.json(
        "fold.json",
        "folded vs unfolded batch norm: agreement and evaluation time",
        &fold,
    )?;
    w.write(
        "fold.md",
        "folded vs unfolded batch norm: agreement and evaluation time",
        &fold.markdown(),
    )?;

    let sweep = small_batch_sweep(data, config)?;
    w.json(
        "small-batch-sweep.json",
        "batch norm, batch renorm and frozen BN across batch sizes",
        &sweep,
    )?;
    w.write(
        "small-batch-sweep.md",
        "final test accuracy across batch sizes per batch-norm variant",
        &sweep_markdown(&sweep, config),
    )?;
    w.svg(
        "small-batch-sweep.svg",
        "final test accuracy against batch size (log scale) per batch-norm variant",
        &sweep_chart(&sweep, config)?,
    )?;

    let split = per_worker_runs(data, config)?;
    w.json(
        "per-worker.json",
        "batch 256 split over workers: per-worker and synchronised batch norm",
        &split,
    )?;
    w.write(
        "per-worker.md",
        "batch 256 split over workers: per-worker and synchronised batch norm",
        &per_worker_markdown(&split, config),
    )?;
    w.svg(
        "per-worker.svg",
        "final test accuracy against examples per worker (log scale), batch 256",
        &per_worker_chart(&split, config)?,
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
        let book = InferenceConfig::default();
        assert!(book.validate(&data).is_ok());
        let cases: Vec<(InferenceConfig, &str)> = vec![
            (
                InferenceConfig {
                    seeds: vec![],
                    ..book.clone()
                },
                "at least one seed",
            ),
            (
                InferenceConfig {
                    epochs: 0,
                    ..book.clone()
                },
                "at least 1 epoch",
            ),
            (
                InferenceConfig {
                    sweep_epochs: 0,
                    ..book.clone()
                },
                "at least 1 epoch",
            ),
            (
                InferenceConfig {
                    precise_batches: 0,
                    ..book.clone()
                },
                "at least 1 batch",
            ),
            (
                InferenceConfig {
                    timing_repeats: 0,
                    ..book.clone()
                },
                "at least 1 repetition",
            ),
            (
                InferenceConfig {
                    sweep_batch_sizes: vec![],
                    ..book.clone()
                },
                "sweep batch sizes are empty",
            ),
            (
                InferenceConfig {
                    sweep_batch_sizes: vec![8, 1],
                    ..book.clone()
                },
                "1 is too small",
            ),
            (
                InferenceConfig {
                    worker_batch_sizes: vec![3],
                    ..book.clone()
                },
                "does not divide",
            ),
            (
                InferenceConfig {
                    sync_workers: 0,
                    ..book.clone()
                },
                "1 to 256 workers, got 0",
            ),
            (
                InferenceConfig {
                    sweep_limit: Some(1),
                    ..book.clone()
                },
                "sweep: the limit leaves 1",
            ),
            (
                InferenceConfig {
                    limit: Some(0),
                    ..book
                },
                "momentum runs: the limit leaves 0",
            ),
        ];
        for (config, expected) in cases {
            let message = refusal(config.validate(&data));
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn the_averaging_momentum_spans_2560_examples() {
        assert_eq!(averaging_momentum(256), Momentum::NewBatchWeight(0.1));
        assert_eq!(averaging_momentum(512), Momentum::NewBatchWeight(0.1));
        assert_eq!(
            averaging_momentum(2),
            Momentum::NewBatchWeight(2.0 / 2560.0)
        );
    }
}
