//! Writes `$OUT_DIR/chapters.rs`: one `chapter!` item per `book/**/*.md`, so a
//! new chapter is doc-tested without touching this crate.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        // Directories are watched too, so an added or removed file reruns this script.
        println!("cargo:rerun-if-changed={}", path.display());
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let book = manifest.join("../../book");
    println!("cargo:rerun-if-changed=../../book");
    let mut chapters = Vec::new();
    collect(&book, &mut chapters);

    let mut code = String::new();
    for (i, path) in chapters.iter().enumerate() {
        let rel = path
            .strip_prefix(&book)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let abs = path.canonicalize().unwrap();
        // The item name shows up in the test names next to the file and line.
        let name: String = rel
            .trim_end_matches(".md")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        writeln!(
            code,
            "chapter!(Chapter{i}_{name}, {:?});",
            abs.to_str().unwrap()
        )
        .unwrap();
    }
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("chapters.rs");
    fs::write(out, code).unwrap();
}
