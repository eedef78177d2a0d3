//! The networks of the chapter, exactly as the seed texts define them.
//!
//! *Book: chapter "LeNet with BN on Fashion-MNIST".*
//!
//! Batch norm sits after each convolution or fully connected layer and
//! *before* the sigmoid: normalise, scale and shift, then activate.

use crate::concise::{BatchNorm1d, BatchNorm2d};
use crate::error::{Error, Result};
use crate::nn::{AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, Sequential, Sigmoid};
use crate::scratch::BatchNorm;
use rand::Rng;
use std::fmt;
use std::str::FromStr;

/// The models the book trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModelKind {
    /// LeNet with the from-scratch [`BatchNorm`] after every layer but the last.
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
}

impl ModelKind {
    /// Every model, in the order the book introduces them.
    pub const ALL: [ModelKind; 4] = [
        ModelKind::LenetBn,
        ModelKind::LenetBnConcise,
        ModelKind::Lenet,
        ModelKind::LenetBnMaxpool,
    ];

    /// The command-line name, e.g. `lenet-bn`.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::LenetBn => "lenet-bn",
            ModelKind::LenetBnConcise => "lenet-bn-concise",
            ModelKind::Lenet => "lenet",
            ModelKind::LenetBnMaxpool => "lenet-bn-maxpool",
        }
    }

    /// d2l's learning rate for this model: 1.0 with batch norm, 0.9 without.
    pub fn default_lr(self) -> f32 {
        match self {
            ModelKind::Lenet => 0.9,
            _ => 1.0,
        }
    }

    /// Builds the network with Xavier-uniform weights drawn from `rng`.
    ///
    /// # Errors
    /// Never for these fixed architectures; the `Result` comes from the
    /// layer constructors.
    pub fn build<R: Rng + ?Sized>(self, rng: &mut R) -> Result<Sequential> {
        match self {
            ModelKind::LenetBn => lenet_bn(rng, Pool::Average, Norm::Scratch),
            ModelKind::LenetBnConcise => lenet_bn(rng, Pool::Average, Norm::Concise),
            ModelKind::LenetBnMaxpool => lenet_bn(rng, Pool::Max, Norm::Scratch),
            ModelKind::Lenet => lenet(rng),
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

#[derive(Clone, Copy)]
enum Norm {
    Scratch,
    Concise,
}

fn pool(kind: Pool) -> Result<Box<dyn crate::nn::Module>> {
    Ok(match kind {
        Pool::Average => Box::new(AvgPool2d::new(2, 2)?),
        Pool::Max => Box::new(MaxPool2d::new(2, 2)?),
    })
}

/// Batch norm for `features` features (`rank` 2) or channels (`rank` 4).
fn norm(kind: Norm, features: usize, rank: usize) -> Result<Box<dyn crate::nn::Module>> {
    Ok(match (kind, rank) {
        (Norm::Scratch, _) => Box::new(BatchNorm::new(features, rank)?),
        (Norm::Concise, 2) => Box::new(BatchNorm1d::with_options(
            features,
            crate::concise::BatchNormOptions::d2l(),
        )?),
        (Norm::Concise, _) => Box::new(BatchNorm2d::with_options(
            features,
            crate::concise::BatchNormOptions::d2l(),
        )?),
    })
}

// ANCHOR: lenet_bn
/// LeNet with batch norm: Conv(1→6, 5×5) BN σ Pool, Conv(6→16, 5×5) BN σ
/// Pool, Flatten, Linear(256→120) BN σ, Linear(120→84) BN σ, Linear(84→10).
fn lenet_bn<R: Rng + ?Sized>(rng: &mut R, pooling: Pool, bn: Norm) -> Result<Sequential> {
    let mut net = Sequential::new();
    net.push(Conv2d::new(1, 6, 5, rng)?); // (N, 6, 24, 24)
    net.push_boxed(norm(bn, 6, 4)?);
    net.push(Sigmoid);
    net.push_boxed(pool(pooling)?); // (N, 6, 12, 12)
    net.push(Conv2d::new(6, 16, 5, rng)?); // (N, 16, 8, 8)
    net.push_boxed(norm(bn, 16, 4)?);
    net.push(Sigmoid);
    net.push_boxed(pool(pooling)?); // (N, 16, 4, 4)
    net.push(Flatten); // (N, 256)
    net.push(Linear::new(16 * 4 * 4, 120, rng)?);
    net.push_boxed(norm(bn, 120, 2)?);
    net.push(Sigmoid);
    net.push(Linear::new(120, 84, rng)?);
    net.push_boxed(norm(bn, 84, 2)?);
    net.push(Sigmoid);
    net.push(Linear::new(84, 10, rng)?);
    Ok(net)
}
// ANCHOR_END: lenet_bn

// ANCHOR: lenet
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
// ANCHOR_END: lenet
