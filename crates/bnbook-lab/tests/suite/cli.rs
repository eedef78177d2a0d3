//! The `bnbook` command line: a short real training run writing JSON and
//! SVG, thread-count independence, an interrupted run, bad input refused
//! with a clear message, and a quiet end when its output pipe closes.
//!
//! The training tests need the data (CI installs the Debian package) unless
//! `BNBOOK_SKIP_REAL_DATA=1`.

use crate::skip;
use bnbook::train::History;
use std::process::Command;

/// Metrics without the (machine-dependent) throughput.
fn metrics(h: &History) -> Vec<[f64; 3]> {
    h.history
        .iter()
        .map(|r| [r.loss, r.train_acc, r.test_acc])
        .collect()
}

#[test]
fn command_line_train_writes_json_and_svg() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (json, svg) = (dir.path().join("out.json"), dir.path().join("curves.svg"));
    let output = Command::new(env!("CARGO_BIN_EXE_bnbook"))
        .args([
            "train",
            "--model",
            "lenet-bn",
            "--epochs",
            "2",
            "--limit",
            "2000",
            "--seed",
            "0",
            "--offline",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success());
    assert!(
        stdout.starts_with("data: "),
        "says which copy of the data it read"
    );
    assert!(stdout.contains("epoch   2: loss "), "one line per epoch");
    assert!(stdout.contains("examples/sec"), "d2l-style summary");
    let history: History = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(
        (history.model.as_str(), history.epochs, history.batch_size),
        ("lenet-bn", 2, 256)
    );
    assert_eq!(
        history.lr, 1.0,
        "the model's d2l learning rate is the default"
    );
    assert_eq!(history.history.len(), 2);
    let json_text = std::fs::read_to_string(&json).unwrap();
    for key in [
        "\"model\"",
        "\"seed\"",
        "\"lr\"",
        "\"batch_size\"",
        "\"epochs\"",
        "\"history\"",
        "\"examples_per_sec\"",
        "\"test_acc\"",
    ] {
        assert!(json_text.contains(key), "JSON lacks {key}");
    }
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.starts_with("<svg") && svg_text.contains("train loss"));
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |threads: &str| {
        let json = dir.path().join(format!("threads-{threads}.json"));
        let status = Command::new(env!("CARGO_BIN_EXE_bnbook"))
            .args([
                "train",
                "--epochs",
                "1",
                "--limit",
                "2000",
                "--offline",
                "--quiet",
            ])
            .args(["--threads", threads])
            .arg("--json")
            .arg(&json)
            .status()
            .unwrap();
        assert!(status.success());
        let h: History = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
        metrics(&h)
    };
    // reductions are split into fixed groups, never by thread count
    assert_eq!(run("1"), run("2"));
}

#[test]
fn an_interrupted_run_keeps_its_finished_epochs() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bnbook"))
        .args([
            "train",
            "--epochs",
            "1000",
            "--limit",
            "500",
            "--offline",
            "--quiet",
        ])
        .arg("--json")
        .arg(&json)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // wait for two finished epochs, then stop the run as Ctrl-C would
    let read =
        || -> Option<History> { serde_json::from_str(&std::fs::read_to_string(&json).ok()?).ok() };
    let started = std::time::Instant::now();
    while read().is_none_or(|h| h.history.len() < 2) {
        assert!(started.elapsed().as_secs() < 120, "no epoch written");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let h = read().expect("a complete JSON file, never half written");
    assert_eq!(h.epochs, 1000, "the settings of the run");
    assert!(h.history.len() >= 2 && h.history.len() < 1000);
    for (i, r) in h.history.iter().enumerate() {
        assert_eq!(r.epoch, i + 1);
    }
}

/// Runs `bnbook args`, expects it to fail with `expected` in its error
/// message and without having trained an epoch.
fn assert_refused(args: &[&str], expected: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_bnbook"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{args:?} should fail");
    assert!(stderr.contains(expected), "{args:?}: {stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("epoch   1"), "{args:?} trained: {stdout}");
}

#[test]
fn command_line_reports_bad_input_clearly() {
    // refused before any data is loaded or any training time is spent
    let refused: [(&[&str], &str); 16] = [
        (&["train", "--model", "resnet"], "unknown model `resnet`"),
        (&["figures", "--seeds", "0,x"], "`x` in the list `0,x`"),
        (
            &["norms", "--sweep-batch-sizes", "8,,16"],
            "`` in the list `8,,16`",
        ),
        (&["train", "--model", "resnet"], "lenet-bn-concise"),
        (&["bench", "--threads", "0"], "--threads must be at least 1"),
        (&["bench", "--batch-size", "0"], "batch size"),
        (
            &["bench", "--batches", "0"],
            "timed batches must be at least 1",
        ),
        (
            &["train", "--json", "/no/such/dir/out.json"],
            "the directory /no/such/dir does not exist",
        ),
        (&["train", "--json", "."], "names a directory"),
        (&["train", "--json", "no-such-dir/"], "names a directory"),
        (&["train", "--svg", "curves.png"], "should end in .svg"),
        (
            &["train", "--json", "same.svg", "--svg", "same.svg"],
            "give two files",
        ),
        (
            &["train", "--batch-size", "1"],
            "a batch size of 1 cannot train lenet-bn",
        ),
        (
            &["bench", "--batch-size", "1000000000000"],
            "too large (at most 65536",
        ),
        (
            &["train", "--data-dir", "/no/such/dir"],
            "--data-dir /no/such/dir is not a directory",
        ),
        (
            &["bench", "--model", "lenet-bn", "--batch-size", "1"],
            "at least 2 examples per batch",
        ),
    ];
    for (args, expected) in refused {
        assert_refused(args, expected);
    }
    let empty = tempfile::tempdir().unwrap();
    let empty = empty.path().to_str().unwrap();
    assert_refused(
        &["train", "--data-dir", empty],
        "lacks train-images-idx3-ubyte",
    );
    if skip() {
        return;
    }
    // checked against the data, before the first epoch
    let positive_lr = "learning rate must be a positive number";
    assert_refused(&["train", "--offline", "--lr", "-1"], positive_lr);
    assert_refused(&["train", "--offline", "--lr", "nan"], positive_lr);
    assert_refused(
        &["train", "--offline", "--epochs", "0"],
        "epochs must be at least 1",
    );
    assert_refused(
        &["train", "--offline", "--limit", "1"],
        "at least 2 training examples",
    );
}

#[test]
fn command_line_ends_quietly_when_its_reader_goes_away() {
    // `bnbook train | head -1`: the pipe closes while training still prints
    let bin = env!("CARGO_BIN_EXE_bnbook");
    let mut child = Command::new(bin)
        .args(["bench", "--batches", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader leaves before the first line
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(output.status.code(), Some(101), "a panic's exit code");
}
