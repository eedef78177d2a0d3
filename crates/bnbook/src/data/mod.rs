//! Fashion-MNIST: find it, verify it, download it, batch it.
//!
//! [Fashion-MNIST](https://github.com/zalandoresearch/fashion-mnist) is a
//! drop-in replacement for MNIST: 70,000 greyscale 28×28 images of clothing
//! in ten classes ([`CLASS_NAMES`]), split into 60,000 training and 10,000
//! test images. It comes as four files in the IDX format (see [`idx`]):
//!
//! | file | content |
//! |------|---------|
//! | `train-images-idx3-ubyte` | 60,000 training images |
//! | `train-labels-idx1-ubyte` | their labels |
//! | `t10k-images-idx3-ubyte`  | 10,000 test images |
//! | `t10k-labels-idx1-ubyte`  | their labels |
//!
//! each either plain or gzip-compressed with a `.gz` suffix.
//!
//! # Where the data is looked for
//!
//! [`FashionMnist::load`] searches these directories in order and uses the
//! first one that holds all four files (as `NAME` or `NAME.gz`; the plain
//! file wins when both exist, since it needs no decompression):
//!
//! 1. the directory given by the program, [`LoadOptions::dir`];
//! 2. the directory in the environment variable `FASHION_MNIST_DIR`;
//! 3. `data/fashion-mnist`, relative to the current directory (note that
//!    `cargo test` runs tests in the package directory, `crates/bnbook`);
//! 4. the user cache, `$XDG_CACHE_HOME/bnbook/fashion-mnist` or
//!    `~/.cache/bnbook/fashion-mnist`;
//! 5. `/usr/share/datasets/fashion-mnist`, where Debian's
//!    `dataset-fashion-mnist` package (`sudo apt install
//!    dataset-fashion-mnist`) puts them.
//!
//! If none has them, the four `.gz` files are downloaded into the user cache
//! from [`DEFAULT_BASE_URL`] (or `BNBOOK_DATA_URL`), unless the download is
//! turned off with `BNBOOK_OFFLINE=1` or [`LoadOptions::allow_download`].
//! Each file goes to a temporary file first and is renamed to its final name
//! only once fully verified; see [Downloading](#downloading) below.
//!
//! # Verification
//!
//! Every load checks every file completely, every time:
//!
//! * the IDX structure: magic number, 28×28 images, exact file length, labels
//!   below 10, as many labels as images (see [`idx`]);
//! * the content: the SHA-256 of the *decompressed* bytes must equal the
//!   official one ([`FileKind::official_sha256`]). Hashing decompressed bytes
//!   makes the check independent of how a copy was compressed.
//!
//! Hashing the 55 MB of decompressed data takes about 50 ms (about 1 GB/s,
//! using the processor's SHA instructions where it has them), against about
//! 170 ms to decompress it and 270 ms for the whole load in release mode. That
//! is cheap enough to do on every load, so no "already verified" stamp file
//! is kept. Use [`Verify::Skip`] or [`Verify::Custom`] for files that
//! are not the official ones (the tests do).
//!
//! # Downloading
//!
//! A download writes to `.NAME.gz.<pid>-<n>.part` in the cache directory,
//! checks that the announced length arrived, then checks the file exactly
//! like a load does, and only then renames it to `NAME.gz`. On any failure
//! the temporary file is deleted, so a name that looks valid never refers to
//! a half-written or unverified file. (A process killed mid-download cannot
//! clean up and may leave a `.part` file behind; it is never mistaken for
//! data and can be deleted.) A progress bar is drawn on standard error when
//! it is a terminal.
//!
//! # Batches
//!
//! [`Split::batches`] cuts a split into shuffled (or not) mini-batches; see
//! [`LastBatch`] about the last, smaller batch and batch normalization.
//!
//! # Example
//!
//! ```no_run
//! use bnbook::data::{BatchOptions, CLASS_NAMES, FashionMnist, LastBatch};
//!
//! let data = FashionMnist::load_default()?;
//! println!("{} training images", data.train.len());
//! let options = BatchOptions {
//!     shuffle_seed: Some(42),
//!     epoch: 0,
//!     last_batch: LastBatch::DropIfSmallerThan(2),
//!     ..BatchOptions::default()
//! };
//! for batch in data.train.batches(256, &options)? {
//!     let first = CLASS_NAMES[batch.labels[0]];
//!     println!("{:?}, the first is a {first}", batch.images.dim());
//! }
//! # Ok::<(), bnbook::data::DataError>(())
//! ```

