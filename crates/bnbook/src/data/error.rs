//! [`DataError`]: everything that can go wrong while finding, reading,
//! verifying, downloading or batching Fashion-MNIST.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// One directory that was searched for the four Fashion-MNIST files, kept so
/// that a [`DataError::NotFound`] can say exactly where it looked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchedDir {
    /// The directory that was searched.
    pub dir: PathBuf,
    /// Why this directory was on the list, e.g. `"FASHION_MNIST_DIR"`.
    pub origin: String,
    /// Whether the directory exists at all.
    pub exists: bool,
    /// The file names (without `.gz`) that were absent from it.
    pub missing: Vec<&'static str>,
}

/// Why a download did not produce a file.
#[derive(Debug)]
pub enum DownloadFailure {
    /// The server answered, but not with `200 OK` (e.g. `404`).
    HttpStatus(u16),
    /// The server could not be reached, or the connection broke mid-way.
    Connection(String),
    /// The server promised `expected` bytes (`Content-Length`) but the
    /// connection ended after `received`.
    Incomplete {
        /// Bytes announced by the server.
        expected: u64,
        /// Bytes actually received.
        received: u64,
    },
    /// Writing the received bytes to disk failed.
    Write(io::Error),
}

/// Why loading Fashion-MNIST failed.
///
/// Every variant that concerns a file carries the path of that file (or of
/// the directories searched), and its [`Display`](fmt::Display) message says
/// what was wrong and what to do about it. Reading never panics on bad file
/// content: every malformed input ends up as one of these variants.
#[derive(Debug)]
pub enum DataError {
    /// None of the searched directories holds all four files, and no
    /// download was attempted (it was turned off, or there is no cache
    /// directory to download into).
    NotFound {
        /// Every directory searched, in search order.
        searched: Vec<SearchedDir>,
        /// Why no download was attempted.
        no_download_reason: String,
    },
    /// A file could not be opened or read.
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// A `.gz` file is not valid gzip, is truncated, or fails gzip's own
    /// CRC check.
    CorruptGzip {
        /// The compressed file.
        path: PathBuf,
        /// The decoder's error.
        source: io::Error,
    },
    /// The first four bytes are not the IDX magic number expected for this
    /// kind of file (2051 for images, 2049 for labels).
    BadMagic {
        /// The (decompressed) file.
        path: PathBuf,
        /// The magic number this file should start with.
        expected: u32,
        /// The number it starts with.
        found: u32,
    },
    /// An image file whose images are not 28×28 pixels.
    BadDimensions {
        /// The image file.
        path: PathBuf,
        /// `(rows, columns)` found in the header.
        found: (u32, u32),
    },
    /// The file is shorter than its header says (or too short for a header).
    Truncated {
        /// The (decompressed) file.
        path: PathBuf,
        /// Bytes the file must have.
        expected: u64,
        /// Bytes it has.
        actual: u64,
    },
    /// The file is longer than its header says: unexpected trailing bytes.
    TooLong {
        /// The (decompressed) file.
        path: PathBuf,
        /// Bytes the file must have.
        expected: u64,
        /// Bytes it has.
        actual: u64,
    },
    /// The image file and the label file of one split disagree on the number
    /// of examples.
    CountMismatch {
        /// The image file.
        images_path: PathBuf,
        /// Number of images in it.
        images: usize,
        /// The label file.
        labels_path: PathBuf,
        /// Number of labels in it.
        labels: usize,
    },
    /// A label is not one of the ten classes `0..=9`.
    LabelOutOfRange {
        /// The label file.
        path: PathBuf,
        /// Position of the first bad label.
        index: usize,
        /// Its value.
        label: u8,
    },
    /// The SHA-256 of the decompressed file is not the expected one.
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// Expected SHA-256, lower-case hex.
        expected: String,
        /// SHA-256 of the file, lower-case hex.
        actual: String,
    },
    /// Downloading a file failed. Nothing was left behind at `path`.
    Download {
        /// The URL requested.
        url: String,
        /// Where the file would have been saved.
        path: PathBuf,
        /// What went wrong.
        failure: DownloadFailure,
    },
    /// A downloaded file arrived complete but is not valid Fashion-MNIST
    /// (wrong checksum, bad header, ...). It was deleted.
    DownloadedFileInvalid {
        /// The URL it came from.
        url: String,
        /// Why it was rejected; its own path is the temporary file, which no
        /// longer exists.
        reason: Box<DataError>,
    },
    /// [`Split::batches`](super::Split::batches) was asked for batches of
    /// zero examples. (This variant concerns no file.)
    ZeroBatchSize,
    /// A [`Split`](super::Split) built by hand has a different number of
    /// images and labels, so it cannot be batched. (This variant concerns no
    /// file; a loaded split is always consistent.)
    InconsistentSplit {
        /// Length of the first axis of `images`.
        images: usize,
        /// Length of `labels`.
        labels: usize,
    },
}

