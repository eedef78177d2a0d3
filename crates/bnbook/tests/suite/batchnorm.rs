//! Batch norm: gradient checks, scratch-vs-fused agreement, running
//! statistics and mode handling, error cases.

use bnbook::concise::{
    BatchNorm1d, BatchNorm2d, BatchNormOptions, ConciseBatchNorm, Momentum, RunningVariance,
    batch_norm_fused,
};
use bnbook::gradcheck::GradCheck;
use bnbook::ndarray::{ArrayD, IxDyn};
use bnbook::nn::{BatchNormLayer, Module};
use bnbook::random::random_input;
use bnbook::scratch::{BatchNorm, batch_norm, parameter_shape};
use bnbook::{Mode, Tensor};

use crate::invalid_argument;

fn check(name: &str, inputs: &[ArrayD<f32>], f: impl Fn(&[Tensor]) -> Tensor) {
    GradCheck::default().assert_passes(name, inputs, f);
}

fn assert_close(name: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{name}: lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let scale = 1.0_f32.max(x.abs()).max(y.abs());
        assert!((x - y).abs() <= tol * scale, "{name}[{i}]: {x} vs {y}");
    }
}

fn flat(a: &ArrayD<f32>) -> Vec<f32> {
    a.iter().copied().collect()
}

const SHAPES: [&[usize]; 2] = [&[6, 4], &[3, 2, 4, 3]];

#[test]
fn scratch_batch_norm_gradients() {
    for shape in SHAPES {
        let c = shape[1];
        let p = parameter_shape(c, shape.len());
        let inputs = [
            random_input(shape, -2.0, 3.0, 1),
            random_input(&p, 0.5, 1.5, 2),
            random_input(&p, -0.5, 0.5, 3),
        ];
        let stats = (
            random_input(&p, -0.5, 0.5, 4),
            random_input(&p, 0.5, 2.0, 5),
        );
        for mode in [Mode::Train, Mode::Eval] {
            check(
                &format!("scratch batch_norm {shape:?} {mode:?}"),
                &inputs,
                |t| {
                    batch_norm(&t[0], &t[1], &t[2], &stats.0, &stats.1, 1e-5, 0.9, mode)
                        .unwrap()
                        .0
                },
            );
        }
    }
}

#[test]
fn fused_batch_norm_gradients() {
    for shape in SHAPES {
        let c = shape[1];
        let inputs = [
            random_input(shape, -2.0, 3.0, 6),
            random_input(&[c], 0.5, 1.5, 7),
            random_input(&[c], -0.5, 0.5, 8),
        ];
        for mode in [Mode::Train, Mode::Eval] {
            check(&format!("fused {shape:?} {mode:?}"), &inputs, |t| {
                let mut layer = fused(shape.len(), c, BatchNormOptions::default());
                layer.set_affine(&t[1], &t[2]);
                layer.set_running(vec![0.3; c], vec![1.7; c]);
                layer.forward(&t[0], mode).unwrap()
            });
        }
        // without γ and β
        check(
            &format!("fused {shape:?} affine=false"),
            &inputs[..1],
            |t| {
                let options = BatchNormOptions {
                    affine: false,
                    ..Default::default()
                };
                fused(shape.len(), c, options)
                    .forward(&t[0], Mode::Train)
                    .unwrap()
            },
        );
    }
}

/// A rank-2 or rank-4 concise layer behind one interface.
enum Fused {
    One(BatchNorm1d),
    Two(BatchNorm2d),
}

fn fused(rank: usize, c: usize, options: BatchNormOptions) -> Fused {
    match rank {
        2 => Fused::One(ConciseBatchNorm::with_options(c, options).unwrap()),
        _ => Fused::Two(ConciseBatchNorm::with_options(c, options).unwrap()),
    }
}

impl std::ops::Deref for Fused {
    type Target = dyn Module;
    fn deref(&self) -> &(dyn Module + 'static) {
        match self {
            Fused::One(l) => l,
            Fused::Two(l) => l,
        }
    }
}

impl std::ops::DerefMut for Fused {
    fn deref_mut(&mut self) -> &mut (dyn Module + 'static) {
        match self {
            Fused::One(l) => l,
            Fused::Two(l) => l,
        }
    }
}

