//! The IDX file format, as used by MNIST and Fashion-MNIST, and the four
//! Fashion-MNIST files.
//!
//! An IDX file is a big-endian header followed by raw bytes:
//!
//! | offset | images file (`idx3`)       | labels file (`idx1`)     |
//! |--------|----------------------------|--------------------------|
//! | 0      | magic `2051` (`0x00000803`) | magic `2049` (`0x00000801`) |
//! | 4      | number of images *n*       | number of labels *n*     |
//! | 8      | rows (28)                  | *n* labels, one byte each |
//! | 12     | columns (28)               |                          |
//! | 16     | *n*·28·28 pixels, row-major, one byte each (0 = white background, 255 = ink) | |
//!
//! The file must have exactly the length its header announces: shorter is
//! [`DataError::Truncated`], longer is [`DataError::TooLong`].

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use flate2::bufread::MultiGzDecoder;
use ndarray::Array4;
use sha2::{Digest, Sha256};

use super::DataError;

/// Magic number of an IDX file of unsigned bytes with three dimensions (images).
pub const IMAGES_MAGIC: u32 = 2051;
/// Magic number of an IDX file of unsigned bytes with one dimension (labels).
pub const LABELS_MAGIC: u32 = 2049;
/// Height and width of a Fashion-MNIST image, in pixels.
pub const IMAGE_SIDE: usize = 28;
/// Number of classes; labels are `0..NUM_CLASSES`.
pub const NUM_CLASSES: usize = 10;

const IMAGES_HEADER_LEN: usize = 16;
const LABELS_HEADER_LEN: usize = 8;
const PIXELS_PER_IMAGE: usize = IMAGE_SIDE * IMAGE_SIDE;

/// One of the four files that make up Fashion-MNIST.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// 60,000 training images.
    TrainImages,
    /// 60,000 training labels.
    TrainLabels,
    /// 10,000 test images.
    TestImages,
    /// 10,000 test labels.
    TestLabels,
}

impl FileKind {
    /// The four files, in the order they are loaded and downloaded.
    pub const ALL: [FileKind; 4] = [
        FileKind::TrainImages,
        FileKind::TrainLabels,
        FileKind::TestImages,
        FileKind::TestLabels,
    ];

    /// The official file name without `.gz`, e.g. `"train-images-idx3-ubyte"`.
    pub fn file_name(self) -> &'static str {
        match self {
            FileKind::TrainImages => "train-images-idx3-ubyte",
            FileKind::TrainLabels => "train-labels-idx1-ubyte",
            FileKind::TestImages => "t10k-images-idx3-ubyte",
            FileKind::TestLabels => "t10k-labels-idx1-ubyte",
        }
    }

    /// The file name with `.gz`, as published on the download mirror.
    pub fn gz_file_name(self) -> String {
        format!("{}.gz", self.file_name())
    }

    /// SHA-256 of the official *decompressed* file, lower-case hex.
    ///
    /// Hashing the decompressed bytes (rather than the `.gz`) makes the check
    /// independent of how a file was compressed: Debian's package, for
    /// instance, ships differently compressed copies of the same data.
    pub fn official_sha256(self) -> &'static str {
        match self {
            FileKind::TrainImages => {
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
            }
            FileKind::TrainLabels => {
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
            }
            FileKind::TestImages => {
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
            }
            FileKind::TestLabels => {
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
            }
        }
    }

    /// Whether this file holds images (as opposed to labels).
    pub fn is_images(self) -> bool {
        matches!(self, FileKind::TrainImages | FileKind::TestImages)
    }
}

/// Whether a file name says the file is gzip-compressed (ends in `.gz`).
pub fn is_gz_path(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "gz")
}

