//! Softmax cross-entropy, fused into one numerically stable operation.

use super::Tensor;
use crate::error::{Error, Result};
use ndarray::{Array2, ArrayD, Axis};

/// Checks that logits of shape `shape` are a `(N, K)` batch with one label
/// per row, each a class index below `K`; returns `(N, K)`. Shared by the
/// loss and by [`count_correct`](crate::nn::count_correct).
pub(crate) fn check_logits(
    context: &str,
    shape: &[usize],
    labels: &[usize],
) -> Result<(usize, usize)> {
    let &[n, k] = shape else {
        return Err(Error::shape(
            context,
            format!("logits must be (batch, classes), got shape {shape:?}"),
        ));
    };
    if n != labels.len() {
        return Err(Error::shape(
            context,
            format!(
                "{n} rows of logits but {} labels; pass one label per row",
                labels.len()
            ),
        ));
    }
    if let Some((row, &bad)) = labels.iter().enumerate().find(|(_, l)| **l >= k) {
        return Err(Error::InvalidArgument(format!(
            "{context}: label {bad} is out of range for {k} classes \
             (row {row}; a label is a class index below {k})"
        )));
    }
    Ok((n, k))
}

impl Tensor {
    /// Mean softmax cross-entropy of `self`, a `(N, K)` batch of logits,
    /// against integer class labels (one per row, each `< K`).
    ///
    /// Per row `i`: `loss_i = log Σ_k exp(x_ik) − x_i,label`, computed with
    /// the log-sum-exp trick (subtract the row maximum first) so that large
    /// logits cannot overflow. The gradient is `(softmax(x) − onehot) / N`.
    ///
    /// # Errors
    /// If `self` is not 2-D, the number of labels is not `N`, `N` is zero,
    /// or a label is out of range.
    pub fn softmax_cross_entropy(&self, labels: &[usize]) -> Result<Tensor> {
        let context = "softmax_cross_entropy";
        let (n, k) = check_logits(context, &self.shape(), labels)?;
        if n == 0 {
            return Err(Error::shape(
                context,
                "the batch is empty (0 rows of logits): the mean loss of no examples is undefined; pass at least one row",
            ));
        }

        let mut probs = Array2::<f32>::zeros((n, k));
        let mut total = 0.0_f64;
        {
            let x = self.value();
            let x = x.view().into_shape_with_order((n, k)).expect("checked 2-D");
            for ((row, mut p), &label) in x.outer_iter().zip(probs.outer_iter_mut()).zip(labels) {
                let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let sum_exp: f32 = row.iter().map(|&v| (v - max).exp()).sum();
                let log_sum_exp = max + sum_exp.ln();
                total += f64::from(log_sum_exp - row[label]);
                p.assign(&row.mapv(|v| (v - log_sum_exp).exp()));
            }
        }
        let loss = ArrayD::from_elem(vec![], (total / n as f64) as f32);

        let labels = labels.to_vec();
        Ok(Tensor::from_op(
            "softmax_cross_entropy",
            loss,
            &[self],
            move |ctx| {
                // ∂mean_loss/∂x = (softmax − onehot) / N, times the incoming scalar g
                let scale = ctx.grad.iter().next().copied().unwrap_or(0.0) / n as f32;
                let mut dx = probs.clone();
                for (mut row, &label) in dx.axis_iter_mut(Axis(0)).zip(&labels) {
                    row[label] -= 1.0;
                }
                dx *= scale;
                vec![Some(dx.into_dyn())]
            },
        ))
    }
}
