//! Layer norm, instance norm and group norm: gradient checks of both
//! implementations, fused == composed, train == eval, the identities
//! G = 1 ≡ layer norm and G = C ≡ instance norm, and the shape errors.

use bnbook::gradcheck::GradCheck;
use bnbook::ndarray::ArrayD;
use bnbook::nn::Module;
use bnbook::norms::{
    GroupNorm, Implementation, InstanceNorm2d, LayerNorm, NormOptions, standardize_rows_composed,
    standardize_rows_fused,
};
use bnbook::random::random_input;
use bnbook::{Mode, Tensor};
use std::cell::RefCell;

use crate::invalid_argument;

const BOTH: [Implementation; 2] = [Implementation::Fused, Implementation::Composed];

fn options(implementation: Implementation) -> NormOptions {
    NormOptions::default().with_implementation(implementation)
}

/// Non-standardised input: values in [-3, 5), so the mean and variance matter.
fn input(shape: &[usize], seed: u64) -> ArrayD<f32> {
    random_input(shape, -3.0, 5.0, seed)
}

/// The affine parameters of any of the three layers.
trait Affine: Module {
    fn set_affine(&mut self, gamma: Tensor, beta: Tensor);
}

macro_rules! affine {
    ($($t:ty),*) => {$(
        impl Affine for $t {
            fn set_affine(&mut self, gamma: Tensor, beta: Tensor) {
                self.gamma = Some(gamma);
                self.beta = Some(beta);
            }
        }
    )*};
}
affine!(LayerNorm, GroupNorm, InstanceNorm2d);

/// Random γ and β (away from 1 and 0) so that their gradients are exercised.
fn randomise_affine<L: Affine>(layer: &mut L, seed: u64) {
    let params = layer.parameters();
    if params.is_empty() {
        return;
    }
    let shape = params[0].shape();
    layer.set_affine(
        Tensor::parameter(random_input(&shape, 0.5, 1.5, seed)),
        Tensor::parameter(random_input(&shape, -0.5, 0.5, seed + 1)),
    );
}

/// Finite-difference check of `layer` with respect to its input and, when
/// affine, γ and β.
fn check_layer<L: Affine>(name: &str, mut layer: L, x: ArrayD<f32>) {
    randomise_affine(&mut layer, 11);
    let mut inputs = vec![x];
    inputs.extend(layer.parameters().iter().map(|p| p.value().clone()));
    let affine = inputs.len() == 3;
    let layer = RefCell::new(layer);
    GradCheck::default().assert_passes(name, &inputs, |t| {
        let mut layer = layer.borrow_mut();
        if affine {
            layer.set_affine(t[1].clone(), t[2].clone());
        }
        layer.forward(&t[0], Mode::Train).expect("valid shapes")
    });
}

#[test]
fn standardize_rows_gradients() {
    for (rows, shape) in [(4, vec![4, 5]), (6, vec![2, 3, 2, 2]), (2, vec![2, 1, 3])] {
        let x = input(&shape, 1);
        GradCheck::default().assert_passes(
            &format!("standardize_rows_fused {shape:?}"),
            std::slice::from_ref(&x),
            |t| standardize_rows_fused(&t[0], rows, 1e-5),
        );
        GradCheck::default().assert_passes(
            &format!("standardize_rows_composed {shape:?}"),
            std::slice::from_ref(&x),
            |t| standardize_rows_composed(&t[0], rows, 1e-5),
        );
    }
}

#[test]
fn layer_norm_gradients() {
    for imp in BOTH {
        check_layer(
            &format!("LayerNorm([5]) {imp:?}"),
            LayerNorm::with_options(&[5], options(imp)).unwrap(),
            input(&[4, 5], 2),
        );
        check_layer(
            &format!("LayerNorm([3, 4, 4]) {imp:?}"),
            LayerNorm::with_options(&[3, 4, 4], options(imp)).unwrap(),
            input(&[2, 3, 4, 4], 3),
        );
    }
}

#[test]
fn group_norm_gradients() {
    for imp in BOTH {
        for groups in [1, 2, 3, 6] {
            check_layer(
                &format!("GroupNorm({groups}, 6) {imp:?}"),
                GroupNorm::with_options(groups, 6, options(imp)).unwrap(),
                input(&[2, 6, 3, 3], 4),
            );
        }
        check_layer(
            &format!("GroupNorm(2, 6) on (N, C) {imp:?}"),
            GroupNorm::with_options(2, 6, options(imp)).unwrap(),
            input(&[3, 6], 5),
        );
    }
}

