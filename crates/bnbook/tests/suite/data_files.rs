//! The Fashion-MNIST reader on synthetic files: happy paths, every kind of
//! malformed file (each must give its own `DataError` variant, naming the
//! file), the directory search, and mini-batching.

use std::fs;
use std::path::Path;

use crate::data_support::{self, Synthetic, gzip, images_header, options_for, write_file};
use bnbook::data::{
    BatchOptions, CLASS_NAMES, DataError, FashionMnist, FileKind, LastBatch, LoadOptions,
    SearchDir, Split, Verify, class_name, read_images, read_labels,
};
use bnbook::ndarray::{Array4, Axis};
use tempfile::TempDir;

/// Loads synthetic data from `dir`, expecting an error.
fn load_err(options: &LoadOptions) -> DataError {
    match FashionMnist::load(options) {
        Ok(_) => panic!("loading should have failed"),
        Err(e) => e,
    }
}

/// Writes `data` (plain), loads it expecting an error, and checks that the
/// message names `kind`'s file.
fn broken_plain(data: &Synthetic, kind: FileKind) -> DataError {
    let dir = TempDir::new().unwrap();
    data.write(dir.path(), false);
    let err = load_err(&LoadOptions::only_dir(dir.path()).with_verify(Verify::Skip));
    assert_mentions(&err, &dir.path().join(kind.file_name()));
    err
}

/// Asserts that the error message names `path`.
fn assert_mentions(err: &DataError, path: &Path) {
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "message does not name {}: {message}",
        path.display()
    );
}

// ---------------------------------------------------------------- happy paths

#[test]
fn loads_plain_files() {
    let dir = TempDir::new().unwrap();
    let data = Synthetic::new(30, 12);
    data.write(dir.path(), false);
    let loaded = FashionMnist::load(&options_for(dir.path(), &data)).unwrap();

    assert_eq!(loaded.train.len(), 30);
    assert_eq!(loaded.test.len(), 12);
    assert_eq!(loaded.train.pixels.dim(), (30, 1, 28, 28));
    assert_eq!(loaded.test.pixels.dim(), (12, 1, 28, 28));
    let expected_labels: Vec<u8> = (0..30).map(|i| (i % 10) as u8).collect();
    assert_eq!(loaded.train.labels, expected_labels);
    // Pixel bytes are kept row-major, and the network sees byte / 255.
    assert_eq!(loaded.train.pixels[[5, 0, 0, 0]], 5);
    let byte = data.train_images[16 + 7 * 784 + 28 + 3];
    assert_eq!(loaded.train.pixels[[7, 0, 1, 3]], byte);
    let images = loaded.train.images();
    assert_eq!(images[[5, 0, 0, 0]], 5.0 / 255.0);
    assert_eq!(images[[7, 0, 1, 3]], f32::from(byte) / 255.0);
    assert!(images.iter().all(|&p| (0.0..=1.0).contains(&p)));
}

#[test]
fn loads_gz_files_identically() {
    let data = Synthetic::new(25, 10);
    let plain_dir = TempDir::new().unwrap();
    let gz_dir = TempDir::new().unwrap();
    data.write(plain_dir.path(), false);
    data.write(gz_dir.path(), true);
    let plain = FashionMnist::load(&options_for(plain_dir.path(), &data)).unwrap();
    let gz = FashionMnist::load(&options_for(gz_dir.path(), &data)).unwrap();
    assert_eq!(plain, gz);
}

#[test]
fn loads_a_mix_of_plain_and_gz_files() {
    let dir = TempDir::new().unwrap();
    let data = Synthetic::new(20, 10);
    for (i, kind) in FileKind::ALL.into_iter().enumerate() {
        write_file(dir.path(), kind, data.get(kind), i % 2 == 0);
    }
    let loaded = FashionMnist::load(&options_for(dir.path(), &data)).unwrap();
    assert_eq!((loaded.train.len(), loaded.test.len()), (20, 10));
}

#[test]
fn prefers_the_plain_file_when_both_exist() {
    let dir = TempDir::new().unwrap();
    let data = Synthetic::new(20, 10);
    data.write(dir.path(), false);
    // A broken .gz next to a good plain file is never opened.
    fs::write(dir.path().join("train-images-idx3-ubyte.gz"), b"garbage").unwrap();
    assert!(FashionMnist::load(&options_for(dir.path(), &data)).is_ok());
}

