//! The instruments of the chapter "What batch norm does to training":
//! recording a forward pass changes nothing (gradient check, bit-for-bit
//! comparison), a traced training run is the same bits as `train`, the
//! loss-landscape probe leaves the network as it found it, and the variants
//! are the networks they say they are.

use crate::invalid_argument;
use bnbook::Tensor;
use bnbook::data::FashionMnist;
use bnbook::dynamics::{
    LayerActivity, TraceOptions, Variant, probe_landscape, scale_weights, sigmoid_input,
    train_traced, weight_gradients,
};
use bnbook::gradcheck::GradCheck;
use bnbook::models::ModelKind;
use bnbook::ndarray::{ArrayD, IxDyn};
use bnbook::nn::{
    Conv2d, DistributionNoise, Dropout, Linear, Mode, Module, NoiseOptions, Sequential, Sigmoid,
};
use bnbook::random::{random_input, random_pixels};
use bnbook::scratch::BatchNorm;
use bnbook::train::{TrainConfig, train};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::cell::RefCell;

fn small_net() -> Sequential {
    let rng = &mut StdRng::seed_from_u64(1);
    Sequential::new()
        .with(Linear::new(5, 4, rng).unwrap())
        .with(BatchNorm::new(4, 2).unwrap())
        .with(Sigmoid)
        .with(Linear::new(4, 3, rng).unwrap())
}

#[test]
fn recording_a_forward_pass_changes_neither_outputs_nor_gradients() {
    let x = random_input(&[6, 5], -2.0, 2.0, 3);
    // the gradient check runs through the recorded forward pass
    let net = RefCell::new(small_net());
    let seen = RefCell::new(Vec::new());
    let report = GradCheck::default().run(std::slice::from_ref(&x), |t| {
        net.borrow_mut()
            .forward_recorded(&t[0], Mode::Train, &mut |a: LayerActivity<'_>| {
                seen.borrow_mut()
                    .push((a.index, a.input.shape(), a.output.shape()))
            })
            .unwrap()
    });
    assert!(report.passed(), "{report}");
    let first: Vec<_> = seen.borrow()[..4].to_vec();
    assert_eq!(
        first,
        vec![
            (0, vec![6, 5], vec![6, 4]),
            (1, vec![6, 4], vec![6, 4]),
            (2, vec![6, 4], vec![6, 4]),
            (3, vec![6, 4], vec![6, 3]),
        ]
    );
    // and bit for bit: same output, same parameter gradients as forward
    let (mut plain, mut recorded) = (small_net(), small_net());
    let input = Tensor::new(x);
    let y = plain.forward(&input, Mode::Train).unwrap();
    let z = recorded
        .forward_recorded(&input, Mode::Train, &mut |_| {})
        .unwrap();
    assert_eq!(*y.value(), *z.value());
    y.softmax_cross_entropy(&[0, 1, 2, 0, 1, 2])
        .unwrap()
        .backward();
    z.softmax_cross_entropy(&[0, 1, 2, 0, 1, 2])
        .unwrap()
        .backward();
    for (p, q) in plain.parameters().iter().zip(&recorded.parameters()) {
        assert_eq!(p.grad(), q.grad());
    }
}

#[test]
fn sigmoid_inputs_are_summarised_by_share_saturated_and_percentiles() {
    // unit 1 holds 0, 1, ..., 19; unit 0 is ±10 (saturated)
    let mut z = ArrayD::zeros(IxDyn(&[20, 2]));
    for i in 0..20 {
        z[[i, 0]] = if i % 2 == 0 { 10.0 } else { -10.0 };
        z[[i, 1]] = i as f32;
    }
    let s = sigmoid_input(&z, 1, 4.0).unwrap();
    assert_eq!(s.watched, [2.0, 9.0, 16.0]); // nearest rank: 3rd, 10th, 17th of 20
    // 20 of unit 0 and the 15 values 5..=19 of unit 1 exceed 4
    assert_eq!(s.saturated, 35.0 / 40.0);
    let message = invalid_argument(sigmoid_input(&z, 2, 4.0));
    assert!(
        message.contains("watched unit 2 does not exist"),
        "{message}"
    );
    // a convolutional channel: over examples and positions
    let conv = ArrayD::from_shape_fn(IxDyn(&[2, 3, 2, 2]), |i| i[1] as f32);
    assert_eq!(sigmoid_input(&conv, 2, 4.0).unwrap().watched, [2.0; 3]);
}

