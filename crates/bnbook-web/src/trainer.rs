//! "Train with and without BN": a small MLP on the shipped subset, a few
//! steps at a time.
//!
//! *Book: chapter "Try it: batch norm in your browser", section "Train with
//! and without BN".*
//!
//! The network is `Flatten → Linear(784, 128) → [BN] → ReLU → Linear(128, 64)
//! → [BN] → ReLU → Linear(64, 10)`, the batch-norm layers being
//! [`BatchNorm1d`] with PyTorch's conventions. A [`Trainer`] runs the same
//! steps as `bnbook::train::train` (forward, softmax cross-entropy, backward,
//! SGD, zero the gradients) but only `n` of them per [`Trainer::step`] call,
//! so the page can hand control back to the browser between slices.

use bnbook::autograd::Tensor;
use bnbook::concise::BatchNorm1d;
use bnbook::data::idx::pixels_to_unit;
use bnbook::data::{BatchOptions, FashionMnist};
use bnbook::error::{Error, Result};
use bnbook::nn::{
    Flatten, Linear, MIN_BATCH_WITH_BATCH_NORM, Mode, Module, ReLU, Sequential, Sgd, count_correct,
};
use bnbook::train::evaluate;
use ndarray::Axis;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

/// Width of the first hidden layer.
pub const HIDDEN_1: usize = 128;
/// Width of the second hidden layer.
pub const HIDDEN_2: usize = 64;

/// The controls of the training panel.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    /// With batch-norm layers after both hidden linear layers.
    pub batch_norm: bool,
    /// SGD learning rate.
    pub lr: f32,
    /// Examples per step (at least 2: batch norm needs a variance).
    pub batch_size: usize,
    /// Seed of the weights and of the shuffling.
    pub seed: u64,
}

/// What a slice of steps reports.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Steps taken since the start.
    pub step: u64,
    /// Epochs (passes over the training subset) completed.
    pub epoch: u64,
    /// Mean training loss over this slice's steps.
    pub loss: f64,
    /// Training accuracy over this slice's examples.
    pub accuracy: f64,
}

/// A network, its optimiser and the position in the shuffled data.
pub struct Trainer {
    net: Sequential,
    sgd: Sgd,
    data: FashionMnist,
    settings: TrainSettings,
    order: Vec<usize>,
    cursor: usize,
    step: u64,
    epoch: u64,
}

/// The lab's MLP, with or without batch norm, weights drawn from `rng`.
///
/// # Errors
/// None in practice (the sizes are constants); `bnbook`'s layer
/// constructors return `Result`.
pub fn mlp(batch_norm: bool, rng: &mut StdRng) -> Result<Sequential> {
    let pixels = 28 * 28;
    let mut net = Sequential::new()
        .with(Flatten)
        .with(Linear::new(pixels, HIDDEN_1, rng)?);
    if batch_norm {
        net.push(BatchNorm1d::new(HIDDEN_1)?);
    }
    net.push(ReLU);
    net.push(Linear::new(HIDDEN_1, HIDDEN_2, rng)?);
    if batch_norm {
        net.push(BatchNorm1d::new(HIDDEN_2)?);
    }
    net.push(ReLU);
    net.push(Linear::new(HIDDEN_2, 10, rng)?);
    Ok(net)
}

impl Trainer {
    /// A fresh network for `settings` on `data`.
    ///
    /// # Errors
    /// A batch size below 2 or above the training set, or a learning rate
    /// `bnbook`'s SGD rejects.
    pub fn new(data: FashionMnist, settings: TrainSettings) -> Result<Trainer> {
        let n = data.train.len();
        if settings.batch_size < MIN_BATCH_WITH_BATCH_NORM || settings.batch_size > n {
            return Err(Error::InvalidArgument(format!(
                "batch size {} must be between {MIN_BATCH_WITH_BATCH_NORM} and the {n} training \
                 images",
                settings.batch_size
            )));
        }
        let sgd = Sgd::new(settings.lr)?;
        let mut rng = StdRng::seed_from_u64(settings.seed);
        let net = mlp(settings.batch_norm, &mut rng)?;
        Ok(Trainer {
            net,
            sgd,
            order: BatchOptions::shuffled(settings.seed, 0).order(n),
            data,
            settings,
            cursor: 0,
            step: 0,
            epoch: 0,
        })
    }

    /// Runs `steps` SGD steps on shuffled mini-batches (a new order every
    /// epoch; a last batch smaller than the batch size is skipped).
    ///
    /// # Errors
    /// What `bnbook` reports (none expected for valid settings).
    pub fn step(&mut self, steps: usize) -> Result<Progress> {
        let params = self.net.parameters();
        let (mut loss_sum, mut correct, mut seen) = (0.0_f64, 0_usize, 0_usize);
        let b = self.settings.batch_size;
        for _ in 0..steps {
            if self.cursor + b > self.order.len() {
                self.epoch += 1;
                self.cursor = 0;
                self.order = BatchOptions::shuffled(self.settings.seed, self.epoch)
                    .order(self.data.train.len());
            }
            let indices = &self.order[self.cursor..self.cursor + b];
            self.cursor += b;
            let images = pixels_to_unit(&self.data.train.pixels.select(Axis(0), indices));
            let labels: Vec<usize> = indices
                .iter()
                .map(|&i| usize::from(self.data.train.labels[i]))
                .collect();
            let logits = self
                .net
                .forward(&Tensor::new(images.into_dyn()), Mode::Train)?;
            let loss = logits.softmax_cross_entropy(&labels)?;
            loss.backward();
            self.sgd.step(&params);
            self.sgd.zero_grad(&params);
            loss_sum += f64::from(loss.item()) * b as f64;
            correct += count_correct(&logits, &labels)?;
            seen += b;
            self.step += 1;
        }
        Ok(Progress {
            step: self.step,
            epoch: self.epoch,
            loss: loss_sum / seen.max(1) as f64,
            accuracy: correct as f64 / seen.max(1) as f64,
        })
    }

    /// Accuracy on the shipped test images, in evaluation mode (running
    /// statistics, nothing updated).
    ///
    /// # Errors
    /// What `bnbook::train::evaluate` reports.
    pub fn test_accuracy(&mut self) -> Result<f64> {
        evaluate(&mut self.net, &self.data.test, 256)
    }
}
