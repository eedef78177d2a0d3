//! Folding batch norm into the layer before it, against PyTorch's own
//! folding (`torch.nn.utils.fusion.fuse_conv_bn_eval` and
//! `fuse_linear_bn_eval`).
//!
//! `tests/fixtures/fold_pytorch.json` comes from `scripts/gen_fixtures.py`
//! (run by hand with torch installed; see `scripts/README.md`). Each case is
//! a `Conv2d` (3×3) or `Linear` layer, with or without a bias, followed by a
//! batch norm with or without γ and β and with random running statistics,
//! both in evaluation mode: PyTorch's output of the pair, the folded layer's
//! weight and bias, and the folded layer's output.
//!
//! The test builds the same pair with this crate's `Conv2d` / `Linear` and
//! the concise batch norm, folds it with [`fold_batch_norm`], and compares
//! the folded weight and bias and the outputs of the unfolded and the folded
//! network, per element within `1e-5·|PyTorch| + 1e-6·max|PyTorch|` (both
//! sides compute in `f32`, in different orders). A PyTorch `Conv2d` or
//! `Linear` without a bias is this crate's layer with a bias of zeros.

use crate::pytorch_fixtures::{self, Fixtures, array};
use bnbook::concise::{BatchNormOptions, ConciseBatchNorm};
use bnbook::fold::fold_batch_norm;
use bnbook::ndarray::Array2;
use bnbook::nn::{Conv2d, Linear, Module, Sequential};
use bnbook::rand::{SeedableRng, rngs::StdRng};
use bnbook::{Mode, Tensor};
use serde::Deserialize;

/// Every case `scripts/gen_fixtures.py` writes, in order.
const EXPECTED_CASES: [&str; 5] = [
    "conv_bn",
    "conv_no_bias_bn",
    "conv_bn_no_affine",
    "linear_bn",
    "linear_no_bias_bn",
];

#[derive(Deserialize)]
struct Case {
    name: String,
    layer: String,
    source: String,
    shape: Vec<usize>,
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    eps: f32,
    affine: bool,
    gamma: Option<Vec<f32>>,
    beta: Option<Vec<f32>>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
    x: Vec<f32>,
    y: Vec<f32>,
    folded_weight: Vec<f32>,
    folded_bias: Vec<f32>,
    y_folded: Vec<f32>,
}

fn fixtures() -> Fixtures<Case> {
    pytorch_fixtures::read("fold_pytorch.json")
}

/// Largest `|ours − theirs|` beyond the tolerance, or `None` when every
/// element is within it.
fn beyond_tolerance(ours: &[f32], theirs: &[f32]) -> Option<f32> {
    assert_eq!(ours.len(), theirs.len(), "same number of values");
    let largest = theirs.iter().fold(0.0_f32, |m, v| m.max(v.abs()));
    ours.iter()
        .zip(theirs)
        .filter(|(o, t)| (*o - *t).abs() > 1e-5 * t.abs() + 1e-6 * largest)
        .map(|(o, t)| (o - t).abs())
        .fold(None, |m: Option<f32>, d| Some(m.map_or(d, |m| m.max(d))))
}

/// The case's pair as this crate's layers: the layer with PyTorch's
/// parameters (a missing bias is zeros; `Linear`'s weight is stored
/// transposed), then the concise batch norm with γ, β and the running
/// statistics.
fn unfolded(case: &Case) -> Sequential {
    let out = case.running_mean.len();
    let input = case.shape[1];
    let bias = case.bias.clone().unwrap_or_else(|| vec![0.0; out]);
    let mut rng = StdRng::seed_from_u64(0);
    let mut net = Sequential::new();
    if case.layer == "Conv2d" {
        let conv = Conv2d::new(input, out, 3, &mut rng).unwrap();
        *conv.weight.value_mut() = array(&[out, input, 3, 3], &case.weight);
        *conv.bias.value_mut() = array(&[out], &bias);
        net.push(conv);
        net.push(batch_norm::<4>(case));
    } else {
        let linear = Linear::new(input, out, &mut rng).unwrap();
        let torch_layout = Array2::from_shape_vec((out, input), case.weight.clone()).unwrap();
        *linear.weight.value_mut() = torch_layout.t().to_owned().into_dyn();
        *linear.bias.value_mut() = array(&[out], &bias);
        net.push(linear);
        net.push(batch_norm::<2>(case));
    }
    net
}