mod batch;
#[cfg(feature = "download")]
mod download;
mod error;
pub mod idx;
mod source;

use std::path::Path;

use ndarray::Array4;

pub use batch::{Batch, BatchOptions, Batches, LastBatch};
pub use error::{DataError, DownloadFailure, SearchedDir};
pub use idx::{FileKind, NUM_CLASSES, read_images, read_labels};
pub use source::{
    DEBIAN_DIR, DEFAULT_BASE_URL, ENV_BASE_URL, ENV_DIR, ENV_OFFLINE, LoadOptions,
    PROJECT_LOCAL_DIR, SearchDir, default_cache_dir, missing_files,
};

use source::DataFiles;

/// The names of the ten classes, indexed by label.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
];

/// The name of class `label`, or `None` if `label` is not below 10.
///
/// ```
/// assert_eq!(bnbook::data::class_name(9), Some("ankle boot"));
/// assert_eq!(bnbook::data::class_name(10), None);
/// ```
pub fn class_name(label: u8) -> Option<&'static str> {
    CLASS_NAMES.get(usize::from(label)).copied()
}

/// Expected SHA-256 checksums (hex) of the four decompressed files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksums {
    /// Checksum of `train-images-idx3-ubyte`.
    pub train_images: String,
    /// Checksum of `train-labels-idx1-ubyte`.
    pub train_labels: String,
    /// Checksum of `t10k-images-idx3-ubyte`.
    pub test_images: String,
    /// Checksum of `t10k-labels-idx1-ubyte`.
    pub test_labels: String,
}

impl Checksums {
    /// The checksums of the official Fashion-MNIST files.
    pub fn official() -> Self {
        Checksums {
            train_images: FileKind::TrainImages.official_sha256().to_string(),
            train_labels: FileKind::TrainLabels.official_sha256().to_string(),
            test_images: FileKind::TestImages.official_sha256().to_string(),
            test_labels: FileKind::TestLabels.official_sha256().to_string(),
        }
    }

    /// The checksum expected for one file.
    pub fn get(&self, kind: FileKind) -> &str {
        match kind {
            FileKind::TrainImages => &self.train_images,
            FileKind::TrainLabels => &self.train_labels,
            FileKind::TestImages => &self.test_images,
            FileKind::TestLabels => &self.test_labels,
        }
    }
}

/// Which content checksums the files must have. The IDX structure is always
/// checked, whatever this says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Verify {
    /// The official Fashion-MNIST checksums (the default).
    #[default]
    Official,
    /// No checksum: any well-formed IDX files are accepted.
    Skip,
    /// These checksums, e.g. for synthetic test files.
    Custom(Checksums),
}

impl Verify {
    /// The SHA-256 (hex) that `kind` must have, or `None` when skipping.
    pub fn expected_sha256(&self, kind: FileKind) -> Option<&str> {
        match self {
            Verify::Official => Some(kind.official_sha256()),
            Verify::Skip => None,
            Verify::Custom(sums) => Some(sums.get(kind)),
        }
    }
}

/// The images and labels of one split (training or test).
///
/// The pixels are kept as the bytes of the files (one byte per pixel, a
/// quarter of the memory of `f32`: 47 MB instead of 188 MB for the training
/// set); each mini-batch converts its own images to `f32` in `[0, 1]`
/// ([`Batch::images`]), and [`Split::images`] converts a whole split.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Pixels as stored in the files, shape `(n, 1, 28, 28)`: 0 is the
    /// background, 255 full ink.
    pub pixels: Array4<u8>,
    /// The class of each image, `0..10`; see [`class_name`].
    pub labels: Vec<u8>,
}

/// The Fashion-MNIST training and test splits.
#[derive(Debug, Clone, PartialEq)]
pub struct FashionMnist {
    /// 60,000 training examples.
    pub train: Split,
    /// 10,000 test examples.
    pub test: Split,
}

impl FashionMnist {
    /// `n` blank training and `n` blank test images, all labelled 0: a
    /// stand-in of the right shape for checking settings against the size
    /// of a data set (tests, dry runs) without reading the files.
    pub fn blank(n: usize) -> FashionMnist {
        let split = Split {
            pixels: ndarray::Array4::zeros((n, 1, 28, 28)),
            labels: vec![0; n],
        };
        FashionMnist {
            train: split.clone(),
            test: split,
        }
    }