impl Fused {
    fn set_affine(&mut self, gamma: &Tensor, beta: &Tensor) {
        match self {
            Fused::One(l) => (l.gamma, l.beta) = (Some(gamma.clone()), Some(beta.clone())),
            Fused::Two(l) => (l.gamma, l.beta) = (Some(gamma.clone()), Some(beta.clone())),
        }
    }
    fn set_running(&mut self, mean: Vec<f32>, var: Vec<f32>) {
        match self {
            Fused::One(l) => (l.running_mean, l.running_var) = (mean, var),
            Fused::Two(l) => (l.running_mean, l.running_var) = (mean, var),
        }
    }
    fn stats(&self) -> (Vec<f32>, Vec<f32>) {
        let bn = self.as_batch_norm().unwrap();
        (bn.running_mean(), bn.running_var())
    }
}

/// Scratch (d2l conventions) and fused with `BatchNormOptions::d2l()` must
/// agree on outputs, all gradients and running statistics, step after step.
#[test]
fn scratch_and_fused_agree() {
    for shape in SHAPES {
        let (rank, c) = (shape.len(), shape[1]);
        let mut scratch = BatchNorm::new(c, rank).unwrap();
        let mut concise = fused(rank, c, BatchNormOptions::d2l());
        let gamma = random_input(&[c], 0.5, 1.5, 9);
        let beta = random_input(&[c], -0.5, 0.5, 10);
        *scratch.gamma.value_mut() = gamma
            .clone()
            .into_shape_with_order(IxDyn(&parameter_shape(c, rank)))
            .unwrap();
        *scratch.beta.value_mut() = beta
            .clone()
            .into_shape_with_order(IxDyn(&parameter_shape(c, rank)))
            .unwrap();
        let (fused_gamma, fused_beta) = (Tensor::parameter(gamma), Tensor::parameter(beta));
        concise.set_affine(&fused_gamma, &fused_beta);

        for step in 0..3u64 {
            let x = Tensor::parameter(random_input(shape, -1.0, 4.0, 20 + step));
            let x2 = Tensor::parameter(x.value().clone());
            let weights = random_input(shape, -1.0, 1.0, 30 + step);
            let y1 = scratch.forward(&x, Mode::Train).unwrap();
            let y2 = concise.forward(&x2, Mode::Train).unwrap();
            assert_close("y", &flat(&y1.value()), &flat(&y2.value()), 1e-5);
            y1.backward_with(weights.clone());
            y2.backward_with(weights);
            assert_close(
                "dx",
                &flat(&x.grad().unwrap()),
                &flat(&x2.grad().unwrap()),
                1e-4,
            );
            assert_close(
                "dgamma",
                &flat(&scratch.gamma.grad().unwrap()),
                &flat(&fused_gamma.grad().unwrap()),
                1e-5,
            );
            assert_close(
                "dbeta",
                &flat(&scratch.beta.grad().unwrap()),
                &flat(&fused_beta.grad().unwrap()),
                1e-5,
            );
            let (mean, var) = concise.stats();
            assert_close("moving mean", &scratch.running_mean(), &mean, 1e-6);
            assert_close("moving var", &scratch.running_var(), &var, 1e-6);
            for p in [&scratch.gamma, &scratch.beta, &fused_gamma, &fused_beta] {
                p.zero_grad();
            }
        }
        // and in evaluation mode, with the accumulated statistics
        let x = Tensor::new(random_input(shape, -1.0, 4.0, 40));
        let y1 = scratch.forward(&x, Mode::Eval).unwrap();
        let y2 = concise.forward(&x, Mode::Eval).unwrap();
        assert_close("eval y", &flat(&y1.value()), &flat(&y2.value()), 1e-5);
    }
}

