//! Everything a notebook or a short program usually needs, in one `use`:
//!
//! ```
//! use bnbook::prelude::*;
//!
//! let x = Tensor::new(random_input(&[4, 3], -1.0, 1.0, 0));
//! let mut bn = BatchNorm::new(3, 2)?;
//! let y = bn.forward(&x, Mode::Train)?;
//! assert_eq!(y.shape(), vec![4, 3]);
//! # Ok::<(), bnbook::Error>(())
//! ```
//!
//! It brings the tensor and its modes, the layers and models of the book,
//! the three batch norms and the other normalisations, training, data,
//! plotting, gradient checks and seeded randomness, plus the `ndarray`
//! and `rand` items the chapters use.

pub use crate::autograd::Tensor;
pub use crate::concise::{BatchNorm1d, BatchNorm2d, BatchNormOptions, RunningVariance};
pub use crate::data::{BatchOptions, FashionMnist, LastBatch, LoadOptions, Split};
pub use crate::dynamics::{TraceOptions, Variant, train_traced};
pub use crate::error::{Error, Result};
pub use crate::fold::fold_batch_norm;
pub use crate::gradcheck::GradCheck;
pub use crate::models::{ModelKind, Normalization};
pub use crate::nn::{
    AvgPool2d, BatchNormLayer, Conv2d, DistributionNoise, Dropout, Flatten, Linear, MaxPool2d,
    Mode, Module, Momentum, NoiseOptions, ReLU, Sequential, Sgd, Sigmoid,
};
pub use crate::norms::{GroupNorm, Implementation, InstanceNorm2d, LayerNorm, NormOptions};
pub use crate::plot::{Band, Series, Svg, band_chart, line_chart, training_curves};
pub use crate::random::random_input;
pub use crate::scratch::{BatchNorm, batch_norm};
pub use crate::small_batch::{
    BatchNormKind, BatchNormVariant1d, BatchNormVariant2d, lenet_bn_with, sync_batch_norm,
};
pub use crate::train::{
    History, TrainConfig, evaluate, reestimate_running_statistics, train, train_model,
};
pub use ndarray::{Array1, Array2, ArrayD, Axis, IxDyn, array};
pub use rand::SeedableRng;
pub use rand::rngs::StdRng;
