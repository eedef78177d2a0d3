//! The browser lab of the book: `bnbook` compiled to WebAssembly.
//!
//! *Book: chapter "Try it: batch norm in your browser" (`book/lab.md`).*
//!
//! Every number the page shows comes from `bnbook`'s own code, built for
//! `wasm32-unknown-unknown` without its `parallel` and `download` features
//! (one thread, no files, no network). The page never re-implements batch
//! norm in JavaScript. This crate has three parts:
//!
//! * [`demo`] — "Normalise a batch": a [`bnbook::concise::BatchNorm1d`] fed
//!   with synthetic features, in training or evaluation mode, under either
//!   momentum convention, plus one forward/backward pass on a given input
//!   ([`demo::forward_backward`]) that a test compares with the native build;
//! * [`trainer`] — "Train with and without BN": a small MLP trained on the
//!   Fashion-MNIST subset shipped with the book, a few steps per call so the
//!   page never freezes;
//! * [`data`] — reading that subset from its gzip'd IDX files, checked
//!   against the checksums written by `bnbook web-data`;
//!
//! and [`js`], the thin `wasm-bindgen` layer the page calls (settings in and
//! results out as JSON text).

#![warn(missing_docs)]

pub mod data;
pub mod demo;
pub mod js;
pub mod trainer;
