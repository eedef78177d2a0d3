//! Micro-benchmark: forward + backward of a LeNet-sized convolution.
//!
//! Batch 256, 1 → 6 channels, 5×5 kernel, 28×28 input (without padding, as in
//! LeNet-BN, and with padding 2, as in plain LeNet). Run it optimised:
//!
//! ```text
//! cargo run --release --example bench_conv            # threads from MATMUL_NUM_THREADS
//! MATMUL_NUM_THREADS=1 cargo run --release --example bench_conv
//! ```
//!
//! It prints the median and spread of repeated timings; there are no timed
//! assertions anywhere in the tests.

use bnbook::Tensor;
use bnbook::random::random_input;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(padding: usize, reps: usize) {
    let x = Tensor::new(random_input(&[256, 1, 28, 28], 0.0, 1.0, 1));
    let w = Tensor::parameter(random_input(&[6, 1, 5, 5], -0.3, 0.3, 2));
    let b = Tensor::parameter(random_input(&[6], -0.1, 0.1, 3));
    let (mut fwd, mut total) = (Vec::new(), Vec::new());
    for rep in 0..reps + 5 {
        let start = Instant::now();
        let y = x.conv2d(&w, Some(&b), 1, padding);
        let forward_done = Instant::now();
        y.sum_all().backward();
        let end = Instant::now();
        w.zero_grad();
        b.zero_grad();
        if rep >= 5 {
            // the first five are warm-up
            fwd.push((forward_done - start).as_secs_f64() * 1e3);
            total.push((end - start).as_secs_f64() * 1e3);
        }
    }
    let (lo, hi) = (
        total.iter().copied().fold(f64::INFINITY, f64::min),
        total.iter().copied().fold(0.0, f64::max),
    );
    println!(
        "conv2d (256,1,28,28) * (6,1,5,5), padding {padding}: forward {:.2} ms, forward+backward {:.2} ms median (min {lo:.2}, max {hi:.2}, {reps} reps)",
        median(fwd),
        median(total.clone()),
    );
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    bnbook_lab::bench::keep_freed_memory();
    let threads = std::env::var("MATMUL_NUM_THREADS").unwrap_or_else(|_| "default".into());
    println!("MATMUL_NUM_THREADS = {threads}");
    bench(0, 50);
    bench(2, 50);
}
