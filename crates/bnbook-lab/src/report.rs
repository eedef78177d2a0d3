//! Writing a command's results: every artefact into one directory, listed in
//! a manifest (`figures.json`) with the command that made it, and the run
//! time as a phrase the book includes.
//!
//! Shared by `bnbook figures` ([`crate::figures`]) and `bnbook norms`
//! ([`crate::compare`]).

use bnbook::error::{Error, Result};
use bnbook::plot::Svg;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// One artefact written by a [`Writer`].
#[derive(Clone, Debug, Serialize)]
pub struct Artefact {
    /// File name inside the output directory.
    pub file: String,
    /// What it shows (used as caption or alt text).
    pub description: String,
}

/// The manifest `figures.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Manifest {
    /// The command line that produced everything.
    pub command: String,
    /// Epochs, seeds and limit used.
    pub epochs: usize,
    /// Seeds of the LeNet-BN runs.
    pub seeds: Vec<u64>,
    /// Example limit, if any.
    pub limit: Option<usize>,
    /// Wall-clock time of the whole run, in seconds.
    pub seconds: f64,
    /// Worker threads it ran on.
    pub threads: usize,
    /// Everything written.
    pub artefacts: Vec<Artefact>,
}

/// `n thing` or `n things`: `plural(1, "seed")` is `1 seed`, `plural(3,
/// "seed")` is `3 seeds`.
pub fn plural(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// How the book quotes a run's duration: `about 5 minutes on 2 threads`
/// (whole minutes, at least one).
pub fn run_time_phrase(seconds: f64, threads: usize) -> String {
    let minutes = (seconds / 60.0).round().max(1.0) as usize;
    format!(
        "about {} on {}",
        plural(minutes, "minute"),
        plural(threads, "thread")
    )
}

/// Writes artefacts into a directory and remembers them for the manifest.
pub struct Writer {
    out: PathBuf,
    /// What has been written so far, in order.
    pub artefacts: Vec<Artefact>,
}

impl Writer {
    /// Creates `out` if needed.
    ///
    /// # Errors
    /// If `out` is a file or cannot be created.
    pub fn new(out: &std::path::Path) -> Result<Self> {
        if out.exists() && !out.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{} is a file, not a directory; give a directory to write the figures into",
                out.display()
            )));
        }
        std::fs::create_dir_all(out).map_err(|source| Error::Io {
            what: format!("cannot create the directory {}", out.display()),
            source,
        })?;
        Ok(Writer {
            out: out.to_path_buf(),
            artefacts: Vec::new(),
        })
    }

    /// Writes `contents` to `file` in the output directory and lists it
    /// with `description`.
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn write(&mut self, file: &str, description: &str, contents: &str) -> Result<()> {
        let path = self.out.join(file);
        std::fs::write(&path, contents).map_err(|source| Error::Io {
            what: format!("cannot write {}", path.display()),
            source,
        })?;
        println!("wrote {}", path.display());
        self.artefacts.push(Artefact {
            file: file.to_string(),
            description: description.to_string(),
        });
        Ok(())
    }

    /// Writes `value` as pretty JSON (see [`Writer::write`]).
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn json(&mut self, file: &str, description: &str, value: &impl Serialize) -> Result<()> {
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        self.write(file, description, &(text + "\n"))
    }

    /// Writes an SVG figure (see [`Writer::write`]).
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn svg(&mut self, file: &str, description: &str, svg: &Svg) -> Result<()> {
        self.write(file, description, svg.as_str())
    }

    /// Ends a run that began at `started`: writes `run-time.md` (one phrase
    /// without a line break, for the book to include inside a sentence)
    /// and then the manifest `figures.json` listing everything written.
    ///
    /// # Errors
    /// If a file cannot be written.
    pub fn finish(
        mut self,
        command: &str,
        epochs: usize,
        seeds: &[u64],
        limit: Option<usize>,
        started: Instant,
    ) -> Result<Manifest> {
        let seconds = started.elapsed().as_secs_f64();
        let threads = rayon::current_num_threads();
        self.write(
            "run-time.md",
            "how long the command that wrote these files ran",
            &run_time_phrase(seconds, threads),
        )?;
        let manifest = Manifest {
            command: command.to_string(),
            epochs,
            seeds: seeds.to_vec(),
            limit,
            seconds,
            threads,
            artefacts: self.artefacts.clone(),
        };
        self.json("figures.json", "this list", &manifest)?;
        Ok(manifest)
    }
}