#[test]
fn eval_leaves_state_untouched_and_train_updates_it_once() {
    let x = Tensor::new(random_input(&[8, 3, 2, 2], 1.0, 5.0, 11));
    let mut scratch = BatchNorm::new(3, 4).unwrap();
    let mut concise = fused(4, 3, BatchNormOptions::default());
    let before = (
        scratch.running_mean(),
        scratch.running_var(),
        concise.stats(),
    );
    assert_eq!(before.0, vec![0.0; 3], "moving mean starts at 0");
    assert_eq!(before.1, vec![1.0; 3], "moving var starts at 1");
    for _ in 0..3 {
        scratch.forward(&x, Mode::Eval).unwrap();
        concise.forward(&x, Mode::Eval).unwrap();
    }
    assert_eq!(
        (
            scratch.running_mean(),
            scratch.running_var(),
            concise.stats()
        ),
        before
    );

    // one training step moves the running mean exactly 10 % of the way to the batch mean
    let batch_mean: Vec<f32> = {
        let v = x.value();
        (0..3)
            .map(|c| v.index_axis(bnbook::ndarray::Axis(1), c).mean().unwrap())
            .collect()
    };
    scratch.forward(&x, Mode::Train).unwrap();
    concise.forward(&x, Mode::Train).unwrap();
    let expected: Vec<f32> = batch_mean.iter().map(|m| 0.1 * m).collect();
    assert_close(
        "scratch mean after one step",
        &scratch.running_mean(),
        &expected,
        1e-6,
    );
    assert_close(
        "concise mean after one step",
        &concise.stats().0,
        &expected,
        1e-6,
    );
}

#[test]
fn running_variance_conventions() {
    // 4 values per channel: unbiased = biased · 4/3
    let x = Tensor::new(ArrayD::from_shape_vec(IxDyn(&[4, 1]), vec![1.0, 2.0, 3.0, 6.0]).unwrap());
    let biased = 3.5_f32; // mean 3, squared deviations 4+1+0+9 = 14, /4
    let run = |options: BatchNormOptions| {
        let mut l = BatchNorm1d::with_options(1, options).unwrap();
        l.forward(&x, Mode::Train).unwrap();
        (l.running_mean[0], l.running_var[0])
    };
    let (mean, var) = run(BatchNormOptions::default());
    assert_close("pytorch mean", &[mean], &[0.1 * 3.0], 1e-6);
    assert_close(
        "pytorch var",
        &[var],
        &[0.9 + 0.1 * biased * 4.0 / 3.0],
        1e-6,
    );
    let (_, var) = run(BatchNormOptions {
        running_variance: RunningVariance::Biased,
        ..Default::default()
    });
    assert_close("biased var", &[var], &[0.9 + 0.1 * biased], 1e-6);
    let (mean, _) = run(BatchNormOptions::keras());
    assert_close("keras mean", &[mean], &[0.01 * 3.0], 1e-6);
    assert_eq!(
        Momentum::from_old_weight(0.9),
        Momentum::NewBatchWeight(1.0 - 0.9)
    );
}

#[test]
fn cumulative_average_is_the_plain_mean_of_batch_means() {
    let options = BatchNormOptions {
        momentum: Momentum::CumulativeAverage,
        ..Default::default()
    };
    let mut l = BatchNorm1d::with_options(2, options).unwrap();
    let mut means = Vec::new();
    for step in 0..5 {
        let x = random_input(&[6, 2], -1.0, 3.0, 50 + step);
        means.push(x.index_axis(bnbook::ndarray::Axis(1), 0).mean().unwrap());
        l.forward(&Tensor::new(x), Mode::Train).unwrap();
    }
    let average = means.iter().sum::<f32>() / means.len() as f32;
    assert_close("cumulative mean", &[l.running_mean[0]], &[average], 1e-5);
    assert_eq!(l.num_batches_tracked, 5);
}

#[test]
fn training_output_is_normalised() {
    let mut l = BatchNorm2d::new(3).unwrap();
    let y = l
        .forward(
            &Tensor::new(random_input(&[16, 3, 5, 5], 10.0, 20.0, 12)),
            Mode::Train,
        )
        .unwrap();
    let y = y.value();
    for c in 0..3 {
        let ch = y.index_axis(bnbook::ndarray::Axis(1), c);
        let mean = ch.mean().unwrap();
        let var = ch.mapv(|v| (v - mean).powi(2)).mean().unwrap();
        assert!(
            mean.abs() < 1e-4 && (var - 1.0).abs() < 1e-3,
            "channel {c}: mean {mean} var {var}"
        );
    }
}

/// γ = 1, β = 0, moving mean 0 and moving variance 1 for `c` features.
fn fresh_state(c: usize) -> (Tensor, Tensor, ArrayD<f32>, ArrayD<f32>) {
    let p = parameter_shape(c, 2);
    (
        Tensor::new(ArrayD::ones(IxDyn(&p))),
        Tensor::new(ArrayD::zeros(IxDyn(&p))),
        ArrayD::zeros(IxDyn(&p)),
        ArrayD::ones(IxDyn(&p)),
    )
}

