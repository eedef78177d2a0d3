//! Finite-difference gradient checking.
//!
//! *Book: chapter "Autograd in a few hundred lines", section "Trust, but check".*
//!
//! To test a backward rule we compare it with the definition of a
//! derivative. For a function `f` with inputs `x` we form the scalar
//! `L(x) = Σ_j r_j · f(x)_j` with fixed random weights `r` (random, so that
//! swapped or transposed output entries change `L`), let autograd compute
//! `∂L/∂x`, and estimate every entry by the central difference
//!
//! ```text
//! ∂L/∂x_i ≈ (L(x + h·e_i) − L(x − h·e_i)) / 2h
//! ```
//!
//! whose error shrinks like `h²`. The forward passes run in `f32` and `L` is
//! summed in `f64`; with `h ≈ 1e-2` and inputs of order one, the estimate is
//! good to about `1e-4` relative, so a tolerance of `1e-2` leaves a margin of
//! 100 against noise yet fails on a missing factor of 2, a dropped term or a
//! transposed index (the tests show that a deliberately wrong rule fails).

use crate::autograd::Tensor;
use crate::random::random_input;
use ndarray::ArrayD;
use std::fmt;

/// Settings of a gradient check.
#[derive(Clone, Copy, Debug)]
pub struct GradCheck {
    /// Step of the central difference.
    pub step: f32,
    /// Allowed error relative to the size of the numeric derivative.
    pub rel_tol: f64,
    /// Allowed error relative to the largest derivative of the same input
    /// (covers entries whose true derivative is near zero).
    pub abs_tol: f64,
    /// Seed of the random output weights `r`.
    pub seed: u64,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck {
            step: 1e-2,
            rel_tol: 1e-2,
            abs_tol: 1e-3,
            seed: 0,
        }
    }
}

/// The worst disagreement found, per input.
#[derive(Clone, Debug)]
pub struct InputReport {
    /// Largest `|autograd − numeric|` over this input's entries.
    pub max_abs_error: f64,
    /// Largest numeric derivative magnitude (the scale of this input's gradient).
    pub scale: f64,
    /// Flat index of the worst entry.
    pub worst_index: usize,
    /// Autograd's value at the worst entry.
    pub autograd: f64,
    /// The finite-difference value at the worst entry.
    pub numeric: f64,
    /// Whether every entry was within tolerance.
    pub passed: bool,
}

/// The result of [`GradCheck::run`]: one [`InputReport`] per input.
#[derive(Clone, Debug)]
pub struct GradCheckReport {
    /// Reports in the order of the inputs.
    pub inputs: Vec<InputReport>,
}

impl GradCheckReport {
    /// Whether every input passed.
    pub fn passed(&self) -> bool {
        self.inputs.iter().all(|r| r.passed)
    }
}

impl fmt::Display for GradCheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.inputs.iter().enumerate() {
            writeln!(
                f,
                "input {i}: {} max |error| {:.2e} (gradient scale {:.2e}); worst entry {}: autograd {:.6}, numeric {:.6}",
                if r.passed { "ok  " } else { "FAIL" },
                r.max_abs_error,
                r.scale,
                r.worst_index,
                r.autograd,
                r.numeric
            )?;
        }
        Ok(())
    }
}

impl GradCheck {
    /// Checks the gradients of `f` at `inputs`.
    ///
    /// `f` receives the inputs as parameter tensors (so they collect
    /// gradients) and must build its output from them with autograd ops.
    pub fn run(&self, inputs: &[ArrayD<f32>], f: impl Fn(&[Tensor]) -> Tensor) -> GradCheckReport {
        let params: Vec<Tensor> = inputs
            .iter()
            .map(|x| Tensor::parameter(x.clone()))
            .collect();
        let out = f(&params);
        let out_shape = out.shape();
        let weights = random_input(&out_shape, -1.0, 1.0, self.seed);
        out.backward_with(weights.clone());

        // L(x) in f64, for the finite differences
        let weighted_sum = |xs: &[ArrayD<f32>]| -> f64 {
            let ts: Vec<Tensor> = xs.iter().map(|x| Tensor::new(x.clone())).collect();
            let y = f(&ts);
            let y = y.value();
            y.iter()
                .zip(weights.iter())
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum()
        };

        let mut reports = Vec::with_capacity(inputs.len());
        // Nudged in place one entry at a time: a contiguous copy, whatever
        // the layout of the caller's arrays (e.g. a transposed view).
        let mut xs: Vec<ArrayD<f32>> = inputs
            .iter()
            .map(|x| x.as_standard_layout().into_owned())
            .collect();
        for (i, p) in params.iter().enumerate() {
            let autograd = p
                .grad()
                .unwrap_or_else(|| ArrayD::zeros(inputs[i].raw_dim()));
            let mut numeric = Vec::with_capacity(inputs[i].len());
            for j in 0..inputs[i].len() {
                let original = xs[i].as_slice().expect("standard layout")[j];
                let (plus, minus) = (original + self.step, original - self.step);
                xs[i].as_slice_mut().expect("standard layout")[j] = plus;
                let l_plus = weighted_sum(&xs);
                xs[i].as_slice_mut().expect("standard layout")[j] = minus;
                let l_minus = weighted_sum(&xs);
                xs[i].as_slice_mut().expect("standard layout")[j] = original;
                numeric.push((l_plus - l_minus) / f64::from(plus - minus));
            }
            reports.push(self.compare(autograd.iter().map(|&a| f64::from(a)), &numeric));
        }
        GradCheckReport { inputs: reports }
    }

    /// [`run`](GradCheck::run), printing the report, and panicking with it
    /// if any input fails: the form the tests use.
    ///
    /// # Panics
    /// If an autograd gradient disagrees with its finite difference.
    pub fn assert_passes(
        &self,
        name: &str,
        inputs: &[ArrayD<f32>],
        f: impl Fn(&[Tensor]) -> Tensor,
    ) {
        let report = self.run(inputs, f);
        println!("{name}:\n{report}");
        assert!(
            report.passed(),
            "gradient check failed for {name}:\n{report}"
        );
    }

    fn compare(&self, autograd: impl Iterator<Item = f64>, numeric: &[f64]) -> InputReport {
        let scale = numeric.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
        let mut report = InputReport {
            max_abs_error: 0.0,
            scale,
            worst_index: 0,
            autograd: 0.0,
            numeric: 0.0,
            passed: true,
        };
        let mut worst_ratio = -1.0;
        for (j, (a, &n)) in autograd.zip(numeric).enumerate() {
            let err = (a - n).abs();
            let allowed = self.abs_tol * scale.max(1e-3) + self.rel_tol * n.abs();
            let ratio = err / allowed;
            report.max_abs_error = report.max_abs_error.max(err);
            if ratio > worst_ratio {
                worst_ratio = ratio;
                report.worst_index = j;
                report.autograd = a;
                report.numeric = n;
            }
            if err > allowed {
                report.passed = false;
            }
        }
        report
    }
}
