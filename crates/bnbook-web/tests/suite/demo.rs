use bnbook_web::demo::{Demo, FEATURES, MomentumConvention, Settings};

fn settings() -> Settings {
    Settings {
        batch_size: 256,
        gamma: 1.0,
        beta: 0.0,
        eps: 1e-5,
        input_shift: 3.0,
        input_scale: 2.5,
        momentum: 0.1,
        convention: MomentumConvention::NewBatchWeight,
        training: true,
    }
}

#[test]
fn training_mode_gives_mean_beta_and_variance_gamma_squared_per_feature() {
    let mut demo = Demo::new(0);
    let s = Settings {
        gamma: 2.0,
        beta: -1.0,
        ..settings()
    };
    let r = demo.normalize(&s).unwrap();
    assert_eq!(r.output.len(), FEATURES);
    for f in 0..FEATURES {
        assert!((r.output_mean[f] + 1.0).abs() < 1e-4, "{:?}", r.output_mean);
        // variance of γ·x̂ is γ²·var/(var+ε)
        let expected = 4.0 * r.batch_var[f] / (r.batch_var[f] + 1e-5);
        assert!(
            (r.output_var[f] - expected).abs() < 1e-3,
            "{:?}",
            r.output_var
        );
        // the running mean moved a tenth of the way from 0 to the batch mean
        assert!((f64::from(r.running_mean[f]) - 0.1 * r.batch_mean[f]).abs() < 1e-4);
    }
    assert_eq!(r.batches_tracked, 1);
}

#[test]
fn evaluation_mode_uses_and_keeps_the_running_statistics() {
    let mut demo = Demo::new(1);
    for _ in 0..50 {
        demo.normalize(&settings()).unwrap();
    }
    let before = demo.normalize(&settings()).unwrap();
    let eval = demo
        .normalize(&Settings {
            training: false,
            ..settings()
        })
        .unwrap();
    assert_eq!(eval.running_mean, before.running_mean);
    assert_eq!(eval.running_var, before.running_var);
    assert_eq!(eval.batches_tracked, before.batches_tracked);
    // after 51 batches the running statistics are close to the batch ones,
    // so evaluation output is roughly standardised too
    for f in 0..FEATURES {
        assert!(eval.output_mean[f].abs() < 0.3, "{:?}", eval.output_mean);
        assert!(
            (eval.output_var[f] - 1.0).abs() < 0.3,
            "{:?}",
            eval.output_var
        );
    }
}

#[test]
fn the_two_momentum_conventions_give_the_same_running_mean() {
    let (mut new_weight, mut old_weight) = (Demo::new(7), Demo::new(7));
    let old = Settings {
        momentum: 0.9,
        convention: MomentumConvention::OldValueWeight,
        ..settings()
    };
    for _ in 0..5 {
        let a = new_weight.normalize(&settings()).unwrap();
        let b = old_weight.normalize(&old).unwrap();
        for f in 0..FEATURES {
            assert!((a.running_mean[f] - b.running_mean[f]).abs() < 1e-5);
            // PyTorch feeds the unbiased variance, d2l the biased one
            assert!(a.running_var[f] > b.running_var[f]);
        }
    }
}

#[test]
fn bad_settings_are_errors_not_panics() {
    let mut demo = Demo::new(0);
    for bad in [
        Settings {
            batch_size: 1,
            ..settings()
        },
        Settings {
            batch_size: 0,
            ..settings()
        },
        Settings {
            eps: 0.0,
            ..settings()
        },
        Settings {
            momentum: 1.5,
            ..settings()
        },
        Settings {
            gamma: f32::NAN,
            ..settings()
        },
    ] {
        assert!(demo.normalize(&bad).is_err(), "{bad:?}");
    }
}
