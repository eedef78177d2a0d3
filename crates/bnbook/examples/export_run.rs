//! Writes the initial weights of `lenet-bn` for a seed and the example order
//! of every epoch as JSON, so that another framework can replay exactly the
//! same training run (`scripts/replay_in_pytorch.py` does it for PyTorch).
//!
//! ```text
//! cargo run --release --example export_run -- SEED EPOCHS OUT.json
//! ```

use bnbook::data::{BatchOptions, LastBatch};
use bnbook::models::ModelKind;
use bnbook::nn::Module;
use bnbook::rand::{SeedableRng, rngs::StdRng};
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let seed: u64 = args.get(1).map_or(Ok(0), |s| s.parse())?;
    let epochs: u64 = args.get(2).map_or(Ok(10), |s| s.parse())?;
    let out = args.get(3).cloned().unwrap_or_else(|| "run.json".into());
    // the same construction as train::train_model
    let net = ModelKind::LenetBn.build(&mut StdRng::seed_from_u64(seed))?;
    let params: Vec<_> = net
        .parameters()
        .iter()
        .map(|p| json!({"shape": p.shape(), "values": p.value().iter().copied().collect::<Vec<f32>>()}))
        .collect();
    // the same batch options as train::train
    let orders: Vec<Vec<usize>> = (0..epochs)
        .map(|epoch| {
            BatchOptions {
                shuffle_seed: Some(seed),
                epoch,
                limit: None,
                last_batch: LastBatch::DropIfSmallerThan(2),
            }
            .order(60_000)
        })
        .collect();
    let doc = json!({"model": "lenet-bn", "seed": seed, "parameters": params, "orders": orders});
    std::fs::write(&out, serde_json::to_string(&doc)?)?;
    println!("wrote {out}");
    Ok(())
}
