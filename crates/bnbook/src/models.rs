//! The networks of the chapter, exactly as the seed texts define them.
//!
//! *Book: chapter "LeNet with BN on Fashion-MNIST".*
//!
//! Batch norm sits after each convolution or fully connected layer and
//! *before* the sigmoid: normalise, scale and shift, then activate.

use crate::concise::{BatchNorm1d, BatchNorm2d};
use crate::error::{Error, Result};
use crate::nn::{AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, Module, Sequential, Sigmoid};
use crate::norms::{GroupNorm, Implementation, InstanceNorm2d, LayerNorm, NormOptions};
use crate::scratch::BatchNorm;
use rand::Rng;
use std::fmt;
use std::str::FromStr;

/// The models the book trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModelKind {
    /// LeNet with the from-scratch [`BatchNorm`] after every layer but the
    /// last: the network [`lenet_bn`] writes out layer by layer.
    LenetBn,
    /// The same network with the fused [`BatchNorm1d`]/[`BatchNorm2d`]
    /// (d2l's conventions, so both train identically).
    LenetBnConcise,
    /// d2l's plain LeNet: first convolution padded by 2, `Linear(400 → 120)`,
    /// no batch norm.
    Lenet,
    /// LeNet-BN with max-pooling instead of average pooling, as two of the
    /// seed texts write it — a second change that confounds "BN vs no BN".
    LenetBnMaxpool,
    /// LeNet-BN's architecture with no normalisation at all: the baseline of
    /// the comparison of normalisations (lr 1.0 like the others).
    LenetNoNorm,
    /// Layer norm in every slot of batch norm: group norm with one group
    /// (per-channel γ, β) after convolutions, `LayerNorm([F])` after fully
    /// connected layers — the same thing for an `(N, F)` input.
    LenetLn,
    /// Instance norm (with affine γ, β, like the batch norm it replaces)
    /// after convolutions. After fully connected layers a channel has a
    /// single value, which instance norm would set to 0, so those slots use
    /// layer norm.
    LenetIn,
    /// Group norm with [`GROUPS`] groups in every slot (convolutional and
    /// fully connected).
    LenetGn,
}

/// The number of groups of `lenet-gn`: 2 is the only choice besides 1 that
/// divides all of LeNet's widths 6, 16, 120 and 84.
pub const GROUPS: usize = 2;

impl ModelKind {
    /// Every model, in the order the book introduces them.
    pub const ALL: [ModelKind; 8] = [
        ModelKind::LenetBn,
        ModelKind::LenetBnConcise,
        ModelKind::Lenet,
        ModelKind::LenetBnMaxpool,
        ModelKind::LenetNoNorm,
        ModelKind::LenetLn,
        ModelKind::LenetIn,
        ModelKind::LenetGn,
    ];

    /// The command-line name, e.g. `lenet-bn`.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::LenetBn => "lenet-bn",
            ModelKind::LenetBnConcise => "lenet-bn-concise",
            ModelKind::Lenet => "lenet",
            ModelKind::LenetBnMaxpool => "lenet-bn-maxpool",
            ModelKind::LenetNoNorm => "lenet-no-norm",
            ModelKind::LenetLn => "lenet-ln",
            ModelKind::LenetIn => "lenet-in",
            ModelKind::LenetGn => "lenet-gn",
        }
    }

    /// d2l's learning rate for this model: 0.9 for the plain LeNet, 1.0 for
    /// every LeNet-BN-shaped network (with any normalisation or none).
    pub fn default_lr(self) -> f32 {
        match self {
            ModelKind::Lenet => 0.9,
            _ => 1.0,
        }
    }

    /// Whether the model normalises with batch statistics in training, and
    /// therefore needs at least two examples per batch.
    pub fn uses_batch_statistics(self) -> bool {
        matches!(
            self,
            ModelKind::LenetBn | ModelKind::LenetBnConcise | ModelKind::LenetBnMaxpool
        )
    }

    /// Checks that `batch_size` can train this model.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the batch size is 0, or 1 for a model
    /// with batch norm.
    pub fn check_batch_size(self, batch_size: usize) -> Result<()> {
        crate::nn::check_batch_size(batch_size, self.name(), self.uses_batch_statistics())
    }

    /// The normalisation of a LeNet-BN-shaped model with average pooling
    /// (`None` for `lenet` and `lenet-bn-maxpool`).
    pub fn normalization(self) -> Option<(Normalization, Implementation)> {
        Some(match self {
            ModelKind::LenetBn => (Normalization::Batch, COMPOSED),
            ModelKind::LenetBnConcise => (Normalization::Batch, Implementation::Fused),
            ModelKind::LenetNoNorm => (Normalization::None, Implementation::Fused),
            ModelKind::LenetLn => (Normalization::Layer, Implementation::Fused),
            ModelKind::LenetIn => (Normalization::Instance, Implementation::Fused),
            ModelKind::LenetGn => (Normalization::Group, Implementation::Fused),
            ModelKind::Lenet | ModelKind::LenetBnMaxpool => return None,
        })
    }

    /// The model with this normalisation (fused where there is a choice,
    /// the concise batch norm for [`Normalization::Batch`]).
    pub fn with_normalization(norm: Normalization) -> ModelKind {
        ModelKind::ALL
            .into_iter()
            .find(|m| m.normalization() == Some((norm, Implementation::Fused)))
            .expect("every normalisation has a fused model")
    }

    /// Builds the network with Xavier-uniform weights drawn from `rng`.
    ///
    /// # Errors
    /// Never for these fixed architectures; the `Result` comes from the
    /// layer constructors.
    pub fn build<R: Rng + ?Sized>(self, rng: &mut R) -> Result<Sequential> {
        match self {
            ModelKind::Lenet => lenet(rng),
            ModelKind::LenetBnMaxpool => {
                lenet_bn_variant(rng, Pool::Max, Normalization::Batch, COMPOSED)
            }
            _ => {
                let (norm, implementation) = self.normalization().expect("LeNet-BN shaped");
                lenet_with(norm, implementation, rng)
            }
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ModelKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ModelKind::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = ModelKind::ALL.iter().map(|m| m.name()).collect();
                Error::InvalidArgument(format!(
                    "unknown model `{s}`; choose one of: {}",
                    names.join(", ")
                ))
            })
    }
}

