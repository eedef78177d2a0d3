//! Finite-difference checks of every autograd operation.
//!
//! Inputs are kept away from points where an operation is not differentiable
//! (relu at 0, max-pool ties) or not defined (ln, sqrt, division near 0).

use bnbook::Tensor;
use bnbook::gradcheck::GradCheck;
use bnbook::ndarray::ArrayD;
use bnbook::random::random_input;

fn check(name: &str, inputs: &[ArrayD<f32>], f: impl Fn(&[Tensor]) -> Tensor) {
    GradCheck::default().assert_passes(name, inputs, f);
}

fn x(shape: &[usize], seed: u64) -> ArrayD<f32> {
    random_input(shape, -1.0, 1.0, seed)
}

fn positive(shape: &[usize], seed: u64) -> ArrayD<f32> {
    random_input(shape, 0.5, 2.0, seed)
}

/// Values whose magnitude is at least 0.1, so a ±0.01 step never crosses 0.
fn away_from_zero(shape: &[usize], seed: u64) -> ArrayD<f32> {
    random_input(shape, 0.1, 1.0, seed)
        * &random_input(shape, -1.0, 1.0, seed + 1).mapv(f32::signum)
}

#[test]
fn add_with_broadcasting() {
    check("add same shape", &[x(&[3, 4], 1), x(&[3, 4], 2)], |t| {
        &t[0] + &t[1]
    });
    check(
        "add (2,3,4)+(3,1)",
        &[x(&[2, 3, 4], 3), x(&[3, 1], 4)],
        |t| &t[0] + &t[1],
    );
    check("add (1,4)+(3,1)", &[x(&[1, 4], 5), x(&[3, 1], 6)], |t| {
        &t[0] + &t[1]
    });
    check("add scalar-shaped", &[x(&[2, 3], 7), x(&[], 8)], |t| {
        &t[0] + &t[1]
    });
}

#[test]
fn sub_with_broadcasting() {
    check("sub (2,3,4)-(4)", &[x(&[2, 3, 4], 9), x(&[4], 10)], |t| {
        &t[0] - &t[1]
    });
    check("sub (1,3)-(2,1)", &[x(&[1, 3], 11), x(&[2, 1], 12)], |t| {
        &t[0] - &t[1]
    });
}

#[test]
fn mul_with_broadcasting() {
    check("mul same shape", &[x(&[3, 4], 13), x(&[3, 4], 14)], |t| {
        &t[0] * &t[1]
    });
    check(
        "mul (2,3,4,5)*(1,3,1,1)",
        &[x(&[2, 3, 4, 5], 15), x(&[1, 3, 1, 1], 16)],
        |t| &t[0] * &t[1],
    );
    check("mul x*x (same tensor twice)", &[x(&[5], 17)], |t| {
        &t[0] * &t[0]
    });
}

#[test]
fn div_with_broadcasting() {
    check(
        "div same shape",
        &[x(&[3, 4], 18), positive(&[3, 4], 19)],
        |t| &t[0] / &t[1],
    );
    check(
        "div (2,3)/(3)",
        &[x(&[2, 3], 20), positive(&[3], 21)],
        |t| &t[0] / &t[1],
    );
    check(
        "div (3)/(2,3)",
        &[x(&[3], 22), positive(&[2, 3], 23)],
        |t| &t[0] / &t[1],
    );
}

#[test]
fn unary_ops() {
    check("neg", &[x(&[3, 4], 24)], |t| -&t[0]);
    check("exp", &[x(&[3, 4], 25)], |t| t[0].exp());
    check("ln", &[positive(&[3, 4], 26)], |t| t[0].ln());
    check("sqrt", &[positive(&[3, 4], 27)], |t| t[0].sqrt());
    check("powf 3", &[x(&[3, 4], 28)], |t| t[0].powf(3.0));
    check("powf -0.5", &[positive(&[3, 4], 29)], |t| t[0].powf(-0.5));
    check("sigmoid", &[random_input(&[3, 4], -3.0, 3.0, 30)], |t| {
        t[0].sigmoid()
    });
    check("relu", &[away_from_zero(&[4, 5], 31)], |t| t[0].relu());
    check("add_scalar", &[x(&[3], 33)], |t| t[0].add_scalar(2.5));
    check("mul_scalar", &[x(&[3], 34)], |t| t[0].mul_scalar(-1.5));
}

#[test]
fn reductions() {
    let input = [x(&[2, 3, 4, 5], 35)];
    for keepdims in [false, true] {
        for axes in [
            vec![0],
            vec![1],
            vec![3],
            vec![0, 2, 3],
            vec![2, 0],
            vec![0, 1, 2, 3],
        ] {
            check(&format!("sum {axes:?} keepdims={keepdims}"), &input, |t| {
                t[0].sum(&axes, keepdims)
            });
            check(&format!("mean {axes:?} keepdims={keepdims}"), &input, |t| {
                t[0].mean(&axes, keepdims)
            });
        }
    }
    check("sum_all", &input, |t| t[0].sum_all());
    check("mean_all", &input, |t| t[0].mean_all());
}

