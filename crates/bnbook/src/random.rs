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
