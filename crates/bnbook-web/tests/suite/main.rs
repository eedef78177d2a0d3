//! Tests of the browser lab's Rust side (native build).

mod demo;
mod parity;
mod trainer;