#[test]
fn shape_ops() {
    check("reshape", &[x(&[2, 3, 4], 36)], |t| t[0].reshape(&[4, 6]));
    check("flatten", &[x(&[2, 3, 2, 2], 37)], |t| t[0].flatten());
}

#[test]
fn matmul() {
    check(
        "matmul (3,4)x(4,5)",
        &[x(&[3, 4], 38), x(&[4, 5], 39)],
        |t| t[0].matmul(&t[1]),
    );
    check(
        "matmul (1,6)x(6,2)",
        &[x(&[1, 6], 40), x(&[6, 2], 41)],
        |t| t[0].matmul(&t[1]),
    );
}

#[test]
fn conv2d() {
    let (img, w, b) = (x(&[2, 3, 6, 5], 42), x(&[4, 3, 3, 3], 43), x(&[4], 44));
    check(
        "conv2d stride 1 pad 0",
        &[img.clone(), w.clone(), b.clone()],
        |t| t[0].conv2d(&t[1], Some(&t[2]), 1, 0),
    );
    check("conv2d stride 2 pad 1", &[img.clone(), w.clone(), b], |t| {
        t[0].conv2d(&t[1], Some(&t[2]), 2, 1)
    });
    check("conv2d no bias, pad 2", &[img, w], |t| {
        t[0].conv2d(&t[1], None, 1, 2)
    });
    // kernel wider than the image: some kernel columns only ever see padding
    check(
        "conv2d 5x5 kernel on a 3x1 image, pad 2",
        &[x(&[2, 2, 3, 1], 53), x(&[2, 2, 5, 5], 54)],
        |t| t[0].conv2d(&t[1], None, 1, 2),
    );
    check(
        "conv2d stride 3 pad 2",
        &[x(&[1, 2, 7, 8], 55), x(&[2, 2, 3, 3], 56)],
        |t| t[0].conv2d(&t[1], None, 3, 2),
    );
    check(
        "conv2d 1 channel 5x5",
        &[x(&[2, 1, 7, 7], 45), x(&[3, 1, 5, 5], 46)],
        |t| t[0].conv2d(&t[1], None, 1, 0),
    );
}

/// Distinct values at least 0.05 apart, shuffled, so no pooling window has a
/// near-tie that a finite-difference step could flip.
fn well_separated(shape: &[usize], seed: u64) -> ArrayD<f32> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let n: usize = shape.iter().product();
    let mut values: Vec<f32> = (0..n).map(|i| i as f32 * 0.05 - 1.0).collect();
    values.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    ArrayD::from_shape_vec(shape, values).unwrap()
}

#[test]
fn pooling() {
    check("avg_pool2d 2/2", &[x(&[2, 3, 4, 6], 47)], |t| {
        t[0].avg_pool2d(2, 2)
    });
    check("avg_pool2d 2/2, odd sizes", &[x(&[2, 2, 5, 7], 51)], |t| {
        t[0].avg_pool2d(2, 2)
    });
    check(
        "avg_pool2d 3/1 (overlapping)",
        &[x(&[1, 2, 5, 5], 48)],
        |t| t[0].avg_pool2d(3, 1),
    );
    check(
        "max_pool2d 2/2",
        &[well_separated(&[2, 3, 4, 6], 49)],
        |t| t[0].max_pool2d(2, 2),
    );
    check(
        "max_pool2d 2/2 on odd sizes (the last row and column left out)",
        &[well_separated(&[1, 2, 5, 7], 57)],
        |t| t[0].max_pool2d(2, 2),
    );
    check(
        "max_pool2d 3/2 (overlapping)",
        &[well_separated(&[1, 2, 7, 7], 50)],
        |t| t[0].max_pool2d(3, 2),
    );
}

#[test]
fn softmax_cross_entropy() {
    let labels = [2, 0, 4, 4, 1];
    check(
        "softmax_cross_entropy",
        &[random_input(&[5, 5], -3.0, 3.0, 51)],
        |t| t[0].softmax_cross_entropy(&labels).unwrap(),
    );
}

#[test]
fn composite_expression_reuses_nodes() {
    // a small batch-norm-like expression: every node is used more than once
    check("normalise rows", &[x(&[4, 3], 52)], |t| {
        let mean = t[0].mean(&[0], true);
        let centered = &t[0] - &mean;
        let var = (&centered * &centered).mean(&[0], true);
        &centered / &var.add_scalar(1e-5).sqrt()
    });
}
