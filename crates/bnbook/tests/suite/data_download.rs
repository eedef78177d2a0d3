//! The download, against a small HTTP server on 127.0.0.1 run by the test
//! itself: success, HTTP errors, bad content, interrupted transfers, offline
//! mode. After every failure the target directory must hold no temporary
//! file and nothing under a final name that was not verified.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::data_support::{Synthetic, dir_entries, gzip};
use bnbook::data::{DataError, DownloadFailure, FashionMnist, FileKind, LoadOptions, Verify};
use tempfile::TempDir;

// ------------------------------------------------------------- test server

/// What the server answers for one path.
#[derive(Clone)]
enum Reply {
    /// `200 OK` with this body.
    Ok(Vec<u8>),
    /// `200 OK` announcing the full length, but the connection is closed
    /// after `sent` bytes.
    CutShort { body: Vec<u8>, sent: usize },
}

/// A one-thread HTTP/1.1 server for the tests. It answers `404` for
/// unknown paths, records every request, and stops when dropped, or after
/// 60 seconds or 100 connections, whichever comes first.
struct TestServer {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    fn start(routes: HashMap<String, Reply>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (connections, requests, stop) =
                (connections.clone(), requests.clone(), stop.clone());
            thread::spawn(move || serve(listener, routes, connections, requests, stop))
        };
        TestServer {
            addr,
            connections,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// Serves the four files of `data`, gzip-compressed, under `/mirror/`.
    fn with_files(data: &Synthetic) -> TestServer {
        let routes = FileKind::ALL
            .iter()
            .map(|&kind| (route(kind), Reply::Ok(gzip(data.get(kind)))))
            .collect();
        TestServer::start(routes)
    }

    fn base_url(&self) -> String {
        format!("http://{}/mirror/", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The server path of one file.
fn route(kind: FileKind) -> String {
    format!("/mirror/{}", kind.gz_file_name())
}

fn serve(
    listener: TcpListener,
    routes: HashMap<String, Reply>,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::SeqCst)
        && Instant::now() < deadline
        && connections.load(Ordering::SeqCst) < 100
    {
        match listener.accept() {
            Ok((stream, _)) => {
                connections.fetch_add(1, Ordering::SeqCst);
                let _ = answer(stream, &routes, &requests);
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Reads one request and writes the reply, then closes the connection.
fn answer(
    stream: TcpStream,
    routes: &HashMap<String, Reply>,
    requests: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    requests.lock().unwrap().push(path.clone());

    let mut stream = stream;
    match routes.get(&path) {
        Some(Reply::Ok(body)) => {
            write_head(&mut stream, "200 OK", body.len())?;
            stream.write_all(body)?;
        }
        Some(Reply::CutShort { body, sent }) => {
            write_head(&mut stream, "200 OK", body.len())?;
            stream.write_all(&body[..*sent])?;
        }
        None => {
            let body = b"not found";
            write_head(&mut stream, "404 Not Found", body.len())?;
            stream.write_all(body)?;
        }
    }
    stream.flush()
}

fn write_head(stream: &mut TcpStream, status: &str, len: usize) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n"
    )
}

// ------------------------------------------------------------------ helpers

/// Options that search nowhere and download from `server` into `cache`.
fn download_options(server_url: String, cache: &Path, data: &Synthetic) -> LoadOptions {
    LoadOptions {
        dir: None,
        search_dirs: Vec::new(),
        cache_dir: Some(cache.to_path_buf()),
        allow_download: true,
        base_url: server_url,
        verify: Verify::Custom(data.checksums()),
        limit: None,
        show_progress: false,
    }
}

fn load_err(options: &LoadOptions) -> DataError {
    match FashionMnist::load(options) {
        Ok(_) => panic!("loading should have failed"),
        Err(e) => e,
    }
}

/// Asserts that `dir` holds no temporary (`.part`) file.
fn assert_no_temp_files(dir: &Path) {
    let entries = dir_entries(dir);
    assert!(
        entries.iter().all(|name| !name.ends_with(".part")),
        "temporary files left behind: {entries:?}"
    );
}

// -------------------------------------------------------------------- tests

#[test]
fn downloads_verifies_and_then_uses_the_cache() {
    let data = Synthetic::new(40, 10);
    let server = TestServer::with_files(&data);
    let tmp = TempDir::new().unwrap();
    let cache = tmp.path().join("cache/bnbook/fashion-mnist");
    let options = download_options(server.base_url(), &cache, &data);

    let loaded = FashionMnist::load(&options).unwrap();
    assert_eq!((loaded.train.len(), loaded.test.len()), (40, 10));
    let mut expected: Vec<String> = FileKind::ALL.iter().map(|k| k.gz_file_name()).collect();
    expected.sort();
    assert_eq!(dir_entries(&cache), expected);
    let mut requested = server.requests();
    requested.sort();
    let mut routes: Vec<String> = FileKind::ALL.iter().map(|&k| route(k)).collect();
    routes.sort();
    assert_eq!(requested, routes);

    // Loading again reads the cache without any request.
    let again = FashionMnist::load(&options).unwrap();
    assert_eq!(again, loaded);
    assert_eq!(server.requests().len(), 4);
}

#[test]
fn base_url_without_trailing_slash_works() {
    let data = Synthetic::new(4, 2);
    let server = TestServer::with_files(&data);
    let cache = TempDir::new().unwrap();
    let url = server.base_url().trim_end_matches('/').to_string();
    let options = download_options(url, cache.path(), &data);
    assert!(FashionMnist::load(&options).is_ok());
}

#[test]
fn only_missing_files_are_downloaded() {
    let data = Synthetic::new(6, 3);
    let server = TestServer::with_files(&data);
    let cache = TempDir::new().unwrap();
    data.write(cache.path(), false);
    std::fs::remove_file(cache.path().join("t10k-labels-idx1-ubyte")).unwrap();
    let options = download_options(server.base_url(), cache.path(), &data);

    assert!(FashionMnist::load(&options).is_ok());
    assert_eq!(server.requests(), [route(FileKind::TestLabels)]);
}

#[test]
fn http_404_is_reported_and_leaves_nothing() {
    let data = Synthetic::new(6, 3);
    let mut routes: HashMap<String, Reply> = HashMap::new();
    routes.insert(
        route(FileKind::TrainImages),
        Reply::Ok(gzip(&data.train_images)),
    );
    // train-labels is not served: 404.
    let server = TestServer::start(routes);
    let cache = TempDir::new().unwrap();
    let err = load_err(&download_options(server.base_url(), cache.path(), &data));

    match &err {
        DataError::Download {
            url,
            path,
            failure: DownloadFailure::HttpStatus(404),
        } => {
            assert!(url.ends_with("/mirror/train-labels-idx1-ubyte.gz"), "{url}");
            assert_eq!(path, &cache.path().join("train-labels-idx1-ubyte.gz"));
        }
        other => panic!("expected an HTTP 404 download error, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("HTTP 404"), "{message}");
    assert!(message.contains("dataset-fashion-mnist"), "{message}");
    // The first file arrived and was verified, so it stays; nothing else.
    assert_eq!(dir_entries(cache.path()), ["train-images-idx3-ubyte.gz"]);
}

#[test]
fn checksum_mismatch_deletes_the_download() {
    let data = Synthetic::new(6, 3);
    let server = TestServer::with_files(&data);
    let cache = TempDir::new().unwrap();
    let mut options = download_options(server.base_url(), cache.path(), &data);
    let Verify::Custom(sums) = &mut options.verify else {
        unreachable!()
    };
    sums.train_images = "ab".repeat(32);

    let err = load_err(&options);
    match &err {
        DataError::DownloadedFileInvalid { url, reason } => {
            assert!(url.ends_with("train-images-idx3-ubyte.gz"), "{url}");
            assert!(
                matches!(**reason, DataError::ChecksumMismatch { .. }),
                "{reason:?}"
            );
        }
        other => panic!("expected a rejected download, got {other:?}"),
    }
    assert!(dir_entries(cache.path()).is_empty(), "nothing left behind");
}

#[test]
fn checksum_mismatch_on_the_last_file_keeps_the_verified_ones() {
    let data = Synthetic::new(6, 3);
    let server = TestServer::with_files(&data);
    let cache = TempDir::new().unwrap();
    let mut options = download_options(server.base_url(), cache.path(), &data);
    let Verify::Custom(sums) = &mut options.verify else {
        unreachable!()
    };
    sums.test_labels = "ab".repeat(32);

    let err = load_err(&options);
    assert!(
        matches!(err, DataError::DownloadedFileInvalid { .. }),
        "{err:?}"
    );
    assert_eq!(
        dir_entries(cache.path()),
        [
            "t10k-images-idx3-ubyte.gz",
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
        ]
    );
}

#[test]
fn a_page_that_is_not_gzip_is_rejected() {
    let data = Synthetic::new(6, 3);
    let mut routes: HashMap<String, Reply> = HashMap::new();
    routes.insert(
        route(FileKind::TrainImages),
        Reply::Ok(b"<html>please log in</html>".to_vec()),
    );
    let server = TestServer::start(routes);
    let cache = TempDir::new().unwrap();
    let err = load_err(&download_options(server.base_url(), cache.path(), &data));
    match &err {
        DataError::DownloadedFileInvalid { reason, .. } => {
            assert!(
                matches!(**reason, DataError::CorruptGzip { .. }),
                "{reason:?}"
            );
        }
        other => panic!("expected a rejected download, got {other:?}"),
    }
    assert!(dir_entries(cache.path()).is_empty());
}

#[test]
fn interrupted_transfer_leaves_nothing() {
    let data = Synthetic::new(200, 3);
    let body = gzip(&data.train_images);
    let sent = body.len() / 2;
    let mut routes: HashMap<String, Reply> = HashMap::new();
    routes.insert(
        route(FileKind::TrainImages),
        Reply::CutShort {
            body: body.clone(),
            sent,
        },
    );
    let server = TestServer::start(routes);
    let cache = TempDir::new().unwrap();
    let err = load_err(&download_options(server.base_url(), cache.path(), &data));

    match &err {
        DataError::Download {
            failure: DownloadFailure::Incomplete { expected, received },
            ..
        } => {
            assert_eq!(*expected, body.len() as u64);
            assert_eq!(*received, sent as u64);
        }
        other => panic!("expected an incomplete download, got {other:?}"),
    }
    println!("{err}");
    assert_no_temp_files(cache.path());
    assert!(dir_entries(cache.path()).is_empty());
}

#[test]
fn connection_refused_is_a_download_error() {
    // Bind a port, then free it: nothing listens there any more.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let data = Synthetic::new(4, 2);
    let cache = TempDir::new().unwrap();
    let err = load_err(&download_options(
        format!("http://{addr}/"),
        cache.path(),
        &data,
    ));
    assert!(
        matches!(
            err,
            DataError::Download {
                failure: DownloadFailure::Connection(_),
                ..
            }
        ),
        "{err:?}"
    );
    println!("{err}");
    assert!(dir_entries(cache.path()).is_empty());
}

#[test]
fn offline_mode_reports_not_found_without_connecting() {
    let data = Synthetic::new(4, 2);
    let server = TestServer::with_files(&data);
    let cache = TempDir::new().unwrap();
    let options = LoadOptions {
        allow_download: false,
        ..download_options(server.base_url(), cache.path(), &data)
    };
    let err = load_err(&options);
    assert!(matches!(err, DataError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("turned off"), "{err}");
    assert_eq!(server.connections(), 0, "no connection was made");
    assert!(dir_entries(cache.path()).is_empty());
}

#[test]
fn no_cache_directory_means_no_download() {
    let data = Synthetic::new(4, 2);
    let server = TestServer::with_files(&data);
    let cache = TempDir::new().unwrap();
    let options = LoadOptions {
        cache_dir: None,
        ..download_options(server.base_url(), cache.path(), &data)
    };
    let err = load_err(&options);
    assert!(matches!(err, DataError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("no cache directory"), "{err}");
    assert_eq!(server.connections(), 0);
}
