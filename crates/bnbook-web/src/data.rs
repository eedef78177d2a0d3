//! The Fashion-MNIST subset the lab trains on, shipped in `book/lab/data/`.
//!
//! *Book: chapter "Try it: batch norm in your browser", section "The data".*
//!
//! `bnbook web-data --out book/lab/data` writes the four files under their
//! official names (`train-images-idx3-ubyte.gz`, …) and `SHA256SUMS`, the
//! SHA-256 of each *decompressed* file. That list is compiled into the
//! module, so the page refuses files that are not the ones the book ships.
//! Parsing uses `bnbook`'s own IDX reader.

use bnbook::data::idx::{images_into_array, parse_images, parse_labels, sha256_hex};
use bnbook::data::{FashionMnist, Split};
use bnbook::error::{Error, Result};
use std::io::Read;
use std::path::Path;

/// `SHA256SUMS` of the shipped subset as written by `bnbook web-data`:
/// one `<hex>  <decompressed file name>` line per file.
pub const SHA256SUMS: &str = include_str!("../../../book/lab/data/SHA256SUMS");

/// The decompressed file names, in the order [`load_subset`] takes them.
pub const FILE_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// The expected SHA-256 of the decompressed file `name`, from [`SHA256SUMS`].
pub fn expected_sha256(name: &str) -> Option<&'static str> {
    SHA256SUMS.lines().find_map(|line| {
        let (hex, file) = line.split_once("  ")?;
        (file.trim() == name).then_some(hex.trim())
    })
}

/// Decompresses one shipped `.gz` file and checks it against [`SHA256SUMS`].
///
/// # Errors
/// If the bytes are not gzip or their checksum is not the shipped one.
pub fn decompress_checked(name: &str, gz: &[u8]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::InvalidArgument(format!("{name}.gz: not a gzip file ({e})")))?;
    let expected = expected_sha256(name).ok_or_else(|| {
        Error::InvalidArgument(format!("{name}: not listed in the lab's SHA256SUMS"))
    })?;
    let got = sha256_hex(&bytes);
    if got != expected {
        return Err(Error::InvalidArgument(format!(
            "{name}: SHA-256 {got} is not the shipped {expected}; rebuild the book's lab data \
             with `bnbook web-data`"
        )));
    }
    Ok(bytes)
}

/// The subset from the four `.gz` files (training images, training labels,
/// test images, test labels), each checked and parsed by `bnbook`.
///
/// # Errors
/// A file that is not gzip, not the shipped one, or not a valid IDX file,
/// or image and label counts that differ.
pub fn load_subset(files: [&[u8]; 4]) -> Result<FashionMnist> {
    let [train_images, train_labels, test_images, test_labels] = files;
    let split = |images: &[u8], labels: &[u8], names: [&str; 2]| -> Result<Split> {
        let image_bytes = decompress_checked(names[0], images)?;
        let label_bytes = decompress_checked(names[1], labels)?;
        let (count, _) = parse_images(Path::new(names[0]), &image_bytes).map_err(Error::Data)?;
        let labels = parse_labels(Path::new(names[1]), &label_bytes).map_err(Error::Data)?;
        if labels.len() != count {
            return Err(Error::InvalidArgument(format!(
                "{} has {count} images but {} has {} labels",
                names[0],
                names[1],
                labels.len()
            )));
        }
        Ok(Split {
            pixels: images_into_array(image_bytes, count),
            labels: labels.to_vec(),
        })
    };
    Ok(FashionMnist {
        train: split(train_images, train_labels, [FILE_NAMES[0], FILE_NAMES[1]])?,
        test: split(test_images, test_labels, [FILE_NAMES[2], FILE_NAMES[3]])?,
    })
}
