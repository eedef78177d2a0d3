//! `bnbook inference`: its settings are checked before any run (and
//! nothing is written then), and a tiny real run writes every file the
//! chapter includes, the same bits when repeated (timings aside).
//!
//! The run needs the data (CI installs the Debian package) unless
//! `BNBOOK_SKIP_REAL_DATA=1`.

use crate::{drop_throughput, skip};
use bnbook::data::FashionMnist;
use bnbook_lab::inference::{InferenceConfig, generate};
use std::path::Path;
use std::process::Command;

fn tiny(out: &Path) -> InferenceConfig {
    InferenceConfig {
        out: out.to_path_buf(),
        epochs: 2,
        seeds: vec![0, 1],
        limit: Some(120),
        precise_batches: 1,
        sweep_batch_sizes: vec![8],
        sweep_epochs: 1,
        sweep_limit: Some(64),
        worker_batch_sizes: vec![16, 256],
        sync_workers: 4,
        timing_repeats: 1,
    }
}

#[test]
fn bad_settings_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("inference");
    let bad = InferenceConfig {
        worker_batch_sizes: vec![16, 48],
        ..tiny(&out)
    };
    let err = generate(&FashionMnist::blank(300), &bad, "test")
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("48 does not divide the batch of 256"), "{err}");
    assert!(
        !out.exists(),
        "nothing may be written before the settings are checked"
    );
    // the command line says the same (after loading the data, before any run)
    if skip() {
        return;
    }
    let output = Command::new(env!("CARGO_BIN_EXE_bnbook"))
        .args(["inference", "--sweep-batch-sizes", "1,8", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("sweep batch sizes: 1 is too small"),
        "{stderr}"
    );
    assert!(!out.exists());
}

/// The files whose contents are timings or run times, not results.
const TIMED: [&str; 4] = ["fold.json", "fold.md", "run-time.md", "figures.json"];

#[test]
fn a_tiny_run_writes_every_file_and_repeats_bit_for_bit() {
    if skip() {
        return;
    }
    let data = FashionMnist::load_default().expect("Fashion-MNIST (or BNBOOK_SKIP_REAL_DATA=1)");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let manifest = generate(&data, &tiny(&a), "first").unwrap();
    generate(&data, &tiny(&b), "second").unwrap();
    let mut files: Vec<String> = manifest.artefacts.iter().map(|x| x.file.clone()).collect();
    files.sort();
    for expected in [
        "momentum.md",
        "momentum-trap.md",
        "momentum-test-acc.svg",
        "momentum-lag.svg",
        "pitfalls.md",
        "fold.md",
        "small-batch-sweep.md",
        "small-batch-sweep.svg",
        "per-worker.md",
        "per-worker.svg",
        "sync-exactness.md",
        "run-time.md",
    ] {
        assert!(
            files.iter().any(|f| f == expected),
            "{expected} missing from {files:?}"
        );
    }
    for file in files.iter().filter(|f| !TIMED.contains(&f.as_str())) {
        let read = |dir: &Path| std::fs::read_to_string(dir.join(file)).unwrap();
        let (x, y) = (read(&a), read(&b));
        if file.ends_with(".json") {
            // histories carry the training throughput, which is a timing
            let results = |text: &str| {
                let mut value: serde_json::Value = serde_json::from_str(text).unwrap();
                drop_throughput(&mut value);
                value
            };
            assert_eq!(
                results(&x),
                results(&y),
                "{file} differs between two identical runs"
            );
        } else {
            assert!(x == y, "{file} differs between two identical runs");
        }
    }
    // the verdicts the chapter leans on hold even in a tiny run
    let momentum = std::fs::read_to_string(a.join("momentum.md")).unwrap();
    assert!(momentum.contains("identical, bit for bit,"), "{momentum}");
    let fold = std::fs::read_to_string(a.join("fold.md")).unwrap();
    assert!(
        fold.contains("test accuracy identical for every seed"),
        "{fold}"
    );
    let pitfalls = std::fs::read_to_string(a.join("pitfalls.md")).unwrap();
    assert!(
        pitfalls.contains("| training mode, one example at a time | refused:"),
        "{pitfalls}"
    );
}
