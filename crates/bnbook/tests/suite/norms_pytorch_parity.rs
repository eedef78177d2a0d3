//! Layer norm, instance norm and group norm against numbers written by
//! PyTorch.
//!
//! `tests/fixtures/norms_pytorch.json` comes from `scripts/gen_fixtures.py`
//! (run by hand with torch installed; see `scripts/README.md`). Each case is
//! one forward and backward pass of `torch.nn.LayerNorm`, `InstanceNorm2d` or
//! `GroupNorm` with non-trivial γ and β, an input far from N(0, 1) and a
//! random upstream gradient `grad_y` (loss = `(y * grad_y).sum()`): the
//! output y and the gradients of x, γ and β.
//!
//! Every case runs with both implementations (fused and composed), in
//! `Mode::Train` and `Mode::Eval`; these layers keep no running statistics, so
//! the two modes must give bit-identical outputs and gradients.
//!
//! Tolerance, per element: `|ours − PyTorch| ≤ 1e-5·|PyTorch| + floor` with
//! `floor = 1e-6 · max|PyTorch| · max(1, |mean x| / std x)`, the maximum
//! taken over the compared array (y, x's gradient, …) and the mean and
//! standard deviation over the case's input. Both sides compute in `f32`
//! but sum in different orders:
//!
//! * an element that is a small difference of large terms (a gradient close
//!   to 0, an output close to β) is off by a few ulps of the array's largest
//!   values, not of its own, hence a floor that scales with the array;
//! * `x − μ` loses the bits that `x` and `μ` share: the `*_eps_1e_3` cases
//!   have inputs 1 ± 0.05 (`|mean x| / std x ≈ 20`), where PyTorch's own
//!   results differ from a float64 reference by up to 2.2e-5 in x's gradient
//!   (values up to 60) and 5e-6 in y, hence the factor. Their variance of
//!   0.0025 makes eps = 1e-3 change every value by far more than the
//!   tolerance, so a mishandled eps cannot pass.
//!
//! Observed worst errors (run with `--nocapture` to print them) use at most
//! about a fifth of the tolerance.

use crate::pytorch_fixtures::{self, Fixtures, array};
use bnbook::ndarray::ArrayD;
use bnbook::nn::Module;
use bnbook::norms::{GroupNorm, Implementation, InstanceNorm2d, LayerNorm, NormOptions};
use bnbook::{Mode, Tensor};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Relative part of the tolerance.
const REL: f32 = 1e-5;
/// Absolute floor, as a fraction of the largest magnitude in the array, for
/// an input with `|mean| ≤ std` (see the module documentation).
const FLOOR: f32 = 1e-6;

/// Every case `scripts/gen_fixtures.py` writes, in order: a truncated or
/// partly regenerated fixture fails instead of testing less.
const EXPECTED_CASES: [&str; 15] = [
    "layer_norm_features",
    "layer_norm_chw",
    "layer_norm_sequence",
    "layer_norm_no_affine",
    "layer_norm_eps_1e_3",
    "instance_norm_default",
    "instance_norm_affine",
    "instance_norm_eps_1e_3",
    "group_norm_g1",
    "group_norm_g2",
    "group_norm_g3",
    "group_norm_g6",
    "group_norm_rank2",
    "group_norm_no_affine",
    "group_norm_eps_1e_3",
];

#[derive(Deserialize)]
struct Case {
    name: String,
    layer: String,
    source: String,
    args: Args,
    eps: f32,
    affine: bool,
    shape: Vec<usize>,
    param_shape: Option<Vec<usize>>,
    gamma: Option<Vec<f32>>,
    beta: Option<Vec<f32>>,
    x: Vec<f32>,
    grad_y: Vec<f32>,
    y: Vec<f32>,
    grad_x: Vec<f32>,
    grad_gamma: Option<Vec<f32>>,
    grad_beta: Option<Vec<f32>>,
}

/// The keyword arguments the torch module was built with. An argument this
/// test does not know (say `bias=False`) fails the parse rather than being
/// ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    normalized_shape: Option<Vec<usize>>,
    num_features: Option<usize>,
    num_groups: Option<usize>,
    num_channels: Option<usize>,
    eps: Option<f32>,
    affine: Option<bool>,
    elementwise_affine: Option<bool>,
}

impl Args {
    /// Whether the case relies on torch's default eps and affine flag.
    fn all_defaults(&self) -> bool {
        self.eps.is_none() && self.affine.is_none() && self.elementwise_affine.is_none()
    }
}

fn fixtures() -> Fixtures<Case> {
    pytorch_fixtures::read("norms_pytorch.json")
}

fn flat(a: &ArrayD<f32>) -> Vec<f32> {
    a.iter().copied().collect()
}

/// The layer under test plus handles to its γ and β.
struct Subject {
    layer: Box<dyn Module>,
    gamma: Option<Tensor>,
    beta: Option<Tensor>,
}