impl DataError {
    /// Builds an [`DataError::Io`] for `path`.
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The ways of getting the data without downloading, repeated in messages
/// about missing files and failed downloads.
const GET_THE_DATA_LOCALLY: &str = "\
To get Fashion-MNIST, do one of:
  1. sudo apt install dataset-fashion-mnist   (installs into /usr/share/datasets/fashion-mnist)
  2. put the four files (plain or .gz) in a directory and set FASHION_MNIST_DIR to it
     (or pass it to `bnbook train --data-dir DIR`; in code, LoadOptions::with_dir)";

/// The third way, for when no download was attempted.
#[cfg(feature = "download")]
const OR_ALLOW_THE_DOWNLOAD: &str = "  3. allow the download: leave out `bnbook train --offline` and unset BNBOOK_OFFLINE \
     (in code, LoadOptions::allow_download = true)";
/// The third way in a build without the downloader.
#[cfg(not(feature = "download"))]
const OR_ALLOW_THE_DOWNLOAD: &str = "  3. build bnbook with its default feature `download` (in Cargo.toml or a \
     notebook's :dep, leave out default-features = false) and let it download";

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataError::NotFound {
                searched,
                no_download_reason,
            } => {
                writeln!(
                    f,
                    "Fashion-MNIST not found. A directory has the data when it holds \
                     train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte \
                     and t10k-labels-idx1-ubyte, each plain or with a .gz suffix. Searched:"
                )?;
                for place in searched {
                    writeln!(f, "  - {}", describe_searched_dir(place))?;
                }
                if searched.is_empty() {
                    writeln!(f, "  (no directory: the search list was empty)")?;
                }
                writeln!(f, "No download was attempted: {no_download_reason}.")?;
                write!(f, "{GET_THE_DATA_LOCALLY}\n{OR_ALLOW_THE_DOWNLOAD}")
            }
            DataError::Io { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            DataError::CorruptGzip { path, source } => write!(
                f,
                "{} is not a valid gzip file ({source}); it is probably truncated or \
                 damaged: delete it and get it again",
                path.display()
            ),
            DataError::BadMagic {
                path,
                expected,
                found,
            } => {
                write!(
                    f,
                    "{} does not start with the IDX magic number {expected} but with {found}",
                    path.display()
                )?;
                match *found {
                    crate::data::idx::IMAGES_MAGIC | crate::data::idx::LABELS_MAGIC => write!(
                        f,
                        " (that is the other kind of IDX file: are image and label files swapped?)"
                    ),
                    _ => write!(
                        f,
                        "; it is not a Fashion-MNIST file (if it is compressed, its name must end in .gz)"
                    ),
                }
            }
            DataError::BadDimensions { path, found } => write!(
                f,
                "{} holds {}x{} images, but Fashion-MNIST images are 28x28",
                path.display(),
                found.0,
                found.1
            ),
            DataError::Truncated {
                path,
                expected,
                actual,
            } => write!(
                f,
                "{} is truncated: its header requires {expected} bytes, but it has only {actual}; \
                 delete it and get it again",
                path.display()
            ),
            DataError::TooLong {
                path,
                expected,
                actual,
            } => write!(
                f,
                "{} has {} unexpected trailing bytes: its header requires exactly {expected} bytes, \
                 but it has {actual}",
                path.display(),
                actual - expected
            ),
            DataError::CountMismatch {
                images_path,
                images,
                labels_path,
                labels,
            } => write!(
                f,
                "{} holds {images} images but {} holds {labels} labels; \
                 the two files must come from the same split",
                images_path.display(),
                labels_path.display()
            ),
            DataError::LabelOutOfRange { path, index, label } => write!(
                f,
                "{} has label {label} at position {index}, but Fashion-MNIST labels are 0 to 9",
                path.display()
            ),
            DataError::ChecksumMismatch {
                path,
                expected,
                actual,
            } => write!(
                f,
                "{} does not have the expected content: its decompressed SHA-256 is {actual}, \
                 expected {expected}; delete it and get it again (or, for files that are not \
                 the official ones, load them in code with LoadOptions::verify set to \
                 Verify::Skip or Verify::Custom)",
                path.display()
            ),
            DataError::Download { url, path, failure } => {
                write!(f, "downloading {url} to {} failed: ", path.display())?;
                match failure {
                    DownloadFailure::HttpStatus(status) => {
                        write!(f, "the server answered HTTP {status}")?;
                    }
                    DownloadFailure::Connection(message) => write!(f, "{message}")?,
                    DownloadFailure::Incomplete { expected, received } => write!(
                        f,
                        "the connection ended after {received} of {expected} bytes"
                    )?,
                    DownloadFailure::Write(e) => write!(f, "cannot write the file: {e}")?,
                }
                write!(
                    f,
                    ". Nothing was saved. Check the URL (BNBOOK_DATA_URL) and your network, \
                     or get the data another way.\n{GET_THE_DATA_LOCALLY}"
                )
            }
            DataError::DownloadedFileInvalid { url, reason } => write!(
                f,
                "the file downloaded from {url} was rejected and deleted: {reason}. \
                 Is BNBOOK_DATA_URL a Fashion-MNIST mirror?"
            ),
            DataError::ZeroBatchSize => {
                write!(f, "batch size must be at least 1 (it was 0)")
            }
            DataError::InconsistentSplit { images, labels } => write!(
                f,
                "the split has {images} images but {labels} labels; \
                 both must have one entry per example"
            ),
        }
    }
}

/// One line of the "searched" list, e.g. `"/data (FASHION_MNIST_DIR): does not exist"`.
fn describe_searched_dir(place: &SearchedDir) -> String {
    let state = if !place.exists {
        "does not exist".to_string()
    } else if place.missing.len() == 4 {
        "none of the files".to_string()
    } else {
        format!("missing {}", place.missing.join(", "))
    };
    format!("{} ({}): {state}", place.dir.display(), place.origin)
}

impl std::error::Error for DataError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DataError::Io { source, .. } | DataError::CorruptGzip { source, .. } => Some(source),
            DataError::Download {
                failure: DownloadFailure::Write(e),
                ..
            } => Some(e),
            DataError::DownloadedFileInvalid { reason, .. } => Some(reason.as_ref()),
            _ => None,
        }
    }
}
