//! Doc-tests for the book: every Rust code block in every `book/**/*.md` is
//! compiled and run by `cargo test` (the build script finds the chapters, so a
//! new chapter is picked up without editing this crate). The blocks can
//! `use bnbook::...` directly; no `extern crate` line is needed.
//!
//! Rules for chapter code blocks:
//! * A block that `{{#include}}`s crate code must be `rust,ignore`: rustdoc
//!   sees the raw `{{#include ...}}` directive, not the included code (the
//!   crate's own tests cover that code).
//! * A plain `rust` block must compile and run; use `no_run` for code that
//!   needs data or takes long, `should_panic` for a deliberate panic, and
//!   `text` for output that is not Rust.
//! * Hidden `# ` lines work as in mdbook.

#![allow(non_camel_case_types)]

macro_rules! chapter {
    ($name:ident, $path:expr) => {
        #[cfg(doctest)]
        #[doc = include_str!($path)]
        pub struct $name;
    };
}

include!(concat!(env!("OUT_DIR"), "/chapters.rs"));
