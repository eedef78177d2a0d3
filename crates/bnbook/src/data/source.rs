//! Where the data comes from: [`LoadOptions`], the search order, and the
//! test "does this directory have the data?".

use std::env;
use std::path::{Path, PathBuf};

use super::idx::FileKind;
use super::{DataError, SearchedDir, Verify};

/// The Fashion-MNIST project's public mirror of the four `.gz` files.
pub const DEFAULT_BASE_URL: &str = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/";

/// Where Debian's `dataset-fashion-mnist` package installs the `.gz` files.
pub const DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The project-local directory, relative to the current working directory.
pub const PROJECT_LOCAL_DIR: &str = "data/fashion-mnist";

/// Environment variable naming a directory that holds the data.
pub const ENV_DIR: &str = "FASHION_MNIST_DIR";
/// Environment variable overriding [`DEFAULT_BASE_URL`].
pub const ENV_BASE_URL: &str = "BNBOOK_DATA_URL";
/// Environment variable that turns the download off when set to anything
/// but an empty value or `0`, `false`, `no`, `off` (so `1`, `true`, `yes`,
/// `y`, … all mean offline: a typo errs on the side of no network).
pub const ENV_OFFLINE: &str = "BNBOOK_OFFLINE";

/// A directory to look in, with the reason it is on the list (shown in
/// [`DataError::NotFound`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchDir {
    /// The directory.
    pub dir: PathBuf,
    /// Why it is searched, e.g. `"FASHION_MNIST_DIR"`.
    pub origin: String,
}

impl SearchDir {
    /// A directory to search, labelled with its origin.
    pub fn new(dir: impl Into<PathBuf>, origin: impl Into<String>) -> Self {
        SearchDir {
            dir: dir.into(),
            origin: origin.into(),
        }
    }
}

/// How to find (and if needed download) Fashion-MNIST.
///
/// [`LoadOptions::default()`] reads the environment: `FASHION_MNIST_DIR`,
/// `BNBOOK_DATA_URL`, `BNBOOK_OFFLINE`, `XDG_CACHE_HOME` and `HOME`. The
/// fields are public, so any of them can be overridden afterwards:
///
/// ```
/// use bnbook::data::{LoadOptions, Verify};
///
/// let options = LoadOptions {
///     allow_download: false,
///     limit: Some(1_000),
///     ..LoadOptions::default()
/// }
/// .with_dir("my/fashion-mnist");
/// assert_eq!(options.verify, Verify::Official);
/// ```
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// A directory given by the program; searched before all others.
    pub dir: Option<PathBuf>,
    /// The standard places, searched after [`dir`](Self::dir), in order.
    /// By default: `FASHION_MNIST_DIR` (if set), `./data/fashion-mnist`, the
    /// cache directory, and `/usr/share/datasets/fashion-mnist`.
    pub search_dirs: Vec<SearchDir>,
    /// Where downloaded files go: `$XDG_CACHE_HOME/bnbook/fashion-mnist` or
    /// `~/.cache/bnbook/fashion-mnist`; `None` if neither variable is set.
    pub cache_dir: Option<PathBuf>,
    /// Whether to download the files when no directory has them. Default:
    /// `true`, unless `BNBOOK_OFFLINE=1`.
    pub allow_download: bool,
    /// URL of the directory holding the four `.gz` files. Default:
    /// `BNBOOK_DATA_URL`, else [`DEFAULT_BASE_URL`].
    pub base_url: String,
    /// Which checksums the decompressed files must have. Default: the
    /// official ones.
    pub verify: Verify,
    /// Keep only the first `n` examples of each split (for quick runs). The
    /// whole files are still read and verified.
    pub limit: Option<usize>,
    /// Show a progress bar while downloading (only ever drawn when standard
    /// error is a terminal). Default: `true`.
    pub show_progress: bool,
}

