//! Folding batch norm into the layer before it, for prediction.
//!
//! *Book: chapter "Batch norm at inference and with small batches".*
//!
//! In [`Mode::Eval`](crate::Mode::Eval) a batch-norm layer is a fixed affine map per channel:
//! with `s = γ / √(running_var + ε)` it computes `s·(z − running_mean) + β`.
//! When `z = W·x + b` comes straight from a convolution or a fully
//! connected layer, the two maps compose into one layer of the same kind:
//!
//! ```text
//! W' = s · W          (each output channel's weights scaled by its s)
//! b' = s · (b − running_mean) + β
//! ```
//!
//! so the folded network does the same arithmetic with one layer fewer per
//! batch norm. It is for prediction only: the folded layer no longer
//! normalises with batch statistics, so it must not be trained.

use crate::autograd::Tensor;
use crate::error::{Error, Result};
use crate::nn::{BatchNormLayer, Conv2d, Linear, Module, Sequential};
use ndarray::{ArrayD, Axis};
use std::any::Any;

/// The network for prediction with every batch-norm layer that directly
/// follows a [`Conv2d`] or a [`Linear`] folded into that layer (scratch or
/// concise batch norm alike). A batch norm anywhere else (first in the
/// network, or after an activation) stays as it is.
///
/// The result computes, in [`Mode::Eval`](crate::Mode::Eval), what `net`
/// computes in evaluation mode, up to float rounding.
///
/// # Errors
/// If a batch-norm layer's channel count differs from the layer before it.
pub fn fold_batch_norm(net: Sequential) -> Result<Sequential> {
    let mut folded = Sequential::new();
    for layer in net.into_layers() {
        let Some(bn) = layer.as_batch_norm() else {
            folded.push_boxed(layer);
            continue;
        };
        let (scale, shift) = eval_affine(bn);
        let before = folded.layers_mut().last_mut();
        match before.and_then(|l| weight_and_bias(l.as_any_mut())) {
            Some((weight, bias, axis)) => {
                fold_into(weight, bias, axis, &scale, &shift, layer.as_ref())?;
            }
            // nothing to fold into: the layer stays (in evaluation it
            // normalises with its running statistics, as before)
            None => folded.push_boxed(layer),
        }
    }
    Ok(folded)
}

/// The weight and bias of a [`Conv2d`] or [`Linear`] layer, with the axis of
/// the weight that indexes output channels; `None` for any other layer.
fn weight_and_bias(layer: &mut dyn Any) -> Option<(&mut Tensor, &mut Tensor, usize)> {
    if layer.is::<Conv2d>() {
        let conv = layer.downcast_mut::<Conv2d>()?;
        return Some((&mut conv.weight, &mut conv.bias, 0)); // (O, C, KH, KW)
    }
    let linear = layer.downcast_mut::<Linear>()?;
    Some((&mut linear.weight, &mut linear.bias, 1)) // (in, out)
}

/// Per channel, the `(s, t)` of the evaluation-mode map `y = s·z + t`:
/// `s = γ/√(var + ε)`, `t = β − s·mean`.
fn eval_affine(bn: &dyn BatchNormLayer) -> (Vec<f32>, Vec<f32>) {
    let c = bn.num_features();
    let gamma = bn.gamma().unwrap_or_else(|| vec![1.0; c]);
    let beta = bn.beta().unwrap_or_else(|| vec![0.0; c]);
    let (mean, var, eps) = (bn.running_mean(), bn.running_var(), bn.eps());
    let scale: Vec<f32> = (0..c).map(|i| gamma[i] / (var[i] + eps).sqrt()).collect();
    let shift = (0..c).map(|i| beta[i] - scale[i] * mean[i]).collect();
    (scale, shift)
}