#[test]
fn weights_can_be_scaled_and_their_gradients_read() {
    let net = ModelKind::LenetBn
        .build(&mut StdRng::seed_from_u64(0))
        .unwrap();
    let before = weight_gradients(&net);
    assert_eq!(before.len(), 5, "two convolutions, three linear layers");
    assert!(before.iter().all(|g| g.gradient_norm == 0.0));
    assert_eq!(scale_weights(&net, 10.0).unwrap(), 5);
    let after = weight_gradients(&net);
    for (b, a) in before.iter().zip(&after) {
        let ratio = a.weight_norm / b.weight_norm;
        assert!((ratio - 10.0).abs() < 1e-4, "{}: {ratio}", a.layer);
    }
    for bad in [0.0, -1.0, f32::NAN] {
        let message = invalid_argument(scale_weights(&net, bad));
        assert!(
            message.contains("weight scale must be a positive"),
            "{message}"
        );
    }
}

fn count<T: Module>(net: &Sequential) -> usize {
    net.find::<T>().len()
}

#[test]
fn variants_are_the_networks_they_say() {
    let bn = Variant::BATCH_NORM;
    let noisy = bn.with_noise(NoiseOptions::default());
    let dropout = Variant::NO_NORM.with_dropout(0.5);
    let poor = bn.with_weight_scale(0.1);
    let names: Vec<String> = [bn, Variant::NO_NORM, noisy, dropout, poor]
        .iter()
        .map(Variant::name)
        .collect();
    assert_eq!(
        names,
        [
            "lenet-bn",
            "lenet-no-norm",
            "lenet-bn+noise",
            "lenet-no-norm+dropout",
            "lenet-bn×0.1"
        ]
    );
    let net = noisy.build(0).unwrap();
    assert_eq!(count::<DistributionNoise>(&net), 4, "one after each BN");
    for (i, layer) in net.layers().iter().enumerate() {
        if layer.as_batch_norm().is_some() {
            assert!(net.layers()[i + 1].as_any().is::<DistributionNoise>());
        }
    }
    let net = dropout.build(0).unwrap();
    assert_eq!(count::<Dropout>(&net), 2, "after the hidden FC sigmoids");
    assert!(net.batch_norm_layers().is_empty());
    // the same initial weights as train_model's network of the same seed
    let reference = ModelKind::LenetBn
        .build(&mut StdRng::seed_from_u64(7))
        .unwrap();
    let (a, b) = (noisy.build(7).unwrap(), poor.build(7).unwrap());
    for (r, n) in reference.parameters().iter().zip(&a.parameters()) {
        assert_eq!(*r.value(), *n.value());
    }
    let weights = |net: &Sequential| -> Vec<ArrayD<f32>> {
        let linear = net
            .find::<Linear>()
            .into_iter()
            .map(|l| l.weight.value().clone());
        let conv = net
            .find::<Conv2d>()
            .into_iter()
            .map(|c| c.weight.value().clone());
        conv.chain(linear).collect()
    };
    for (r, p) in weights(&reference).iter().zip(&weights(&b)) {
        assert_eq!(*p, r.mapv(|v| v * 0.1));
    }
    let message = invalid_argument(
        Variant::NO_NORM
            .with_noise(NoiseOptions::default())
            .build(0),
    );
    assert!(message.contains("has none"), "{message}");
    let message = invalid_argument(bn.with_dropout(1.0).build(0));
    assert!(message.contains("drop probability"), "{message}");
    let message = invalid_argument(bn.with_weight_scale(0.0).build(0));
    assert!(message.contains("weight scale"), "{message}");
}

