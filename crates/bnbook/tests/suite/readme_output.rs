//! README.md shows what `bnbook train --model lenet-bn --seed 0` prints. That
//! listing is a copy, so this test holds it to the run the book is built from,
//! `book/generated/lenet-bn-seed0.json` (written by `bnbook figures`): every
//! epoch line and the closing summary must be what `bnbook train` prints for
//! that history, up to the examples/sec figures, which differ from run to run.
//! After regenerating the book, paste a fresh run into README.md if this fails.

use bnbook::train::History;
use std::path::Path;

fn repo_file(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The lines of the first ```text block after the line containing `marker`.
fn text_block_after(markdown: &str, marker: &str) -> Vec<String> {
    let rest = &markdown[markdown
        .find(marker)
        .unwrap_or_else(|| panic!("README.md no longer contains {marker:?}"))..];
    let start = rest
        .find("```text\n")
        .expect("a ```text block after the marker")
        + 8;
    let end = rest[start..]
        .find("```")
        .expect("the text block's closing fence");
    rest[start..start + end]
        .lines()
        .map(str::to_string)
        .collect()
}

/// `line` without its last comma-separated part (the throughput).
fn without_throughput(line: &str) -> &str {
    line.rsplit_once(", ").map_or(line, |(kept, _)| kept)
}

#[test]
fn readme_training_output_is_the_books_seed0_run() {
    let readme = repo_file("README.md");
    let block = text_block_after(&readme, "prints one line per epoch");
    let history: History =
        serde_json::from_str(&repo_file("book/generated/lenet-bn-seed0.json")).unwrap();
    assert_eq!((history.model.as_str(), history.seed), ("lenet-bn", 0));

    let shown: Vec<&String> = block.iter().filter(|l| l.starts_with("epoch ")).collect();
    assert_eq!(
        shown.len(),
        history.history.len(),
        "README shows {} epoch lines, the run has {} epochs",
        shown.len(),
        history.history.len()
    );
    for (line, record) in shown.iter().zip(&history.history) {
        assert_eq!(without_throughput(line), without_throughput(&record.line()));
    }

    let summary = history.summary();
    let summary_loss_line = summary.lines().next().unwrap();
    assert!(
        block.iter().any(|l| l == summary_loss_line),
        "README's summary should read {summary_loss_line:?}"
    );
    let header = format!(
        "training lenet-bn for {} epochs: lr {}, batch {}, seed 0, {} training / {} test examples",
        history.epochs,
        history.lr,
        history.batch_size,
        history.train_examples,
        history.test_examples
    );
    assert!(
        block.contains(&header),
        "README's header line should read {header:?}"
    );
}
