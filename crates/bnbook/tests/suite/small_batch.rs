//! Ghost, renormalised, frozen and synchronised batch norm: gradient
//! checks, the identities that define them (one ghost batch is batch norm,
//! synchronised batch norm is full-batch batch norm, r = 1 and d = 0 is
//! batch norm), Ioffe's constant r and d, and their use in LeNet.

use bnbook::concise::{BatchNorm1d, BatchNorm2d, BatchNormOptions};
use bnbook::fold::fold_batch_norm;
use bnbook::gradcheck::GradCheck;
use bnbook::ndarray::{ArrayD, IxDyn};
use bnbook::nn::{BatchNormLayer, Module, Momentum};
use bnbook::random::random_input;
use bnbook::small_batch::{
    BatchNormKind, BatchNormVariant, BatchNormVariant1d, BatchNormVariant2d, batch_renorm,
    batch_statistics, grouped_batch_norm, lenet_bn_with, renorm_correction, sync_batch_norm,
};
use bnbook::{Mode, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::invalid_argument;

fn largest_difference(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

/// Gradient check of a variant layer with respect to its input, γ and β
/// (training mode; the layer is rebuilt for every call so that the running
/// statistics, which the warm-ups read, start the same each time).
fn check_variant<const RANK: usize>(
    name: &str,
    make: impl Fn() -> BatchNormVariant<RANK>,
    x: ArrayD<f32>,
    prepare: impl Fn(&mut BatchNormVariant<RANK>),
) {
    let c = x.shape()[1];
    let gamma = random_input(&[c], 0.5, 1.5, 11);
    let beta = random_input(&[c], -0.5, 0.5, 12);
    GradCheck::default().assert_passes(name, &[x, gamma, beta], |t| {
        let mut layer = make();
        prepare(&mut layer);
        layer.inner.gamma = Some(t[1].clone());
        layer.inner.beta = Some(t[2].clone());
        layer.forward(&t[0], Mode::Train).expect("valid shapes")
    });
}

fn d2l() -> BatchNormOptions {
    BatchNormOptions::d2l()
}

#[test]
fn ghost_batch_norm_gradients() {
    let ghost = |size| {
        move || {
            BatchNormVariant2d::new(
                3,
                BatchNormKind::Ghost {
                    ghost_batch_size: size,
                },
                d2l(),
            )
            .unwrap()
        }
    };
    check_variant(
        "ghost BN, 3 ghost batches of 2",
        ghost(2),
        random_input(&[6, 3, 2, 2], -2.0, 3.0, 1),
        |_| (),
    );
    // (N, C): 7 rows in ghost batches of 3 give 3 + 4 (a last single row joins)
    let fc = || {
        BatchNormVariant1d::new(
            4,
            BatchNormKind::Ghost {
                ghost_batch_size: 3,
            },
            d2l(),
        )
        .unwrap()
    };
    check_variant(
        "ghost BN (N, C)",
        fc,
        random_input(&[7, 4], -2.0, 3.0, 2),
        |_| (),
    );
}

#[test]
fn synchronised_batch_norm_gradients() {
    let sync =
        || BatchNormVariant2d::new(3, BatchNormKind::Synchronised { workers: 3 }, d2l()).unwrap();
    check_variant(
        "sync BN, 3 workers",
        sync,
        random_input(&[5, 3, 2, 2], -2.0, 3.0, 3),
        |_| (),
    );
    let fc =
        || BatchNormVariant1d::new(4, BatchNormKind::Synchronised { workers: 4 }, d2l()).unwrap();
    check_variant(
        "sync BN (N, C), one example per worker",
        fc,
        random_input(&[4, 4], -2.0, 3.0, 4),
        |_| (),
    );
}

#[test]
fn frozen_batch_norm_gradients_after_the_warm_up() {
    let frozen = || {
        BatchNormVariant2d::new(3, BatchNormKind::FrozenAfter { warm_up_steps: 1 }, d2l()).unwrap()
    };
    // one warm-up step on another batch moves the running statistics; then frozen
    let warm_up = |l: &mut BatchNormVariant2d| {
        l.forward(
            &Tensor::new(random_input(&[4, 3, 2, 2], -1.0, 4.0, 9)),
            Mode::Train,
        )
        .unwrap();
    };
    check_variant(
        "frozen BN",
        frozen,
        random_input(&[2, 3, 2, 2], -2.0, 3.0, 5),
        warm_up,
    );
    // and in the frozen state training computes what prediction computes
    let mut layer = frozen();
    warm_up(&mut layer);
    let x = Tensor::new(random_input(&[1, 3, 2, 2], -2.0, 3.0, 6));
    let before = (
        layer.inner.running_mean.clone(),
        layer.inner.running_var.clone(),
    );
    let train = layer.forward(&x, Mode::Train).unwrap().value().clone();
    let eval = layer.forward(&x, Mode::Eval).unwrap().value().clone();
    assert_eq!(train, eval);
    assert_eq!(
        (
            layer.inner.running_mean.clone(),
            layer.inner.running_var.clone()
        ),
        before,
        "frozen"
    );
}

/// `batch_renorm` with r and d given is a function of x, γ, β with r and d
/// constants: finite differences agree with its gradient.
#[test]
fn batch_renorm_with_constant_r_and_d_gradients() {
    let x = random_input(&[4, 3, 2, 2], -2.0, 3.0, 7);
    let (r, d) = (vec![1.5, 0.7, 1.1], vec![0.3, -0.4, 0.0]);
    let inputs = [
        x,
        random_input(&[3], 0.5, 1.5, 1),
        random_input(&[3], -0.5, 0.5, 2),
    ];
    GradCheck::default().assert_passes("batch renorm, r and d fixed", &inputs, |t| {
        batch_renorm(&t[0], Some((&t[1], &t[2])), &r, &d, 1e-5)
            .unwrap()
            .0
    });
}

/// Ioffe (2017) treats r and d as constants. The layer's gradient is that
/// of `batch_renorm` with the layer's r and d held fixed; it is *not* the
/// gradient of the layer's forward function (in which r and d depend on
/// x), unless r and d are clipped, where they are locally constant.
#[test]
fn batch_renorm_treats_r_and_d_as_constants() {
    let c = 3;
    let x = random_input(&[4, c, 2, 2], -2.0, 3.0, 8);
    let renorm = BatchNormKind::Renorm {
        r_max: 3.0,
        d_max: 5.0,
        warm_up_steps: 0,
    };
    // running statistics close enough to the batch's that nothing is clipped
    let make = || {
        let mut layer = BatchNormVariant2d::new(c, renorm, d2l()).unwrap();
        layer.inner.running_mean = vec![0.2, 0.6, 0.4];
        layer.inner.running_var = vec![1.5, 2.5, 2.0];
        layer
    };
    let run = GradCheck::default().run(std::slice::from_ref(&x), |t| {
        make().forward(&t[0], Mode::Train).unwrap()
    });
    println!("layer vs finite differences of its forward:\n{run}");
    assert!(
        !run.passed(),
        "r and d depend on x, and their gradient is left out"
    );

    // the same gradient as batch_renorm with this batch's r and d fixed
    let layer = make();
    let batch = &batch_statistics(&Tensor::new(x.clone()), 1e-5).unwrap();
    let (r, d) = renorm_correction(
        batch,
        &layer.inner.running_mean,
        &layer.inner.running_var,
        1e-5,
        (3.0, 5.0),
    );
    assert!(
        r.iter().all(|&r| r > 1.0 / 3.0 && r < 3.0) && d.iter().all(|d| d.abs() < 5.0),
        "unclipped"
    );
    let upstream = random_input(&[4, c, 2, 2], -1.0, 1.0, 3);
    let grad = |f: &dyn Fn(&Tensor) -> Tensor| {
        let p = Tensor::parameter(x.clone());
        f(&p).backward_with(upstream.clone());
        p.grad().unwrap()
    };
    let from_layer = grad(&|p| make().forward(p, Mode::Train).unwrap());
    let with_fixed = grad(&|p| {
        batch_renorm(p, Some((&ones(c), &zeros(c))), &r, &d, 1e-5)
            .unwrap()
            .0
    });
    assert!(largest_difference(&from_layer, &with_fixed) < 1e-6);

    // clipped hard (r_max = 1, d_max = 0): plain batch norm, and its exact gradient
    let clipped = BatchNormKind::Renorm {
        r_max: 1.0,
        d_max: 0.0,
        warm_up_steps: 0,
    };
    let plain = || {
        let mut layer = BatchNormVariant2d::new(c, clipped, d2l()).unwrap();
        layer.inner.running_mean = vec![0.2, 0.6, 0.4];
        layer
    };
    check_variant(
        "batch renorm, r and d clipped to 1 and 0",
        plain,
        x.clone(),
        |_| (),
    );
    let mut bn = BatchNorm2d::with_options(c, d2l()).unwrap();
    let y_bn = bn
        .forward(&Tensor::new(x.clone()), Mode::Train)
        .unwrap()
        .value()
        .clone();
    let y_renorm = plain()
        .forward(&Tensor::new(x), Mode::Train)
        .unwrap()
        .value()
        .clone();
    assert!(largest_difference(&y_bn, &y_renorm) < 1e-5);
}

fn ones(c: usize) -> Tensor {
    Tensor::parameter(ArrayD::ones(IxDyn(&[c])))
}
fn zeros(c: usize) -> Tensor {
    Tensor::parameter(ArrayD::zeros(IxDyn(&[c])))
}

/// Output, gradients and running statistics of a layer after one training
/// step on `x` with upstream gradient `upstream`.
fn one_step(layer: &mut dyn Module, x: &ArrayD<f32>, upstream: &ArrayD<f32>) -> Vec<ArrayD<f32>> {
    let p = Tensor::parameter(x.clone());
    let y = layer.forward(&p, Mode::Train).unwrap();
    y.backward_with(upstream.clone());
    let mut out = vec![y.value().clone(), p.grad().unwrap()];
    out.extend(layer.parameters().iter().map(|t| t.grad().unwrap()));
    let bn = layer.as_batch_norm().unwrap();
    let column = |v: Vec<f32>| ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).unwrap();
    out.push(column(bn.running_mean()));
    out.push(column(bn.running_var()));
    out
}

#[test]
fn synchronised_batch_norm_is_full_batch_batch_norm() {
    for (shape, seed) in [(vec![16, 6, 5, 5], 1), (vec![12, 10], 2)] {
        let c = shape[1];
        let x = random_input(&shape, -2.0, 3.0, seed).mapv(|v| 4.0 * v + 1.0);
        let upstream = random_input(&shape, -1.0, 1.0, seed + 10);
        let full = if shape.len() == 4 {
            one_step(&mut BatchNorm2d::new(c).unwrap(), &x, &upstream)
        } else {
            one_step(&mut BatchNorm1d::new(c).unwrap(), &x, &upstream)
        };
        for workers in [1, 2, 3, 4, 12] {
            let sync = BatchNormKind::Synchronised { workers };
            let options = BatchNormOptions::default();
            let got = if shape.len() == 4 {
                one_step(
                    &mut BatchNormVariant2d::new(c, sync, options).unwrap(),
                    &x,
                    &upstream,
                )
            } else {
                one_step(
                    &mut BatchNormVariant1d::new(c, sync, options).unwrap(),
                    &x,
                    &upstream,
                )
            };
            let names = ["output", "∂x", "∂γ", "∂β", "running mean", "running var"];
            for ((name, a), b) in names.iter().zip(&full).zip(&got) {
                let scale = a.iter().fold(1.0_f32, |m, v| m.max(v.abs()));
                let diff = largest_difference(a, b);
                assert!(
                    diff <= 1e-5 * scale,
                    "{workers} workers, {shape:?}: {name} differs by {diff}"
                );
            }
        }
    }
}

#[test]
fn per_worker_batch_norm_is_not_full_batch_batch_norm() {
    // the same split without the all-reduce: ghost batches of N/k
    let x = random_input(&[16, 6, 5, 5], -2.0, 3.0, 1);
    let (sync, _) = sync_batch_norm(&Tensor::new(x.clone()), None, 4, 1e-5).unwrap();
    let groups = [0..4, 4..8, 8..12, 12..16];
    let (local, per_worker) =
        grouped_batch_norm(&Tensor::new(x), None, &groups, false, 1e-5).unwrap();
    assert_eq!(per_worker.len(), 4);
    assert!(largest_difference(&sync.value(), &local.value()) > 0.01);
}

#[test]
fn one_ghost_batch_is_batch_norm() {
    let x = random_input(&[8, 4, 3, 3], -2.0, 3.0, 5);
    let upstream = random_input(&[8, 4, 3, 3], -1.0, 1.0, 6);
    let bn = one_step(
        &mut BatchNorm2d::with_options(4, d2l()).unwrap(),
        &x,
        &upstream,
    );
    for size in [8, 256] {
        let ghost = BatchNormKind::Ghost {
            ghost_batch_size: size,
        };
        let got = one_step(
            &mut BatchNormVariant2d::new(4, ghost, d2l()).unwrap(),
            &x,
            &upstream,
        );
        for (a, b) in bn.iter().zip(&got) {
            assert!(largest_difference(a, b) < 1e-5, "ghost batch size {size}");
        }
    }
    // two ghost batches: each half standardised on its own
    let ghost = BatchNormKind::Ghost {
        ghost_batch_size: 4,
    };
    let mut layer = BatchNormVariant2d::new(4, ghost, d2l()).unwrap();
    let y = layer
        .forward(&Tensor::new(x), Mode::Train)
        .unwrap()
        .value()
        .clone();
    for half in [0..4, 4..8] {
        let part = y.slice_axis(bnbook::ndarray::Axis(0), half.into());
        let channel = part.index_axis(bnbook::ndarray::Axis(1), 0);
        let mean = channel.sum() / channel.len() as f32;
        assert!(mean.abs() < 1e-5, "mean {mean}");
    }
    assert_eq!(
        layer.inner.num_batches_tracked, 2,
        "one running-statistics update per ghost batch"
    );
}

#[test]
fn the_variants_build_lenet_and_fold() {
    let x = Tensor::new(random_input(&[8, 1, 28, 28], 0.0, 1.0, 3));
    let variants = [
        BatchNormKind::Batch,
        BatchNormKind::Ghost {
            ghost_batch_size: 4,
        },
        BatchNormKind::Renorm {
            r_max: 3.0,
            d_max: 5.0,
            warm_up_steps: 1,
        },
        BatchNormKind::FrozenAfter { warm_up_steps: 1 },
        BatchNormKind::Synchronised { workers: 2 },
    ];
    let mut reference = bnbook::models::ModelKind::LenetBnConcise
        .build(&mut StdRng::seed_from_u64(4))
        .unwrap();
    let y_ref = reference.forward(&x, Mode::Train).unwrap().value().clone();
    for variant in variants {
        let mut net = lenet_bn_with(variant, d2l(), &mut StdRng::seed_from_u64(4)).unwrap();
        assert_eq!(net.batch_norm_layers().len(), 4, "{variant:?}");
        let y = net.forward(&x, Mode::Train).unwrap().value().clone();
        if matches!(
            variant,
            BatchNormKind::Batch
                | BatchNormKind::Synchronised { .. }
                | BatchNormKind::FrozenAfter { .. }
        ) {
            // the same weights as lenet-bn-concise, and the same first step
            assert!(largest_difference(&y, &y_ref) < 1e-4, "{variant:?}");
        }
        net.forward(&x, Mode::Train).unwrap(); // past the warm-ups
        let expected = net.forward(&x, Mode::Eval).unwrap().value().clone();
        let mut folded = fold_batch_norm(net).unwrap();
        assert!(folded.batch_norm_layers().is_empty());
        let got = folded.forward(&x, Mode::Eval).unwrap().value().clone();
        assert!(largest_difference(&expected, &got) < 1e-4, "{variant:?}");
    }
}

#[test]
fn momentum_conventions_carry_over() {
    let options = BatchNormOptions {
        momentum: Momentum::CumulativeAverage,
        ..d2l()
    };
    let mut layer = BatchNormVariant1d::new(
        2,
        BatchNormKind::Ghost {
            ghost_batch_size: 2,
        },
        options,
    )
    .unwrap();
    let x = ArrayD::from_shape_vec(IxDyn(&[4, 2]), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
        .unwrap();
    layer.forward(&Tensor::new(x), Mode::Train).unwrap();
    // two ghost batches, means (1, 2) and (5, 6): their plain average
    assert_eq!(layer.inner.running_mean, vec![3.0, 4.0]);
    assert_eq!(layer.inner.momentum(), Momentum::CumulativeAverage);
    let bn = layer.as_batch_norm_mut().unwrap();
    bn.set_momentum(Momentum::NewBatchWeight(0.5)).unwrap();
    assert!(invalid_argument(bn.set_momentum(Momentum::NewBatchWeight(2.0))).contains("[0, 1]"));
}

#[test]
fn bad_settings_are_errors() {
    let bad = [
        (
            BatchNormKind::Ghost {
                ghost_batch_size: 0,
            },
            "at least 1, got 0",
        ),
        (
            BatchNormKind::Synchronised { workers: 0 },
            "at least 1 worker",
        ),
        (
            BatchNormKind::Renorm {
                r_max: 0.5,
                d_max: 1.0,
                warm_up_steps: 0,
            },
            "r_max must be",
        ),
        (
            BatchNormKind::Renorm {
                r_max: 2.0,
                d_max: f32::NAN,
                warm_up_steps: 0,
            },
            "d_max",
        ),
    ];
    for (variant, expected) in bad {
        let message = invalid_argument(BatchNormVariant2d::new(3, variant, d2l()));
        assert!(message.contains(expected), "{message}");
    }
    let mut sync =
        BatchNormVariant2d::new(3, BatchNormKind::Synchronised { workers: 5 }, d2l()).unwrap();
    let message = invalid_argument(sync.forward(
        &Tensor::new(ArrayD::zeros(IxDyn(&[4, 3, 2, 2]))),
        Mode::Train,
    ));
    assert!(
        message.contains("cannot be split over 5 workers"),
        "{message}"
    );
    let mut ghost = BatchNormVariant1d::new(
        3,
        BatchNormKind::Ghost {
            ghost_batch_size: 1,
        },
        d2l(),
    )
    .unwrap();
    let err = ghost
        .forward(&Tensor::new(ArrayD::zeros(IxDyn(&[4, 3]))), Mode::Train)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no variance"), "{err}");
    let mut fc = BatchNormVariant1d::new(3, BatchNormKind::Batch, d2l()).unwrap();
    let err = fc
        .forward(&Tensor::new(ArrayD::zeros(IxDyn(&[2, 4]))), Mode::Eval)
        .unwrap_err()
        .to_string();
    assert!(err.contains("with C = 3"), "{err}");
}