#[test]
fn instance_norm_gradients() {
    for imp in BOTH {
        check_layer(
            &format!("InstanceNorm2d(3) {imp:?}"),
            InstanceNorm2d::with_options(3, NormOptions::instance_norm().with_implementation(imp))
                .unwrap(),
            input(&[2, 3, 4, 4], 6),
        );
        check_layer(
            &format!("InstanceNorm2d(3, affine) {imp:?}"),
            InstanceNorm2d::with_options(3, options(imp)).unwrap(),
            input(&[2, 3, 4, 4], 7),
        );
    }
}

/// Output and gradients (input, then each parameter) of one forward and
/// backward pass with a fixed upstream gradient.
fn run<L: Module + ?Sized>(
    layer: &mut L,
    x: &ArrayD<f32>,
    mode: Mode,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    let x = Tensor::parameter(x.clone());
    let y = layer.forward(&x, mode).unwrap();
    let upstream = Tensor::new(input(&y.shape(), 99));
    (&y * &upstream).sum_all().backward();
    let mut grads = vec![x.grad().unwrap().iter().copied().collect()];
    for p in layer.parameters() {
        grads.push(p.grad().unwrap().iter().copied().collect());
        p.zero_grad();
    }
    (y.value().iter().copied().collect(), grads)
}

fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let scale = 1.0_f32.max(x.abs()).max(y.abs());
        assert!((x - y).abs() <= tol * scale, "{what}[{i}]: {x} vs {y}");
    }
}

fn assert_same_pass(what: &str, a: &(Vec<f32>, Vec<Vec<f32>>), b: &(Vec<f32>, Vec<Vec<f32>>)) {
    assert_close(&format!("{what}: output"), &a.0, &b.0, 1e-5);
    assert_eq!(a.1.len(), b.1.len(), "{what}: number of gradients");
    for (i, (ga, gb)) in a.1.iter().zip(&b.1).enumerate() {
        assert_close(&format!("{what}: gradient {i}"), ga, gb, 1e-4);
    }
}

/// A layer, built with either implementation, with the same random γ, β.
type Build = fn(Implementation) -> Box<dyn Fn() -> (Box<dyn Module>, Vec<usize>)>;

fn layers() -> Vec<(&'static str, Build)> {
    fn boxed<L: Affine + 'static>(mut l: L, shape: &[usize]) -> (Box<dyn Module>, Vec<usize>) {
        randomise_affine(&mut l, 21);
        (Box::new(l), shape.to_vec())
    }
    vec![
        ("LayerNorm([120])", |imp| {
            Box::new(move || {
                boxed(
                    LayerNorm::with_options(&[120], options(imp)).unwrap(),
                    &[8, 120],
                )
            })
        }),
        ("LayerNorm([16, 8, 8])", |imp| {
            Box::new(move || {
                boxed(
                    LayerNorm::with_options(&[16, 8, 8], options(imp)).unwrap(),
                    &[4, 16, 8, 8],
                )
            })
        }),
        ("GroupNorm(2, 16)", |imp| {
            Box::new(move || {
                boxed(
                    GroupNorm::with_options(2, 16, options(imp)).unwrap(),
                    &[4, 16, 8, 8],
                )
            })
        }),
        ("GroupNorm(2, 84)", |imp| {
            Box::new(move || {
                boxed(
                    GroupNorm::with_options(2, 84, options(imp)).unwrap(),
                    &[8, 84],
                )
            })
        }),
        ("InstanceNorm2d(6, affine)", |imp| {
            Box::new(move || {
                boxed(
                    InstanceNorm2d::with_options(6, options(imp)).unwrap(),
                    &[4, 6, 24, 24],
                )
            })
        }),
    ]
}

#[test]
fn fused_and_composed_agree() {
    for (name, build) in layers() {
        let (mut fused, shape) = build(Implementation::Fused)();
        let (mut composed, _) = build(Implementation::Composed)();
        let x = input(&shape, 31);
        for step in 0..2 {
            let a = run(fused.as_mut(), &x, Mode::Train);
            let b = run(composed.as_mut(), &x, Mode::Train);
            assert_same_pass(&format!("{name}, call {step}"), &a, &b);
        }
    }
}

#[test]
fn train_and_eval_are_the_same_and_leave_no_state() {
    for (name, build) in layers() {
        for imp in BOTH {
            let (mut layer, shape) = build(imp)();
            let x = input(&shape, 41);
            let eval_before = run(layer.as_mut(), &x, Mode::Eval);
            let train = run(layer.as_mut(), &x, Mode::Train);
            let eval_after = run(layer.as_mut(), &x, Mode::Eval);
            // bit for bit: no running statistics, nothing depends on the mode
            assert_eq!(train, eval_before, "{name} {imp:?}: train vs eval");
            assert_eq!(
                eval_before, eval_after,
                "{name} {imp:?}: training changed state"
            );
        }
    }
}

