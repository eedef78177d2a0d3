//! Small cases worked out by hand (the numbers are in the comments).

use bnbook::Tensor;
use bnbook::ndarray::{ArrayD, IxDyn, array};

fn tensor(shape: &[usize], values: &[f32]) -> Tensor {
    Tensor::parameter(ArrayD::from_shape_vec(IxDyn(shape), values.to_vec()).unwrap())
}

fn assert_close(actual: &ArrayD<f32>, expected: &[f32]) {
    assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
    for (a, e) in actual.iter().zip(expected) {
        assert!((a - e).abs() < 1e-5, "{actual:?} vs {expected:?}");
    }
}

#[test]
fn conv2d_2x2_kernel_on_3x3_image() {
    // x = 1 2 3      w =  1  0      y[i,j] = x[i,j] - x[i+1,j+1] + 0.5 = -3.5 everywhere
    //     4 5 6           0 -1
    //     7 8 9
    let x = tensor(&[1, 1, 3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
    let w = tensor(&[1, 1, 2, 2], &[1., 0., 0., -1.]);
    let b = tensor(&[1], &[0.5]);
    let y = x.conv2d(&w, Some(&b), 1, 0);
    assert_eq!(y.shape(), [1, 1, 2, 2]);
    assert_close(&y.value(), &[-3.5; 4]);

    y.sum_all().backward();
    // ∂/∂w[a,b] = Σ over the four windows of the pixel under w[a,b]
    assert_close(
        &w.grad().unwrap(),
        &[
            1. + 2. + 4. + 5.,
            2. + 3. + 5. + 6.,
            4. + 5. + 7. + 8.,
            5. + 6. + 8. + 9.,
        ],
    );
    // ∂/∂x[i,j] = Σ of the kernel entries that touch (i,j)
    assert_close(&x.grad().unwrap(), &[1., 1., 0., 1., 0., -1., 0., -1., -1.]);
    assert_close(&b.grad().unwrap(), &[4.]);
}

#[test]
fn conv2d_padding_and_stride_shapes() {
    // LeNet's first layer: 28×28 with padding 2 and a 5×5 kernel keeps 28×28
    let x = Tensor::new(ArrayD::zeros(IxDyn(&[2, 1, 28, 28])));
    let w = Tensor::new(ArrayD::zeros(IxDyn(&[6, 1, 5, 5])));
    assert_eq!(x.conv2d(&w, None, 1, 2).shape(), [2, 6, 28, 28]);
    assert_eq!(x.conv2d(&w, None, 1, 0).shape(), [2, 6, 24, 24]);
    assert_eq!(x.conv2d(&w, None, 2, 0).shape(), [2, 6, 12, 12]);
}

#[test]
fn max_pool_ties_send_gradient_to_first_maximum() {
    // window 1 3 : maximum 3 appears twice; the first (row-major) wins
    //        3 2
    let x = tensor(&[1, 1, 2, 2], &[1., 3., 3., 2.]);
    let y = x.max_pool2d(2, 2);
    assert_close(&y.value(), &[3.]);
    y.sum_all().backward();
    assert_close(&x.grad().unwrap(), &[0., 1., 0., 0.]);

    // all equal: the top-left entry gets everything
    let x = tensor(&[1, 1, 2, 2], &[5., 5., 5., 5.]);
    x.max_pool2d(2, 2).sum_all().backward();
    assert_close(&x.grad().unwrap(), &[1., 0., 0., 0.]);
}

#[test]
fn max_pool_passes_nan_on() {
    // a NaN anywhere in the window is the output (as in PyTorch), not
    // hidden behind the largest number
    for window in [
        [1., f32::NAN, 0., 0.],
        [f32::NAN, 1., 0., 0.],
        [0., 0., 1., f32::NAN],
    ] {
        let x = tensor(&[1, 1, 2, 2], &window);
        assert!(
            x.max_pool2d(2, 2).value()[[0, 0, 0, 0]].is_nan(),
            "{window:?}"
        );
    }
}

#[test]
fn avg_pool_spreads_gradient_evenly() {
    let x = tensor(&[1, 1, 2, 4], &[1., 2., 5., 6., 3., 4., 7., 8.]);
    let y = x.avg_pool2d(2, 2);
    assert_close(&y.value(), &[2.5, 6.5]);
    y.sum_all().backward();
    assert_close(&x.grad().unwrap(), &[0.25; 8]);
}

/// The 2×2, stride-2 pooling has its own vectorised loops; they must give
/// the same bits as the plain definition (average of each window, and each
/// input's share g/4 of its window's gradient), also when the last row and
/// column belong to no window.
#[test]
fn avg_pool_2x2_matches_the_plain_loops_bit_for_bit() {
    for (h, w) in [(24, 24), (8, 8), (5, 7)] {
        let (n, c) = (3, 2);
        let values: Vec<f32> = (0..n * c * h * w)
            .map(|i| ((i * 7919) % 1000) as f32 / 997.0 - 0.4)
            .collect();
        let x = tensor(&[n, c, h, w], &values);
        let y = x.avg_pool2d(2, 2);
        let (oh, ow) = (h / 2, w / 2);
        let seed: Vec<f32> = (0..n * c * oh * ow)
            .map(|i| ((i * 104_729) % 1000) as f32 / 991.0 - 0.5)
            .collect();
        y.backward_with(ArrayD::from_shape_vec(IxDyn(&[n, c, oh, ow]), seed.clone()).unwrap());
        let (y, dx) = (y.value(), x.grad().unwrap());
        let (y, dx) = (y.as_slice().unwrap(), dx.as_slice().unwrap());
        let mut expected_dx = vec![0.0_f32; values.len()];
        for plane in 0..n * c {
            let at = |r: usize, col: usize| plane * h * w + r * w + col;
            for oy in 0..oh {
                for ox in 0..ow {
                    let o = plane * oh * ow + oy * ow + ox;
                    let mut sum = 0.0_f32;
                    for ky in 0..2 {
                        sum +=
                            values[at(2 * oy + ky, 2 * ox)] + values[at(2 * oy + ky, 2 * ox + 1)];
                    }
                    assert_eq!(y[o].to_bits(), (sum / 4.0).to_bits(), "y at {o}, {h}x{w}");
                    for (ky, kx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        expected_dx[at(2 * oy + ky, 2 * ox + kx)] += seed[o] / 4.0;
                    }
                }
            }
        }
        for (i, (a, e)) in dx.iter().zip(&expected_dx).enumerate() {
            assert_eq!(a.to_bits(), e.to_bits(), "dx at {i}, {h}x{w}");
        }
    }
}

#[test]
fn cross_entropy_of_known_logits() {
    // logits (1, 2, 3), label 2: loss = ln(e¹ + e² + e³) − 3 = 0.4076059
    // gradient = softmax − onehot = (0.0900306, 0.2447285, 0.6652410 − 1)
    let logits = tensor(&[1, 3], &[1., 2., 3.]);
    let loss = logits.softmax_cross_entropy(&[2]).unwrap();
    assert!((loss.item() - 0.407_605_96).abs() < 1e-6, "{}", loss.item());
    loss.backward();
    assert_close(
        &logits.grad().unwrap(),
        &[0.090_030_57, 0.244_728_48, 0.665_240_96 - 1.0],
    );
}

#[test]
fn cross_entropy_is_stable_for_huge_logits_and_averages_over_the_batch() {
    // row 1: ln(e¹⁰⁰⁰ + e⁰) − 1000 ≈ 0;  row 2: ln(e¹⁰⁰⁰ + 1) − 0 ≈ 1000
    let logits = tensor(&[2, 2], &[1000., 0., 1000., 0.]);
    let loss = logits.softmax_cross_entropy(&[0, 1]).unwrap();
    assert!((loss.item() - 500.0).abs() < 1e-3, "{}", loss.item());
    loss.backward();
    assert_close(&logits.grad().unwrap(), &[0., 0., 0.5, -0.5]);
}

#[test]
fn cross_entropy_rejects_bad_labels_with_clear_errors() {
    let logits = tensor(&[2, 3], &[0.; 6]);
    let err = logits
        .softmax_cross_entropy(&[0, 3])
        .unwrap_err()
        .to_string();
    assert!(err.contains("label 3") && err.contains("below 3"), "{err}");
    let err = logits.softmax_cross_entropy(&[0]).unwrap_err().to_string();
    assert!(err.contains("2 rows") && err.contains("1 labels"), "{err}");
    let err = tensor(&[6], &[0.; 6])
        .softmax_cross_entropy(&[0])
        .unwrap_err()
        .to_string();
    assert!(err.contains("(batch, classes)"), "{err}");
    let err = tensor(&[0, 3], &[])
        .softmax_cross_entropy(&[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("the batch is empty"), "{err}");
}

#[test]
fn gradients_accumulate_until_zeroed() {
    let x = Tensor::parameter(array![1.0_f32, -2.0].into_dyn());
    (&x * 3.0).sum_all().backward();
    (&x * 3.0).sum_all().backward();
    assert_close(&x.grad().unwrap(), &[6., 6.]);
    x.zero_grad();
    assert!(x.grad().is_none());
}

#[test]
fn detach_stops_gradients() {
    // y = x · stop(x): only the first factor carries a gradient, so dy/dx = x
    let x = Tensor::parameter(array![2.0_f32, -3.0].into_dyn());
    let y = (&x * &x.detach()).sum_all();
    y.backward();
    assert_close(&x.grad().unwrap(), &[2., -3.]);
    assert!(!x.detach().requires_grad());
}

#[test]
fn constants_build_no_graph() {
    let a = Tensor::new(array![1.0_f32, 2.0].into_dyn());
    let b = (&a * &a).exp();
    assert!(!b.requires_grad());
    assert!(
        b.parents().is_empty(),
        "a result of constants must not keep its inputs alive"
    );
}