#[derive(Clone, Copy)]
enum Pool {
    Average,
    Max,
}

/// Which normalisation a LeNet-BN-shaped network has in its four slots
/// (after both convolutions and the first two fully connected layers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Normalization {
    /// No normalisation layer at all.
    None,
    /// Batch norm; [`Implementation::Composed`] is the from-scratch
    /// [`BatchNorm`], [`Implementation::Fused`] the concise one with d2l's
    /// conventions (the two train identically).
    Batch,
    /// Layer norm: group norm with one group (per-channel γ, β) after
    /// convolutions, `LayerNorm([F])` after fully connected layers.
    Layer,
    /// Instance norm with affine γ, β after convolutions, layer norm after
    /// fully connected layers (a feature vector has one value per channel).
    Instance,
    /// Group norm with [`GROUPS`] groups in every slot.
    Group,
}

impl Normalization {
    /// All five, in the order of the comparison chapter.
    pub const ALL: [Normalization; 5] = [
        Normalization::None,
        Normalization::Batch,
        Normalization::Layer,
        Normalization::Instance,
        Normalization::Group,
    ];

    /// Short label: `none`, `BN`, `LN`, `IN`, `GN`.
    pub fn label(self) -> &'static str {
        match self {
            Normalization::None => "none",
            Normalization::Batch => "BN",
            Normalization::Layer => "LN",
            Normalization::Instance => "IN",
            Normalization::Group => "GN",
        }
    }

    /// The normalisation layer for a slot with `features` features (`rank`
    /// 2, after a fully connected layer) or channels (`rank` 4, after a
    /// convolution); `None` for [`Normalization::None`].
    ///
    /// # Errors
    /// If `features` is 0, or `rank` is neither 2 nor 4.
    pub fn layer(
        self,
        features: usize,
        rank: usize,
        implementation: Implementation,
    ) -> Result<Option<Box<dyn Module>>> {
        if rank != 2 && rank != 4 {
            return Err(Error::InvalidArgument(format!(
                "normalisation slot: rank must be 2 (fully connected) or 4 (convolutional), got {rank}"
            )));
        }
        let d2l = crate::concise::BatchNormOptions::d2l();
        let options = NormOptions::default().with_implementation(implementation);
        let fc = rank == 2;
        Ok(Some(match (self, implementation) {
            (Normalization::None, _) => return Ok(None),
            (Normalization::Batch, Implementation::Composed) => {
                Box::new(BatchNorm::new(features, rank)?)
            }
            (Normalization::Batch, Implementation::Fused) if fc => {
                Box::new(BatchNorm1d::with_options(features, d2l)?)
            }
            (Normalization::Batch, Implementation::Fused) => {
                Box::new(BatchNorm2d::with_options(features, d2l)?)
            }
            (Normalization::Layer, _) => Box::new(GroupNorm::with_options(1, features, options)?),
            (Normalization::Instance, _) if fc => {
                Box::new(LayerNorm::with_options(&[features], options)?)
            }
            (Normalization::Instance, _) => {
                Box::new(InstanceNorm2d::with_options(features, options)?)
            }
            (Normalization::Group, _) => {
                Box::new(GroupNorm::with_options(GROUPS, features, options)?)
            }
        }))
    }
}