#[test]
fn bad_inputs_give_clear_errors() {
    let (g, b, mm, mv) = fresh_state(3);
    let rank3 = Tensor::new(ArrayD::zeros(IxDyn(&[2, 3, 4])));
    let err = batch_norm(&rank3, &g, &b, &mm, &mv, 1e-5, 0.9, Mode::Train)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("rank 3") && err.contains("(N, C, H, W)"),
        "{err}"
    );
    let wrong_c = Tensor::new(ArrayD::zeros(IxDyn(&[2, 4])));
    let err = batch_norm(&wrong_c, &g, &b, &mm, &mv, 1e-5, 0.9, Mode::Train)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gamma has shape [1, 3]") && err.contains("[1, 4]"),
        "{err}"
    );

    // a batch of one example cannot be normalised by its own statistics
    let one = Tensor::new(ArrayD::ones(IxDyn(&[1, 3])));
    let err = batch_norm(&one, &g, &b, &mm, &mv, 1e-5, 0.9, Mode::Train)
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than one value per channel"), "{err}");
    assert!(
        batch_norm(&one, &g, &b, &mm, &mv, 1e-5, 0.9, Mode::Eval).is_ok(),
        "eval works on one example"
    );
    let err = BatchNorm1d::new(3)
        .unwrap()
        .forward(&one, Mode::Train)
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than one value per channel"), "{err}");
    // but one image still has H·W values per channel
    assert!(
        BatchNorm2d::new(3)
            .unwrap()
            .forward(
                &Tensor::new(ArrayD::ones(IxDyn(&[1, 3, 2, 2]))),
                Mode::Train
            )
            .is_ok()
    );

    // running statistics replaced by a vector of the wrong length
    for mode in [Mode::Train, Mode::Eval] {
        let mut shortened = BatchNorm1d::new(3).unwrap();
        shortened.running_mean.pop();
        let x = Tensor::new(ArrayD::ones(IxDyn(&[4, 3])));
        let err = shortened.forward(&x, mode).unwrap_err().to_string();
        assert!(
            err.contains("running_mean holds 2 values"),
            "{mode:?}: {err}"
        );
    }

    let err = invalid_argument(BatchNorm::new(3, 3));
    assert!(
        err.contains("num_dims must be 2") && err.contains("got 3"),
        "{err}"
    );
    let err = invalid_argument(BatchNorm::new(0, 2));
    assert!(err.contains("num_features must be at least 1"), "{err}");
    let err = BatchNorm2d::new(3)
        .unwrap()
        .forward(&wrong_c, Mode::Train)
        .unwrap_err()
        .to_string();
    assert!(err.contains("(N, C, H, W) with C = 3"), "{err}");
    let bad = BatchNormOptions {
        momentum: Momentum::NewBatchWeight(1.5),
        ..Default::default()
    };
    let err = invalid_argument(BatchNorm1d::with_options(3, bad));
    assert!(
        err.contains("momentum") && err.contains("must be in [0, 1], got 1.5"),
        "{err}"
    );
    let bad = BatchNormOptions {
        eps: 0.0,
        ..Default::default()
    };
    let err = invalid_argument(BatchNorm1d::with_options(3, bad));
    assert!(
        err.contains("eps must be a small positive number") && err.contains("got 0"),
        "{err}"
    );
}

