//! # bnbook-lab — the experiments of *Batch Normalization, from scratch in Rust*
//!
//! The library the book teaches is [`bnbook`]; this crate runs it at scale
//! and writes what the chapters show:
//!
//! * [`figures`] — every figure and table of the LeNet and concise-BN
//!   chapters (`bnbook figures`);
//! * [`compare`] — the experiments comparing batch, layer, instance and
//!   group norm (`bnbook norms`);
//! * [`exercises`] — the measured answers to the chapters' exercises
//!   (`bnbook exercises`);
//! * [`dynamics`] — what batch norm does to training: learning rates,
//!   activations, gradients, noisy BN, the loss along the gradient,
//!   dropout, longer runs (`bnbook dynamics`);
//! * [`inference`] — batch norm at inference and with small batches:
//!   momentum and precise statistics, evaluation pitfalls, folding, ghost,
//!   renormalised, frozen and synchronised batch norm (`bnbook inference`);
//! * [`bench`](mod@bench) — timing of training steps and evaluation passes
//!   (`bnbook bench`);
//! * [`report`] — the output directory, its manifest and the run time;
//! * [`side_by_side`](mod@side_by_side) — independent training runs, one
//!   thread each, as many at once as there are threads.
//!
//! The `bnbook` command (feature `cli`, on by default) is the front end. A
//! notebook that calls the experiments loads this crate with
//! `default-features = false`, which leaves out the command line and its
//! allocator.

#![warn(missing_docs)]

pub mod bench;
pub mod compare;
pub mod dynamics;
pub mod exercises;
pub mod figures;
pub mod inference;
pub mod report;
pub mod side_by_side;
pub mod web_data;

/// The largest absolute difference between two arrays of the same shape
/// (how far apart two implementations' outputs or gradients are, and how
/// much a transformation changes an output).
pub(crate) fn largest_difference(a: &ndarray::ArrayD<f32>, b: &ndarray::ArrayD<f32>) -> f32 {
    a.iter()
        .zip(b.iter())
        .fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

/// The message of an expected error; panics (failing the test) on `Ok`.
#[cfg(test)]
pub(crate) fn refusal(result: bnbook::Result<()>) -> String {
    match result {
        Ok(()) => panic!("bad settings were accepted"),
        Err(e) => e.to_string(),
    }
}
