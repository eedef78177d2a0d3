//! `bnbook dynamics`: bad settings are refused before any run (by the
//! library and by the command), and a tiny real run writes every file the
//! chapter includes, the same bits when repeated (run time aside).
//!
//! The run needs the data (CI installs the Debian package) unless
//! `BNBOOK_SKIP_REAL_DATA=1`.

use crate::skip;
use bnbook::data::{FashionMnist, LoadOptions};
use bnbook_lab::dynamics::{DynamicsConfig, generate};
use std::path::{Path, PathBuf};
use std::process::Command;

fn refused(config: &DynamicsConfig) -> String {
    match config.validate(&FashionMnist::blank(300)) {
        Err(bnbook::Error::InvalidArgument(message)) => message,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn the_book_settings_are_valid_and_bad_ones_are_refused() {
    let book = DynamicsConfig::default();
    assert!(book.validate(&FashionMnist::blank(300)).is_ok());
    let cases: Vec<(DynamicsConfig, &str)> = vec![
        (
            DynamicsConfig {
                seeds: vec![],
                ..book.clone()
            },
            "at least one seed",
        ),
        (
            DynamicsConfig {
                sweep_epochs: 0,
                ..book.clone()
            },
            "at least 1 epoch",
        ),
        (
            DynamicsConfig {
                long_epochs: 5,
                ..book.clone()
            },
            "--long-epochs 5 is below --epochs 10",
        ),
        (
            DynamicsConfig {
                learning_rates: vec![0.1, -1.0],
                ..book.clone()
            },
            "learning-rate sweep: the learning rate must be a positive number, got -1",
        ),
        (
            DynamicsConfig {
                weight_scales: vec![0.1, 10.0],
                ..book.clone()
            },
            "must include 1",
        ),
        (
            DynamicsConfig {
                weight_scales: vec![1.0, 0.0],
                ..book.clone()
            },
            "weight scale must be a positive number",
        ),
        (
            DynamicsConfig {
                records_per_epoch: 0,
                ..book.clone()
            },
            "at least 1 record per epoch",
        ),
        (
            DynamicsConfig {
                dropout: 1.0,
                ..book.clone()
            },
            "drop probability must be in [0, 1)",
        ),
        (
            DynamicsConfig {
                limit: Some(1),
                ..book
            },
            "the limit leaves 1 training",
        ),
    ];
    for (config, expected) in cases {
        let message = refused(&config);
        assert!(
            message.contains(expected),
            "{expected:?} not in {message:?}"
        );
    }
}

#[test]
fn the_command_refuses_bad_settings_before_any_run() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_bnbook"))
        .args([
            "dynamics",
            "--limit",
            "600",
            "--epochs",
            "3",
            "--long-epochs",
            "2",
        ])
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(!output.status.success());
    assert!(
        stderr.contains("--long-epochs 2 is below --epochs 3"),
        "{stderr}"
    );
    assert!(!stdout.contains("epoch 1"), "no run started: {stdout}");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

fn tiny(out: PathBuf) -> DynamicsConfig {
    DynamicsConfig {
        out,
        seeds: vec![0, 1],
        limit: Some(600),
        epochs: 1,
        learning_rates: vec![0.1, 10.0],
        sweep_epochs: 1,
        long_epochs: 2,
        weight_scales: vec![1.0, 10.0],
        records_per_epoch: 2,
        ..DynamicsConfig::default()
    }
}

/// Every file of a run but the run time and the manifest (which holds it).
fn contents(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name != "run-time.md" && name != "figures.json"
        })
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), text)
        })
        .collect();
    files.sort();
    files
}

/// `"examples_per_sec":…` values differ from run to run; everything else may not.
fn without_throughput(text: &str) -> String {
    text.split("examples_per_sec")
        .map(|part| part.trim_start_matches(|c: char| c != ',' && c != '}' && c != '\n'))
        .collect::<Vec<_>>()
        .join("examples_per_sec")
}

#[test]
fn a_tiny_run_writes_every_file_and_repeats_bit_for_bit() {
    if skip() {
        return;
    }
    let options = LoadOptions {
        allow_download: false,
        limit: Some(600),
        ..LoadOptions::default()
    };
    let data = FashionMnist::load(&options).unwrap();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    for dir in &dirs {
        let manifest = generate(&data, &tiny(dir.path().to_path_buf()), "test").unwrap();
        assert_eq!(manifest.seeds, [0, 1]);
    }
    let (first, second) = (contents(dirs[0].path()), contents(dirs[1].path()));
    let names: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "activations.json",
        "activations.md",
        "dropout-runs.json",
        "dropout.md",
        "gradients-first.md",
        "gradients-first.svg",
        "gradients-last.md",
        "gradients-last.svg",
        "gradients.json",
        "landscape-gradient-change.svg",
        "landscape-loss-range.svg",
        "landscape.json",
        "landscape.md",
        "long-run.md",
        "long-run.svg",
        "long-runs.json",
        "lr-sweep.json",
        "lr-sweep.md",
        "lr-sweep.svg",
        "noisy-bn-loss.svg",
        "noisy-bn.md",
        "percentiles-lenet-bn-noise.svg",
        "percentiles-lenet-bn.svg",
        "percentiles-lenet-no-norm.svg",
        "saturation.md",
        "traced-runs.json",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    for dir in &dirs {
        assert!(dir.path().join("run-time.md").exists());
        assert!(dir.path().join("figures.json").exists());
    }
    for ((name, a), (_, b)) in first.iter().zip(&second) {
        if name.ends_with(".json") {
            assert_eq!(without_throughput(a), without_throughput(b), "{name}");
        } else {
            assert_eq!(a, b, "{name}");
        }
    }
    let sweep = &first.iter().find(|(n, _)| n == "lr-sweep.md").unwrap().1;
    assert!(sweep.contains("| 10 |"), "{sweep}");
    assert!(
        sweep.contains("mean over 2 seeds (lowest–highest), first 600"),
        "{sweep}"
    );
}
