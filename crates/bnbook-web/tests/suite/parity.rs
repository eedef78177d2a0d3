//! The page's forward/backward pass against `bnbook` on the native build,
//! and (when CI provides a Node.js build of the module) the WebAssembly
//! build against the native one on the same input.

use bnbook::autograd::Tensor;
use bnbook::nn::Mode;
use bnbook::scratch::batch_norm;
use bnbook_web::demo::{ForwardBackward, ForwardBackwardInput, forward_backward};
use ndarray::{ArrayD, IxDyn};

/// A fixed input: 16 examples, 4 features, values on different scales.
fn input() -> ForwardBackwardInput {
    let (batch, features) = (16, 4);
    let x = bnbook::random::random_input(&[batch, features], -3.0, 5.0, 11);
    let upstream = bnbook::random::random_input(&[batch, features], -1.0, 1.0, 12);
    ForwardBackwardInput {
        batch,
        features,
        x: x.iter().copied().collect(),
        gamma: vec![0.5, 1.0, 1.5, 2.0],
        beta: vec![-1.0, 0.0, 0.5, 3.0],
        upstream: upstream.iter().copied().collect(),
        eps: 1e-5,
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn the_exported_pass_agrees_with_the_scratch_batch_norm() {
    let input = input();
    let got = forward_backward(&input).unwrap();
    // bnbook's scratch BN: autograd through primitive ops, a second route
    let (n, c) = (input.batch, input.features);
    let x = Tensor::parameter(ArrayD::from_shape_vec(IxDyn(&[n, c]), input.x.clone()).unwrap());
    let row =
        |v: &[f32]| Tensor::parameter(ArrayD::from_shape_vec(IxDyn(&[1, c]), v.to_vec()).unwrap());
    let (gamma, beta) = (row(&input.gamma), row(&input.beta));
    let zeros = ArrayD::zeros(IxDyn(&[1, c]));
    let ones = ArrayD::ones(IxDyn(&[1, c]));
    let (y, _, _) = batch_norm(&x, &gamma, &beta, &zeros, &ones, 1e-5, 0.9, Mode::Train).unwrap();
    y.backward_with(ArrayD::from_shape_vec(IxDyn(&[n, c]), input.upstream.clone()).unwrap());
    let flat = |a: ArrayD<f32>| a.iter().copied().collect::<Vec<f32>>();
    assert!(max_abs_diff(&got.y, &flat(y.value().clone())) < 1e-5);
    assert!(max_abs_diff(&got.dx, &flat(x.grad().unwrap())) < 1e-5);
    assert!(max_abs_diff(&got.dgamma, &flat(gamma.grad().unwrap())) < 1e-4);
    assert!(max_abs_diff(&got.dbeta, &flat(beta.grad().unwrap())) < 1e-4);
}

/// Runs when `BNBOOK_WEB_NODE_PKG` names the output of `wasm-bindgen
/// --target nodejs` for this crate (`.ci/run` sets it; `scripts/build_lab.sh
/// --node DIR` makes one): the WebAssembly build, run by Node.js, must give
/// the native numbers on the same input.
#[test]
fn the_webassembly_build_agrees_with_the_native_build() {
    let Ok(pkg) = std::env::var("BNBOOK_WEB_NODE_PKG") else {
        eprintln!("skipped: set BNBOOK_WEB_NODE_PKG to a `wasm-bindgen --target nodejs` build");
        return;
    };
    let input = input();
    let native = forward_backward(&input).unwrap();
    let script = format!(
        "const m = require({pkg:?} + '/bnbook_web.js');\
         process.stdout.write(m.forwardBackward(process.argv[1]));"
    );
    let out = std::process::Command::new("node")
        .args(["-e", &script, &serde_json::to_string(&input).unwrap()])
        .output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wasm: ForwardBackward = serde_json::from_slice(&out.stdout).unwrap();
    let diffs = [
        max_abs_diff(&native.y, &wasm.y),
        max_abs_diff(&native.dx, &wasm.dx),
        max_abs_diff(&native.dgamma, &wasm.dgamma),
        max_abs_diff(&native.dbeta, &wasm.dbeta),
        max_abs_diff(&native.running_mean, &wasm.running_mean),
        max_abs_diff(&native.running_var, &wasm.running_var),
    ];
    eprintln!("largest |native − wasm| of y, dx, dγ, dβ, running mean, running var: {diffs:?}");
    assert!(diffs.iter().all(|&d| d <= 1e-6), "{diffs:?}");
}