#[test]
fn every_example_is_normalised_on_its_own() {
    // Unlike batch norm, changing one example of the batch leaves the
    // outputs of the others untouched.
    for (name, build) in layers() {
        let (mut layer, shape) = build(Implementation::Fused)();
        let x = input(&shape, 51);
        let mut x2 = x.clone();
        x2.index_axis_mut(bnbook::ndarray::Axis(0), 0)
            .mapv_inplace(|v| 10.0 * v - 7.0);
        let y = layer
            .forward(&Tensor::new(x), Mode::Train)
            .unwrap()
            .value()
            .clone();
        let y2 = layer
            .forward(&Tensor::new(x2), Mode::Train)
            .unwrap()
            .value()
            .clone();
        let rest = |a: &ArrayD<f32>| {
            a.iter()
                .skip(a.len() / shape[0])
                .copied()
                .collect::<Vec<_>>()
        };
        assert_eq!(rest(&y), rest(&y2), "{name}: other examples changed");
    }
}

#[test]
fn normalised_rows_have_mean_zero_and_variance_one() {
    let x = input(&[4, 6, 5, 5], 61);
    for (groups, values_per_row) in [(1, 150), (3, 50), (6, 25)] {
        let mut layer = GroupNorm::with_options(
            groups,
            6,
            NormOptions {
                affine: false,
                ..Default::default()
            },
        )
        .unwrap();
        let y = layer.forward(&Tensor::new(x.clone()), Mode::Train).unwrap();
        let y = y.value();
        for row in y.as_slice().unwrap().chunks(values_per_row) {
            let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / row.len() as f64;
            let var = row
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / row.len() as f64;
            assert!(mean.abs() < 1e-5, "G = {groups}: row mean {mean}");
            assert!((var - 1.0).abs() < 1e-3, "G = {groups}: row variance {var}");
        }
    }
}

#[test]
fn one_group_is_layer_norm_over_c_h_w() {
    let x = input(&[3, 6, 4, 4], 71);
    for imp in BOTH {
        let plain = NormOptions {
            affine: false,
            ..options(imp)
        };
        let mut gn = GroupNorm::with_options(1, 6, plain).unwrap();
        let mut ln = LayerNorm::with_options(&[6, 4, 4], plain).unwrap();
        assert_same_pass(
            &format!("GroupNorm(1, 6) vs LayerNorm([6, 4, 4]) {imp:?}"),
            &run(&mut gn, &x, Mode::Train),
            &run(&mut ln, &x, Mode::Train),
        );
        // with affine parameters the two differ only in their number: one γ
        // per channel vs one per element; equal when the per-element γ, β
        // are constant within a channel
        let mut gn = GroupNorm::with_options(1, 6, options(imp)).unwrap();
        randomise_affine(&mut gn, 5);
        let mut ln = LayerNorm::with_options(&[6, 4, 4], options(imp)).unwrap();
        let spread = |p: &Tensor| {
            let v = p.value().clone().into_shape_with_order((6, 1, 1)).unwrap();
            Tensor::parameter(v.broadcast((6, 4, 4)).unwrap().to_owned().into_dyn())
        };
        ln.set_affine(
            spread(gn.gamma.as_ref().unwrap()),
            spread(gn.beta.as_ref().unwrap()),
        );
        let (y_gn, _) = run(&mut gn, &x, Mode::Train);
        let (y_ln, _) = run(&mut ln, &x, Mode::Train);
        assert_close("affine GroupNorm(1, 6) vs LayerNorm", &y_gn, &y_ln, 1e-6);
        assert_eq!(gn.parameters()[0].shape(), vec![6]);
        assert_eq!(ln.parameters()[0].shape(), vec![6, 4, 4]);
    }
}

#[test]
fn one_channel_per_group_is_instance_norm() {
    let x = input(&[3, 6, 4, 4], 81);
    for imp in BOTH {
        let mut gn = GroupNorm::with_options(6, 6, options(imp)).unwrap();
        randomise_affine(&mut gn, 9);
        let mut inorm = InstanceNorm2d::with_options(6, options(imp)).unwrap();
        randomise_affine(&mut inorm, 9);
        assert_same_pass(
            &format!("GroupNorm(6, 6) vs InstanceNorm2d(6) {imp:?}"),
            &run(&mut gn, &x, Mode::Train),
            &run(&mut inorm, &x, Mode::Train),
        );
    }
}