impl Default for LoadOptions {
    /// The options implied by the environment; see [`LoadOptions`].
    fn default() -> Self {
        let cache_dir = default_cache_dir();
        LoadOptions {
            dir: None,
            search_dirs: standard_search_dirs(cache_dir.as_deref()),
            cache_dir,
            allow_download: !offline_requested(),
            base_url: env_non_empty(ENV_BASE_URL).unwrap_or_else(|| DEFAULT_BASE_URL.to_string()),
            verify: Verify::Official,
            limit: None,
            show_progress: true,
        }
    }
}

impl LoadOptions {
    /// Options that look in `dir` only: no standard places, no download,
    /// official checksums. Handy for tests and for "use exactly these files".
    pub fn only_dir(dir: impl Into<PathBuf>) -> Self {
        LoadOptions {
            dir: Some(dir.into()),
            search_dirs: Vec::new(),
            cache_dir: None,
            allow_download: false,
            base_url: DEFAULT_BASE_URL.to_string(),
            verify: Verify::Official,
            limit: None,
            show_progress: false,
        }
    }

    /// Sets the directory searched first.
    pub fn with_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Sets which checksums to check.
    pub fn with_verify(mut self, verify: Verify) -> Self {
        self.verify = verify;
        self
    }

    /// Allows or forbids the download.
    pub fn with_download(mut self, allow: bool) -> Self {
        self.allow_download = allow;
        self
    }

    /// Keeps only the first `n` examples of each split.
    pub fn with_limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// All directories to search, in order: [`dir`](Self::dir) first, then
    /// [`search_dirs`](Self::search_dirs), without duplicates.
    pub fn search_order(&self) -> Vec<SearchDir> {
        let explicit = self
            .dir
            .iter()
            .map(|dir| SearchDir::new(dir, "explicit directory"));
        let mut order: Vec<SearchDir> = Vec::new();
        for place in explicit.chain(self.search_dirs.iter().cloned()) {
            if !order.iter().any(|seen| seen.dir == place.dir) {
                order.push(place);
            }
        }
        order
    }

    /// The first directory of the [search order](Self::search_order) that
    /// holds all four files — where [`FashionMnist::load`](super::FashionMnist::load)
    /// reads them — or `None` if none does yet (a load would download).
    /// Called after a load, it tells which copy was used.
    pub fn found_in(&self) -> Option<SearchDir> {
        self.search_order()
            .into_iter()
            .find(|place| examine_dir(place).is_ok())
    }
}

/// The four files found in one directory, each plain or `.gz`, in
/// [`FileKind::ALL`] order.
#[derive(Debug, Clone)]
pub(crate) struct DataFiles {
    pub(crate) paths: [PathBuf; 4],
}

impl DataFiles {
    /// The path of one of the four files.
    pub(crate) fn path(&self, kind: FileKind) -> &Path {
        // `FileKind::ALL` lists the kinds in declaration order.
        &self.paths[kind as usize]
    }
}

/// The path of `kind` in `dir`: the plain file if present (no decompression
/// needed), else the `.gz` file, else `None`.
pub(crate) fn find_file(dir: &Path, kind: FileKind) -> Option<PathBuf> {
    let plain = dir.join(kind.file_name());
    if plain.is_file() {
        return Some(plain);
    }
    let gz = dir.join(kind.gz_file_name());
    gz.is_file().then_some(gz)
}

/// The names (without `.gz`) of the four Fashion-MNIST files that `dir`
/// lacks, plain or gzipped; empty if it has them all. Programs that take a
/// directory from their user can refuse an incomplete one up front instead
/// of letting the search move on to the next place.
pub fn missing_files(dir: &Path) -> Vec<&'static str> {
    FileKind::ALL
        .into_iter()
        .filter(|&kind| find_file(dir, kind).is_none())
        .map(FileKind::file_name)
        .collect()
}