/// Builds the case's layer with `with_options(…, options)`, or with `new(…)`
/// (the crate's defaults) when `options` is `None`, and copies PyTorch's γ
/// and β into it after checking their shape.
fn build(case: &Case, options: Option<NormOptions>) -> Subject {
    let a = &case.args;
    let need =
        |v: Option<usize>, arg: &str| v.unwrap_or_else(|| panic!("{}: args lack {arg}", case.name));
    let (layer, gamma, beta): (Box<dyn Module>, _, _) = match case.layer.as_str() {
        "LayerNorm" => {
            let shape = a.normalized_shape.as_deref().expect("normalized_shape");
            let l = match options {
                Some(o) => LayerNorm::with_options(shape, o),
                None => LayerNorm::new(shape),
            }
            .unwrap();
            let (g, b) = (l.gamma.clone(), l.beta.clone());
            (Box::new(l), g, b)
        }
        "InstanceNorm2d" => {
            let c = need(a.num_features, "num_features");
            let l = match options {
                Some(o) => InstanceNorm2d::with_options(c, o),
                None => InstanceNorm2d::new(c),
            }
            .unwrap();
            let (g, b) = (l.gamma.clone(), l.beta.clone());
            (Box::new(l), g, b)
        }
        "GroupNorm" => {
            let (g, c) = (
                need(a.num_groups, "num_groups"),
                need(a.num_channels, "num_channels"),
            );
            let l = match options {
                Some(o) => GroupNorm::with_options(g, c, o),
                None => GroupNorm::new(g, c),
            }
            .unwrap();
            let (g, b) = (l.gamma.clone(), l.beta.clone());
            (Box::new(l), g, b)
        }
        other => panic!("{}: unknown layer {other}", case.name),
    };
    for (param, values, name) in [(&gamma, &case.gamma, "gamma"), (&beta, &case.beta, "beta")] {
        match (param, values) {
            (Some(p), Some(v)) => {
                let shape = case.param_shape.as_ref().expect("param_shape");
                assert_eq!(&p.shape(), shape, "{}: shape of {name}", case.name);
                *p.value_mut() = array(shape, v);
            }
            (None, None) => {}
            _ => panic!(
                "{}: {name} is {} here but {} in PyTorch",
                case.name,
                if param.is_some() { "present" } else { "absent" },
                if values.is_some() {
                    "present"
                } else {
                    "absent"
                },
            ),
        }
    }
    Subject { layer, gamma, beta }
}

/// What one forward and backward pass produces.
#[derive(PartialEq, Debug)]
struct Outputs {
    y: Vec<f32>,
    grad_x: Vec<f32>,
    grad_gamma: Option<Vec<f32>>,
    grad_beta: Option<Vec<f32>>,
}

fn run(case: &Case, options: Option<NormOptions>, mode: Mode) -> Outputs {
    let mut subject = build(case, options);
    let x = Tensor::parameter(array(&case.shape, &case.x));
    let y = subject.layer.forward(&x, mode).unwrap();
    assert_eq!(y.shape(), case.shape, "{}: output shape", case.name);
    y.backward_with(array(&case.shape, &case.grad_y));
    let grad = |t: &Tensor, what: &str| {
        flat(
            &t.grad()
                .unwrap_or_else(|| panic!("{}: no gradient for {what}", case.name)),
        )
    };
    Outputs {
        y: flat(&y.value()),
        grad_x: grad(&x, "x"),
        grad_gamma: subject.gamma.as_ref().map(|p| grad(p, "gamma")),
        grad_beta: subject.beta.as_ref().map(|p| grad(p, "beta")),
    }
}

/// The largest errors seen per quantity: absolute error, relative error
/// (over elements with |PyTorch| ≥ 1e-3) and error / tolerance.
#[derive(Default)]
struct Worst(BTreeMap<&'static str, [f32; 3]>);

impl Worst {
    fn check(
        &mut self,
        quantity: &'static str,
        what: &str,
        cancellation: f32,
        ours: &[f32],
        torch: &[f32],
    ) {
        assert_eq!(ours.len(), torch.len(), "{what} {quantity}: lengths differ");
        let scale = torch.iter().fold(0.0_f32, |m, v| m.max(v.abs())) * cancellation;
        let worst = self.0.entry(quantity).or_default();
        for (i, (&a, &e)) in ours.iter().zip(torch).enumerate() {
            let (err, tol) = ((a - e).abs(), REL * e.abs() + FLOOR * scale);
            assert!(
                err <= tol,
                "{what} {quantity}[{i}]: ours {a}, PyTorch {e} (error {err:e} > tolerance {tol:e})"
            );
            let rel = if e.abs() >= 1e-3 { err / e.abs() } else { 0.0 };
            for (w, v) in worst.iter_mut().zip([err, rel, err / tol]) {
                *w = w.max(v);
            }
        }
    }

    fn print(&self, label: &str) {
        eprintln!("{label}: largest error per quantity (abs, rel, fraction of tolerance)");
        for (q, [abs, rel, used]) in &self.0 {
            eprintln!("  {q:<10} {abs:.2e}  {rel:.2e}  {used:.3}");
        }
    }
}

/// `max(1, |mean x| / std x)` over the case's input: the rounding errors of
/// `x − μ` scale with `|x|`, the deviations themselves with `std x`.
fn cancellation(case: &Case) -> f32 {
    let n = case.x.len() as f64;
    let mean = case.x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = case
        .x
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean.abs() / var.sqrt()).max(1.0) as f32
}

