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

use crate::autograd::{Tensor, no_grad};
use crate::data::{BatchOptions, FashionMnist, LastBatch, Split};
use crate::error::Result;
use crate::models::ModelKind;
use crate::nn::{
    MIN_BATCH_WITH_BATCH_NORM, Mode, Module, Momentum, Sequential, Sgd, check_batch_size,
    check_learning_rate, count_correct,
};
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
    /// SGD learning rate (d2l: 1.0 for LeNet with batch norm, 0.9 for plain LeNet).
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

    /// Training examples per epoch for `data`: all of them, or the first
    /// [`TrainConfig::limit`].
    pub fn train_examples(&self, data: &FashionMnist) -> usize {
        self.limit
            .map_or(data.train.len(), |n| n.min(data.train.len()))
    }

    /// Test examples evaluated after each epoch for `data`.
    pub fn test_examples(&self, data: &FashionMnist) -> usize {
        self.limit
            .map_or(data.test.len(), |n| n.min(data.test.len()))
    }

    /// Checks the settings against `data` before any time is spent training.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) if there
    /// are no epochs, the batch size is zero, the learning rate is not a
    /// positive finite number, or the limit leaves fewer than two training
    /// examples (batch norm needs two per batch) or no test example.
    pub fn validate(&self, data: &FashionMnist) -> Result<()> {
        let invalid = |message: String| Err(crate::Error::InvalidArgument(message));
        if self.epochs == 0 {
            return invalid("the number of epochs must be at least 1, got 0".into());
        }
        check_batch_size(self.batch_size, "any network", false)?;
        check_learning_rate(self.lr)?;
        let (train, test) = (self.train_examples(data), self.test_examples(data));
        let least = MIN_BATCH_WITH_BATCH_NORM;
        if train < least || test == 0 {
            return invalid(format!(
                "the limit leaves {train} training and {test} test examples; \
                 training needs at least {least} training examples (batch norm \
                 estimates a variance from each batch) and 1 test example, \
                 so use a limit of at least {least}"
            ));
        }
        Ok(())
    }
}

/// The numbers of one epoch. In JSON, a NaN or infinite number (a diverged
/// run's loss) is written as `null` and read back as NaN.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch's examples.
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// Fraction of training examples classified correctly during the epoch.
    #[serde(deserialize_with = "nan_if_null")]
    pub train_acc: f64,
    /// Fraction of test examples classified correctly after the epoch.
    #[serde(deserialize_with = "nan_if_null")]
    pub test_acc: f64,
    /// Training examples per second (forward, backward and update only).
    #[serde(deserialize_with = "nan_if_null")]
    pub examples_per_sec: f64,
}

/// JSON has no NaN: serde_json writes non-finite numbers as `null`. Reading
/// `null` back as NaN lets a diverged run's history load again.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl EpochRecord {
    /// The line `bnbook train` prints after the epoch:
    /// `epoch   1: loss 0.760, train acc 0.722, test acc 0.680, 12123 examples/sec`.
    pub fn line(&self) -> String {
        format!(
            "epoch {:>3}: loss {:.3}, train acc {:.3}, test acc {:.3}, {:.0} examples/sec",
            self.epoch, self.loss, self.train_acc, self.test_acc, self.examples_per_sec
        )
    }
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
    /// The history of a run of `model` with `config` on `data` before its
    /// first epoch: the settings, and no records yet.
    pub fn start(model: &str, config: &TrainConfig, data: &FashionMnist) -> Self {
        History {
            model: model.to_string(),
            seed: config.seed,
            lr: config.lr,
            batch_size: config.batch_size,
            epochs: config.epochs,
            train_examples: config.train_examples(data),
            test_examples: config.test_examples(data),
            history: Vec::new(), // not with_capacity(epochs): the epoch count is user input
        }
    }

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
/// Called on a thread of a rayon pool with more than one thread (as the
/// `bnbook` command runs), it keeps the pool's other threads waiting for
/// work awake while it trains ([`keep_pool_awake`](crate::parallel::keep_pool_awake)):
/// the same numbers, a few percent sooner.
///
/// # Errors
/// If the settings are invalid ([`TrainConfig::validate`],
/// [`ModelKind::check_batch_size`]) or the data is inconsistent.
pub fn train_model(
    model: ModelKind,
    data: &FashionMnist,
    config: &TrainConfig,
    on_epoch: impl FnMut(&EpochRecord),
) -> Result<(Sequential, History)> {
    model.check_batch_size(config.batch_size)?;
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut net = model.build(&mut rng)?;
    let history =
        crate::parallel::keep_pool_awake(|| train(&mut net, model.name(), data, config, on_epoch))?;
    Ok((net, history))
}