/// Looks for all four files in `dir`. On failure, reports what is missing.
pub(crate) fn examine_dir(place: &SearchDir) -> Result<DataFiles, SearchedDir> {
    let mut found = Vec::with_capacity(FileKind::ALL.len());
    let mut missing = Vec::new();
    for kind in FileKind::ALL {
        match find_file(&place.dir, kind) {
            Some(path) => found.push(path),
            None => missing.push(kind.file_name()),
        }
    }
    // Exactly four paths means nothing is missing.
    match <[PathBuf; 4]>::try_from(found) {
        Ok(paths) => Ok(DataFiles { paths }),
        Err(_) => Err(SearchedDir {
            dir: place.dir.clone(),
            origin: place.origin.clone(),
            exists: place.dir.is_dir(),
            missing,
        }),
    }
}

/// Searches the directories of `options` in order and returns the files of
/// the first one that has all four, or the list of places searched.
pub(crate) fn locate(options: &LoadOptions) -> Result<DataFiles, Vec<SearchedDir>> {
    let mut searched = Vec::new();
    for place in options.search_order() {
        match examine_dir(&place) {
            Ok(files) => return Ok(files),
            Err(report) => searched.push(report),
        }
    }
    Err(searched)
}

/// The directory to download into, or why there will be no download.
pub(crate) fn download_target(options: &LoadOptions) -> Result<&Path, String> {
    if !cfg!(feature = "download") {
        return Err(
            "this build of bnbook cannot download (it was compiled without the \
                    `download` feature); put the four files in one of the places above"
                .to_string(),
        );
    }
    if !options.allow_download {
        return Err(format!(
            "downloading is turned off (`bnbook train --offline`, {ENV_OFFLINE}=1 or \
             LoadOptions::allow_download = false)"
        ));
    }
    options.cache_dir.as_deref().ok_or_else(|| {
        "there is no cache directory to download into (neither XDG_CACHE_HOME nor HOME \
         is set; set LoadOptions::cache_dir)"
            .to_string()
    })
}

/// Builds the "not found" error for `searched`.
pub(crate) fn not_found(searched: Vec<SearchedDir>, reason: String) -> DataError {
    DataError::NotFound {
        searched,
        no_download_reason: reason,
    }
}

/// The standard places after the explicit directory, in search order.
fn standard_search_dirs(cache_dir: Option<&Path>) -> Vec<SearchDir> {
    let mut dirs = Vec::new();
    if let Some(dir) = env_non_empty(ENV_DIR) {
        dirs.push(SearchDir::new(dir, ENV_DIR));
    }
    dirs.push(SearchDir::new(
        PROJECT_LOCAL_DIR,
        "project-local, relative to the current directory",
    ));
    if let Some(cache) = cache_dir {
        dirs.push(SearchDir::new(cache, "user cache, where downloads go"));
    }
    dirs.push(SearchDir::new(
        DEBIAN_DIR,
        "Debian package dataset-fashion-mnist",
    ));
    dirs
}

/// `$XDG_CACHE_HOME/bnbook/fashion-mnist`, else `$HOME/.cache/bnbook/fashion-mnist`.
///
/// The XDG specification says a relative `XDG_CACHE_HOME` is invalid and
/// must be ignored; so do we.
pub fn default_cache_dir() -> Option<PathBuf> {
    let xdg = env_non_empty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = xdg.or_else(|| env_non_empty("HOME").map(|home| Path::new(&home).join(".cache")))?;
    Some(base.join("bnbook").join("fashion-mnist"))
}

/// Whether `BNBOOK_OFFLINE` asks for no download.
fn offline_requested() -> bool {
    env_non_empty(ENV_OFFLINE).is_some_and(|value| {
        !matches!(
            value.trim().to_ascii_lowercase().as_str(),
            "0" | "false" | "no" | "off"
        )
    })
}

/// The value of an environment variable, treating empty as unset.
fn env_non_empty(name: &str) -> Option<String> {
    env::var(name).ok().filter(|value| !value.trim().is_empty())
}
