//! Finite-difference checks of every layer, with respect to its input and
//! to each of its parameters, plus the layers' shape errors.

use bnbook::gradcheck::GradCheck;
use bnbook::ndarray::ArrayD;
use bnbook::nn::{
    AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, Module, ReLU, Sequential, Sigmoid, count_correct,
};
use bnbook::random::random_input;
use bnbook::{Mode, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::cell::RefCell;

use crate::invalid_argument;

/// Checks `layer` at input `x`: the inputs of the check are `x` followed by
/// the layer's parameters, which are swapped into the layer on every call.
fn check_layer<M: Module>(
    name: &str,
    layer: M,
    x: ArrayD<f32>,
    set_params: impl Fn(&mut M, &[Tensor]),
) {
    let mut inputs = vec![x];
    inputs.extend(layer.parameters().iter().map(|p| p.value().clone()));
    let layer = RefCell::new(layer);
    GradCheck::default().assert_passes(name, &inputs, |t| {
        let mut layer = layer.borrow_mut();
        set_params(&mut layer, &t[1..]);
        layer.forward(&t[0], Mode::Train).expect("valid shapes")
    });
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

#[test]
fn linear() {
    let layer = Linear::new(5, 3, &mut rng()).unwrap();
    check_layer(
        "Linear(5 -> 3)",
        layer,
        random_input(&[4, 5], -1.0, 1.0, 1),
        |l, p| {
            l.weight = p[0].clone();
            l.bias = p[1].clone();
        },
    );
}

#[test]
fn conv2d() {
    let layer = Conv2d::new(2, 3, 3, &mut rng()).unwrap().with_padding(1);
    check_layer(
        "Conv2d(2 -> 3, 3x3, padding 1)",
        layer,
        random_input(&[2, 2, 5, 5], -1.0, 1.0, 2),
        |l, p| {
            l.weight = p[0].clone();
            l.bias = p[1].clone();
        },
    );
    let layer = Conv2d::new(1, 2, 2, &mut rng())
        .unwrap()
        .with_stride(2)
        .unwrap();
    check_layer(
        "Conv2d(1 -> 2, 2x2, stride 2)",
        layer,
        random_input(&[2, 1, 6, 6], -1.0, 1.0, 3),
        |l, p| {
            l.weight = p[0].clone();
            l.bias = p[1].clone();
        },
    );
}

#[test]
fn pooling_and_activations() {
    let image = || random_input(&[2, 2, 4, 4], -2.0, 2.0, 4);
    check_layer(
        "AvgPool2d",
        AvgPool2d::new(2, 2).unwrap(),
        image(),
        |_, _| {},
    );
    // distinct values 0.05 apart: no near-ties inside a window
    let spaced = ArrayD::from_shape_fn(vec![2, 2, 4, 4], |d| {
        ((d[0] * 37 + d[1] * 17 + d[2] * 5 + d[3] * 11) % 64) as f32 * 0.05
    });
    check_layer(
        "MaxPool2d",
        MaxPool2d::new(2, 2).unwrap(),
        spaced,
        |_, _| {},
    );
    check_layer("Sigmoid", Sigmoid, image(), |_, _| {});
    let away_from_zero = image().mapv(|v| if v.abs() < 0.1 { v + 0.3 } else { v });
    check_layer("ReLU", ReLU, away_from_zero, |_, _| {});
    check_layer("Flatten", Flatten, image(), |_, _| {});
}

#[test]
fn sequential_small_lenet() {
    let mut r = rng();
    let net = Sequential::new()
        .with(Conv2d::new(1, 2, 3, &mut r).unwrap().with_padding(1))
        .with(Sigmoid)
        .with(AvgPool2d::new(2, 2).unwrap())
        .with(Flatten)
        .with(Linear::new(2 * 3 * 3, 4, &mut r).unwrap())
        .with(Sigmoid)
        .with(Linear::new(4, 3, &mut r).unwrap());
    assert_eq!(net.parameters().len(), 6);
    check_layer(
        "Sequential(mini LeNet)",
        net,
        random_input(&[3, 1, 6, 6], 0.0, 1.0, 5),
        |net, p| {
            let conv: &mut Conv2d = net.layers_mut()[0].as_any_mut().downcast_mut().unwrap();
            conv.weight = p[0].clone();
            conv.bias = p[1].clone();
            for (slot, layer) in [(2, 4), (4, 6)] {
                let linear: &mut Linear =
                    net.layers_mut()[layer].as_any_mut().downcast_mut().unwrap();
                linear.weight = p[slot].clone();
                linear.bias = p[slot + 1].clone();
            }
        },
    );
}

#[test]
fn shape_trace_matches_lenet_arithmetic() {
    let mut r = rng();
    let mut net = Sequential::new()
        .with(Conv2d::new(1, 6, 5, &mut r).unwrap().with_padding(2))
        .with(Sigmoid)
        .with(AvgPool2d::new(2, 2).unwrap())
        .with(Conv2d::new(6, 16, 5, &mut r).unwrap())
        .with(Sigmoid)
        .with(AvgPool2d::new(2, 2).unwrap())
        .with(Flatten)
        .with(Linear::new(400, 120, &mut r).unwrap());
    let trace = net
        .shape_trace(&Tensor::new(ArrayD::zeros(vec![1, 1, 28, 28])))
        .unwrap();
    let shapes: Vec<Vec<usize>> = trace.iter().map(|(_, s)| s.clone()).collect();
    assert_eq!(
        shapes,
        [
            vec![1, 6, 28, 28],
            vec![1, 6, 28, 28],
            vec![1, 6, 14, 14],
            vec![1, 16, 10, 10],
            vec![1, 16, 10, 10],
            vec![1, 16, 5, 5],
            vec![1, 400],
            vec![1, 120]
        ]
    );
    assert_eq!(trace[0].0, "Conv2d(1 -> 6, kernel 5, padding 2)");
    assert_eq!(net.find::<Conv2d>().len(), 2);
}

#[test]
fn layers_reject_bad_shapes_with_clear_errors() {
    let mut r = rng();
    let image = Tensor::new(ArrayD::zeros(vec![2, 3, 8, 8]));
    let err = Linear::new(400, 120, &mut r)
        .unwrap()
        .forward(&image, Mode::Train)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Linear(400 -> 120)") && err.contains("Flatten"),
        "{err}"
    );
    let err = Conv2d::new(1, 6, 5, &mut r)
        .unwrap()
        .forward(&image, Mode::Train)
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected 1 input channels, got 3"), "{err}");
    let err = Conv2d::new(3, 6, 9, &mut r)
        .unwrap()
        .forward(&image, Mode::Train)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not fit"), "{err}");
    let flat = Tensor::new(ArrayD::zeros(vec![2, 10]));
    let err = AvgPool2d::new(2, 2)
        .unwrap()
        .forward(&flat, Mode::Train)
        .unwrap_err()
        .to_string();
    assert!(err.contains("(N, C, H, W)"), "{err}");
    let err = invalid_argument(Linear::new(0, 3, &mut r));
    assert!(
        err.contains("in_features must be at least 1, got 0"),
        "{err}"
    );
    let err = invalid_argument(Conv2d::new(1, 1, 0, &mut r));
    assert!(
        err.contains("kernel_size must be at least 1, got 0"),
        "{err}"
    );
    let err = invalid_argument(Conv2d::new(1, 1, 3, &mut r).unwrap().with_stride(0));
    assert!(
        err.starts_with("Conv2d") && err.contains("stride must be at least 1, got 0"),
        "{err}"
    );
    let err = invalid_argument(MaxPool2d::new(2, 0));
    assert!(
        err.starts_with("MaxPool2d") && err.contains("stride must be at least 1, got 0"),
        "{err}"
    );
    // padding as large as the kernel (or absurdly larger) and empty images
    for padding in [3, usize::MAX / 2 + 1] {
        let conv = Conv2d::new(1, 1, 3, &mut r).unwrap().with_padding(padding);
        let err = error_of(conv, &[1, 1, 4, 4]);
        assert!(
            err.contains("use at most 2 (1 keeps the image size"),
            "{err}"
        );
    }
    let conv = Conv2d::new(1, 2, 3, &mut r).unwrap().with_padding(2);
    let err = error_of(conv, &[1, 1, 0, 0]);
    assert!(err.contains("empty 0x0 image"), "{err}");
}

/// The error message of `layer` on a zero input of shape `shape`.
fn error_of(mut layer: impl Module, shape: &[usize]) -> String {
    match layer.forward(&Tensor::new(ArrayD::zeros(shape)), Mode::Train) {
        Ok(_) => panic!("{} accepted shape {shape:?}", layer.describe()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn replaced_parameters_must_keep_their_shape() {
    let mut r = rng();
    let mut linear = Linear::new(4, 3, &mut r).unwrap();
    linear.weight = Tensor::parameter(ArrayD::zeros(vec![5, 3]));
    let err = error_of(linear, &[2, 4]);
    assert!(
        err.contains("weight has shape [5, 3] but the layer needs [4, 3]"),
        "{err}"
    );
    let mut conv = Conv2d::new(1, 2, 3, &mut r).unwrap();
    conv.bias = Tensor::parameter(ArrayD::zeros(vec![3]));
    let err = error_of(conv, &[1, 1, 5, 5]);
    assert!(
        err.contains("bias has shape [3] but the layer needs [2]"),
        "{err}"
    );
}

#[test]
fn accuracy_count_refuses_bad_labels_and_does_not_reward_nan() {
    let logits = Tensor::new(
        ArrayD::from_shape_vec(vec![2, 3], vec![0.0, 2.0, 1.0, 3.0, 0.0, 0.0]).unwrap(),
    );
    assert_eq!(count_correct(&logits, &[1, 0]).unwrap(), 2);
    let err = count_correct(&logits, &[1, 3]).unwrap_err().to_string();
    assert!(
        err.contains("label 3 is out of range for 3 classes"),
        "{err}"
    );
    // a diverged network's NaN scores are not a prediction of class 0
    let nan = Tensor::new(ArrayD::from_elem(vec![2, 3], f32::NAN));
    assert_eq!(count_correct(&nan, &[0, 0]).unwrap(), 0);
}

#[test]
fn initialisation_is_seeded_and_xavier_bounded() {
    let a = Linear::new(256, 120, &mut StdRng::seed_from_u64(3)).unwrap();
    let b = Linear::new(256, 120, &mut StdRng::seed_from_u64(3)).unwrap();
    assert_eq!(
        *a.weight.value(),
        *b.weight.value(),
        "same seed, same weights"
    );
    let bound = (6.0_f32 / (256.0 + 120.0)).sqrt();
    let w = a.weight.value();
    assert!(w.iter().all(|v| v.abs() <= bound));
    // a uniform on [-a, a] has variance a²/3 = 2/(fan_in+fan_out)
    let var = w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
    assert!(
        (var - bound * bound / 3.0).abs() < 0.05 * var,
        "variance {var}"
    );
}