/// Runs `case` in both modes, checks that the modes agree bit for bit, and
/// compares the result with PyTorch's.
fn compare(case: &Case, options: Option<NormOptions>, label: &str, worst: &mut Worst) {
    let what = format!("{} via {label}", case.name);
    let train = run(case, options, Mode::Train);
    let eval = run(case, options, Mode::Eval);
    assert_eq!(train, eval, "{what}: Mode::Train and Mode::Eval differ");

    let c = cancellation(case);
    worst.check("y", &what, c, &train.y, &case.y);
    worst.check("grad x", &what, c, &train.grad_x, &case.grad_x);
    for (ours, torch, quantity) in [
        (&train.grad_gamma, &case.grad_gamma, "grad gamma"),
        (&train.grad_beta, &case.grad_beta, "grad beta"),
    ] {
        match (ours, torch) {
            (Some(a), Some(e)) => worst.check(quantity, &what, c, a, e),
            (None, None) => assert!(!case.affine, "{what}: {quantity} missing"),
            _ => panic!("{what}: {quantity} present on one side only"),
        }
    }
}

fn options_for(case: &Case, implementation: Implementation) -> NormOptions {
    NormOptions {
        eps: case.eps,
        affine: case.affine,
        implementation,
    }
}

#[test]
fn fixture_lists_every_case() {
    let fixtures = fixtures();
    assert_eq!(fixtures.generator, "scripts/gen_fixtures.py");
    let names: Vec<&str> = fixtures.cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, EXPECTED_CASES, "the fixture's cases");
    for case in &fixtures.cases {
        let n = &case.name;
        assert_eq!(case.source, format!("torch.nn.{}", case.layer), "{n}");
        let size: usize = case.shape.iter().product();
        for (key, v) in [
            ("x", &case.x),
            ("grad_y", &case.grad_y),
            ("y", &case.y),
            ("grad_x", &case.grad_x),
        ] {
            assert_eq!(v.len(), size, "{n}: length of {key}");
        }
        let params = [&case.gamma, &case.beta, &case.grad_gamma, &case.grad_beta];
        match &case.param_shape {
            Some(p) => {
                assert!(case.affine, "{n}");
                for v in params {
                    assert_eq!(v.as_ref().map(Vec::len), Some(p.iter().product()), "{n}");
                }
            }
            None => {
                assert!(!case.affine, "{n}");
                assert!(params.iter().all(|v| v.is_none()), "{n}");
            }
        }
    }
    // every layer is covered with and without affine and with another eps
    for layer in ["LayerNorm", "InstanceNorm2d", "GroupNorm"] {
        let of_layer = || fixtures.cases.iter().filter(move |c| c.layer == layer);
        assert!(of_layer().any(|c| c.affine), "{layer} with affine");
        assert!(of_layer().any(|c| !c.affine), "{layer} without affine");
        assert!(of_layer().any(|c| c.eps != 1e-5), "{layer} with eps ≠ 1e-5");
    }
}

#[test]
fn fused_layers_match_pytorch() {
    let mut worst = Worst::default();
    for case in &fixtures().cases {
        let options = options_for(case, Implementation::Fused);
        compare(case, Some(options), "fused", &mut worst);
    }
    worst.print("fused");
}

#[test]
fn composed_layers_match_pytorch() {
    let mut worst = Worst::default();
    for case in &fixtures().cases {
        let options = options_for(case, Implementation::Composed);
        compare(case, Some(options), "composed", &mut worst);
    }
    worst.print("composed");
}

/// `LayerNorm::new`, `InstanceNorm2d::new` and `GroupNorm::new` have
/// PyTorch's defaults: the cases built without eps or affine arguments in
/// PyTorch match the layers built with `new`, and the defaults recorded in
/// the fixture match `NormOptions`.
#[test]
fn default_constructors_match_pytorch_defaults() {
    let mut worst = Worst::default();
    let fixtures = fixtures();
    let mut covered = Vec::new();
    for case in fixtures.cases.iter().filter(|c| c.args.all_defaults()) {
        let defaults = match case.layer.as_str() {
            "InstanceNorm2d" => NormOptions::instance_norm(),
            _ => NormOptions::default(),
        };
        assert_eq!(defaults.eps, case.eps, "{}: default eps", case.name);
        assert_eq!(
            defaults.affine, case.affine,
            "{}: default affine",
            case.name
        );
        compare(case, None, "new()", &mut worst);
        covered.push(case.layer.as_str());
    }
    for layer in ["LayerNorm", "InstanceNorm2d", "GroupNorm"] {
        assert!(
            covered.contains(&layer),
            "no default-argument case for {layer}"
        );
    }
    worst.print("new()");
}
