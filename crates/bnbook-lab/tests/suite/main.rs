//! The integration tests of `bnbook-lab`, built as one test binary: linking
//! one binary instead of one per file saves build time on a small machine.
//! Each module was a test file of its own; `cargo test -p bnbook-lab --test
//! suite cli::` runs one of them.
//!
//! The tests run as threads of one process, so none of them may change the
//! process's environment or current directory (the `bnbook` commands they
//! start inherit both).

mod book_claims;
mod cli;
mod dynamics;
mod exercises;
mod inference;
mod norm_comparison;
mod web_data;