#[test]
fn limit_keeps_the_first_examples_of_each_split() {
    let dir = TempDir::new().unwrap();
    let data = Synthetic::new(30, 12);
    data.write(dir.path(), true);
    let loaded = FashionMnist::load(&options_for(dir.path(), &data).with_limit(8)).unwrap();
    assert_eq!((loaded.train.len(), loaded.test.len()), (8, 8));
    assert_eq!(loaded.train.pixels.dim(), (8, 1, 28, 28));
    assert_eq!(loaded.train.labels, vec![0, 1, 2, 3, 4, 5, 6, 7]);
}

#[test]
fn reads_single_files() {
    let dir = TempDir::new().unwrap();
    let data = Synthetic::new(9, 3);
    let paths = data.write(dir.path(), true);
    let images = read_images(&paths[0]).unwrap();
    let labels = read_labels(&paths[1]).unwrap();
    assert_eq!(images.dim(), (9, 1, 28, 28));
    assert_eq!(labels, vec![0, 1, 2, 3, 4, 5, 6, 7, 8]);
}

#[test]
fn skip_accepts_any_well_formed_files() {
    let dir = TempDir::new().unwrap();
    Synthetic::new(4, 2).write(dir.path(), false);
    let options = LoadOptions::only_dir(dir.path()).with_verify(Verify::Skip);
    assert_eq!(FashionMnist::load(&options).unwrap().train.len(), 4);
}

#[test]
fn class_names() {
    assert_eq!(CLASS_NAMES.len(), 10);
    assert_eq!(class_name(0), Some("t-shirt/top"));
    assert_eq!(class_name(1), Some("trouser"));
    assert_eq!(class_name(5), Some("sandal"));
    assert_eq!(class_name(9), Some("ankle boot"));
    assert_eq!(class_name(10), None);
    assert_eq!(class_name(255), None);
}

// ------------------------------------------------------------ malformed files

