//! `LoadOptions::default()` reads the environment.
//!
//! All tests of this binary run as threads of one process, and changing the
//! environment of a process while another thread may read it is undefined
//! behaviour (which is why `std::env::set_var` is `unsafe`). A lock would
//! only order the tests that take it, not whatever their libraries read, so
//! no test here changes the environment of its own process: each case runs
//! [`probe`] in a child process — this same test binary, asked for that one
//! test — with the variables set through `Command::env`, and reads back what
//! `LoadOptions::default()` gave there.

use std::path::{Path, PathBuf};
use std::process::Command;

use bnbook::data::{DEBIAN_DIR, DEFAULT_BASE_URL, LoadOptions, PROJECT_LOCAL_DIR};
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

/// The variables `LoadOptions::default()` reads; the child process starts
/// with none of them but those a case sets.
const VARS: [&str; 5] = [
    "FASHION_MNIST_DIR",
    "BNBOOK_DATA_URL",
    "BNBOOK_OFFLINE",
    "XDG_CACHE_HOME",
    "HOME",
];

/// Set in the child process only: the file [`probe`] writes its [`Seen`] to.
const PROBE_OUT: &str = "BNBOOK_TEST_ENV_PROBE_OUT";

/// What `LoadOptions::default()` gave in the child process.
#[derive(Debug, Serialize, Deserialize)]
struct Seen {
    cache_dir: Option<PathBuf>,
    allow_download: bool,
    base_url: String,
    /// The search order of the default options.
    dirs: Vec<PathBuf>,
    /// The search order of the default options `.with_dir("/explicit")`.
    dirs_with_explicit: Vec<PathBuf>,
}

fn dirs(options: &LoadOptions) -> Vec<PathBuf> {
    options.search_order().into_iter().map(|s| s.dir).collect()
}

/// The child-process half of [`default_options_follow_the_environment`]:
/// does nothing unless [`PROBE_OUT`] is set, which only that test does, in
/// the environment of the child it starts.
#[test]
fn probe() {
    let Some(out) = std::env::var_os(PROBE_OUT) else {
        return;
    };
    let options = LoadOptions::default();
    let seen = Seen {
        cache_dir: options.cache_dir.clone(),
        allow_download: options.allow_download,
        base_url: options.base_url.clone(),
        dirs: dirs(&options),
        dirs_with_explicit: dirs(&options.with_dir("/explicit")),
    };
    std::fs::write(out, serde_json::to_string(&seen).unwrap()).unwrap();
}

/// `LoadOptions::default()` in a child process whose environment has `vars`
/// set and the other [`VARS`] unset.
fn default_with(vars: &[(&str, &str)]) -> Seen {
    // The test's name within this binary: its module path without the crate.
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let name = format!("{module}::probe");
    let tmp = TempDir::new().unwrap();
    let out = tmp.path().join("seen.json");

    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["--exact", &name, "--test-threads=1", "--quiet"]);
    for name in VARS {
        command.env_remove(name);
    }
    command.envs(vars.iter().copied()).env(PROBE_OUT, &out);
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "the probe failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let json = std::fs::read_to_string(&out)
        .unwrap_or_else(|e| panic!("test {name} wrote no {}: {e}", out.display()));
    serde_json::from_str(&json).unwrap()
}

#[test]
fn default_options_follow_the_environment() {
    // Variables accumulate from one step to the next, as in a shell session.
    let mut env: Vec<(&str, &str)> = Vec::new();

    let seen = default_with(&env);
    assert_eq!(seen.cache_dir, None, "no HOME, no cache");
    assert!(seen.allow_download);
    assert_eq!(seen.base_url, DEFAULT_BASE_URL);
    assert_eq!(
        seen.dirs,
        [Path::new(PROJECT_LOCAL_DIR), Path::new(DEBIAN_DIR)]
    );

    env.push(("HOME", "/home/reader"));
    let cache = PathBuf::from("/home/reader/.cache/bnbook/fashion-mnist");
    assert_eq!(default_with(&env).cache_dir, Some(cache.clone()));

    // A relative XDG_CACHE_HOME is invalid and ignored; an absolute one wins.
    env.push(("XDG_CACHE_HOME", "relative/cache"));
    assert_eq!(default_with(&env).cache_dir, Some(cache));
    env.pop();
    env.push(("XDG_CACHE_HOME", "/xdg"));
    let cache = PathBuf::from("/xdg/bnbook/fashion-mnist");
    assert_eq!(default_with(&env).cache_dir, Some(cache.clone()));

    env.push(("FASHION_MNIST_DIR", "/from/env"));
    assert_eq!(
        default_with(&env).dirs_with_explicit,
        [
            Path::new("/explicit"),
            Path::new("/from/env"),
            Path::new(PROJECT_LOCAL_DIR),
            &cache,
            Path::new(DEBIAN_DIR),
        ]
    );

    env.push(("BNBOOK_DATA_URL", "http://mirror.example/fmnist/"));
    assert_eq!(default_with(&env).base_url, "http://mirror.example/fmnist/");

    for (value, offline) in [
        ("1", true),
        ("true", true),
        ("y", true),
        ("0", false),
        ("off", false),
        ("", false),
    ] {
        env.push(("BNBOOK_OFFLINE", value));
        assert_eq!(
            default_with(&env).allow_download,
            !offline,
            "BNBOOK_OFFLINE={value:?}"
        );
        env.pop();
    }
}
