//! Training and evaluation, like d2l's `train_ch6`.
//!
//! *Book: chapter "LeNet with BN on Fashion-MNIST".*
//!
//! Per epoch: shuffle the training set (from the seed and the epoch number),
//! run forward → loss → backward → SGD step → zero grads on every
//! mini-batch in [`Mode::Train`], then measure test accuracy in
//! [`Mode::Eval`]. Reported like d2l: the mean training loss and training
//! accuracy over the epoch's batches (computed during training, while the
//! weights still move), test accuracy at the end of the epoch, and training
//! throughput in examples per second (training time only, evaluation
//! excluded).

use crate::autograd::Tensor;
use crate::data::{BatchOptions, FashionMnist, LastBatch, Split};
use crate::error::Result;
use crate::models::ModelKind;
use crate::nn::{Mode, Module, Sequential, Sgd, count_correct};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How to train.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Number of passes over the training set (d2l: 10).
    pub epochs: usize,
    /// Mini-batch size (d2l: 256).
    pub batch_size: usize,
    /// SGD learning rate (d2l: 1.0 with BN, 0.9 without).
    pub lr: f32,
    /// Seeds the weights and the shuffling.
    pub seed: u64,
    /// Use only the first `n` training and test examples (quick runs, CI).
    pub limit: Option<usize>,
    /// Draw a progress bar per epoch (only when standard error is a terminal).
    pub progress: bool,
}

impl TrainConfig {
    /// d2l's recipe for `model`: 10 epochs, batch 256, its learning rate, seed 0.
    pub fn d2l(model: ModelKind) -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 256,
            lr: model.default_lr(),
            seed: 0,
            limit: None,
            progress: true,
        }
    }
}

/// The numbers of one epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch's examples.
    pub loss: f64,
    /// Fraction of training examples classified correctly during the epoch.
    pub train_acc: f64,
    /// Fraction of test examples classified correctly after the epoch.
    pub test_acc: f64,
    /// Training examples per second (forward, backward and update only).
    pub examples_per_sec: f64,
}

/// A whole training run: the settings and one record per epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Model name, e.g. `lenet-bn`.
    pub model: String,
    /// The seed of weights and shuffling.
    pub seed: u64,
    /// SGD learning rate.
    pub lr: f32,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Number of epochs.
    pub epochs: usize,
    /// Training examples used per epoch (60,000 unless limited).
    pub train_examples: usize,
    /// Test examples evaluated (10,000 unless limited).
    pub test_examples: usize,
    /// One record per epoch.
    pub history: Vec<EpochRecord>,
}

impl History {
    /// The last epoch's record.
    pub fn last(&self) -> Option<&EpochRecord> {
        self.history.last()
    }

    /// d2l's closing line: `loss 0.267, train acc 0.902, test acc 0.852`.
    pub fn summary(&self) -> String {
        match self.last() {
            Some(r) => format!(
                "loss {:.3}, train acc {:.3}, test acc {:.3}\n{:.1} examples/sec",
                r.loss,
                r.train_acc,
                r.test_acc,
                self.median_examples_per_sec()
            ),
            None => "no epochs run".to_string(),
        }
    }

    /// Median training throughput over the epochs.
    pub fn median_examples_per_sec(&self) -> f64 {
        let mut v: Vec<f64> = self.history.iter().map(|r| r.examples_per_sec).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }
}

/// Builds `model` from `config.seed` and trains it on `data`; calls
/// `on_epoch` after every epoch. Returns the trained network and its history.
///
/// # Errors
/// If the batch size is zero or the data is inconsistent.
pub fn train_model(
    model: ModelKind,
    data: &FashionMnist,
    config: &TrainConfig,
    on_epoch: impl FnMut(&EpochRecord),
) -> Result<(Sequential, History)> {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut net = model.build(&mut rng)?;
    let history = train(&mut net, model.name(), data, config, on_epoch)?;
    Ok((net, history))
}

// ANCHOR: train
/// Trains `net` with SGD and softmax cross-entropy; see the module docs.
///
/// # Errors
/// If the batch size is zero, the data is inconsistent, or the network
/// rejects the images' shape.
pub fn train(
    net: &mut Sequential,
    name: &str,
    data: &FashionMnist,
    config: &TrainConfig,
    mut on_epoch: impl FnMut(&EpochRecord),
) -> Result<History> {
    let params = net.parameters();
    let sgd = Sgd::new(config.lr);
    let test = match config.limit {
        Some(n) => data.test.head(n),
        None => data.test.clone(),
    };
    let mut history = History {
        model: name.to_string(),
        seed: config.seed,
        lr: config.lr,
        batch_size: config.batch_size,
        epochs: config.epochs,
        train_examples: config
            .limit
            .map_or(data.train.len(), |n| n.min(data.train.len())),
        test_examples: test.len(),
        history: Vec::with_capacity(config.epochs),
    };
    for epoch in 0..config.epochs {
        let options = BatchOptions {
            shuffle_seed: Some(config.seed),
            epoch: epoch as u64,
            limit: config.limit,
            // a final batch of one example cannot be batch-normalised
            last_batch: LastBatch::DropIfSmallerThan(2),
        };
        let bar = progress_bar(
            config,
            data.train.num_batches(config.batch_size, &options)?,
            epoch,
        );
        let (mut loss_sum, mut correct, mut seen) = (0.0_f64, 0_usize, 0_usize);
        let mut busy = Duration::ZERO;
        for batch in data.train.batches(config.batch_size, &options)? {
            let start = Instant::now();
            let x = Tensor::new(batch.images.into_dyn());
            let logits = net.forward(&x, Mode::Train)?; // forward
            let loss = logits.softmax_cross_entropy(&batch.labels)?; // loss
            loss.backward(); // backward
            sgd.step(&params); // SGD step
            sgd.zero_grad(&params); // zero grads
            loss_sum += f64::from(loss.item()) * batch.labels.len() as f64;
            correct += count_correct(&logits, &batch.labels)?;
            seen += batch.labels.len();
            busy += start.elapsed();
            bar.inc(1);
            bar.set_message(format!("loss {:.3}", loss_sum / seen as f64));
        }
        bar.finish_and_clear();
        let record = EpochRecord {
            epoch: epoch + 1,
            loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            test_acc: evaluate(net, &test, config.batch_size)?,
            examples_per_sec: seen as f64 / busy.as_secs_f64().max(1e-9),
        };
        on_epoch(&record);
        history.history.push(record);
    }
    Ok(history)
}
// ANCHOR_END: train

/// Accuracy of `net` on `split` in [`Mode::Eval`] (running statistics,
/// nothing updated).
///
/// # Errors
/// If the batch size is zero or the network rejects the images.
pub fn evaluate(net: &mut Sequential, split: &Split, batch_size: usize) -> Result<f64> {
    let (mut correct, mut seen) = (0, 0);
    for batch in split.batches(batch_size, &BatchOptions::default())? {
        let logits = net.forward(&Tensor::new(batch.images.into_dyn()), Mode::Eval)?;
        correct += count_correct(&logits, &batch.labels)?;
        seen += batch.labels.len();
    }
    Ok(correct as f64 / seen.max(1) as f64)
}

fn progress_bar(config: &TrainConfig, batches: usize, epoch: usize) -> ProgressBar {
    if !config.progress || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(batches as u64);
    let style = ProgressStyle::with_template(
        "epoch {prefix:>3} [{bar:30}] {pos}/{len} batches, {msg} ({eta} left)",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("{}", epoch + 1));
    bar
}
