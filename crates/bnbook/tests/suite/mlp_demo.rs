//! The whole training loop on a problem small enough to run in a second:
//! a 2-layer MLP learns three interleaved spirals (a classic that no linear
//! model can separate). Stated target: ≥ 95 % accuracy on held-out points.
//!
//! The loop is the one every chapter uses:
//! forward → loss → backward → SGD step → zero grads.

use bnbook::ndarray::Array2;
use bnbook::nn::{Linear, Module, ReLU, Sequential, Sgd, count_correct};
use bnbook::{Mode, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CLASSES: usize = 3;

/// `per_class` noisy points on each of three spiral arms.
fn spirals(per_class: usize, rng: &mut StdRng) -> (Tensor, Vec<usize>) {
    let mut points = Array2::<f32>::zeros((per_class * CLASSES, 2));
    let mut labels = Vec::with_capacity(per_class * CLASSES);
    for class in 0..CLASSES {
        for i in 0..per_class {
            let r = i as f32 / per_class as f32;
            let angle = class as f32 * 4.0 + r * 4.0 + rng.random_range(-0.2..0.2);
            let row = class * per_class + i;
            points[[row, 0]] = r * angle.sin();
            points[[row, 1]] = r * angle.cos();
            labels.push(class);
        }
    }
    (Tensor::new(points.into_dyn()), labels)
}

fn accuracy(net: &mut Sequential, x: &Tensor, y: &[usize]) -> f32 {
    let logits = net.forward(x, Mode::Eval).unwrap();
    count_correct(&logits, y).unwrap() as f32 / y.len() as f32
}

#[test]
fn two_layer_mlp_learns_spirals() {
    let mut rng = StdRng::seed_from_u64(0);
    let (train_x, train_y) = spirals(200, &mut rng);
    let (test_x, test_y) = spirals(100, &mut rng);
    let mut net = Sequential::new()
        .with(Linear::new(2, 64, &mut rng).unwrap())
        .with(ReLU)
        .with(Linear::new(64, CLASSES, &mut rng).unwrap());
    let params = net.parameters();
    let sgd = Sgd::new(0.5).unwrap();

    let mut first_loss = None;
    let mut loss_value = 0.0;
    for epoch in 0..2000 {
        let logits = net.forward(&train_x, Mode::Train).unwrap(); // forward
        let loss = logits.softmax_cross_entropy(&train_y).unwrap(); // loss
        loss.backward(); // backward
        sgd.step(&params); // SGD step
        sgd.zero_grad(&params); // zero grads
        loss_value = loss.item();
        first_loss.get_or_insert(loss_value);
        if epoch % 400 == 0 {
            println!("epoch {epoch:4}: loss {loss_value:.4}");
        }
    }
    let (train_acc, test_acc) = (
        accuracy(&mut net, &train_x, &train_y),
        accuracy(&mut net, &test_x, &test_y),
    );
    println!("final loss {loss_value:.4}, train acc {train_acc:.3}, test acc {test_acc:.3}");
    assert!(
        loss_value < 0.25 * first_loss.unwrap(),
        "loss should fall a lot"
    );
    assert!(test_acc >= 0.95, "test accuracy {test_acc}");
}

#[test]
fn sgd_refuses_learning_rates_that_cannot_descend() {
    // one rule with the training settings (PyTorch's SGD takes 0, which
    // trains nothing; here 0 is refused by the optimizer and by TrainConfig)
    for lr in [-0.1, 0.0, f32::NAN, f32::INFINITY] {
        let err = Sgd::new(lr).unwrap_err().to_string();
        assert!(
            err.contains("learning rate must be a positive number"),
            "{lr}: {err}"
        );
    }
    assert!(Sgd::new(1e-6).is_ok());
}
