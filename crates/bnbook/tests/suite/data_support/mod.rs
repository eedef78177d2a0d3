//! Synthetic Fashion-MNIST files for the `data_*` tests: small, valid IDX
//! files (and helpers to break them), written plain or gzip-compressed.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use bnbook::data::{Checksums, FileKind, LoadOptions, Verify};
use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

/// Header of an IDX images file: magic, count, rows, columns.
pub fn images_header(magic: u32, count: u32, rows: u32, cols: u32) -> Vec<u8> {
    [magic, count, rows, cols]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect()
}

/// A valid images file with `count` 28x28 images. The first pixel of image
/// `i` is `i % 256`, so tests can tell images apart; the others follow a
/// simple pattern.
pub fn images_file(count: usize) -> Vec<u8> {
    let mut bytes = images_header(2051, count as u32, 28, 28);
    for i in 0..count {
        bytes.push((i % 256) as u8);
        bytes.extend((1..784).map(|j| ((i * 7 + j * 3) % 256) as u8));
    }
    bytes
}

/// A valid labels file holding `labels`.
pub fn labels_file_from(labels: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend(2049u32.to_be_bytes());
    bytes.extend((labels.len() as u32).to_be_bytes());
    bytes.extend_from_slice(labels);
    bytes
}

/// A valid labels file with `count` labels `0, 1, ..., 9, 0, 1, ...`.
pub fn labels_file(count: usize) -> Vec<u8> {
    let labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
    labels_file_from(&labels)
}

/// Gzip-compresses `bytes`.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The four (decompressed) files of a small synthetic data set.
#[derive(Clone)]
pub struct Synthetic {
    pub train_images: Vec<u8>,
    pub train_labels: Vec<u8>,
    pub test_images: Vec<u8>,
    pub test_labels: Vec<u8>,
}

impl Synthetic {
    /// `n_train` training and `n_test` test examples, all valid.
    pub fn new(n_train: usize, n_test: usize) -> Self {
        Synthetic {
            train_images: images_file(n_train),
            train_labels: labels_file(n_train),
            test_images: images_file(n_test),
            test_labels: labels_file(n_test),
        }
    }

    /// The bytes of one file.
    pub fn get(&self, kind: FileKind) -> &[u8] {
        match kind {
            FileKind::TrainImages => &self.train_images,
            FileKind::TrainLabels => &self.train_labels,
            FileKind::TestImages => &self.test_images,
            FileKind::TestLabels => &self.test_labels,
        }
    }

    /// Their SHA-256 checksums.
    pub fn checksums(&self) -> Checksums {
        Checksums {
            train_images: sha256_hex(&self.train_images),
            train_labels: sha256_hex(&self.train_labels),
            test_images: sha256_hex(&self.test_images),
            test_labels: sha256_hex(&self.test_labels),
        }
    }

    /// Writes the four files into `dir` as `NAME` (or `NAME.gz` when
    /// `gz`); returns their paths in `FileKind::ALL` order.
    pub fn write(&self, dir: &Path, gz: bool) -> Vec<PathBuf> {
        FileKind::ALL
            .iter()
            .map(|&kind| write_file(dir, kind, self.get(kind), gz))
            .collect()
    }
}

/// Writes one file as `dir/NAME` or, gzip-compressed, `dir/NAME.gz`.
pub fn write_file(dir: &Path, kind: FileKind, bytes: &[u8], gz: bool) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    if gz {
        let path = dir.join(kind.gz_file_name());
        fs::write(&path, gzip(bytes)).unwrap();
        path
    } else {
        let path = dir.join(kind.file_name());
        fs::write(&path, bytes).unwrap();
        path
    }
}

/// Options that read `dir` only, checking the synthetic checksums.
pub fn options_for(dir: &Path, data: &Synthetic) -> LoadOptions {
    LoadOptions::only_dir(dir).with_verify(Verify::Custom(data.checksums()))
}

/// The names of the entries of `dir`, sorted (empty if it does not exist).
#[cfg(feature = "download")] // only the download tests look into the cache
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