/// `W ← s·W` along the output-channel `axis` of `weight`, `b ← s·b + t`.
fn fold_into(
    weight: &mut Tensor,
    bias: &mut Tensor,
    axis: usize,
    scale: &[f32],
    shift: &[f32],
    bn: &dyn Module,
) -> Result<()> {
    let channels = weight.shape()[axis];
    if channels != scale.len() {
        return Err(Error::shape(
            bn.describe(),
            format!(
                "has {} channels but the layer before it has {channels} outputs",
                scale.len()
            ),
        ));
    }
    let mut w: ArrayD<f32> = weight.value().clone();
    for (mut lane, &s) in w.axis_iter_mut(Axis(axis)).zip(scale) {
        lane.mapv_inplace(|v| v * s);
    }
    let b: ArrayD<f32> = bias.value().clone();
    let b = ArrayD::from_shape_vec(
        b.raw_dim(),
        b.iter()
            .zip(scale.iter().zip(shift))
            .map(|(&b, (&s, &t))| s * b + t)
            .collect(),
    )
    .expect("one bias per channel");
    *weight = Tensor::parameter(w);
    *bias = Tensor::parameter(b);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ModelKind;
    use crate::nn::{Mode, Sgd};
    use crate::random::random_input;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// `model` after a few SGD steps on random images, so that γ, β and the
    /// running statistics are far from their initial 1, 0, 0, 1.
    fn trained(model: ModelKind) -> Sequential {
        let mut net = model.build(&mut StdRng::seed_from_u64(1)).unwrap();
        let params = net.parameters();
        let sgd = Sgd::new(0.5).unwrap();
        for step in 0..5 {
            let x = Tensor::new(random_input(&[32, 1, 28, 28], 0.0, 1.0, step));
            let labels: Vec<usize> = (0..32).map(|i| (i * 7 + step as usize) % 10).collect();
            let loss = net.forward(&x, Mode::Train).unwrap();
            loss.softmax_cross_entropy(&labels).unwrap().backward();
            sgd.step(&params);
            sgd.zero_grad(&params);
        }
        net
    }

    #[test]
    fn a_folded_network_predicts_what_the_original_predicts() {
        for model in [ModelKind::LenetBn, ModelKind::LenetBnConcise] {
            let mut net = trained(model);
            let x = Tensor::new(random_input(&[16, 1, 28, 28], 0.0, 1.0, 99));
            let expected = net.forward(&x, Mode::Eval).unwrap().value().clone();
            let layers_before = net.len();
            let mut folded = fold_batch_norm(net).unwrap();
            assert_eq!(
                folded.len(),
                layers_before - 4,
                "{model}: four BN layers folded"
            );
            assert!(folded.batch_norm_layers().is_empty());
            let got = folded.forward(&x, Mode::Eval).unwrap().value().clone();
            let largest = expected.iter().fold(0.0_f32, |m, v| m.max(v.abs()));
            let worst = expected
                .iter()
                .zip(&got)
                .fold(0.0_f32, |m, (a, b)| m.max((a - b).abs()));
            println!("{model}: largest difference {worst:e}, outputs up to {largest}");
            assert!(
                worst <= 1e-5 * largest.max(1.0),
                "{model}: largest difference {worst} for outputs up to {largest}"
            );
        }
    }

    #[test]
    fn batch_norm_with_nothing_to_fold_into_stays() {
        let mut net = Sequential::new().with(crate::scratch::BatchNorm::new(3, 2).unwrap());
        let x = Tensor::new(random_input(&[4, 3], -1.0, 1.0, 0));
        net.forward(&x, Mode::Train).unwrap(); // move the running statistics
        let expected = net.forward(&x, Mode::Eval).unwrap().value().clone();
        let mut folded = fold_batch_norm(net).unwrap();
        assert_eq!(folded.len(), 1);
        assert_eq!(*folded.forward(&x, Mode::Eval).unwrap().value(), expected);
    }

    #[test]
    fn a_channel_mismatch_is_an_error() {
        let mut rng = StdRng::seed_from_u64(0);
        let net = Sequential::new()
            .with(Linear::new(4, 3, &mut rng).unwrap())
            .with(crate::scratch::BatchNorm::new(5, 2).unwrap());
        let err = fold_batch_norm(net).map(|_| ()).unwrap_err().to_string();
        assert!(
            err.contains("has 5 channels but the layer before it has 3 outputs"),
            "{err}"
        );
    }
}
