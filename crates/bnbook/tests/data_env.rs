//! `LoadOptions::default()` reads the environment.
//!
//! Changing environment variables is only sound while no other thread reads
//! them, so this file holds a single test (each test file is its own
//! process) that changes them one step at a time.

use std::path::{Path, PathBuf};

use bnbook::data::{DEBIAN_DIR, DEFAULT_BASE_URL, LoadOptions, PROJECT_LOCAL_DIR};

const VARS: [&str; 5] = [
    "FASHION_MNIST_DIR",
    "BNBOOK_DATA_URL",
    "BNBOOK_OFFLINE",
    "XDG_CACHE_HOME",
    "HOME",
];

fn set(name: &str, value: Option<&str>) {
    // SAFETY: this test binary runs a single test on a single thread, so
    // nothing reads the environment concurrently.
    unsafe {
        match value {
            Some(value) => std::env::set_var(name, value),
            None => std::env::remove_var(name),
        }
    }
}

fn dirs(options: &LoadOptions) -> Vec<PathBuf> {
    options.search_order().into_iter().map(|s| s.dir).collect()
}

#[test]
fn default_options_follow_the_environment() {
    for name in VARS {
        set(name, None);
    }
    let options = LoadOptions::default();
    assert_eq!(options.cache_dir, None, "no HOME, no cache");
    assert!(options.allow_download);
    assert_eq!(options.base_url, DEFAULT_BASE_URL);
    assert_eq!(
        dirs(&options),
        [Path::new(PROJECT_LOCAL_DIR), Path::new(DEBIAN_DIR)]
    );

    set("HOME", Some("/home/reader"));
    let cache = PathBuf::from("/home/reader/.cache/bnbook/fashion-mnist");
    assert_eq!(LoadOptions::default().cache_dir, Some(cache.clone()));

    // A relative XDG_CACHE_HOME is invalid and ignored; an absolute one wins.
    set("XDG_CACHE_HOME", Some("relative/cache"));
    assert_eq!(LoadOptions::default().cache_dir, Some(cache));
    set("XDG_CACHE_HOME", Some("/xdg"));
    let cache = PathBuf::from("/xdg/bnbook/fashion-mnist");
    assert_eq!(LoadOptions::default().cache_dir, Some(cache.clone()));

    set("FASHION_MNIST_DIR", Some("/from/env"));
    let options = LoadOptions::default().with_dir("/explicit");
    assert_eq!(
        dirs(&options),
        [
            Path::new("/explicit"),
            Path::new("/from/env"),
            Path::new(PROJECT_LOCAL_DIR),
            &cache,
            Path::new(DEBIAN_DIR),
        ]
    );

    set("BNBOOK_DATA_URL", Some("http://mirror.example/fmnist/"));
    assert_eq!(
        LoadOptions::default().base_url,
        "http://mirror.example/fmnist/"
    );

    for (value, offline) in [
        ("1", true),
        ("true", true),
        ("y", true),
        ("0", false),
        ("off", false),
        ("", false),
    ] {
        set("BNBOOK_OFFLINE", Some(value));
        assert_eq!(
            LoadOptions::default().allow_download,
            !offline,
            "BNBOOK_OFFLINE={value:?}"
        );
    }
}
