//! # bnbook — the companion crate of *Batch Normalization, from scratch in Rust*
//!
//! Everything the book runs lives here, written to be read:
//!
//! * [`autograd`] — a small reverse-mode automatic differentiation engine over
//!   [`ndarray`] arrays (chapter "Autograd in a few hundred lines");
//! * [`nn`] — layers built on it (`Linear`, `Conv2d`, pooling, activations,
//!   `Sequential`), Xavier initialisation and plain SGD;
//! * [`scratch`] — batch normalization from scratch: the `batch_norm`
//!   function and the `BatchNorm` layer (chapter "BN from scratch");
//! * [`concise`] — the fused batch-norm layers `BatchNorm1d`/`BatchNorm2d`
//!   with a hand-derived backward and PyTorch's conventions (chapter
//!   "Concise BN");
//! * [`norms`] — layer norm, instance norm and group norm, fused and
//!   composed (chapter "BatchNorm, LayerNorm, InstanceNorm, GroupNorm");
//! * [`gradcheck`] — finite-difference gradient checking, used by the tests
//!   and by the book to show that every backward pass is right;
//! * [`random`] — seeded random arrays, the inputs of examples and checks;
//! * [`data`] — the Fashion-MNIST loader (find, verify, download, batch);
//! * [`models`] — LeNet with and without batch norm;
//! * [`fold`] — batch norm folded into the layer before it, for prediction;
//! * [`small_batch`] — ghost, renormalised, frozen and synchronised batch norm;
//! * [`train`] — d2l's training loop, with history and throughput;
//! * [`dynamics`] — instruments for watching training (activations,
//!   gradients, the loss along the gradient) and the variants of LeNet-BN
//!   the chapter "What batch norm does to training" compares;
//! * [`plot`] — SVG figures that also display inline in notebooks;
//! * [`prelude`] — one `use` for a notebook's first cell.
//!
//! The experiments behind the book's figures and tables, the benchmarks and
//! the `bnbook` command live in the companion crate `bnbook-lab`, so this
//! library stays small: it is what every notebook loads.
//!
//! Two cargo features are on by default: `download` (fetch Fashion-MNIST
//! when no local copy is found) and `parallel` (rayon threads in the
//! kernels, threaded matrix products). Without them the crate builds for
//! `wasm32-unknown-unknown` and runs every loop on the calling thread with
//! the same numbers; the book's browser lab (`crates/bnbook-web`, chapter
//! "Try it: batch norm in your browser") is built that way.
//!
//! The crate re-exports [`ndarray`] so that notebooks and examples use exactly
//! the version the crate was built with: `use bnbook::ndarray::prelude::*;`,
//! and [`rand`] for seeding: `use bnbook::rand::{SeedableRng, rngs::StdRng};`.

#![warn(missing_docs)]

pub use ndarray;
pub use rand;

pub mod autograd;
pub mod concise;
pub mod data;
pub mod dynamics;
pub mod error;
pub mod fold;
pub mod gradcheck;
pub mod models;
pub mod nn;
pub mod norms;
pub mod parallel;
pub mod plot;
pub mod prelude;
pub mod random;
pub mod scratch;
pub mod small_batch;
pub mod train;

pub use autograd::Tensor;
pub use error::{Error, Result};
pub use nn::Mode;

/// The code blocks of `README.md`, compiled and run as doc-tests so the
/// front page cannot go stale.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