/// Reads a whole file into memory, decompressing it if `gzip` is true. The
/// result is the raw IDX bytes.
///
/// # Errors
///
/// [`DataError::Io`] if the file cannot be read, [`DataError::CorruptGzip`]
/// if `gzip` is true and the content is not valid gzip.
pub fn read_decompressed(path: &Path, gzip: bool) -> Result<Vec<u8>, DataError> {
    if !gzip {
        return std::fs::read(path).map_err(|e| DataError::io(path, e));
    }
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let size_hint = gzip_size_hint(&mut file).map_err(|e| DataError::io(path, e))?;
    // Read the compressed file in 1 MiB chunks: fewer system calls than
    // with the default 8 KiB buffer.
    let reader = BufReader::with_capacity(1 << 20, file);
    // Room for the whole content from the start: grown by doubling instead,
    // the 47 MB of training images would pass through a 32 and a 64 MB
    // buffer, and the allocator keeps such memory for the training run.
    let mut bytes = Vec::with_capacity(size_hint);
    MultiGzDecoder::new(reader)
        .read_to_end(&mut bytes)
        .map_err(|e| classify_gzip_error(path, e))?;
    Ok(bytes)
}

/// The decompressed size a gzip file announces in its last four bytes
/// (ISIZE, little-endian, modulo 2³²), capped at 256 MiB: only a hint for
/// the buffer's capacity, never trusted for the content. Leaves `file` at
/// its start.
fn gzip_size_hint(file: &mut File) -> std::io::Result<usize> {
    use std::io::{Seek, SeekFrom};
    let mut trailer = [0u8; 4];
    let hint = if file.metadata()?.len() >= 4 {
        file.seek(SeekFrom::End(-4))?;
        file.read_exact(&mut trailer)?;
        (u32::from_le_bytes(trailer) as usize).min(1 << 28)
    } else {
        0
    };
    file.seek(SeekFrom::Start(0))?;
    Ok(hint)
}

/// A read error from the gzip decoder is either a real I/O error (disk,
/// permissions) or a sign that the data itself is not valid gzip.
fn classify_gzip_error(path: &Path, e: std::io::Error) -> DataError {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidInput | ErrorKind::InvalidData | ErrorKind::UnexpectedEof => {
            DataError::CorruptGzip {
                path: path.to_path_buf(),
                source: e,
            }
        }
        _ => DataError::io(path, e),
    }
}

/// SHA-256 of `bytes` as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks that the SHA-256 of `bytes` is `expected` (hex, either case).
///
/// # Errors
///
/// [`DataError::ChecksumMismatch`] (naming `path`) if it is not.
pub fn verify_sha256(path: &Path, bytes: &[u8], expected: &str) -> Result<(), DataError> {
    let actual = sha256_hex(bytes);
    if actual.eq_ignore_ascii_case(expected.trim()) {
        Ok(())
    } else {
        Err(DataError::ChecksumMismatch {
            path: path.to_path_buf(),
            expected: expected.trim().to_ascii_lowercase(),
            actual,
        })
    }
}

/// Reads the big-endian `u32` at `offset`; the caller has checked the length.
fn be_u32(bytes: &[u8], offset: usize) -> u32 {
    let word: [u8; 4] = bytes[offset..offset + 4]
        .try_into()
        .expect("caller checked the header length");
    u32::from_be_bytes(word)
}

/// Fails unless `bytes` starts with `magic` and is at least `header_len`
/// long. The magic number is checked as soon as there are four bytes, so
/// that a labels file given as images is reported as such, not as truncated.
fn check_header(path: &Path, bytes: &[u8], header_len: usize, magic: u32) -> Result<(), DataError> {
    let too_short = || DataError::Truncated {
        path: path.to_path_buf(),
        expected: header_len as u64,
        actual: bytes.len() as u64,
    };
    if bytes.len() < 4 {
        return Err(too_short());
    }
    let found = be_u32(bytes, 0);
    if found != magic {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            expected: magic,
            found,
        });
    }
    if bytes.len() < header_len {
        return Err(too_short());
    }
    Ok(())
}