#[test]
fn defaults_follow_pytorch() {
    assert_eq!(LayerNorm::new(&[4]).unwrap().parameters().len(), 2);
    assert_eq!(GroupNorm::new(2, 4).unwrap().parameters().len(), 2);
    // instance norm: no affine part unless asked for
    assert!(InstanceNorm2d::new(4).unwrap().parameters().is_empty());
    let d = NormOptions::default();
    assert_eq!(
        (d.eps, d.affine, d.implementation),
        (1e-5, true, Implementation::Fused)
    );
    let gamma = GroupNorm::new(2, 4).unwrap().gamma.unwrap();
    let beta = GroupNorm::new(2, 4).unwrap().beta.unwrap();
    assert!(gamma.value().iter().all(|&v| v == 1.0));
    assert!(beta.value().iter().all(|&v| v == 0.0));
}

fn error_of<L: Module>(mut layer: L, shape: &[usize]) -> String {
    let x = Tensor::new(ArrayD::zeros(shape));
    match layer.forward(&x, Mode::Train) {
        Ok(_) => panic!("{} accepted shape {shape:?}", layer.describe()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_shapes_and_arguments_are_clear_errors() {
    let e = GroupNorm::new(4, 6).err().unwrap().to_string();
    assert!(e.contains("divisible") && e.contains("1, 2, 3, 6"), "{e}");
    let e = invalid_argument(GroupNorm::new(0, 6));
    assert!(
        e.contains("num_groups and num_channels must be at least 1"),
        "{e}"
    );
    let e = invalid_argument(InstanceNorm2d::new(0));
    assert!(e.contains("num_features must be at least 1"), "{e}");
    for shape in [&[][..], &[3, 0]] {
        let e = invalid_argument(LayerNorm::new(shape));
        assert!(
            e.contains("normalized_shape must be non-empty with no zero sizes")
                && e.contains(&format!("got {shape:?}")),
            "{e}"
        );
    }
    let bad_eps = NormOptions {
        eps: 0.0,
        ..Default::default()
    };
    assert!(
        LayerNorm::with_options(&[3], bad_eps)
            .err()
            .unwrap()
            .to_string()
            .contains("eps")
    );

    let e = error_of(InstanceNorm2d::new(3).unwrap(), &[4, 3, 1, 1]);
    assert!(e.contains("more than one spatial position"), "{e}");
    let e = error_of(InstanceNorm2d::new(3).unwrap(), &[4, 3]);
    assert!(e.contains("(N, C, H, W)"), "{e}");
    let e = error_of(InstanceNorm2d::new(3).unwrap(), &[4, 5, 2, 2]);
    assert!(e.contains("C = 3"), "{e}");
    let e = error_of(GroupNorm::new(2, 6).unwrap(), &[4, 4, 2, 2]);
    assert!(e.contains("C = 6"), "{e}");
    let e = error_of(GroupNorm::new(2, 6).unwrap(), &[6]);
    assert!(e.contains("got shape [6]"), "{e}");
    let e = error_of(LayerNorm::new(&[3, 4]).unwrap(), &[2, 4, 3]);
    assert!(e.contains("[3, 4]"), "{e}");
    // empty batches and empty feature maps, with either implementation
    for implementation in [Implementation::Fused, Implementation::Composed] {
        let options = NormOptions::default().with_implementation(implementation);
        let layer = LayerNorm::with_options(&[4], options).unwrap();
        assert!(error_of(layer, &[0, 4]).contains("empty input of shape [0, 4]"));
        for shape in [&[0, 4, 3, 3][..], &[2, 4, 0, 0], &[2, 4, 3, 0]] {
            let e = error_of(GroupNorm::with_options(2, 4, options).unwrap(), shape);
            assert!(e.contains("empty input"), "{e}");
        }
        let e = error_of(
            InstanceNorm2d::with_options(3, options).unwrap(),
            &[0, 3, 4, 4],
        );
        assert!(e.contains("empty input"), "{e}");
    }
    let bad_eps = NormOptions {
        eps: f32::INFINITY,
        ..Default::default()
    };
    let e = invalid_argument(GroupNorm::with_options(2, 4, bad_eps));
    assert!(
        e.contains("eps must be a small positive number") && e.contains("got inf"),
        "{e}"
    );
    // γ and β are public; a replacement must keep their shape
    let mut layer = LayerNorm::new(&[4]).unwrap();
    layer.gamma = Some(Tensor::parameter(ArrayD::ones(vec![3])));
    assert!(error_of(layer, &[2, 4]).contains("gamma has shape [3] but the layer needs [4]"));
    let mut group = GroupNorm::new(2, 4).unwrap();
    group.beta = Some(Tensor::parameter(ArrayD::zeros(vec![1, 4])));
    assert!(error_of(group, &[2, 4]).contains("beta has shape [1, 4]"));
}
