//! Weight initialisation.

use ndarray::{ArrayD, IxDyn};
use ndarray_rand::RandomExt;
use ndarray_rand::rand_distr::Uniform;
use rand::Rng;

/// An array of the given shape with entries drawn uniformly from
/// `[-bound, bound)`. A `bound` of zero gives zeros.
pub fn uniform<R: Rng + ?Sized>(shape: &[usize], bound: f32, rng: &mut R) -> ArrayD<f32> {
    match Uniform::new(-bound, bound) {
        Ok(dist) => ArrayD::random_using(IxDyn(shape), dist, rng),
        Err(_) => ArrayD::zeros(IxDyn(shape)),
    }
}

/// Xavier (Glorot) uniform initialisation: `U(-a, a)` with
/// `a = sqrt(6 / (fan_in + fan_out))`, which keeps the variance of
/// activations and of gradients roughly constant from layer to layer.
/// d2l's training function applies it to every `Linear` and `Conv2d` weight.
///
/// For a convolution, `fan_in = C·KH·KW` and `fan_out = O·KH·KW`.
pub fn xavier_uniform<R: Rng + ?Sized>(
    shape: &[usize],
    fan_in: usize,
    fan_out: usize,
    rng: &mut R,
) -> ArrayD<f32> {
    let bound = (6.0 / (fan_in + fan_out).max(1) as f32).sqrt();
    uniform(shape, bound, rng)
}
