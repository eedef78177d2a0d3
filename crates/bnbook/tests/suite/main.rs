//! The integration tests of `bnbook`, built as one test binary: linking one
//! binary instead of one per file saves most of the build time of
//! `cargo test` on a small machine. Each module was a test file of its own;
//! `cargo test -p bnbook --test suite data_files::` runs one of them.
//!
//! The tests run as threads of one process, so none of them may change the
//! process's environment (`data_env` checks the environment variables in
//! child processes instead) or its current directory.

mod data_support;

mod autograd_hand_computed;
mod batchnorm;
mod batchnorm_pytorch_parity;
#[cfg(feature = "download")] // a local HTTP server serves the files
mod data_download;
mod data_env;
mod data_files;
mod data_real;
mod dynamics;
mod fold_pytorch_parity;
mod gradcheck_catches_bugs;
mod gradcheck_layers;
mod gradcheck_ops;
mod mlp_demo;
mod norms;
mod norms_pytorch_parity;
mod pytorch_fixtures;
mod readme_output;
mod small_batch;
mod train_real;

/// The message of the [`bnbook::Error::InvalidArgument`] that `result`
/// must be; panics (failing the test) on `Ok` or any other error.
#[track_caller]
fn invalid_argument<T>(result: bnbook::Result<T>) -> String {
    match result {
        Err(bnbook::Error::InvalidArgument(message)) => message,
        Err(other) => panic!("expected Error::InvalidArgument, got {other:?}"),
        Ok(_) => panic!("expected Error::InvalidArgument, got Ok"),
    }
}
