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

/// Whether the tests that need the real Fashion-MNIST files are switched
/// off (`BNBOOK_SKIP_REAL_DATA=1`).
fn skip() -> bool {
    std::env::var("BNBOOK_SKIP_REAL_DATA").is_ok_and(|v| v == "1")
}

/// Removes every `examples_per_sec` entry (a timing, different on every
/// run) from a JSON value.
fn drop_throughput(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.remove("examples_per_sec");
            map.values_mut().for_each(drop_throughput);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_throughput),
        _ => {}
    }
}
