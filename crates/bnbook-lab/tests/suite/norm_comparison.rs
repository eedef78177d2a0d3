//! The comparison of normalisations: the invariance table of the layer-norm
//! paper, measured; the LeNet variants; the sweep's learning-rate rule.

use bnbook::models::{GROUPS, ModelKind, Normalization, lenet_with};
use bnbook::ndarray::{ArrayD, IxDyn};
use bnbook::nn::Module;
use bnbook::norms::Implementation;
use bnbook::{Mode, Tensor};
use bnbook_lab::compare::{INVARIANCE_THRESHOLD, invariance_table, scaled_lr, timing};
use rand::SeedableRng;
use rand::rngs::StdRng;

#[test]
fn invariances_match_the_layer_norm_paper() {
    let table = invariance_table().unwrap();
    assert_eq!(table.len(), 6);
    for row in &table {
        for (name, change, paper) in [
            (
                "batch norm",
                row.batch_norm_change,
                row.batch_norm_invariant_in_paper,
            ),
            (
                "layer norm",
                row.layer_norm_change,
                row.layer_norm_invariant_in_paper,
            ),
        ] {
            if paper {
                assert!(
                    change < INVARIANCE_THRESHOLD,
                    "{name} should be invariant to {}: changed by {change}",
                    row.transformation
                );
            } else {
                // a real change, far above rounding and ε effects
                assert!(
                    change > 0.1,
                    "{name} should change under {}: changed by only {change}",
                    row.transformation
                );
            }
        }
    }
    // the two are complementary: BN is invariant to re-centring the data,
    // LN to re-scaling a single example, and each is not to the other's
    let find = |s: &str| table.iter().find(|r| r.transformation.contains(s)).unwrap();
    assert!(find("data set re-centring").batch_norm_invariant());
    assert!(!find("data set re-centring").layer_norm_invariant());
    assert!(find("single example").layer_norm_invariant());
    assert!(!find("single example").batch_norm_invariant());
}

fn image_batch(n: usize) -> Tensor {
    let values = (0..n * 28 * 28)
        .map(|i| ((i * 37) % 101) as f32 / 101.0)
        .collect();
    Tensor::new(ArrayD::from_shape_vec(IxDyn(&[n, 1, 28, 28]), values).unwrap())
}

#[test]
fn every_normalisation_fits_lenet() {
    for norm in Normalization::ALL {
        for implementation in [Implementation::Fused, Implementation::Composed] {
            let mut net = lenet_with(norm, implementation, &mut StdRng::seed_from_u64(0)).unwrap();
            let trace = net.shape_trace(&image_batch(2)).unwrap();
            let (_, out) = trace.last().unwrap();
            assert_eq!(out, &vec![2, 10], "{norm:?} {implementation:?}");
            let norms = trace.len()
                - lenet_with(
                    Normalization::None,
                    implementation,
                    &mut StdRng::seed_from_u64(0),
                )
                .unwrap()
                .shape_trace(&image_batch(2))
                .unwrap()
                .len();
            let expected = if norm == Normalization::None { 0 } else { 4 };
            assert_eq!(norms, expected, "{norm:?}: normalisation layers");
            // a batch of two trains (BN's smallest legal batch)
            let logits = net.forward(&image_batch(2), Mode::Train).unwrap();
            logits.softmax_cross_entropy(&[1, 2]).unwrap().backward();
            assert!(net.parameters().iter().all(|p| p.grad().is_some()));
        }
    }
}

#[test]
fn models_state_their_choices() {
    let describe = |model: ModelKind| -> Vec<String> {
        let net = model.build(&mut StdRng::seed_from_u64(0)).unwrap();
        net.layers().iter().map(|l| l.describe()).collect()
    };
    let ln = describe(ModelKind::LenetLn);
    assert!(ln.contains(&"GroupNorm(1, 6)".to_string()), "{ln:?}");
    let inorm = describe(ModelKind::LenetIn);
    assert!(
        inorm.contains(&"InstanceNorm2d(16)".to_string()),
        "{inorm:?}"
    );
    assert!(inorm.contains(&"LayerNorm([120])".to_string()), "{inorm:?}");
    let gn = describe(ModelKind::LenetGn);
    assert!(gn.contains(&format!("GroupNorm({GROUPS}, 84)")), "{gn:?}");
    for model in ModelKind::ALL {
        assert_eq!(model.name().parse::<ModelKind>().unwrap(), model);
        if let Some((norm, _)) = model.normalization() {
            assert_eq!(model.default_lr(), 1.0);
            if model != ModelKind::LenetBn {
                assert_eq!(ModelKind::with_normalization(norm), model);
            }
        }
    }
    // instance-norm runs still learn affine parameters, like BN
    let net = ModelKind::LenetIn
        .build(&mut StdRng::seed_from_u64(0))
        .unwrap();
    let bn = ModelKind::LenetBnConcise
        .build(&mut StdRng::seed_from_u64(0))
        .unwrap();
    assert_eq!(net.parameters().len(), bn.parameters().len());
}

#[test]
fn learning_rate_scales_linearly_with_the_batch() {
    assert_eq!(scaled_lr(1.0, 256), 1.0);
    assert_eq!(scaled_lr(1.0, 2), 1.0 / 128.0);
    assert_eq!(scaled_lr(0.5, 64), 0.125);
}

#[test]
fn timing_covers_every_layer_and_slot() {
    let rows = timing(1).unwrap();
    assert_eq!(rows.len(), 8); // BN, LN, IN, GN × composed, fused
    assert!(
        rows.iter()
            .all(|r| r.slot_ms.len() == 4 && r.total_ms() > 0.0)
    );
}