#[test]
fn bad_magic_in_images_file() {
    let mut data = Synthetic::new(5, 5);
    data.train_images[..4].copy_from_slice(&1234u32.to_be_bytes());
    let err = broken_plain(&data, FileKind::TrainImages);
    assert!(
        matches!(
            err,
            DataError::BadMagic {
                expected: 2051,
                found: 1234,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn bad_magic_in_labels_file() {
    let mut data = Synthetic::new(5, 5);
    data.test_labels[3] = 0x02;
    let err = broken_plain(&data, FileKind::TestLabels);
    assert!(
        matches!(
            err,
            DataError::BadMagic {
                expected: 2049,
                found: 0x0802,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn swapped_image_and_label_files_are_pointed_out() {
    let mut data = Synthetic::new(5, 5);
    std::mem::swap(&mut data.train_images, &mut data.train_labels);
    let err = broken_plain(&data, FileKind::TrainImages);
    assert!(matches!(err, DataError::BadMagic { found: 2049, .. }));
    assert!(err.to_string().contains("swapped"), "{err}");
}

#[test]
fn wrong_image_dimensions() {
    let mut data = Synthetic::new(5, 5);
    // The header now declares 27x28 images.
    data.test_images[8..16].copy_from_slice(&[0, 0, 0, 27, 0, 0, 0, 28]);
    let err = broken_plain(&data, FileKind::TestImages);
    assert!(
        matches!(
            err,
            DataError::BadDimensions {
                found: (27, 28),
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn truncated_header() {
    let mut data = Synthetic::new(5, 5);
    data.train_images.truncate(10);
    let err = broken_plain(&data, FileKind::TrainImages);
    assert!(
        matches!(
            err,
            DataError::Truncated {
                expected: 16,
                actual: 10,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn empty_labels_file() {
    let mut data = Synthetic::new(5, 5);
    data.train_labels.clear();
    let err = broken_plain(&data, FileKind::TrainLabels);
    assert!(
        matches!(
            err,
            DataError::Truncated {
                expected: 8,
                actual: 0,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn truncated_body() {
    let mut data = Synthetic::new(5, 5);
    data.train_images.truncate(16 + 4 * 784 + 100);
    let err = broken_plain(&data, FileKind::TrainImages);
    assert!(
        matches!(
            err,
            DataError::Truncated {
                expected: 3936,
                actual: 3252,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn huge_count_in_header_is_a_truncation_not_a_crash() {
    let mut data = Synthetic::new(5, 5);
    data.train_images[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    let err = broken_plain(&data, FileKind::TrainImages);
    let expected = 16 + u64::from(u32::MAX) * 784;
    assert!(
        matches!(err, DataError::Truncated { expected: e, .. } if e == expected),
        "{err:?}"
    );
}

#[test]
fn trailing_bytes() {
    let mut data = Synthetic::new(5, 5);
    data.test_labels.extend_from_slice(&[1, 2, 3]);
    let err = broken_plain(&data, FileKind::TestLabels);
    assert!(
        matches!(
            err,
            DataError::TooLong {
                expected: 13,
                actual: 16,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn count_mismatch_between_images_and_labels() {
    let mut data = Synthetic::new(5, 5);
    data.train_labels = data_support::labels_file(6);
    let dir = TempDir::new().unwrap();
    data.write(dir.path(), false);
    let err = load_err(&LoadOptions::only_dir(dir.path()).with_verify(Verify::Skip));
    assert!(
        matches!(
            err,
            DataError::CountMismatch {
                images: 5,
                labels: 6,
                ..
            }
        ),
        "{err:?}"
    );
    assert_mentions(&err, &dir.path().join("train-images-idx3-ubyte"));
    assert_mentions(&err, &dir.path().join("train-labels-idx1-ubyte"));
}

#[test]
fn label_out_of_range() {
    let mut data = Synthetic::new(5, 5);
    data.train_labels[8 + 3] = 10;
    let err = broken_plain(&data, FileKind::TrainLabels);
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                index: 3,
                label: 10,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn corrupt_gzip() {
    let dir = TempDir::new().unwrap();
    let data = Synthetic::new(20, 5);
    data.write(dir.path(), true);
    let path = dir.path().join("train-images-idx3-ubyte.gz");
    let mut bytes = fs::read(&path).unwrap();
    // Damage the compressed stream (after the 10-byte gzip header); either
    // the deflate decoder or gzip's CRC-32 check notices.
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 16] {
        *b ^= 0x5a;
    }
    fs::write(&path, bytes).unwrap();
    let err = load_err(&options_for(dir.path(), &data));
    assert!(matches!(err, DataError::CorruptGzip { .. }), "{err:?}");
    assert_mentions(&err, &path);
}

#[test]
fn truncated_gzip() {
    let dir = TempDir::new().unwrap();
    let data = Synthetic::new(20, 5);
    data.write(dir.path(), true);
    let path = dir.path().join("t10k-images-idx3-ubyte.gz");
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 30]).unwrap();
    let err = load_err(&options_for(dir.path(), &data));
    assert!(matches!(err, DataError::CorruptGzip { .. }), "{err:?}");
    assert_mentions(&err, &path);
}

#[test]
fn gz_name_on_a_file_that_is_not_gzip() {
    let dir = TempDir::new().unwrap();
    let data = Synthetic::new(5, 5);
    data.write(dir.path(), true);
    let path = dir.path().join("train-labels-idx1-ubyte.gz");
    fs::write(&path, b"<html>404 Not Found</html>").unwrap();
    let err = load_err(&options_for(dir.path(), &data));
    assert!(matches!(err, DataError::CorruptGzip { .. }), "{err:?}");
}

#[test]
fn official_checksums_reject_other_files() {
    let dir = TempDir::new().unwrap();
    Synthetic::new(5, 5).write(dir.path(), false);
    let err = load_err(&LoadOptions::only_dir(dir.path()));
    match &err {
        DataError::ChecksumMismatch { expected, .. } => {
            assert_eq!(expected, FileKind::TrainImages.official_sha256());
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    assert_mentions(&err, &dir.path().join("train-images-idx3-ubyte"));
}

#[test]
fn custom_checksum_mismatch() {
    let dir = TempDir::new().unwrap();
    let data = Synthetic::new(5, 5);
    data.write(dir.path(), true);
    let mut sums = data.checksums();
    sums.test_labels = "00".repeat(32);
    let options = LoadOptions::only_dir(dir.path()).with_verify(Verify::Custom(sums));
    let err = load_err(&options);
    match &err {
        DataError::ChecksumMismatch { actual, .. } => {
            assert_eq!(*actual, data_support::sha256_hex(&data.test_labels));
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    assert_mentions(&err, &dir.path().join("t10k-labels-idx1-ubyte.gz"));
}

#[test]
fn structure_errors_come_before_checksum_errors() {
    let mut data = Synthetic::new(5, 5);
    data.train_images.pop();
    let dir = TempDir::new().unwrap();
    data.write(dir.path(), false);
    // The official checksums do not match either, but "truncated" says more.
    let err = load_err(&LoadOptions::only_dir(dir.path()));
    assert!(matches!(err, DataError::Truncated { .. }), "{err:?}");
}

#[test]
fn unreadable_file_is_an_io_error_with_its_path() {
    let dir = TempDir::new().unwrap();
    let data = Synthetic::new(5, 5);
    data.write(dir.path(), false);
    let path = dir.path().join("t10k-images-idx3-ubyte");
    let err = read_images(&dir.path().join("no-such-file")).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err:?}");
    assert_mentions(&err, &dir.path().join("no-such-file"));
    // A directory where a file should be: found by name, unreadable as data.
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    fs::write(
        dir.path().join("t10k-images-idx3-ubyte.gz"),
        gzip(&data.test_images),
    )
    .unwrap();
    assert!(FashionMnist::load(&options_for(dir.path(), &data)).is_ok());
}

// ------------------------------------------------------------------ searching

#[test]
fn missing_files_list_every_place_searched() {
    let incomplete = TempDir::new().unwrap();
    let data = Synthetic::new(5, 5);
    data.write(incomplete.path(), true);
    fs::remove_file(incomplete.path().join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let nowhere = incomplete.path().join("does-not-exist");
    let empty = TempDir::new().unwrap();

    let options = LoadOptions {
        search_dirs: vec![
            SearchDir::new(&nowhere, "test: nonexistent"),
            SearchDir::new(empty.path(), "test: empty"),
        ],
        ..LoadOptions::only_dir(incomplete.path())
    };
    let err = load_err(&options);
    let DataError::NotFound { searched, .. } = &err else {
        panic!("expected NotFound, got {err:?}");
    };
    let dirs: Vec<&Path> = searched.iter().map(|s| s.dir.as_path()).collect();
    assert_eq!(dirs, [incomplete.path(), &nowhere, empty.path()]);
    assert_eq!(searched[0].missing, ["t10k-labels-idx1-ubyte"]);
    assert!(!searched[1].exists);
    assert_eq!(searched[2].missing.len(), 4);

    let message = err.to_string();
    println!("{message}");
    for dir in &dirs {
        assert!(message.contains(&dir.display().to_string()), "{message}");
    }
    assert!(
        message.contains("missing t10k-labels-idx1-ubyte"),
        "{message}"
    );
    assert!(message.contains("does not exist"), "{message}");
    assert!(
        message.contains("sudo apt install dataset-fashion-mnist"),
        "{message}"
    );
    assert!(message.contains("FASHION_MNIST_DIR"), "{message}");
    let third_way = if cfg!(feature = "download") {
        "\n  3. allow the download"
    } else {
        "\n  3. build bnbook with its default feature `download`"
    };
    assert!(message.contains(third_way), "{message}");
}

#[test]
fn first_complete_directory_wins() {
    let incomplete = TempDir::new().unwrap();
    let first = TempDir::new().unwrap();
    let second = TempDir::new().unwrap();
    let small = Synthetic::new(3, 2);
    let large = Synthetic::new(7, 2);
    write_file(
        incomplete.path(),
        FileKind::TrainImages,
        &large.train_images,
        false,
    );
    small.write(first.path(), true);
    large.write(second.path(), true);

    let options = LoadOptions {
        search_dirs: vec![
            SearchDir::new(first.path(), "first"),
            SearchDir::new(second.path(), "second"),
        ],
        ..LoadOptions::only_dir(incomplete.path()).with_verify(Verify::Skip)
    };
    assert_eq!(FashionMnist::load(&options).unwrap().train.len(), 3);
    let used = options.found_in().unwrap();
    assert_eq!(
        (used.dir.as_path(), used.origin.as_str()),
        (first.path(), "first")
    );
    // The explicit directory comes first once it is complete.
    large.write(incomplete.path(), false);
    assert_eq!(FashionMnist::load(&options).unwrap().train.len(), 7);
    assert_eq!(options.found_in().unwrap().dir, incomplete.path());
    // nowhere complete: nothing found (a load would download)
    let empty = TempDir::new().unwrap();
    assert_eq!(LoadOptions::only_dir(empty.path()).found_in(), None);
}

#[test]
fn search_order_puts_the_explicit_directory_first_without_duplicates() {
    let options = LoadOptions {
        search_dirs: vec![SearchDir::new("a", "one"), SearchDir::new("b", "two")],
        ..LoadOptions::only_dir("b")
    };
    let dirs: Vec<_> = options.search_order().into_iter().map(|s| s.dir).collect();
    assert_eq!(dirs, [Path::new("b"), Path::new("a")]);
}

// ------------------------------------------------------------------- batching

/// A split of `n` (at most 256) examples where every pixel of image `i` is
/// the byte `i` and its label is `i % 10`, so a batch reveals which examples
/// it holds ([`example_number`]).
fn numbered_split(n: usize) -> Split {
    assert!(n <= 256, "one byte numbers at most 256 images");
    let pixels = Array4::from_shape_fn((n, 1, 28, 28), |(i, _, _, _)| i as u8);
    let labels = (0..n).map(|i| (i % 10) as u8).collect();
    Split { pixels, labels }
}

/// The number of an image of [`numbered_split`] in a batch (pixel `i / 255`).
fn example_number(image_value: f32) -> usize {
    (image_value * 255.0).round() as usize
}

/// The example numbers in each batch.
fn batch_indices(split: &Split, batch_size: usize, options: &BatchOptions) -> Vec<Vec<usize>> {
    split
        .batches(batch_size, options)
        .unwrap()
        .map(|batch| {
            let ids: Vec<usize> = batch
                .images
                .axis_iter(Axis(0))
                .map(|image| example_number(image[[0, 0, 0]]))
                .collect();
            let labels: Vec<usize> = ids.iter().map(|i| i % 10).collect();
            assert_eq!(batch.labels, labels, "labels travel with their images");
            assert_eq!(batch.images.dim(), (ids.len(), 1, 28, 28));
            ids
        })
        .collect()
}

fn sizes(batches: &[Vec<usize>]) -> Vec<usize> {
    batches.iter().map(Vec::len).collect()
}

#[test]
fn unshuffled_batches_follow_file_order() {
    let split = numbered_split(10);
    let batches = batch_indices(&split, 4, &BatchOptions::default());
    assert_eq!(batches, [vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
}

#[test]
fn shuffling_is_reproducible_and_a_permutation() {
    let split = numbered_split(50);
    let options = BatchOptions::shuffled(7, 3);
    let a = batch_indices(&split, 8, &options);
    let b = batch_indices(&split, 8, &options);
    assert_eq!(a, b);
    let mut all: Vec<usize> = a.concat();
    assert_ne!(all, (0..50).collect::<Vec<_>>(), "the order is shuffled");
    all.sort_unstable();
    assert_eq!(
        all,
        (0..50).collect::<Vec<_>>(),
        "every example exactly once"
    );
}

#[test]
fn different_epochs_and_seeds_give_different_orders() {
    let split = numbered_split(50);
    let epoch0 = batch_indices(&split, 50, &BatchOptions::shuffled(7, 0));
    let epoch1 = batch_indices(&split, 50, &BatchOptions::shuffled(7, 1));
    let other_seed = batch_indices(&split, 50, &BatchOptions::shuffled(8, 0));
    assert_ne!(epoch0, epoch1);
    assert_ne!(epoch0, other_seed);
}

#[test]
fn limit_uses_only_the_first_examples() {
    let split = numbered_split(100);
    let options = BatchOptions {
        limit: Some(20),
        ..BatchOptions::shuffled(1, 0)
    };
    let batches = batch_indices(&split, 6, &options);
    assert_eq!(sizes(&batches), [6, 6, 6, 2]);
    let mut all = batches.concat();
    all.sort_unstable();
    assert_eq!(all, (0..20).collect::<Vec<_>>());
    assert_eq!(split.num_batches(6, &options).unwrap(), 4);
    // A limit larger than the split uses the whole split.
    let options = BatchOptions {
        limit: Some(1_000),
        ..BatchOptions::default()
    };
    assert_eq!(split.num_batches(10, &options).unwrap(), 10);
}

#[test]
fn last_batch_keep_and_drop() {
    let split = numbered_split(10);
    let keep = BatchOptions::default();
    let drop = BatchOptions {
        last_batch: LastBatch::Drop,
        ..BatchOptions::default()
    };
    assert_eq!(sizes(&batch_indices(&split, 4, &keep)), [4, 4, 2]);
    assert_eq!(sizes(&batch_indices(&split, 4, &drop)), [4, 4]);
    assert_eq!(split.num_batches(4, &keep).unwrap(), 3);
    assert_eq!(split.num_batches(4, &drop).unwrap(), 2);
    // An exact multiple has no partial batch to drop.
    assert_eq!(sizes(&batch_indices(&split, 5, &drop)), [5, 5]);
    // A batch larger than the split: one partial batch, or nothing.
    assert_eq!(sizes(&batch_indices(&split, 64, &keep)), [10]);
    assert!(batch_indices(&split, 64, &drop).is_empty());
}

#[test]
fn a_last_batch_of_one_example() {
    // 9 = 4 + 4 + 1: the case that breaks batch normalization.
    let split = numbered_split(9);
    let keep = BatchOptions::default();
    let batches = batch_indices(&split, 4, &keep);
    assert_eq!(sizes(&batches), [4, 4, 1], "Keep yields the lone example");
    assert_eq!(batches[2], [8]);

    let avoid_singletons = BatchOptions {
        last_batch: LastBatch::DropIfSmallerThan(2),
        ..BatchOptions::default()
    };
    assert_eq!(sizes(&batch_indices(&split, 4, &avoid_singletons)), [4, 4]);
    assert_eq!(split.num_batches(4, &avoid_singletons).unwrap(), 2);
    // ... but keeps a last batch of two.
    let split = numbered_split(10);
    assert_eq!(
        sizes(&batch_indices(&split, 4, &avoid_singletons)),
        [4, 4, 2]
    );
}

#[test]
fn the_iterator_knows_its_length() {
    let split = numbered_split(60);
    for last_batch in [
        LastBatch::Keep,
        LastBatch::Drop,
        LastBatch::DropIfSmallerThan(5),
    ] {
        let options = BatchOptions {
            last_batch,
            ..BatchOptions::shuffled(3, 2)
        };
        let mut batches = split.batches(16, &options).unwrap();
        let expected = split.num_batches(16, &options).unwrap();
        assert_eq!(batches.len(), expected);
        batches.next();
        assert_eq!(batches.len(), expected - 1);
        assert_eq!(batches.count(), expected - 1);
    }
}

#[test]
fn batch_size_zero_is_an_error() {
    let split = numbered_split(10);
    let options = BatchOptions::default();
    assert!(matches!(
        split.batches(0, &options),
        Err(DataError::ZeroBatchSize)
    ));
    assert!(matches!(
        split.num_batches(0, &options),
        Err(DataError::ZeroBatchSize)
    ));
}

#[test]
fn an_inconsistent_hand_made_split_is_an_error() {
    let mut split = numbered_split(10);
    split.labels.pop();
    let err = split.batches(4, &BatchOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::InconsistentSplit {
                images: 10,
                labels: 9
            }
        ),
        "{err:?}"
    );
}

#[test]
fn empty_split_gives_no_batches() {
    let split = numbered_split(0);
    assert!(split.is_empty());
    assert_eq!(
        split.batches(4, &BatchOptions::default()).unwrap().count(),
        0
    );
}

#[test]
fn batches_are_copies_of_the_selected_rows() {
    let dir = TempDir::new().unwrap();
    let data = Synthetic::new(12, 2);
    data.write(dir.path(), false);
    let loaded = FashionMnist::load(&options_for(dir.path(), &data)).unwrap();
    let train = &loaded.train;
    let mut batch = train
        .batches(5, &BatchOptions::shuffled(11, 0))
        .unwrap()
        .next()
        .unwrap();
    for (row, image) in batch.images.axis_iter(Axis(0)).enumerate() {
        // The first pixel of synthetic image i is i / 255.
        let i = (image[[0, 0, 0]] * 255.0).round() as usize;
        assert_eq!(image, train.images().index_axis(Axis(0), i));
        assert_eq!(batch.labels[row], usize::from(train.labels[i]));
    }
    batch.images.fill(0.0);
    assert!(
        train.pixels.iter().any(|&p| p != 0),
        "the split is untouched"
    );
}

#[test]
fn head_takes_the_first_examples() {
    let split = numbered_split(10);
    let head = split.head(3);
    assert_eq!(head.len(), 3);
    assert_eq!(head.labels, [0, 1, 2]);
    assert_eq!(head.pixels[[2, 0, 5, 5]], 2);
    assert_eq!(split.head(99).len(), 10);
}

#[test]
fn images_header_helper_round_trips() {
    // Sanity check of the test helper itself.
    assert_eq!(&images_header(2051, 1, 28, 28)[..4], &[0, 0, 8, 3]);
}