#[test]
fn bad_hyper_parameters_are_errors_not_nan() {
    let (g, b, mm, mv) = fresh_state(3);
    let x = Tensor::new(ArrayD::zeros(IxDyn(&[4, 3]))); // constant channels
    for eps in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let err = batch_norm(&x, &g, &b, &mm, &mv, eps, 0.9, Mode::Train)
            .unwrap_err()
            .to_string();
        assert!(err.contains("eps must be a small positive number"), "{err}");
        let options = BatchNormOptions {
            eps,
            ..Default::default()
        };
        let err = invalid_argument(BatchNorm1d::with_options(3, options));
        assert!(
            err.contains("eps must be a small positive number")
                && err.contains(&format!("got {eps}")),
            "eps {eps}: {err}"
        );
    }
    for momentum in [-1.0, 5.0, f32::NAN] {
        let err = batch_norm(&x, &g, &b, &mm, &mv, 1e-5, momentum, Mode::Train)
            .unwrap_err()
            .to_string();
        assert!(err.contains("weight of the old moving value"), "{err}");
    }
    // the layers' public fields are checked on every forward pass
    let mut scratch = BatchNorm::new(3, 2).unwrap();
    scratch.eps = -1.0;
    let err = invalid_argument(scratch.forward(&x, Mode::Eval));
    assert!(
        err.contains("eps must be a small positive number") && err.contains("got -1"),
        "{err}"
    );
    let mut fused = BatchNorm1d::new(3).unwrap();
    fused.options.momentum = Momentum::NewBatchWeight(f32::NAN);
    let err = invalid_argument(fused.forward(&x, Mode::Train));
    assert!(
        err.contains("momentum") && err.contains("must be in [0, 1], got NaN"),
        "{err}"
    );
    assert_eq!(fused.running_mean, vec![0.0; 3], "state untouched");
    fused.options.momentum = Momentum::NewBatchWeight(0.1);
    fused.running_mean.clear();
    let err = fused.forward(&x, Mode::Eval).unwrap_err().to_string();
    assert!(err.contains("running_mean holds 0 values"), "{err}");
    // the old-weight convention is named in the message
    let options = BatchNormOptions {
        momentum: Momentum::from_old_weight(-0.5),
        ..Default::default()
    };
    let err = BatchNorm1d::with_options(3, options)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("from_old_weight(m) gives 1 - m"), "{err}");
}

#[test]
fn concise_batch_norm_exists_for_ranks_two_and_four_only() {
    let err = invalid_argument(ConciseBatchNorm::<0>::new(3));
    assert!(
        err.contains("ConciseBatchNorm::<0>") && err.contains("rank must be 2"),
        "{err}"
    );
    let err = ConciseBatchNorm::<1>::new(3).err().unwrap().to_string();
    assert!(
        err.contains("rank must be 2") && err.contains("or 4"),
        "{err}"
    );
    let err = invalid_argument(ConciseBatchNorm::<3>::new(3));
    assert!(
        err.contains("ConciseBatchNorm::<3>") && err.contains("rank must be 2"),
        "{err}"
    );
    assert!(ConciseBatchNorm::<2>::new(3).is_ok() && ConciseBatchNorm::<4>::new(3).is_ok());
}

#[test]
fn fused_op_checks_its_per_channel_inputs() {
    let x = Tensor::new(ArrayD::zeros(IxDyn(&[2, 3])));
    let stats = || (vec![0.0; 3], vec![1.0; 3]);
    let (mean, inv_std) = stats();
    let err = batch_norm_fused(
        &Tensor::new(ArrayD::zeros(IxDyn(&[3]))),
        None,
        mean,
        inv_std,
        true,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("expected (N, C)"), "{err}");
    let err = batch_norm_fused(&x, None, vec![0.0; 2], vec![1.0; 3], true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("mean has shape [2]"), "{err}");
    for gamma_shape in [&[2][..], &[5], &[1, 3]] {
        let gamma = Tensor::parameter(ArrayD::ones(IxDyn(gamma_shape)));
        let (mean, inv_std) = stats();
        let beta = Tensor::parameter(ArrayD::zeros(IxDyn(&[3])));
        let err = batch_norm_fused(&x, Some((&gamma, &beta)), mean, inv_std, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gamma has shape") && err.contains("needs [3]"),
            "{err}"
        );
    }
    let (mean, inv_std) = stats();
    assert!(batch_norm_fused(&x, None, mean, inv_std, false).is_ok());
}

#[test]
fn fused_eval_matches_running_statistics_formula() {
    let mut l = fused(2, 2, BatchNormOptions::default());
    l.set_running(vec![1.0, -2.0], vec![4.0, 0.25]);
    let x = Tensor::new(ArrayD::from_shape_vec(IxDyn(&[1, 2]), vec![3.0, -1.0]).unwrap());
    let y = l.forward(&x, Mode::Eval).unwrap();
    // (3 − 1)/√(4 + ε) = 1,  (−1 + 2)/√(0.25 + ε) = 2
    assert_close("eval", &flat(&y.value()), &[1.0, 2.0], 1e-4);
}
