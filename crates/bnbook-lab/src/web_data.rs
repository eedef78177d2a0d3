//! `bnbook web-data`: the Fashion-MNIST subset shipped with the browser lab.
//!
//! *Book: chapter "Try it: batch norm in your browser", section "The data".*
//!
//! The subset is fixed: the first [`TRAIN_EXAMPLES`] training images and the
//! first [`TEST_EXAMPLES`] test images of the official files, in file order,
//! with every pixel rounded down to one of 16 grey levels (`p − p mod 16`,
//! then stretched back to 0..=255 as `(p / 16) · 17`) so that the four gzip'd
//! files weigh about 600 KB instead of 1.3 MB. The files keep the official
//! IDX format and names, and `SHA256SUMS` lists the SHA-256 of each
//! *decompressed* file (so a different gzip encoder does not change it). The
//! browser build (`crates/bnbook-web`) compiles that list in and checks the
//! files it is served against it.

use bnbook::data::idx::{IMAGE_SIDE, IMAGES_MAGIC, LABELS_MAGIC, sha256_hex};
use bnbook::data::{FashionMnist, Split};
use bnbook::error::{Error, Result};
use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write;
use std::path::Path;

/// Where the book serves the lab's data from.
pub const DEFAULT_OUT_DIR: &str = "book/lab/data";
/// Training images shipped (the first ones of the official file).
pub const TRAIN_EXAMPLES: usize = 2400;
/// Test images shipped (the first ones of the official file).
pub const TEST_EXAMPLES: usize = 600;
/// Grey levels kept per pixel.
pub const GREY_LEVELS: u32 = 16;

/// A pixel (0..=255) rounded down to one of [`GREY_LEVELS`] levels spread
/// over 0..=255 (0 and 255 stay).
pub fn quantize(pixel: u8) -> u8 {
    let step = 256 / GREY_LEVELS; // 16
    let top = GREY_LEVELS - 1; // 15
    ((u32::from(pixel) / step) * 255 / top) as u8
}

/// The IDX bytes (header included) of the first `n` images and labels of
/// `split`, pixels quantised.
fn idx_files(split: &Split, n: usize) -> (Vec<u8>, Vec<u8>) {
    let mut images = Vec::with_capacity(16 + n * IMAGE_SIDE * IMAGE_SIDE);
    for word in [IMAGES_MAGIC, n as u32, IMAGE_SIDE as u32, IMAGE_SIDE as u32] {
        images.extend_from_slice(&word.to_be_bytes());
    }
    let pixels = split.pixels.slice(ndarray::s![..n, .., .., ..]);
    images.extend(pixels.iter().map(|&p| quantize(p)));
    let mut labels = Vec::with_capacity(8 + n);
    for word in [LABELS_MAGIC, n as u32] {
        labels.extend_from_slice(&word.to_be_bytes());
    }
    labels.extend_from_slice(&split.labels[..n]);
    (images, labels)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(bytes).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

/// Writes the four `.gz` files and `SHA256SUMS` into `out` (created if
/// needed) and returns the contents of `SHA256SUMS`.
///
/// # Errors
/// If `data` has fewer examples than the subset takes, or a file cannot
/// be written.
pub fn write_subset(data: &FashionMnist, out: &Path) -> Result<String> {
    for (name, split, n) in [
        ("training", &data.train, TRAIN_EXAMPLES),
        ("test", &data.test, TEST_EXAMPLES),
    ] {
        if split.len() < n {
            return Err(Error::InvalidArgument(format!(
                "web-data: the {name} split has {} examples, the lab's subset takes the first {n}",
                split.len()
            )));
        }
    }
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        what: format!("cannot create {}", out.display()),
        source,
    })?;
    let (train_images, train_labels) = idx_files(&data.train, TRAIN_EXAMPLES);
    let (test_images, test_labels) = idx_files(&data.test, TEST_EXAMPLES);
    let mut sums = String::new();
    for (name, bytes) in [
        ("train-images-idx3-ubyte", train_images),
        ("train-labels-idx1-ubyte", train_labels),
        ("t10k-images-idx3-ubyte", test_images),
        ("t10k-labels-idx1-ubyte", test_labels),
    ] {
        sums.push_str(&format!("{}  {name}\n", sha256_hex(&bytes)));
        write(&out.join(format!("{name}.gz")), &gzip(&bytes))?;
    }
    write(&out.join("SHA256SUMS"), sums.as_bytes())?;
    Ok(sums)
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|source| Error::Io {
        what: format!("cannot write {}", path.display()),
        source,
    })?;
    println!("wrote {} ({} bytes)", path.display(), bytes.len());
    Ok(())
}
