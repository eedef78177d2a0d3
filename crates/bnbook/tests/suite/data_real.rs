//! Tests on the real Fashion-MNIST files.
//!
//! The data is searched for as usual (`FASHION_MNIST_DIR`,
//! `./data/fashion-mnist`, the user cache, `/usr/share/datasets/fashion-mnist`)
//! but never downloaded. If it is absent these tests FAIL with the loader's
//! message, which says how to get it (CI installs the Debian package
//! `dataset-fashion-mnist`). Set `BNBOOK_SKIP_REAL_DATA=1` to skip them.

use std::sync::OnceLock;

use bnbook::data::{FashionMnist, FileKind, LoadOptions, NUM_CLASSES, class_name, idx};

/// The data set, loaded once for all tests of this file; `None` when the
/// tests are skipped.
fn real_data() -> Option<&'static FashionMnist> {
    static DATA: OnceLock<Option<FashionMnist>> = OnceLock::new();
    DATA.get_or_init(|| {
        if std::env::var("BNBOOK_SKIP_REAL_DATA").is_ok_and(|v| v == "1") {
            eprintln!("BNBOOK_SKIP_REAL_DATA=1: skipping the real-data test");
            return None;
        }
        let options = LoadOptions {
            allow_download: false,
            ..LoadOptions::default()
        };
        match FashionMnist::load(&options) {
            Ok(data) => Some(data),
            Err(e) => panic!("\n{e}\n(set BNBOOK_SKIP_REAL_DATA=1 to skip this test)\n"),
        }
    })
    .as_ref()
}

#[test]
fn counts_and_shapes() {
    let Some(data) = real_data() else { return };
    assert_eq!(data.train.len(), 60_000);
    assert_eq!(data.test.len(), 10_000);
    assert_eq!(data.train.pixels.dim(), (60_000, 1, 28, 28));
    assert_eq!(data.test.pixels.dim(), (10_000, 1, 28, 28));
}

#[test]
fn first_training_labels() {
    let Some(data) = real_data() else { return };
    let first = &data.train.labels[..10];
    let names: Vec<_> = first.iter().map(|&l| class_name(l).unwrap()).collect();
    println!("first training labels: {first:?} = {names:?}");
    assert_eq!(first, [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]);
    assert_eq!(names[0], "ankle boot");
}

#[test]
fn first_test_labels() {
    let Some(data) = real_data() else { return };
    let first = &data.test.labels[..10];
    let names: Vec<_> = first.iter().map(|&l| class_name(l).unwrap()).collect();
    println!("first test labels: {first:?} = {names:?}");
    assert_eq!(first, [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]);
}

#[test]
fn classes_are_balanced() {
    let Some(data) = real_data() else { return };
    for (labels, per_class) in [(&data.train.labels, 6_000), (&data.test.labels, 1_000)] {
        let mut counts = [0usize; NUM_CLASSES];
        for &label in labels {
            counts[usize::from(label)] += 1;
        }
        assert_eq!(counts, [per_class; NUM_CLASSES]);
    }
}

#[test]
fn training_pixel_mean_and_std() {
    let Some(data) = real_data() else { return };
    let images = &data.train.images();
    let n = images.len() as f64;
    let mean = images.iter().map(|&p| f64::from(p)).sum::<f64>() / n;
    let variance = images
        .iter()
        .map(|&p| (f64::from(p) - mean).powi(2))
        .sum::<f64>()
        / n;
    let std = variance.sqrt();
    println!("training pixels: mean {mean:.7}, std {std:.7}");
    assert!((mean - 0.2860406).abs() < 1e-5, "mean {mean}");
    assert!((std - 0.3530242).abs() < 1e-5, "std {std}");
    let (min, max) = images
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &p| (lo.min(p), hi.max(p)));
    assert_eq!((min, max), (0.0, 1.0));
}

#[test]
fn official_checksums() {
    // The constants in the crate, against the published values.
    let published = [
        (
            FileKind::TrainImages,
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        ),
        (
            FileKind::TrainLabels,
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        ),
        (
            FileKind::TestImages,
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        ),
        (
            FileKind::TestLabels,
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
    ];
    for (kind, sum) in published {
        assert_eq!(kind.official_sha256(), sum);
    }
    // And the files found, hashed independently of the loader's own check.
    let Some(_) = real_data() else { return };
    let options = LoadOptions::default();
    let dir = options
        .search_order()
        .into_iter()
        .map(|place| place.dir)
        .find(|dir| {
            FileKind::ALL
                .iter()
                .all(|k| dir.join(k.file_name()).is_file() || dir.join(k.gz_file_name()).is_file())
        })
        .expect("real_data() found a directory");
    for (kind, sum) in published {
        let plain = dir.join(kind.file_name());
        let path = if plain.is_file() {
            plain
        } else {
            dir.join(kind.gz_file_name())
        };
        let bytes = idx::read_decompressed(&path, idx::is_gz_path(&path)).unwrap();
        assert_eq!(idx::sha256_hex(&bytes), sum, "{}", path.display());
    }
}
