//! Test accuracy of a trained LeNet-BN with the running statistics
//! (`Mode::Eval`, the intended way) and with each test batch's own
//! statistics (`Mode::Train`, what happens when eval mode is forgotten),
//! plus the running statistics themselves.
//!
//! ```text
//! cargo run --release --example eval_modes -- SEED EPOCHS   # defaults: 1 10
//! ```
//!
//! At lr 1.0 the weights still move a lot in the last steps of an epoch, so
//! running averages over the last ~10 batches can lag behind the final
//! weights; comparing the two numbers shows how much.
//!
//! This is a one-seed, full-size peek. The evidence — three seeds, every
//! epoch, five momentum conventions, the lag of the statistics measured,
//! test batches of 256, 8 and 1 in both modes — is written by
//! `bnbook inference` and shown in the chapter "Batch norm at inference and
//! with small batches" (`book/generated/inference/momentum.md`,
//! `pitfalls.md`).

use bnbook::Tensor;
use bnbook::data::{BatchOptions, FashionMnist};
use bnbook::models::ModelKind;
use bnbook::nn::Sequential;
use bnbook::nn::{Mode, Module, count_correct};
use bnbook::rand::{SeedableRng, rngs::StdRng};
use bnbook::train::{TrainConfig, evaluate, train_model};

/// Copies every parameter value of `from` into `to` (same architecture).
fn copy_parameters(from: &Sequential, to: &Sequential) {
    for (a, b) in from.parameters().iter().zip(to.parameters()) {
        *b.value_mut() = a.value().clone();
    }
}

fn main() -> Result<(), bnbook::Error> {
    let seed: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let epochs: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let data = FashionMnist::load_default()?;
    let config = TrainConfig {
        epochs,
        seed,
        progress: false,
        ..TrainConfig::d2l(ModelKind::LenetBn)
    };
    let (mut net, h) = train_model(ModelKind::LenetBn, &data, &config, |r| println!("{r:?}"))?;
    println!(
        "final test acc (running stats): {:.4}",
        h.last().unwrap().test_acc
    );
    for (i, bn) in net.batch_norm_layers() {
        println!(
            "layer {i}: running mean {:?}",
            &bn.running_mean()[..bn.num_features().min(6)]
        );
        println!(
            "layer {i}: running var  {:?}",
            &bn.running_var()[..bn.num_features().min(6)]
        );
    }
    // "precise BN": running statistics re-estimated for the *final* weights
    // (plain average over 40 training batches, no weight update), on a copy
    let mut precise = ModelKind::LenetBn.build(&mut StdRng::seed_from_u64(0))?;
    copy_parameters(&net, &precise);
    bnbook::train::reestimate_running_statistics(&mut precise, &data, None, seed, 40)?;
    println!(
        "test acc with running stats re-estimated on 40 training batches: {:.4}",
        evaluate(&mut precise, &data.test, 256)?
    );

    // batch statistics on test batches (this updates the running stats, so do it last)
    let (mut correct, mut seen) = (0, 0);
    for batch in data.test.batches(256, &BatchOptions::default())? {
        let logits = net.forward(&Tensor::new(batch.images.into_dyn()), Mode::Train)?;
        correct += count_correct(&logits, &batch.labels)?;
        seen += batch.labels.len();
    }
    println!(
        "test acc with each test batch's own statistics: {:.4}",
        correct as f64 / seen as f64
    );
    println!(
        "test acc with running stats after those updates: {:.4}",
        evaluate(&mut net, &data.test, 256)?
    );
    Ok(())
}
