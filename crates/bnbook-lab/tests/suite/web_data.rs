//! `bnbook web-data`: the browser lab's shipped subset is what the command
//! writes today (book/lab/data/SHA256SUMS is compiled into the lab's
//! WebAssembly module, so a stale copy would break the page).

use bnbook::data::FashionMnist;
use bnbook_lab::web_data::{GREY_LEVELS, quantize, write_subset};
use std::path::PathBuf;

#[test]
fn quantisation_keeps_black_and_white_and_uses_sixteen_levels() {
    assert_eq!(quantize(0), 0);
    assert_eq!(quantize(255), 255);
    let levels: std::collections::BTreeSet<u8> = (0..=255).map(quantize).collect();
    assert_eq!(levels.len(), GREY_LEVELS as usize);
    assert!((0..=255u8).all(|p| quantize(p).is_multiple_of(17)));
}

#[test]
fn the_committed_lab_data_is_what_the_command_writes() {
    if std::env::var("BNBOOK_SKIP_REAL_DATA").is_ok_and(|v| v == "1") {
        return;
    }
    let data = FashionMnist::load_default().expect("Fashion-MNIST (or BNBOOK_SKIP_REAL_DATA=1)");
    let dir = tempfile::tempdir().unwrap();
    let sums = write_subset(&data, dir.path()).unwrap();
    let committed = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../book/lab/data");
    assert_eq!(
        std::fs::read_to_string(committed.join("SHA256SUMS")).unwrap(),
        sums,
        "book/lab/data is stale: run `cargo run --release -- web-data --out book/lab/data`"
    );
    for name in [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ] {
        assert!(committed.join(name).is_file(), "{name} missing");
    }
}
