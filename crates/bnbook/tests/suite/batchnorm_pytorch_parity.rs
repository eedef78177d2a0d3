//! Batch norm against numbers written by PyTorch.
//!
//! `tests/fixtures/batchnorm_pytorch.json` comes from `scripts/gen_fixtures.py`
//! (run by hand with torch installed; see `scripts/README.md`). It holds, per
//! case, three training steps of `torch.nn.BatchNorm1d/2d` (or of d2l's
//! scratch function) — outputs, input/γ/β gradients for a random upstream
//! gradient, running statistics — and one evaluation pass.
//!
//! Tolerance: 1e-4 relative plus 1e-5 absolute. Both sides compute in `f32`
//! but sum in different orders; the observed differences are a few 1e-7.

use crate::pytorch_fixtures::{self, Fixtures, array};
use bnbook::concise::{BatchNormOptions, ConciseBatchNorm, Momentum, RunningVariance};
use bnbook::nn::Module;
use bnbook::scratch::{BatchNorm, parameter_shape};
use bnbook::{Mode, Tensor};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    source: String,
    shape: Vec<usize>,
    num_features: usize,
    eps: f32,
    momentum: Option<f32>,
    affine: bool,
    running_var_kind: String,
    gamma: Option<Vec<f32>>,
    beta: Option<Vec<f32>>,
    train_steps: Vec<Step>,
    eval: Eval,
}

#[derive(Deserialize)]
struct Step {
    x: Vec<f32>,
    grad_y: Vec<f32>,
    y: Vec<f32>,
    grad_x: Vec<f32>,
    grad_gamma: Option<Vec<f32>>,
    grad_beta: Option<Vec<f32>>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
}

#[derive(Deserialize)]
struct Eval {
    x: Vec<f32>,
    y: Vec<f32>,
}

fn fixtures() -> Fixtures<Case> {
    pytorch_fixtures::read("batchnorm_pytorch.json")
}

fn assert_close(what: &str, actual: &[f32], expected: &[f32], abs: f32) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= abs + 1e-4 * e.abs(),
            "{what}[{i}]: ours {a}, PyTorch {e}"
        );
    }
}

/// The layer under test, as a Module, plus handles to γ and β.
struct Subject {
    layer: Box<dyn Module>,
    gamma: Option<Tensor>,
    beta: Option<Tensor>,
}

fn concise(case: &Case, options: BatchNormOptions) -> Subject {
    let (gamma, beta) = match (&case.gamma, &case.beta) {
        (Some(g), Some(b)) => (
            Some(Tensor::parameter(array(&[g.len()], g))),
            Some(Tensor::parameter(array(&[b.len()], b))),
        ),
        _ => (None, None),
    };
    let c = case.num_features;
    let layer: Box<dyn Module> = if case.shape.len() == 2 {
        let mut l = ConciseBatchNorm::<2>::with_options(c, options).unwrap();
        (l.gamma, l.beta) = (gamma.clone(), beta.clone());
        Box::new(l)
    } else {
        let mut l = ConciseBatchNorm::<4>::with_options(c, options).unwrap();
        (l.gamma, l.beta) = (gamma.clone(), beta.clone());
        Box::new(l)
    };
    Subject { layer, gamma, beta }
}

fn scratch(case: &Case) -> Subject {
    let rank = case.shape.len();
    let p = parameter_shape(case.num_features, rank);
    let mut l = BatchNorm::new(case.num_features, rank).unwrap();
    l.eps = case.eps;
    l.momentum = case.momentum.expect("d2l cases give their momentum");
    *l.gamma.value_mut() = array(&p, case.gamma.as_ref().unwrap());
    *l.beta.value_mut() = array(&p, case.beta.as_ref().unwrap());
    let (gamma, beta) = (Some(l.gamma.clone()), Some(l.beta.clone()));
    Subject {
        layer: Box::new(l),
        gamma,
        beta,
    }
}

fn options_for(case: &Case) -> BatchNormOptions {
    let d2l = case.source == "d2l_scratch";
    BatchNormOptions {
        eps: case.eps,
        momentum: match case.momentum {
            None => Momentum::CumulativeAverage,
            Some(m) if d2l => Momentum::from_old_weight(m),
            Some(m) => Momentum::NewBatchWeight(m),
        },
        running_variance: match case.running_var_kind.as_str() {
            "unbiased" => RunningVariance::Unbiased,
            _ => RunningVariance::Biased,
        },
        affine: case.affine,
    }
}

fn run(case: &Case, mut subject: Subject, label: &str) {
    let what = |s: &str| format!("{} via {label}: {s}", case.name);
    // a batch of two has an exactly-zero input gradient up to ε effects;
    // PyTorch's stored values are rounding noise of size ~1e-4
    let grad_abs = if case.shape[0] * case.shape[2..].iter().product::<usize>() <= 2 {
        2e-4
    } else {
        1e-5
    };
    for (k, step) in case.train_steps.iter().enumerate() {
        let x = Tensor::parameter(array(&case.shape, &step.x));
        let y = subject.layer.forward(&x, Mode::Train).unwrap();
        assert_close(
            &what(&format!("step {k} y")),
            y.value().as_slice().unwrap(),
            &step.y,
            1e-5,
        );
        y.backward_with(array(&case.shape, &step.grad_y));
        assert_close(
            &what(&format!("step {k} grad x")),
            x.grad().unwrap().as_slice().unwrap(),
            &step.grad_x,
            grad_abs,
        );
        for (param, expected, name) in [
            (&subject.gamma, &step.grad_gamma, "grad gamma"),
            (&subject.beta, &step.grad_beta, "grad beta"),
        ] {
            match (param, expected) {
                (Some(p), Some(e)) => {
                    assert_close(
                        &what(&format!("step {k} {name}")),
                        &p.grad().unwrap().iter().copied().collect::<Vec<_>>(),
                        e,
                        1e-5,
                    );
                    p.zero_grad();
                }
                (None, None) => {}
                _ => panic!("{}: affine mismatch", what(name)),
            }
        }
        let bn = subject.layer.as_batch_norm().unwrap();
        assert_close(
            &what(&format!("step {k} running mean")),
            &bn.running_mean(),
            &step.running_mean,
            1e-5,
        );
        assert_close(
            &what(&format!("step {k} running var")),
            &bn.running_var(),
            &step.running_var,
            1e-5,
        );
    }
    let y = subject
        .layer
        .forward(&Tensor::new(array(&case.shape, &case.eval.x)), Mode::Eval)
        .unwrap();
    assert_close(
        &what("eval y"),
        y.value().as_slice().unwrap(),
        &case.eval.y,
        1e-5,
    );
}

#[test]
fn concise_batch_norm_matches_pytorch_and_d2l() {
    let fixtures = fixtures();
    assert!(fixtures.cases.len() >= 8);
    for case in &fixtures.cases {
        run(case, concise(case, options_for(case)), "concise");
    }
}

#[test]
fn scratch_batch_norm_matches_d2l_reference() {
    let fixtures = fixtures();
    let d2l: Vec<&Case> = fixtures
        .cases
        .iter()
        .filter(|c| c.source == "d2l_scratch")
        .collect();
    assert_eq!(d2l.len(), 2, "one rank-2 and one rank-4 case");
    for case in d2l {
        run(case, scratch(case), "scratch");
    }
}