/// The case's batch norm (`RANK` 4 after a convolution, 2 after a linear
/// layer): its ε, γ and β (or none), and its running statistics.
fn batch_norm<const RANK: usize>(case: &Case) -> ConciseBatchNorm<RANK> {
    let out = case.running_mean.len();
    let options = BatchNormOptions {
        eps: case.eps,
        affine: case.affine,
        ..BatchNormOptions::default()
    };
    let mut bn = ConciseBatchNorm::<RANK>::with_options(out, options).unwrap();
    match (&bn.gamma, &bn.beta, &case.gamma, &case.beta) {
        (Some(g), Some(b), Some(tg), Some(tb)) => {
            *g.value_mut() = array(&[out], tg);
            *b.value_mut() = array(&[out], tb);
        }
        (None, None, None, None) => {}
        _ => panic!("{}: γ and β present on one side only", case.name),
    }
    bn.running_mean = case.running_mean.clone();
    bn.running_var = case.running_var.clone();
    bn
}

/// The network's output in evaluation mode, flat.
fn eval_output(net: &mut Sequential, x: &Tensor) -> Vec<f32> {
    net.forward(x, Mode::Eval)
        .unwrap()
        .value()
        .iter()
        .copied()
        .collect()
}

/// The folded layer's weight in PyTorch's layout, and its bias.
fn folded_parameters(net: &Sequential) -> (Vec<f32>, Vec<f32>) {
    let layer = net.layers()[0].as_any();
    if let Some(conv) = layer.downcast_ref::<Conv2d>() {
        let w = conv.weight.value().iter().copied().collect();
        (w, conv.bias.value().iter().copied().collect())
    } else if let Some(linear) = layer.downcast_ref::<Linear>() {
        let w = linear.weight.value().t().iter().copied().collect();
        (w, linear.bias.value().iter().copied().collect())
    } else {
        panic!(
            "the folded network starts with {}",
            net.layers()[0].describe()
        );
    }
}

#[test]
fn the_fixture_holds_every_case() {
    let f = fixtures();
    assert_eq!(f.generator, "scripts/gen_fixtures.py");
    let names: Vec<&str> = f.cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, EXPECTED_CASES);
}

#[test]
fn folding_matches_pytorch_fuse_conv_and_linear_bn_eval() {
    for case in fixtures().cases {
        let name = &case.name;
        let expected_source = match case.layer.as_str() {
            "Conv2d" => "torch.nn.utils.fusion.fuse_conv_bn_eval",
            _ => "torch.nn.utils.fusion.fuse_linear_bn_eval",
        };
        assert_eq!(case.source, expected_source, "{name}");
        let x = Tensor::new(array(&case.shape, &case.x));

        let mut net = unfolded(&case);
        let y = eval_output(&mut net, &x);
        assert_eq!(
            beyond_tolerance(&y, &case.y),
            None,
            "{name}: unfolded output"
        );

        let mut folded = fold_batch_norm(net).unwrap();
        assert_eq!(folded.len(), 1, "{name}: the batch norm is folded away");
        let (w, b) = folded_parameters(&folded);
        assert_eq!(
            beyond_tolerance(&w, &case.folded_weight),
            None,
            "{name}: weight"
        );
        assert_eq!(
            beyond_tolerance(&b, &case.folded_bias),
            None,
            "{name}: bias"
        );
        let y_folded = eval_output(&mut folded, &x);
        assert_eq!(
            beyond_tolerance(&y_folded, &case.y_folded),
            None,
            "{name}: folded output"
        );
    }
}
