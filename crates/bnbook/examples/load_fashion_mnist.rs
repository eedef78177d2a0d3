//! Loads Fashion-MNIST and prints what it found, and how long it took.
//!
//! ```text
//! cargo run --release --example load_fashion_mnist
//! ```
//!
//! The data is searched for as described in `bnbook::data` (set
//! `FASHION_MNIST_DIR`, or `sudo apt install dataset-fashion-mnist`, or let it
//! download into the user cache).

use std::process::ExitCode;
use std::time::Instant;

use bnbook::data::{FashionMnist, Split, class_name};

fn main() -> ExitCode {
    let start = Instant::now();
    let data = match FashionMnist::load_default() {
        Ok(data) => data,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let elapsed = start.elapsed();

    println!("training examples: {}", data.train.len());
    println!("test examples:     {}", data.test.len());
    let (mean, std) = pixel_mean_std(&data.train);
    println!("training pixels:   mean {mean:.7}, std {std:.7}");
    let names: Vec<&str> = data.train.labels[..10]
        .iter()
        .map(|&label| class_name(label).unwrap_or("?"))
        .collect();
    println!("first 10 labels:   {:?}", &data.train.labels[..10]);
    println!("                   {}", names.join(", "));
    println!(
        "loaded and verified in {:.0} ms",
        elapsed.as_secs_f64() * 1e3
    );
    ExitCode::SUCCESS
}

/// Mean and (population) standard deviation of all pixels as the network
/// sees them (`p / 255`), summed in `f64`.
fn pixel_mean_std(split: &Split) -> (f64, f64) {
    let n = split.pixels.len() as f64;
    let (sum, sum_sq) = split.pixels.iter().fold((0.0f64, 0.0f64), |(s, s2), &p| {
        let p = f64::from(f32::from(p) / 255.0);
        (s + p, s2 + p * p)
    });
    let mean = sum / n;
    (mean, (sum_sq / n - mean * mean).sqrt())
}
