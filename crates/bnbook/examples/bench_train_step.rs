//! Times training steps of every model (`bnbook bench` does the same for one).
//!
//! ```text
//! cargo run --release --example bench_train_step
//! ```

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), bnbook::Error> {
    let batches = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    for model in bnbook::models::ModelKind::ALL {
        println!("{}", bnbook::bench::bench(model, 256, batches)?);
    }
    Ok(())
}
