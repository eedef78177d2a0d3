//! Micro-benchmark: forward + backward of LeNet's convolutions.
//!
//! Batch 256, 5×5 kernels: 1 → 6 channels on a 28×28 input (without padding,
//! as in LeNet-BN, and with padding 2, as in plain LeNet), and 6 → 16
//! channels on LeNet-BN's 12×12 feature maps. Run it optimised:
//!
//! ```text
//! cargo run --release --example bench_conv            # one thread per core
//! RAYON_NUM_THREADS=1 cargo run --release --example bench_conv
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

/// Times forward and forward + backward of one convolution of a batch of
/// 256 `(C, H, W)` images with `O` kernels of `5 × 5`. `input_grad` says
/// whether the input needs a gradient too (every convolution but a
/// network's first).
fn bench([c, h, w]: [usize; 3], o: usize, padding: usize, input_grad: bool, reps: usize) {
    let x = random_input(&[256, c, h, w], 0.0, 1.0, 1);
    let x = if input_grad {
        Tensor::parameter(x)
    } else {
        Tensor::new(x)
    };
    let weight = Tensor::parameter(random_input(&[o, c, 5, 5], -0.3, 0.3, 2));
    let b = Tensor::parameter(random_input(&[o], -0.1, 0.1, 3));
    let (mut fwd, mut total) = (Vec::new(), Vec::new());
    for rep in 0..reps + 5 {
        let start = Instant::now();
        let y = x.conv2d(&weight, Some(&b), 1, padding);
        let forward_done = Instant::now();
        y.sum_all().backward();
        let end = Instant::now();
        for t in [&x, &weight, &b] {
            t.zero_grad();
        }
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
    let wrt = if input_grad {
        "input, weight, bias"
    } else {
        "weight, bias"
    };
    println!(
        "conv2d (256,{c},{h},{w}) * ({o},{c},5,5), padding {padding}: forward {:.2} ms, forward+backward (gradients of {wrt}) {:.2} ms median (min {lo:.2}, max {hi:.2}, {reps} reps)",
        median(fwd),
        median(total.clone()),
    );
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    bnbook_lab::bench::keep_freed_memory();
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    println!("RAYON_NUM_THREADS = {threads}");
    bench([1, 28, 28], 6, 0, false, 50); // LeNet-BN's first convolution
    bench([1, 28, 28], 6, 2, false, 50); // plain LeNet's
    bench([6, 12, 12], 16, 0, true, 50); // LeNet-BN's second
    bench([6, 14, 14], 16, 0, true, 50); // plain LeNet's second
}