#[test]
fn the_landscape_probe_leaves_the_network_as_it_found_it() {
    let mut net = Variant::BATCH_NORM.build(0).unwrap();
    let x = Tensor::new(random_input(&[16, 1, 28, 28], 0.0, 1.0, 4));
    let labels: Vec<usize> = (0..16).map(|i| i % 10).collect();
    let values = |net: &Sequential| -> Vec<ArrayD<f32>> {
        net.parameters().iter().map(|p| p.value().clone()).collect()
    };
    let running = |net: &Sequential| -> Vec<Vec<f32>> {
        net.batch_norm_layers()
            .iter()
            .map(|(_, bn)| bn.running_mean())
            .collect()
    };
    let (weights, stats) = (values(&net), running(&net));
    let probe = probe_landscape(&mut net, &x, &labels, &[1e-4, 0.5, 2.0]).unwrap();
    assert_eq!(values(&net), weights);
    assert_eq!(running(&net), stats);
    assert!(net.parameters().iter().all(|p| p.grad().is_none()));
    for (_, bn) in net.batch_norm_layers() {
        assert_eq!(bn.momentum(), bnbook::nn::Momentum::from_old_weight(0.9));
    }
    // a tiny step barely moves the loss or the gradient; a step downhill lowers the loss
    assert!((probe.loss_at[0] - probe.loss).abs() < 1e-3, "{probe:?}");
    assert!(probe.gradient_change[0] < 1e-2 * probe.gradient_norm);
    assert!(probe.loss_at[1] < probe.loss, "{probe:?}");
    assert!(probe.loss_range() >= (probe.loss - probe.loss_at[1]).abs());
    assert!(probe.smoothness().is_finite() && probe.smoothness() > 0.0);
    // random layers would change the run; bad step sizes say so
    let mut noisy = Variant::BATCH_NORM.with_dropout(0.5).build(0).unwrap();
    let message = invalid_argument(probe_landscape(&mut noisy, &x, &labels, &[1.0]));
    assert!(message.contains("dropout"), "{message}");
    let message = invalid_argument(probe_landscape(&mut net, &x, &labels, &[]));
    assert!(message.contains("positive step sizes"), "{message}");
}

/// `n` random images with labels 0..9, the same in both splits.
fn random_data(n: usize) -> FashionMnist {
    let mut data = FashionMnist::blank(n);
    data.train.pixels = random_pixels(n, 5);
    data.train.labels = (0..n).map(|i| (i % 10) as u8).collect();
    data.test = data.train.clone();
    data
}

#[test]
fn a_traced_run_is_the_same_bits_as_train() {
    let data = random_data(300);
    let config = TrainConfig {
        epochs: 2,
        batch_size: 64,
        progress: false,
        ..TrainConfig::d2l(ModelKind::LenetBn)
    };
    let metrics = |h: &bnbook::train::History| -> Vec<[f64; 3]> {
        h.history
            .iter()
            .map(|r| [r.loss, r.train_acc, r.test_acc])
            .collect()
    };
    let mut plain = Variant::BATCH_NORM.build(0).unwrap();
    let untraced = train(&mut plain, "lenet-bn", &data, &config, |_| {}).unwrap();
    let options = TraceOptions {
        records_per_epoch: 2,
        step_sizes: vec![0.5, 1.0],
        ..TraceOptions::default()
    };
    let mut net = Variant::BATCH_NORM.build(0).unwrap();
    let (traced, trace) =
        train_traced(&mut net, "lenet-bn", &data, &config, &options, |_| {}).unwrap();
    assert_eq!(metrics(&traced), metrics(&untraced));
    for (p, q) in plain.parameters().iter().zip(&net.parameters()) {
        assert_eq!(*p.value(), *q.value());
    }
    // 5 steps per epoch (300 = 4 × 64 + 44), one record every 2 steps, and the last
    assert_eq!(trace.steps_per_epoch, 5);
    let steps: Vec<usize> = trace.records.iter().map(|r| r.step).collect();
    assert_eq!(steps, [0, 2, 4, 6, 8, 9]);
    let first = &trace.records[0];
    assert_eq!(first.sigmoids.len(), 4);
    assert_eq!(first.gradients.len(), 5);
    assert!(first.gradients.iter().all(|g| g.gradient_norm > 0.0));
    assert_eq!(first.landscape.as_ref().unwrap().loss_at.len(), 2);
    // a watched unit that does not exist is refused at the first step
    let bad = TraceOptions {
        watch_unit: 6,
        ..TraceOptions::default()
    };
    let mut net = Variant::NO_NORM.build(0).unwrap();
    let message =
        invalid_argument(train_traced(&mut net, "x", &data, &config, &bad, |_| {}).map(|_| ()));
    assert!(message.contains("6 units"), "{message}");
    let none = TraceOptions {
        records_per_epoch: 0,
        ..TraceOptions::default()
    };
    let message =
        invalid_argument(train_traced(&mut net, "x", &data, &config, &none, |_| {}).map(|_| ()));
    assert!(message.contains("at least 1 record"), "{message}");
}
