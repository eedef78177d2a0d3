//! Timing of training steps and evaluation passes (`bnbook bench`).
//!
//! Speed is measured, never asserted in tests: this module times whole
//! training steps (forward, loss, backward, SGD update) and evaluation
//! forward passes on a fixed batch, after warm-up, and reports medians.

use bnbook::Tensor;
use bnbook::autograd::no_grad;
use bnbook::error::Result;
use bnbook::models::ModelKind;
use bnbook::nn::{Mode, Module, Sgd};
use bnbook::random::random_input;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Medians of a benchmark run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchReport {
    /// Model name.
    pub model: String,
    /// Examples per batch.
    pub batch_size: usize,
    /// Timed batches (after warm-up).
    pub batches: usize,
    /// Median milliseconds per training step.
    pub train_step_ms: f64,
    /// Median milliseconds per evaluation forward pass.
    pub eval_forward_ms: f64,
    /// Training examples per second, from the median step.
    pub train_examples_per_sec: f64,
    /// Evaluation examples per second, from the median pass.
    pub eval_examples_per_sec: f64,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} batch {}: train step {:.2} ms ({:.0} examples/sec), eval forward {:.2} ms ({:.0} examples/sec), median of {} batch{}",
            self.model,
            self.batch_size,
            self.train_step_ms,
            self.train_examples_per_sec,
            self.eval_forward_ms,
            self.eval_examples_per_sec,
            self.batches,
            if self.batches == 1 { "" } else { "es" }
        )
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Timed batches of `bnbook bench` unless told otherwise.
pub const DEFAULT_BATCHES: usize = 30;

/// Untimed steps before the timed ones (caches, allocator, thread pool).
pub const WARM_UP_BATCHES: usize = 5;

/// The largest batch [`bench()`] accepts: 65,536 images of 28 × 28 need a
/// few GB of activations in LeNet-BN's training step.
pub const MAX_BENCH_BATCH_SIZE: usize = 1 << 16;

/// Times `batches` training steps and evaluation passes of `model` at
/// `batch_size` on random images (the speed does not depend on the pixel
/// values), after [`WARM_UP_BATCHES`] untimed warm-up steps.
///
/// # Errors
/// If the model cannot train at `batch_size` (0, or 1 with batch norm; see
/// [`ModelKind::check_batch_size`]), `batch_size` is above
/// [`MAX_BENCH_BATCH_SIZE`], or `batches` is 0.
pub fn bench(model: ModelKind, batch_size: usize, batches: usize) -> Result<BenchReport> {
    model.check_batch_size(batch_size)?;
    if batch_size > MAX_BENCH_BATCH_SIZE {
        return Err(bnbook::Error::InvalidArgument(format!(
            "a benchmark batch of {batch_size} images is too large (at most \
             {MAX_BENCH_BATCH_SIZE}; its activations would not fit in memory); d2l uses 256"
        )));
    }
    if batches == 0 {
        return Err(bnbook::Error::InvalidArgument(
            "the number of timed batches must be at least 1, got 0".into(),
        ));
    }
    let mut rng = StdRng::seed_from_u64(0);
    let mut net = model.build(&mut rng)?;
    let params = net.parameters();
    let sgd = Sgd::new(model.default_lr())?; // d2l's learning rate (the speed does not depend on it)
    let x = Tensor::new(random_input(&[batch_size, 1, 28, 28], 0.0, 1.0, 1));
    let labels: Vec<usize> = (0..batch_size).map(|i| i % 10).collect();
    let warm_up = WARM_UP_BATCHES;
    let (mut train_ms, mut eval_ms) = (Vec::new(), Vec::new());
    // as `train_model` does: the other pool threads wait for work awake
    bnbook::parallel::keep_pool_awake(|| -> bnbook::Result<()> {
        for i in 0..warm_up + batches {
            let start = Instant::now();
            let loss = net
                .forward(&x, Mode::Train)?
                .softmax_cross_entropy(&labels)?;
            loss.backward();
            sgd.step(&params);
            sgd.zero_grad(&params);
            drop(loss);
            let trained = Instant::now();
            // evaluation as `train::evaluate` runs it: no graph (torch.no_grad())
            let logits = no_grad(|| net.forward(&x, Mode::Eval))?;
            drop(logits);
            let evaluated = Instant::now();
            if i >= warm_up {
                train_ms.push((trained - start).as_secs_f64() * 1e3);
                eval_ms.push((evaluated - trained).as_secs_f64() * 1e3);
            }
        }
        Ok(())
    })?;
    let (train_step_ms, eval_forward_ms) = (median(train_ms), median(eval_ms));
    Ok(BenchReport {
        model: model.name().to_string(),
        batch_size,
        batches,
        train_step_ms,
        eval_forward_ms,
        train_examples_per_sec: batch_size as f64 / train_step_ms * 1e3,
        eval_examples_per_sec: batch_size as f64 / eval_forward_ms * 1e3,
    })
}

/// Tunes the mimalloc allocator for training loops; call it first thing in
/// a binary that declares `#[global_allocator] static A: mimalloc::MiMalloc`
/// (as the `bnbook` command and the examples do). Without it mimalloc hands
/// freed memory back to the operating system after 10 ms, and every training
/// step, which frees and reallocates the same large buffers, pays page
/// faults and page clearing for them (measured: ~15 % of a step).
///
/// Only with the feature `cli` (the command and the examples): the library
/// a notebook loads links no allocator of its own.
#[cfg(feature = "cli")]
pub fn keep_freed_memory() {
    // `mi_option_purge_delay` is entry 15 of `mi_option_t` in both the v2
    // and v3 headers of mimalloc; -1 means "never purge".
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: setting an option is allowed at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
