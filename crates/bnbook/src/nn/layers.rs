//! The layers LeNet needs: fully connected, convolution, pooling,
//! activations and flattening.

use super::init::{uniform, xavier_uniform};
use super::{Mode, Module, check_parameter};
use crate::autograd::Tensor;
use crate::error::{Error, Result};
use rand::Rng;

fn positive(what: &str, layer: &str, value: usize) -> Result<()> {
    if value == 0 {
        Err(Error::InvalidArgument(format!(
            "{layer}: {what} must be at least 1, got 0"
        )))
    } else {
        Ok(())
    }
}

/// PyTorch's default bias initialisation, `U(-1/√fan_in, 1/√fan_in)`
/// (d2l re-initialises only weights, so biases keep this).
fn default_bias<R: Rng + ?Sized>(len: usize, fan_in: usize, rng: &mut R) -> Tensor {
    Tensor::parameter(uniform(&[len], 1.0 / (fan_in as f32).sqrt(), rng))
}

/// Checks that `x` is a non-empty `(N, C, H, W)` image batch, with `channels`
/// channels if given, that `padding` is below `kernel` and that a `kernel`
/// window with `padding` fits.
fn check_image(
    layer: &str,
    x: &Tensor,
    channels: Option<usize>,
    kernel: usize,
    padding: usize,
) -> Result<()> {
    let shape = x.shape();
    let &[_, c, h, w] = shape.as_slice() else {
        return Err(Error::shape(
            layer,
            format!("expected a batch of images (N, C, H, W), got shape {shape:?}"),
        ));
    };
    if let Some(expected) = channels.filter(|&e| e != c) {
        return Err(Error::shape(
            layer,
            format!("expected {expected} input channels, got {c} (input shape {shape:?})"),
        ));
    }
    if h == 0 || w == 0 {
        return Err(Error::shape(
            layer,
            format!("got an empty {h}x{w} image (input shape {shape:?})"),
        ));
    }
    if padding >= kernel {
        // also keeps h + 2·padding far from overflowing
        return Err(Error::InvalidArgument(format!(
            "{layer}: padding {padding} is not smaller than the {kernel}x{kernel} kernel, so some \
             windows would see nothing but padding; use at most {} ({} keeps the image size \
             for an odd kernel)",
            kernel - 1,
            kernel / 2
        )));
    }
    if h + 2 * padding < kernel || w + 2 * padding < kernel {
        return Err(Error::shape(
            layer,
            format!(
                "a {kernel}x{kernel} window does not fit a {h}x{w} image with padding {padding}"
            ),
        ));
    }
    Ok(())
}

/// Fully connected layer: `y = x·W + b` for `x` of shape
/// `(batch, in_features)`; `W` is stored as `(in_features, out_features)`.
pub struct Linear {
    /// Weight, shape `(in_features, out_features)`, Xavier-uniform initialised.
    pub weight: Tensor,
    /// Bias, shape `(out_features,)`.
    pub bias: Tensor,
    in_features: usize,
    out_features: usize,
}

impl Linear {
    /// A layer mapping `in_features` to `out_features`, initialised from `rng`.
    ///
    /// # Errors
    /// If either size is zero.
    pub fn new<R: Rng + ?Sized>(
        in_features: usize,
        out_features: usize,
        rng: &mut R,
    ) -> Result<Self> {
        let name = format!("Linear({in_features} -> {out_features})");
        positive("in_features", &name, in_features)?;
        positive("out_features", &name, out_features)?;
        let weight = xavier_uniform(&[in_features, out_features], in_features, out_features, rng);
        Ok(Linear {
            weight: Tensor::parameter(weight),
            bias: default_bias(out_features, in_features, rng),
            in_features,
            out_features,
        })
    }

    /// Number of inputs per example.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Number of outputs per example.
    pub fn out_features(&self) -> usize {
        self.out_features
    }
}

impl Module for Linear {
    fn forward(&mut self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        let shape = x.shape();
        if shape.len() != 2 || shape[1] != self.in_features {
            let hint = if shape.len() > 2 {
                " (put a Flatten layer before it)"
            } else {
                ""
            };
            return Err(Error::shape(
                self.describe(),
                format!(
                    "expected input (batch, {}), got shape {shape:?}{hint}",
                    self.in_features
                ),
            ));
        }
        let (layer, sizes) = (|| self.describe(), [self.in_features, self.out_features]);
        check_parameter(layer, "weight", &self.weight, &sizes)?;
        check_parameter(layer, "bias", &self.bias, &[self.out_features])?;
        Ok(&x.matmul(&self.weight) + &self.bias)
    }

    fn parameters(&self) -> Vec<Tensor> {
        vec![self.weight.clone(), self.bias.clone()]
    }

    fn describe(&self) -> String {
        format!("Linear({} -> {})", self.in_features, self.out_features)
    }
}