fn pool(kind: Pool) -> Result<Box<dyn Module>> {
    Ok(match kind {
        Pool::Average => Box::new(AvgPool2d::new(2, 2)?),
        Pool::Max => Box::new(MaxPool2d::new(2, 2)?),
    })
}

const COMPOSED: Implementation = Implementation::Composed;

/// LeNet-BN's architecture with `norm` in every normalisation slot (average
/// pooling, Xavier-uniform weights from `rng`).
///
/// # Errors
/// Never for this fixed architecture; the `Result` comes from the layer
/// constructors.
pub fn lenet_with<R: Rng + ?Sized>(
    norm: Normalization,
    implementation: Implementation,
    rng: &mut R,
) -> Result<Sequential> {
    lenet_bn_variant(rng, Pool::Average, norm, implementation)
}

fn push_norm(net: &mut Sequential, layer: Option<Box<dyn Module>>) {
    if let Some(layer) = layer {
        net.push_boxed(layer);
    }
}

// ANCHOR: lenet_bn
/// LeNet with the from-scratch batch norm after every layer but the last,
/// written out layer by layer like d2l's `nn.Sequential(...)`: the network
/// of [`ModelKind::LenetBn`], with Xavier-uniform weights drawn from `rng`.
///
/// # Errors
/// Never for this fixed architecture; the `Result` comes from the layer
/// constructors.
pub fn lenet_bn<R: Rng + ?Sized>(rng: &mut R) -> Result<Sequential> {
    Ok(Sequential::new()
        .with(Conv2d::new(1, 6, 5, rng)?) // (N, 6, 24, 24)
        .with(BatchNorm::new(6, 4)?)
        .with(Sigmoid)
        .with(AvgPool2d::new(2, 2)?) // (N, 6, 12, 12)
        .with(Conv2d::new(6, 16, 5, rng)?) // (N, 16, 8, 8)
        .with(BatchNorm::new(16, 4)?)
        .with(Sigmoid)
        .with(AvgPool2d::new(2, 2)?) // (N, 16, 4, 4)
        .with(Flatten) // (N, 256)
        .with(Linear::new(16 * 4 * 4, 120, rng)?) // (N, 120)
        .with(BatchNorm::new(120, 2)?)
        .with(Sigmoid)
        .with(Linear::new(120, 84, rng)?) // (N, 84)
        .with(BatchNorm::new(84, 2)?)
        .with(Sigmoid)
        .with(Linear::new(84, 10, rng)?)) // (N, 10)
}
// ANCHOR_END: lenet_bn

// ANCHOR: lenet_bn_variant
/// LeNet-BN with a choice of pooling and of the layer in the four
/// normalisation slots: Conv(1→6, 5×5) Norm σ Pool, Conv(6→16, 5×5) Norm σ
/// Pool, Flatten, Linear(256→120) Norm σ, Linear(120→84) Norm σ,
/// Linear(84→10). [`ModelKind::build`] makes every LeNet-BN-shaped model
/// with it.
fn lenet_bn_variant<R: Rng + ?Sized>(
    rng: &mut R,
    pooling: Pool,
    norm: Normalization,
    implementation: Implementation,
) -> Result<Sequential> {
    lenet_bn_slots(rng, pooling, |features, rank| {
        norm.layer(features, rank, implementation)
    })
}

/// The layers of LeNet-BN around its four slots; `slot(features, rank)`
/// makes the layer of each slot (or none).
fn lenet_bn_slots<R: Rng + ?Sized>(
    rng: &mut R,
    pooling: Pool,
    mut slot: impl FnMut(usize, usize) -> Result<Option<Box<dyn Module>>>,
) -> Result<Sequential> {
    let mut net = Sequential::new();
    net.push(Conv2d::new(1, 6, 5, rng)?); // (N, 6, 24, 24)
    push_norm(&mut net, slot(6, 4)?);
    net.push(Sigmoid);
    net.push_boxed(pool(pooling)?); // (N, 6, 12, 12)
    net.push(Conv2d::new(6, 16, 5, rng)?); // (N, 16, 8, 8)
    push_norm(&mut net, slot(16, 4)?);
    net.push(Sigmoid);
    net.push_boxed(pool(pooling)?); // (N, 16, 4, 4)
    net.push(Flatten); // (N, 256)
    net.push(Linear::new(16 * 4 * 4, 120, rng)?);
    push_norm(&mut net, slot(120, 2)?);
    net.push(Sigmoid);
    net.push(Linear::new(120, 84, rng)?);
    push_norm(&mut net, slot(84, 2)?);
    net.push(Sigmoid);
    net.push(Linear::new(84, 10, rng)?);
    Ok(net)
}
// ANCHOR_END: lenet_bn_variant