/// Fails unless `bytes` has exactly `header_len + count * item_len` bytes.
/// The arithmetic is done in `u64` so that a huge count in a corrupt header
/// cannot overflow.
fn check_exact_length(
    path: &Path,
    bytes: &[u8],
    header_len: usize,
    count: u32,
    item_len: usize,
) -> Result<(), DataError> {
    let expected = header_len as u64 + u64::from(count) * item_len as u64;
    let actual = bytes.len() as u64;
    let path = path.to_path_buf();
    match actual.cmp(&expected) {
        std::cmp::Ordering::Less => Err(DataError::Truncated {
            path,
            expected,
            actual,
        }),
        std::cmp::Ordering::Greater => Err(DataError::TooLong {
            path,
            expected,
            actual,
        }),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

/// Checks an IDX images file held in memory and returns the number of images
/// and the pixel bytes (without the header).
///
/// # Errors
///
/// [`DataError::BadMagic`], [`DataError::BadDimensions`],
/// [`DataError::Truncated`] or [`DataError::TooLong`], naming `path`.
pub fn parse_images<'a>(path: &Path, bytes: &'a [u8]) -> Result<(usize, &'a [u8]), DataError> {
    check_header(path, bytes, IMAGES_HEADER_LEN, IMAGES_MAGIC)?;
    let count = be_u32(bytes, 4);
    let (rows, cols) = (be_u32(bytes, 8), be_u32(bytes, 12));
    if (rows, cols) != (IMAGE_SIDE as u32, IMAGE_SIDE as u32) {
        return Err(DataError::BadDimensions {
            path: path.to_path_buf(),
            found: (rows, cols),
        });
    }
    check_exact_length(path, bytes, IMAGES_HEADER_LEN, count, PIXELS_PER_IMAGE)?;
    Ok((count as usize, &bytes[IMAGES_HEADER_LEN..]))
}

/// Checks an IDX labels file held in memory (including that every label is
/// below 10) and returns the labels.
///
/// # Errors
///
/// [`DataError::BadMagic`], [`DataError::Truncated`],
/// [`DataError::TooLong`] or [`DataError::LabelOutOfRange`], naming `path`.
pub fn parse_labels<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a [u8], DataError> {
    check_header(path, bytes, LABELS_HEADER_LEN, LABELS_MAGIC)?;
    let count = be_u32(bytes, 4);
    check_exact_length(path, bytes, LABELS_HEADER_LEN, count, 1)?;
    let labels = &bytes[LABELS_HEADER_LEN..];
    if let Some(index) = labels.iter().position(|&l| usize::from(l) >= NUM_CLASSES) {
        return Err(DataError::LabelOutOfRange {
            path: path.to_path_buf(),
            index,
            label: labels[index],
        });
    }
    Ok(labels)
}

/// The first `count` images of a checked IDX images file (the whole file,
/// as [`parse_images`] accepted it), shaped `(count, 1, 28, 28)`, in the
/// file's own buffer: the header is removed in place instead of the pixels
/// being copied, so the training images are never in memory twice.
///
/// # Panics
///
/// If `bytes` holds fewer than `count` images after its header.
pub fn images_into_array(mut bytes: Vec<u8>, count: usize) -> Array4<u8> {
    bytes.drain(..IMAGES_HEADER_LEN);
    bytes.truncate(count * PIXELS_PER_IMAGE);
    bytes.shrink_to_fit();
    Array4::from_shape_vec((count, 1, IMAGE_SIDE, IMAGE_SIDE), bytes)
        .expect("parse_images checked the length, and count is at most its count")
}

/// Pixel bytes as the network sees them: `f32` in `[0, 1]`, `p / 255`.
pub fn pixels_to_unit<S, D>(pixels: &ndarray::ArrayBase<S, D>) -> ndarray::Array<f32, D>
where
    S: ndarray::Data<Elem = u8>,
    D: ndarray::Dimension,
{
    pixels.mapv(|p| f32::from(p) / 255.0)
}

/// Reads and checks an IDX images file (plain or `.gz`), without checksum.
///
/// Returns the images as `f32` in `[0, 1]`, shaped `(n, 1, 28, 28)`.
///
/// # Errors
///
/// Those of [`read_decompressed`] and [`parse_images`].
pub fn read_images(path: &Path) -> Result<Array4<f32>, DataError> {
    let bytes = read_decompressed(path, is_gz_path(path))?;
    let (count, _) = parse_images(path, &bytes)?;
    Ok(pixels_to_unit(&images_into_array(bytes, count)))
}

/// Reads and checks an IDX labels file (plain or `.gz`), without checksum.
///
/// # Errors
///
/// Those of [`read_decompressed`] and [`parse_labels`].
pub fn read_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = read_decompressed(path, is_gz_path(path))?;
    Ok(parse_labels(path, &bytes)?.to_vec())
}