// ANCHOR: train
/// Trains `net` with SGD and softmax cross-entropy; see the module docs.
///
/// # Errors
/// If the settings are invalid ([`TrainConfig::validate`]), the data is
/// inconsistent, or the network rejects the images' shape.
pub fn train(
    net: &mut Sequential,
    name: &str,
    data: &FashionMnist,
    config: &TrainConfig,
    mut on_epoch: impl FnMut(&EpochRecord),
) -> Result<History> {
    config.validate(data)?; // fail now, not after minutes of training
    let params = net.parameters();
    let sgd = Sgd::new(config.lr)?;
    let test = match config.limit {
        Some(n) => data.test.head(n),
        None => data.test.clone(),
    };
    let mut history = History::start(name, config, data); // settings, no epochs yet
    for epoch in 0..config.epochs {
        let options = BatchOptions {
            shuffle_seed: Some(config.seed),
            epoch: epoch as u64,
            limit: config.limit,
            // a final batch of one example cannot be batch-normalised
            last_batch: LastBatch::DropIfSmallerThan(MIN_BATCH_WITH_BATCH_NORM),
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
/// If the split is empty (no accuracy to report), the batch size is zero or
/// the network rejects the images.
pub fn evaluate(net: &mut Sequential, split: &Split, batch_size: usize) -> Result<f64> {
    if split.is_empty() {
        return Err(crate::Error::InvalidArgument(
            "evaluate: the split has no examples, so there is no accuracy to compute".into(),
        ));
    }
    let (mut correct, mut seen) = (0, 0);
    for batch in split.batches(batch_size, &BatchOptions::default())? {
        // no graph: nothing is differentiated here (PyTorch's torch.no_grad())
        let x = Tensor::new(batch.images.into_dyn());
        let logits = no_grad(|| net.forward(&x, Mode::Eval))?;
        correct += count_correct(&logits, &batch.labels)?;
        seen += batch.labels.len();
    }
    Ok(correct as f64 / seen.max(1) as f64)
}

/// "Precise BN": replaces the running statistics of every batch-norm layer
/// of `net` (scratch or concise) by the plain average of the batch
/// statistics over `batches` training batches of 256, computed with the
/// *current* weights and no weight update. Batch `k` (from 0) is given the
/// weight `1/(k+1)` ([`Momentum::NewBatchWeight`]), which makes the result
/// the average; each layer's own momentum is put back afterwards. The
/// batches are drawn, shuffled by `seed`, from the first `limit` training
/// examples (all if `None`), the examples the network was trained on; a
/// last batch of one example, which batch norm cannot normalise, is skipped.
///
/// # Errors
/// If `net` has no batch-norm layer (there is nothing to re-estimate),
/// `batches` is 0, or the network rejects the images.
pub fn reestimate_running_statistics(
    net: &mut Sequential,
    data: &FashionMnist,
    limit: Option<usize>,
    seed: u64,
    batches: usize,
) -> Result<()> {
    let saved: Vec<Momentum> = net
        .batch_norm_layers()
        .iter()
        .map(|(_, bn)| bn.momentum())
        .collect();
    if saved.is_empty() {
        return Err(crate::Error::InvalidArgument(
            "the network has no batch-norm layer, so it has no running statistics to re-estimate"
                .into(),
        ));
    }
    if batches == 0 {
        return Err(crate::Error::InvalidArgument(
            "re-estimating the running statistics needs at least 1 batch, got 0".into(),
        ));
    }
    let options = BatchOptions {
        limit,
        last_batch: LastBatch::DropIfSmallerThan(MIN_BATCH_WITH_BATCH_NORM),
        ..BatchOptions::shuffled(seed, u64::MAX)
    };
    let mut average = || -> Result<()> {
        for (k, batch) in data.train.batches(256, &options)?.take(batches).enumerate() {
            let weight = Momentum::NewBatchWeight(1.0 / (k as f32 + 1.0));
            for bn in net.batch_norm_layers_mut() {
                bn.set_momentum(weight)?;
            }
            // training mode updates the running statistics; no graph is needed
            let x = Tensor::new(batch.images.into_dyn());
            no_grad(|| net.forward(&x, Mode::Train))?;
        }
        Ok(())
    };
    let result = average();
    for (bn, momentum) in net.batch_norm_layers_mut().into_iter().zip(saved) {
        bn.set_momentum(momentum)?;
    }
    result
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::error::refusal;

    /// `n` random images (pixel bytes uniform in 0..=255) in both splits.
    fn random_data(n: usize) -> FashionMnist {
        let split = Split {
            pixels: crate::random::random_pixels(n, 5),
            labels: (0..n).map(|i| (i % 10) as u8).collect(),
        };
        FashionMnist {
            train: split.clone(),
            test: split,
        }
    }

    fn running_means(net: &Sequential) -> Vec<Vec<f32>> {
        net.batch_norm_layers()
            .iter()
            .map(|(_, bn)| bn.running_mean())
            .collect()
    }

    #[test]
    fn precise_bn_works_for_scratch_and_concise_batch_norm() {
        let data = random_data(600);
        let build = |model: ModelKind| model.build(&mut StdRng::seed_from_u64(3)).unwrap();
        let (mut scratch, mut concise) =
            (build(ModelKind::LenetBn), build(ModelKind::LenetBnConcise));
        let before = running_means(&concise);
        for net in [&mut scratch, &mut concise] {
            reestimate_running_statistics(net, &data, None, 0, 3).unwrap();
        }
        // the same weights and batches give the same averages in both kinds
        let (a, b) = (running_means(&scratch), running_means(&concise));
        assert_ne!(
            b, before,
            "the concise layers' statistics were re-estimated"
        );
        for (la, lb) in a.iter().zip(&b) {
            for (x, y) in la.iter().zip(lb) {
                assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "{x} vs {y}");
            }
        }
        // and they come from exactly the first three shuffled batches, batch k
        // weighted 1/(k+1): the same steps taken by hand give the same bits
        let mut by_hand = build(ModelKind::LenetBnConcise);
        let options = BatchOptions {
            last_batch: LastBatch::DropIfSmallerThan(MIN_BATCH_WITH_BATCH_NORM),
            ..BatchOptions::shuffled(0, u64::MAX)
        };
        for (k, batch) in data
            .train
            .batches(256, &options)
            .unwrap()
            .take(3)
            .enumerate()
        {
            for bn in by_hand.batch_norm_layers_mut() {
                bn.set_momentum(Momentum::NewBatchWeight(1.0 / (k as f32 + 1.0)))
                    .unwrap();
            }
            by_hand
                .forward(&Tensor::new(batch.images.into_dyn()), Mode::Train)
                .unwrap();
        }
        assert_eq!(running_means(&by_hand), b);
        // each layer's own momentum is back afterwards
        for net in [&scratch, &concise] {
            for (_, bn) in net.batch_norm_layers() {
                assert_eq!(bn.momentum(), Momentum::from_old_weight(0.9));
            }
        }
    }

    #[test]
    fn precise_bn_refuses_what_it_cannot_do() {
        let data = random_data(10);
        let mut plain = ModelKind::LenetNoNorm
            .build(&mut StdRng::seed_from_u64(0))
            .unwrap();
        let message = refusal(reestimate_running_statistics(&mut plain, &data, None, 0, 3));
        assert!(message.contains("no batch-norm layer"), "{message}");
        let mut net = ModelKind::LenetBn
            .build(&mut StdRng::seed_from_u64(0))
            .unwrap();
        let message = refusal(reestimate_running_statistics(&mut net, &data, None, 0, 0));
        assert!(message.contains("at least 1 batch, got 0"), "{message}");
    }

    #[test]
    fn a_diverged_history_survives_a_json_round_trip() {
        let record = EpochRecord {
            epoch: 1,
            loss: f64::NAN,
            train_acc: 0.1,
            test_acc: 0.1,
            examples_per_sec: 1000.0,
        };
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains("\"loss\":null"), "{json}");
        let back: EpochRecord = serde_json::from_str(&json).unwrap();
        assert!(back.loss.is_nan());
        assert_eq!((back.train_acc, back.examples_per_sec), (0.1, 1000.0));
        // null means NaN, but a string is still no number
        let err = serde_json::from_str::<EpochRecord>(
            r#"{"epoch":1,"loss":"x","train_acc":0,"test_acc":0,"examples_per_sec":0}"#,
        )
        .unwrap_err();
        assert!(
            err.is_data() && err.to_string().contains(r#"invalid type: string "x""#),
            "{err}"
        );
    }

    #[test]
    fn batch_size_one_is_refused_only_with_batch_norm() {
        assert!(refusal(ModelKind::LenetBn.check_batch_size(1)).contains("at least 2 examples"));
        assert!(
            refusal(ModelKind::LenetBnConcise.check_batch_size(1)).contains("lenet-bn-concise")
        );
        assert!(ModelKind::Lenet.check_batch_size(1).is_ok());
        assert!(ModelKind::LenetGn.check_batch_size(1).is_ok());
        assert!(refusal(ModelKind::Lenet.check_batch_size(0)).contains("at least 1"));
    }

    #[test]
    fn d2l_recipe_is_valid() {
        let config = TrainConfig::d2l(ModelKind::LenetBn);
        assert!(config.validate(&FashionMnist::blank(300)).is_ok());
        let two = TrainConfig {
            limit: Some(2),
            ..config
        };
        assert!(
            two.validate(&FashionMnist::blank(300)).is_ok(),
            "two examples make a batch"
        );
    }

    #[test]
    fn settings_that_would_train_on_nothing_are_refused() {
        let data = FashionMnist::blank(300);
        let d2l = TrainConfig::d2l(ModelKind::LenetBn);
        let zero_epochs = TrainConfig {
            epochs: 0,
            ..d2l.clone()
        };
        assert!(refusal(zero_epochs.validate(&data)).contains("epochs must be at least 1"));
        let zero_batch = TrainConfig {
            batch_size: 0,
            ..d2l.clone()
        };
        assert!(refusal(zero_batch.validate(&data)).contains("batch size must be at least 1"));
        for lr in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let bad = TrainConfig { lr, ..d2l.clone() };
            assert!(
                refusal(bad.validate(&data)).contains("learning rate must be a positive number")
            );
        }
        for limit in [0, 1] {
            let bad = TrainConfig {
                limit: Some(limit),
                ..d2l.clone()
            };
            let message = refusal(bad.validate(&data));
            assert!(
                message.contains("at least 2 training examples"),
                "{message}"
            );
        }
        // a data set with one training example cannot be trained on either
        assert!(
            refusal(d2l.validate(&FashionMnist::blank(1))).contains("at least 2 training examples")
        );
    }

    #[test]
    fn train_checks_its_settings_before_training() {
        let mut net = ModelKind::LenetBn
            .build(&mut StdRng::seed_from_u64(0))
            .unwrap();
        let config = TrainConfig {
            limit: Some(0),
            progress: false,
            ..TrainConfig::d2l(ModelKind::LenetBn)
        };
        let mut epochs_seen = 0;
        let result = train(
            &mut net,
            "lenet-bn",
            &FashionMnist::blank(10),
            &config,
            |_| epochs_seen += 1,
        );
        match result {
            Err(crate::Error::InvalidArgument(message)) => assert!(
                message.contains("at least 2 training examples"),
                "{message}"
            ),
            other => panic!("expected the limit of 0 to be refused, got {other:?}"),
        }
        assert_eq!(epochs_seen, 0, "no epoch of zero examples is reported");
    }
}
