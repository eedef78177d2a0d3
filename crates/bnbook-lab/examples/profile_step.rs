//! Where a training step spends its time: forward per layer, backward per op.
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release --example profile_step -- lenet-bn
//! ```

use bnbook::Tensor;
use bnbook::autograd::profile;
use bnbook::models::ModelKind;
use bnbook::nn::{Mode, Module, Sgd};
use bnbook::rand::{SeedableRng, rngs::StdRng};
use bnbook::random::random_input;
use std::time::Instant;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), bnbook::Error> {
    bnbook_lab::bench::keep_freed_memory();
    // on a thread of rayon's pool, with the other threads kept awake, as
    // `bnbook train` and `bnbook bench` run
    rayon::scope(|_| bnbook::parallel::keep_pool_awake(profile))
}

fn profile() -> Result<(), bnbook::Error> {
    let model: ModelKind = std::env::args()
        .nth(1)
        .unwrap_or("lenet-bn".into())
        .parse()?;
    let steps = 30;
    let mut net = model.build(&mut StdRng::seed_from_u64(0))?;
    let params = net.parameters();
    let sgd = Sgd::new(0.1)?;
    let x = Tensor::new(random_input(&[256, 1, 28, 28], 0.0, 1.0, 1));
    let labels: Vec<usize> = (0..256).map(|i| i % 10).collect();
    let mut forward_ms = vec![0.0; net.len()];
    let (mut backward_ms, mut step_ms) = (0.0, 0.0);
    for step in 0..steps + 3 {
        if step == 3 {
            profile::take();
            profile::enable(true);
            forward_ms.iter_mut().for_each(|v| *v = 0.0);
            (backward_ms, step_ms) = (0.0, 0.0);
        }
        let mut h = x.clone();
        for (i, layer) in net.layers_mut().iter_mut().enumerate() {
            let t = Instant::now();
            h = layer.forward(&h, Mode::Train)?;
            forward_ms[i] += t.elapsed().as_secs_f64() * 1e3;
        }
        let t = Instant::now();
        let loss = h.softmax_cross_entropy(&labels)?;
        loss.backward();
        backward_ms += t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        sgd.step(&params);
        sgd.zero_grad(&params);
        drop(loss);
        drop(h);
        step_ms += t.elapsed().as_secs_f64() * 1e3;
    }
    let n = steps as f64;
    println!("forward per layer (ms per step):");
    for (layer, ms) in net.layers().iter().zip(&forward_ms) {
        println!("  {:40} {:7.2}", layer.describe(), ms / n);
    }
    println!("forward total {:.2} ms", forward_ms.iter().sum::<f64>() / n);
    println!(
        "loss + backward {:.2} ms; update + free {:.2} ms",
        backward_ms / n,
        step_ms / n
    );
    println!("backward per op (ms per step):");
    for (op, calls, s) in profile::take() {
        println!(
            "  {op:24} {:5} calls {:7.2}",
            calls / steps as u64,
            s * 1e3 / n
        );
    }
    Ok(())
}
