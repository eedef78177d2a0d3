//! `bnbook exercises` at tiny settings: settings refused before any run,
//! every table written, and the same files again on a second run.
//!
//! The runs need the data (CI installs the Debian package) unless
//! `BNBOOK_SKIP_REAL_DATA=1`.

use crate::{drop_throughput, skip};
use bnbook::data::FashionMnist;
use bnbook_lab::exercises::{ExercisesConfig, generate};
use std::path::Path;

#[test]
fn bad_settings_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exercises");
    for (config, expected) in [
        (
            ExercisesConfig {
                out: out.clone(),
                seeds: vec![],
                ..Default::default()
            },
            "at least one seed",
        ),
        (
            ExercisesConfig {
                out: out.clone(),
                epochs: 0,
                ..Default::default()
            },
            "epochs must be at least 1",
        ),
    ] {
        let message = generate(&FashionMnist::blank(300), &config, "test")
            .expect_err("bad settings were accepted")
            .to_string();
        assert!(message.contains(expected), "{message}");
        assert!(
            !out.exists(),
            "{} was created before the settings were checked",
            out.display()
        );
    }
}

/// Every file of a run, with what depends on the machine taken out: the run
/// time, the manifest (which records it) and the throughput of each epoch.
fn contents(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .filter(|(name, _)| name != "run-time.md" && name != "figures.json")
        .collect();
    files.sort();
    for (name, text) in &mut files {
        if name == "results.json" {
            let mut value: serde_json::Value = serde_json::from_str(text).unwrap();
            drop_throughput(&mut value);
            *text = value.to_string();
        }
    }
    files
}

#[test]
fn every_table_is_written_and_a_second_run_writes_the_same() {
    if skip() {
        return;
    }
    let data = FashionMnist::load_default().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str| {
        let config = ExercisesConfig {
            out: dir.path().join(name),
            epochs: 2,
            seeds: vec![0, 1],
            limit: Some(300),
        };
        let manifest = generate(&data, &config, "bnbook exercises --epochs 2").unwrap();
        let files: Vec<&str> = manifest.artefacts.iter().map(|a| a.file.as_str()).collect();
        for table in [
            "bias-gradient.md",
            "affine.md",
            "halves.md",
            "placement.md",
            "momentum.md",
            "groups.md",
            "eval-modes.md",
            "single-image.md",
            "results.json",
            "run-time.md",
        ] {
            assert!(files.contains(&table), "{table} missing from {files:?}");
            assert!(config.out.join(table).is_file(), "{table} not written");
        }
        assert!(config.out.join("figures.json").is_file());
        contents(&config.out)
    };
    let (first, second) = (run("first"), run("second"));
    assert_eq!(first.len(), second.len());
    for ((name, a), (_, b)) in first.iter().zip(&second) {
        assert_eq!(
            a, b,
            "{name} differs between two runs with the same settings"
        );
    }
    // the tables show the settings they were made with
    let (_, affine) = first.iter().find(|(n, _)| n == "affine.md").unwrap();
    assert!(
        affine.contains("2 epochs, seeds 0, 1, 300 training and 300 test examples"),
        "{affine}"
    );
}
