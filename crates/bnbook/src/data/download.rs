//! Downloading the four `.gz` files into the cache directory.
//!
//! Each file is streamed into a hidden temporary file in the cache directory
//! itself (`.NAME.gz.<pid>-<n>.part`), checked completely (length announced
//! by the server, gzip integrity, IDX structure, SHA-256), and only then
//! renamed to `NAME.gz`. A rename within one directory is atomic, so the
//! final name never refers to a half-written file; on any failure the
//! temporary file is deleted.
//!
//! The HTTP client is `ureq`; it honours the usual `HTTP_PROXY`,
//! `HTTPS_PROXY` and `NO_PROXY` variables, and speaks `https` too.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::idx::FileKind;
use super::{DataError, DownloadFailure, LoadOptions, check_file, source};

/// No official file is bigger than about 26 MB; refuse anything absurdly larger.
const MAX_DOWNLOAD_BYTES: u64 = 256 * 1024 * 1024;

/// Downloads into `cache_dir` every file that it does not already hold.
pub(crate) fn download_missing(options: &LoadOptions, cache_dir: &Path) -> Result<(), DataError> {
    fs::create_dir_all(cache_dir).map_err(|e| DataError::io(cache_dir, e))?;
    let agent = make_agent();
    for kind in FileKind::ALL {
        if source::find_file(cache_dir, kind).is_none() {
            download_one(&agent, options, kind, cache_dir)?;
        }
    }
    Ok(())
}

/// A blocking HTTP client with timeouts, so that a dead network fails
/// instead of hanging. Status codes are checked by hand (see [`fetch`]).
fn make_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .user_agent(concat!("bnbook/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// `base_url` and `name` joined by exactly one `/`.
fn file_url(base_url: &str, name: &str) -> String {
    format!("{}/{name}", base_url.trim_end_matches('/'))
}

/// Downloads, verifies and installs one file as `cache_dir/NAME.gz`.
fn download_one(
    agent: &ureq::Agent,
    options: &LoadOptions,
    kind: FileKind,
    cache_dir: &Path,
) -> Result<(), DataError> {
    let url = file_url(&options.base_url, &kind.gz_file_name());
    let final_path = cache_dir.join(kind.gz_file_name());
    let download_error = |failure| DataError::Download {
        url: url.clone(),
        path: final_path.clone(),
        failure,
    };

    let (temp, file) =
        TempFile::create(cache_dir, kind).map_err(|e| DataError::io(cache_dir, e))?;
    fetch(agent, &url, file, kind, options.show_progress).map_err(download_error)?;
    check_file(temp.path(), true, kind, &options.verify).map_err(|reason| {
        DataError::DownloadedFileInvalid {
            url: url.clone(),
            reason: Box::new(reason),
        }
    })?;
    temp.persist(&final_path)
        .map_err(|e| DataError::io(&final_path, e))
}

/// Streams the body of `url` into `file`.
fn fetch(
    agent: &ureq::Agent,
    url: &str,
    file: File,
    kind: FileKind,
    show_progress: bool,
) -> Result<(), DownloadFailure> {
    let response = agent
        .get(url)
        .call()
        .map_err(|e| DownloadFailure::Connection(format!("no response ({e})")))?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(DownloadFailure::HttpStatus(status));
    }
    let expected = response.body().content_length();
    let bar = progress_bar(expected, kind.file_name(), show_progress);
    let reader = response.into_body().into_reader();
    let result = copy_body(reader, file, expected, &bar);
    bar.finish_and_clear();
    result
}

/// Copies the body to the file, telling read errors (network) from write
/// errors (disk), and checks that the announced length arrived.
fn copy_body(
    mut reader: impl Read,
    file: File,
    expected: Option<u64>,
    bar: &ProgressBar,
) -> Result<(), DownloadFailure> {
    let mut writer = BufWriter::new(file);
    let mut buffer = vec![0u8; 64 * 1024];
    let mut received: u64 = 0;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_failure(&e, expected, received)),
        };
        received += n as u64;
        if received > MAX_DOWNLOAD_BYTES {
            return Err(DownloadFailure::Connection(format!(
                "the server sent more than {MAX_DOWNLOAD_BYTES} bytes; this is not a Fashion-MNIST file"
            )));
        }
        writer
            .write_all(&buffer[..n])
            .map_err(DownloadFailure::Write)?;
        bar.set_position(received);
    }
    if let Some(expected) = expected.filter(|&e| e != received) {
        return Err(DownloadFailure::Incomplete { expected, received });
    }
    let file = writer
        .into_inner()
        .map_err(|e| DownloadFailure::Write(e.into_error()))?;
    file.sync_all().map_err(DownloadFailure::Write)
}

/// A read error mid-body: with a known length, an early end of the stream
/// is reported as [`DownloadFailure::Incomplete`].
fn read_failure(e: &io::Error, expected: Option<u64>, received: u64) -> DownloadFailure {
    match expected {
        Some(expected) if e.kind() == io::ErrorKind::UnexpectedEof => {
            DownloadFailure::Incomplete { expected, received }
        }
        _ => DownloadFailure::Connection(format!(
            "the connection failed after {received} bytes: {e}"
        )),
    }
}

/// A progress bar on standard error, or a hidden one when progress is not
/// wanted or standard error is not a terminal (logs, CI).
fn progress_bar(len: Option<u64>, name: &str, show: bool) -> ProgressBar {
    if !show || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(len) => ProgressBar::new(len),
        None => ProgressBar::new_spinner(),
    };
    let template = "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})";
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(format!("downloading {name}"));
    bar
}

/// A temporary file that deletes itself when dropped, unless
/// [`persist`](TempFile::persist)ed.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    /// Creates `dir/.NAME.gz.<pid>-<n>.part`, refusing to reuse an existing
    /// file, and returns it opened for writing. The process id and a
    /// per-process counter keep concurrent downloads apart. The name never
    /// matches `NAME` or `NAME.gz`, so a directory search never mistakes it
    /// for data.
    fn create(dir: &Path, kind: FileKind) -> io::Result<(Self, File)> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let path = dir.join(format!(".{}.{pid}-{n}.part", kind.gz_file_name()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((TempFile { path, keep: false }, file))
    }

    /// Where the temporary file is.
    fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the file to `dest` (atomically, as both are in one directory).
    fn persist(mut self, dest: &Path) -> io::Result<()> {
        fs::rename(&self.path, dest)?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}