/// LeNet-BN's architecture (average pooling, Xavier-uniform weights from
/// `rng`, drawn exactly as for [`ModelKind::build`]) with the layer of each
/// of the four normalisation slots chosen by `slot(features, rank)`: it is
/// called with `(6, 4)` and `(16, 4)` for the slots after the two
/// convolutions (rank-4 input, `features` channels) and with `(120, 2)` and
/// `(84, 2)` for those after the fully connected layers, and returns the
/// layer for the slot or `None` to leave it empty. The exercises use it for
/// networks the [`ModelKind`]s do not cover: batch norm in some slots only,
/// batch norm without γ and β, other group counts.
///
/// *Book: chapter "LeNet with BN on Fashion-MNIST", exercises.*
///
/// # Errors
/// The first error `slot` returns.
pub fn lenet_with_slots<R: Rng + ?Sized>(
    rng: &mut R,
    slot: impl FnMut(usize, usize) -> Result<Option<Box<dyn Module>>>,
) -> Result<Sequential> {
    lenet_bn_slots(rng, Pool::Average, slot)
}

/// d2l's LeNet: Conv(1→6, 5×5, padding 2) σ AvgPool, Conv(6→16, 5×5) σ
/// AvgPool, Flatten, Linear(400→120) σ, Linear(120→84) σ, Linear(84→10).
fn lenet<R: Rng + ?Sized>(rng: &mut R) -> Result<Sequential> {
    Ok(Sequential::new()
        .with(Conv2d::new(1, 6, 5, rng)?.with_padding(2)) // (N, 6, 28, 28)
        .with(Sigmoid)
        .with(AvgPool2d::new(2, 2)?) // (N, 6, 14, 14)
        .with(Conv2d::new(6, 16, 5, rng)?) // (N, 16, 10, 10)
        .with(Sigmoid)
        .with(AvgPool2d::new(2, 2)?) // (N, 16, 5, 5)
        .with(Flatten) // (N, 400)
        .with(Linear::new(16 * 5 * 5, 120, rng)?)
        .with(Sigmoid)
        .with(Linear::new(120, 84, rng)?)
        .with(Sigmoid)
        .with(Linear::new(84, 10, rng)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::Tensor;
    use crate::nn::Mode;
    use crate::random::random_input;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// The literal listing of the LeNet chapter and the builder behind
    /// `ModelKind::LenetBn` are the same network: same layers, same
    /// parameters drawn from the same rng, same outputs in both modes.
    #[test]
    fn literal_lenet_bn_is_the_model_kind_network() {
        for seed in [0, 7] {
            let mut literal = lenet_bn(&mut StdRng::seed_from_u64(seed)).unwrap();
            let mut built = ModelKind::LenetBn
                .build(&mut StdRng::seed_from_u64(seed))
                .unwrap();
            let layers = |net: &Sequential| -> Vec<String> {
                net.layers().iter().map(|l| l.describe()).collect()
            };
            assert_eq!(layers(&literal), layers(&built));
            assert_eq!(literal.describe(), built.describe());
            let (p, q) = (literal.parameters(), built.parameters());
            assert_eq!(p.len(), q.len());
            for (a, b) in p.iter().zip(&q) {
                assert_eq!(a.shape(), b.shape());
                assert_eq!(*a.value(), *b.value(), "parameter values, seed {seed}");
            }
            let x = Tensor::new(random_input(&[8, 1, 28, 28], 0.0, 1.0, seed + 1));
            // Eval with the initial running statistics, then a training
            // step (which updates them), then Eval again with the updated ones.
            for mode in [Mode::Eval, Mode::Train, Mode::Eval] {
                let y = literal.forward(&x, mode).unwrap();
                let z = built.forward(&x, mode).unwrap();
                assert_eq!(y.shape(), vec![8, 10]);
                assert_eq!(*y.value(), *z.value(), "{mode:?} output, seed {seed}");
                if mode == Mode::Train {
                    y.sum_all().backward();
                    z.sum_all().backward();
                    for (a, b) in p.iter().zip(&q) {
                        assert_eq!(a.grad(), b.grad(), "gradients, seed {seed}");
                    }
                }
            }
        }
    }
}