/// 2-D convolution over `(N, C, H, W)` with square kernels, computed by
/// im2col + GEMM (see [`Tensor::conv2d`]).
pub struct Conv2d {
    /// Kernels, shape `(out_channels, in_channels, k, k)`, Xavier-uniform.
    pub weight: Tensor,
    /// Bias, shape `(out_channels,)`.
    pub bias: Tensor,
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// A `kernel_size × kernel_size` convolution from `in_channels` to
    /// `out_channels`, stride 1, no padding (change with
    /// [`with_stride`](Conv2d::with_stride) / [`with_padding`](Conv2d::with_padding)).
    ///
    /// # Errors
    /// If a size is zero.
    pub fn new<R: Rng + ?Sized>(
        in_channels: usize,
        out_channels: usize,
        kernel_size: usize,
        rng: &mut R,
    ) -> Result<Self> {
        let name = format!("Conv2d({in_channels} -> {out_channels}, kernel {kernel_size})");
        positive("in_channels", &name, in_channels)?;
        positive("out_channels", &name, out_channels)?;
        positive("kernel_size", &name, kernel_size)?;
        let area = kernel_size * kernel_size;
        let (fan_in, fan_out) = (in_channels * area, out_channels * area);
        let weight = xavier_uniform(
            &[out_channels, in_channels, kernel_size, kernel_size],
            fan_in,
            fan_out,
            rng,
        );
        Ok(Conv2d {
            weight: Tensor::parameter(weight),
            bias: default_bias(out_channels, fan_in, rng),
            in_channels,
            out_channels,
            kernel_size,
            stride: 1,
            padding: 0,
        })
    }

    /// Sets the zero padding added on every side. It must be smaller than
    /// the kernel size, or `forward` returns an error.
    pub fn with_padding(mut self, padding: usize) -> Self {
        self.padding = padding;
        self
    }

    /// Sets the stride.
    ///
    /// # Errors
    /// If `stride` is zero.
    pub fn with_stride(mut self, stride: usize) -> Result<Self> {
        positive("stride", &self.describe(), stride)?;
        self.stride = stride;
        Ok(self)
    }
}

impl Module for Conv2d {
    fn forward(&mut self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        check_image(
            &self.describe(),
            x,
            Some(self.in_channels),
            self.kernel_size,
            self.padding,
        )?;
        let (layer, k) = (|| self.describe(), self.kernel_size);
        let kernels = [self.out_channels, self.in_channels, k, k];
        check_parameter(layer, "weight", &self.weight, &kernels)?;
        check_parameter(layer, "bias", &self.bias, &[self.out_channels])?;
        Ok(x.conv2d(&self.weight, Some(&self.bias), self.stride, self.padding))
    }

    fn parameters(&self) -> Vec<Tensor> {
        vec![self.weight.clone(), self.bias.clone()]
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "Conv2d({} -> {}, kernel {}",
            self.in_channels, self.out_channels, self.kernel_size
        );
        if self.stride != 1 {
            s += &format!(", stride {}", self.stride);
        }
        if self.padding != 0 {
            s += &format!(", padding {}", self.padding);
        }
        s + ")"
    }
}

macro_rules! pooling_layer {
    ($name:ident, $op:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Debug)]
        pub struct $name {
            kernel_size: usize,
            stride: usize,
        }

        impl $name {
            /// A `kernel_size × kernel_size` window moved by `stride` (no padding).
            ///
            /// # Errors
            /// If either is zero.
            pub fn new(kernel_size: usize, stride: usize) -> Result<Self> {
                let name = concat!(stringify!($name), "(..)");
                positive("kernel_size", name, kernel_size)?;
                positive("stride", name, stride)?;
                Ok($name {
                    kernel_size,
                    stride,
                })
            }
        }

        impl Module for $name {
            fn forward(&mut self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
                check_image(&self.describe(), x, None, self.kernel_size, 0)?;
                Ok(x.$op(self.kernel_size, self.stride))
            }

            fn describe(&self) -> String {
                format!(
                    concat!(stringify!($name), "(kernel {}, stride {})"),
                    self.kernel_size, self.stride
                )
            }
        }
    };
}

pooling_layer!(
    AvgPool2d,
    avg_pool2d,
    "Average pooling over `(N, C, H, W)`; LeNet uses 2×2 windows with stride 2."
);
pooling_layer!(
    MaxPool2d,
    max_pool2d,
    "Max pooling over `(N, C, H, W)`; ties send the gradient to the first maximum."
);

macro_rules! activation_layer {
    ($name:ident, $op:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Copy, Debug, Default)]
        pub struct $name;

        impl Module for $name {
            fn forward(&mut self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
                Ok(x.$op())
            }

            fn describe(&self) -> String {
                stringify!($name).to_string()
            }
        }
    };
}

activation_layer!(
    Sigmoid,
    sigmoid,
    "Element-wise logistic sigmoid (LeNet's activation)."
);
activation_layer!(ReLU, relu, "Element-wise rectified linear unit.");

/// `(N, C, H, W) → (N, C·H·W)`: joins the convolutional part of a network
/// to its fully connected part.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flatten;

impl Module for Flatten {
    fn forward(&mut self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        if x.ndim() == 0 {
            return Err(Error::shape(
                "Flatten",
                "a scalar has no batch axis to keep",
            ));
        }
        Ok(x.flatten())
    }

    fn describe(&self) -> String {
        "Flatten".to_string()
    }
}
