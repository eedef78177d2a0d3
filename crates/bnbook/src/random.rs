//! Seeded random arrays: the inputs of the book's examples, notebooks, gradient
//! checks and benchmarks (weights are drawn by [`crate::nn::xavier_uniform`]).

use ndarray::{ArrayD, IxDyn};
use ndarray_rand::RandomExt;
use ndarray_rand::rand_distr::Uniform;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// An array of `shape` with entries drawn uniformly from `[low, high)`,
/// the same for the same `seed`.
///
/// # Panics
/// Unless `low < high` and both are finite (its ranges are written in code,
/// not read from users).
pub fn random_input(shape: &[usize], low: f32, high: f32, seed: u64) -> ArrayD<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    ArrayD::random_using(
        IxDyn(shape),
        Uniform::new(low, high).expect("low < high"),
        &mut rng,
    )
}
/// `n` random 28×28 grey images, shape `(n, 1, 28, 28)`, pixel bytes drawn
/// uniformly from `0..=255`, the same for the same `seed`: a stand-in for
/// Fashion-MNIST in tests that need data of the right shape, not real
/// pictures.
pub fn random_pixels(n: usize, seed: u64) -> ndarray::Array4<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    ndarray::Array4::random_using(
        (n, 1, 28, 28),
        Uniform::new_inclusive(0_u8, 255).expect("0 <= 255"),
        &mut rng,
    )
}
