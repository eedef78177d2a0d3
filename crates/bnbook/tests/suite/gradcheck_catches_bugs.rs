//! The gradient checker must fail on wrong backward rules, or the passing
//! checks elsewhere would prove nothing. Each case below is a real op with
//! one classic mistake planted in its backward pass.

use bnbook::Tensor;
use bnbook::gradcheck::GradCheck;
use bnbook::ndarray::{ArrayD, Ix2};
use bnbook::random::random_input;

fn fails(name: &str, inputs: &[ArrayD<f32>], f: impl Fn(&[Tensor]) -> Tensor) {
    let report = GradCheck::default().run(inputs, f);
    println!("{name}:\n{report}");
    assert!(
        !report.passed(),
        "the checker missed a planted bug in {name}:\n{report}"
    );
}

#[test]
fn missing_factor_of_two_is_caught() {
    // y = x², backward claims dy/dx = x instead of 2x
    fails(
        "square without the 2",
        &[random_input(&[3, 4], -1.0, 1.0, 1)],
        |t| {
            let y = t[0].value().mapv(|v| v * v);
            Tensor::from_op("bad_square", y, &[&t[0]], |ctx| {
                vec![Some(ctx.grad * ctx.input(0))]
            })
        },
    );
}

#[test]
fn missing_product_rule_term_is_caught() {
    // y = x·eˣ, backward keeps only eˣ and drops x·eˣ
    fails(
        "x*exp(x) missing a term",
        &[random_input(&[5], -1.0, 1.0, 2)],
        |t| {
            let y = t[0].value().mapv(|v| v * v.exp());
            Tensor::from_op("bad_xexp", y, &[&t[0]], |ctx| {
                vec![Some(ctx.grad * &ctx.input(0).mapv(f32::exp))]
            })
        },
    );
}

#[test]
fn transposed_index_is_caught() {
    // Y = A·B with square matrices, backward uses G·B instead of G·Bᵀ
    let (a, b) = (
        random_input(&[4, 4], -1.0, 1.0, 3),
        random_input(&[4, 4], -1.0, 1.0, 4),
    );
    fails("matmul with an untransposed B", &[a, b], |t| {
        let y = {
            let (a, b) = (t[0].value(), t[1].value());
            let (a, b) = (
                a.view().into_dimensionality::<Ix2>().unwrap(),
                b.view().into_dimensionality::<Ix2>().unwrap(),
            );
            a.dot(&b).into_dyn()
        };
        Tensor::from_op("bad_matmul", y, &[&t[0], &t[1]], |ctx| {
            let g = ctx.grad.view().into_dimensionality::<Ix2>().unwrap();
            let a = ctx.input(0).view().into_dimensionality::<Ix2>().unwrap();
            let b = ctx.input(1).view().into_dimensionality::<Ix2>().unwrap();
            vec![Some(g.dot(&b).into_dyn()), Some(a.t().dot(&g).into_dyn())]
        })
    });
}

#[test]
fn forgotten_broadcast_reduction_is_caught() {
    // y = a + b with b broadcast over rows; backward forgets to sum over the
    // copies and hands back only the first row's gradient
    fails(
        "add without summing broadcast copies",
        &[
            random_input(&[3, 4], -1.0, 1.0, 5),
            random_input(&[4], -1.0, 1.0, 6),
        ],
        |t| {
            let y = &*t[0].value() + &*t[1].value();
            Tensor::from_op("bad_add", y, &[&t[0], &t[1]], |ctx| {
                vec![
                    Some(ctx.grad.clone()),
                    Some(ctx.grad.index_axis(bnbook::ndarray::Axis(0), 0).to_owned()),
                ]
            })
        },
    );
}

#[test]
fn correct_rules_pass_the_same_harness() {
    let report = GradCheck::default().run(&[random_input(&[3, 4], -1.0, 1.0, 1)], |t| {
        let y = t[0].value().mapv(|v| v * v);
        Tensor::from_op("square", y, &[&t[0]], |ctx| {
            vec![Some(ctx.grad * &ctx.input(0).mapv(|v| 2.0 * v))]
        })
    });
    assert!(report.passed(), "{report}");
}