    /// Finds, verifies and loads the data as described in [`LoadOptions`]
    /// and the [module documentation](self), downloading it if allowed and
    /// needed.
    ///
    /// # Errors
    ///
    /// A [`DataError`] saying what is wrong and how to fix it: files not
    /// found (with every place searched), malformed or modified files, or a
    /// failed download.
    pub fn load(options: &LoadOptions) -> Result<FashionMnist, DataError> {
        let files = find_or_download(options)?;
        Self::load_files(&files, &options.verify, options.limit)
    }

    /// [`FashionMnist::load`] with [`LoadOptions::default()`], i.e. as
    /// configured by the environment.
    ///
    /// # Errors
    ///
    /// See [`FashionMnist::load`].
    pub fn load_default() -> Result<FashionMnist, DataError> {
        Self::load(&LoadOptions::default())
    }

    /// Reads, checks and converts the four files.
    fn load_files(
        files: &DataFiles,
        verify: &Verify,
        limit: Option<usize>,
    ) -> Result<FashionMnist, DataError> {
        let [train_images, train_labels, test_images, test_labels] = read_all(files, verify)?;
        let train = build_split(
            (files.path(FileKind::TrainImages), train_images),
            (files.path(FileKind::TrainLabels), &train_labels),
            limit,
        )?;
        let test = build_split(
            (files.path(FileKind::TestImages), test_images),
            (files.path(FileKind::TestLabels), &test_labels),
            limit,
        )?;
        Ok(FashionMnist { train, test })
    }
}

/// Searches the directories; if none has the data, downloads it into the
/// cache directory when allowed.
fn find_or_download(options: &LoadOptions) -> Result<DataFiles, DataError> {
    let searched = match source::locate(options) {
        Ok(files) => return Ok(files),
        Err(searched) => searched,
    };
    let cache_dir =
        source::download_target(options).map_err(|reason| source::not_found(searched, reason))?;
    #[cfg(feature = "download")]
    download::download_missing(options, cache_dir)?;
    let cache = SearchDir::new(cache_dir, "user cache, after download");
    source::examine_dir(&cache).map_err(|report| {
        source::not_found(
            vec![report],
            "the download finished but files are missing".into(),
        )
    })
}

/// Reads and checks the four files, in [`FileKind::ALL`] order, returning
/// their decompressed bytes.
///
/// The two big image files are decompressed on two threads: decompression
/// dominates the load time and the files are independent.
fn read_all(files: &DataFiles, verify: &Verify) -> Result<[Vec<u8>; 4], DataError> {
    let check = |kind: FileKind| {
        let path = files.path(kind);
        check_file(path, idx::is_gz_path(path), kind, verify)
    };
    std::thread::scope(|scope| {
        let test_images = scope.spawn(|| check(FileKind::TestImages));
        let train_images = check(FileKind::TrainImages);
        let test_images = test_images
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Ok([
            train_images?,
            check(FileKind::TrainLabels)?,
            test_images?,
            check(FileKind::TestLabels)?,
        ])
    })
}

/// Decompresses one file (if `gzip`), checks its IDX structure for `kind`,
/// then its checksum; returns the decompressed bytes.
///
/// The structure is checked first because its errors are more telling: a
/// truncated file says "truncated", not just "wrong checksum".
pub(crate) fn check_file(
    path: &Path,
    gzip: bool,
    kind: FileKind,
    verify: &Verify,
) -> Result<Vec<u8>, DataError> {
    let bytes = idx::read_decompressed(path, gzip)?;
    if kind.is_images() {
        idx::parse_images(path, &bytes)?;
    } else {
        idx::parse_labels(path, &bytes)?;
    }
    if let Some(expected) = verify.expected_sha256(kind) {
        idx::verify_sha256(path, &bytes, expected)?;
    }
    Ok(bytes)
}

/// Builds a split from the checked bytes of its image and label files,
/// keeping at most `limit` examples. The images stay in the file's buffer.
fn build_split(
    (images_path, image_bytes): (&Path, Vec<u8>),
    (labels_path, label_bytes): (&Path, &[u8]),
    limit: Option<usize>,
) -> Result<Split, DataError> {
    let (count, _) = idx::parse_images(images_path, &image_bytes)?;
    let labels = idx::parse_labels(labels_path, label_bytes)?;
    if count != labels.len() {
        return Err(DataError::CountMismatch {
            images_path: images_path.to_path_buf(),
            images: count,
            labels_path: labels_path.to_path_buf(),
            labels: labels.len(),
        });
    }
    let kept = limit.map_or(count, |limit| limit.min(count));
    Ok(Split {
        pixels: idx::images_into_array(image_bytes, kept),
        labels: labels[..kept].to_vec(),
    })
}
