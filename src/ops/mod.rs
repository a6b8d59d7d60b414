//! Fast CPU versions of the model's layers, as candle custom ops.
//!
//! candle's CPU backend runs a transposed convolution (and so every convolution's input
//! gradient) as a direct loop, unfolds a convolution's input on one thread, and computes a
//! gradient for the input images that nothing reads. The functions here take the same
//! `candle_nn` layers and compute the same function with parallel matrix products (see
//! [`conv`]). On other devices and dtypes, for settings the kernels do not cover (dilation,
//! groups, output padding), and when [`Kernels::Candle`] is chosen, they run candle's own ops,
//! so GPU builds use candle's GPU kernels.

pub mod adam;
pub mod conv;
pub mod loss;

use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2d, ConvTranspose2d};

use self::conv::ConvParams;

/// Which implementation the layers in this module run on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// The kernels of this module, for f32 tensors on the CPU.
    Native,
    /// candle's own ops everywhere, for comparison.
    Candle,
}

/// The environment variable that picks [`Kernels::Candle`] when set to `candle`.
pub const KERNELS_ENV: &str = "FACESTUDIO_KERNELS";

static KERNELS: AtomicU8 = AtomicU8::new(0);

/// The kernels in use: set by [`set_kernels`], else from [`KERNELS_ENV`], else native.
pub fn kernels() -> Kernels {
    match KERNELS.load(Ordering::Relaxed) {
        1 => Kernels::Native,
        2 => Kernels::Candle,
        _ => {
            let chosen = match std::env::var(KERNELS_ENV).as_deref() {
                Ok("candle") => Kernels::Candle,
                _ => Kernels::Native,
            };
            set_kernels(chosen);
            chosen
        }
    }
}

/// Picks the kernels for every later call, process-wide.
pub fn set_kernels(kernels: Kernels) {
    let code = match kernels {
        Kernels::Native => 1,
        Kernels::Candle => 2,
    };
    KERNELS.store(code, Ordering::Relaxed);
}

pub(crate) fn native(xs: &Tensor) -> bool {
    kernels() == Kernels::Native && xs.device().is_cpu() && xs.dtype() == DType::F32
}

fn bias_or_zeros(bias: Option<&Tensor>, channels: usize, like: &Tensor) -> Result<Tensor> {
    match bias {
        Some(b) => b.contiguous(),
        None => Tensor::zeros(channels, like.dtype(), like.device()),
    }
}

/// `layer(nearest_upsample(xs, scale))`, followed by a leaky ReLU of `slope` when given.
///
/// `xs` is `(n, c_in, h, w)`; the result is `(n, c_out, ho, wo)` for the layer's stride and
/// padding applied to a `(scale h, scale w)` image, which the native kernel never builds.
pub fn upsample_conv2d(
    xs: &Tensor,
    scale: usize,
    layer: &Conv2d,
    slope: Option<f64>,
) -> Result<Tensor> {
    let op = native(xs).then(|| conv_op(layer, scale, slope)).flatten();
    let Some(op) = op else {
        let (_, _, h, w) = xs.dims4()?;
        let up = if scale == 1 {
            xs.clone()
        } else {
            xs.upsample_nearest2d(h * scale, w * scale)?
        };
        let ys = layer.forward(&up)?;
        return match slope {
            Some(s) => candle_nn::ops::leaky_relu(&ys, s),
            None => Ok(ys),
        };
    };
    let weight = layer.weight().contiguous()?;
    let bias = bias_or_zeros(layer.bias(), weight.dim(0)?, xs)?;
    xs.contiguous()?.apply_op3(&weight, &bias, op)
}

/// The native kernel of `layer` after an upsampling by `scale`, followed by a leaky ReLU of
/// `slope`; `None` for settings the kernels do not cover.
fn conv_op(layer: &Conv2d, scale: usize, slope: Option<f64>) -> Option<conv::Conv2d> {
    let cfg = layer.config();
    let covered = cfg.dilation == 1 && cfg.groups == 1 && scale > 0;
    covered.then(|| conv::Conv2d {
        params: ConvParams {
            stride: cfg.stride,
            pad: cfg.padding,
            up: scale,
        },
        slope: slope.map(|s| s as f32),
    })
}

/// `layer(xs)` for a convolution, followed by a leaky ReLU of `slope` when given.
pub fn conv2d(xs: &Tensor, layer: &Conv2d, slope: Option<f64>) -> Result<Tensor> {
    upsample_conv2d(xs, 1, layer, slope)
}

/// `layer(xs)` for a transposed convolution, followed by a leaky ReLU of `slope` when given.
pub fn conv_transpose2d(
    xs: &Tensor,
    layer: &ConvTranspose2d,
    slope: Option<f64>,
) -> Result<Tensor> {
    let op = native(xs).then(|| transpose_op(layer, slope)).flatten();
    let Some(op) = op else {
        let ys = layer.forward(xs)?;
        return match slope {
            Some(s) => candle_nn::ops::leaky_relu(&ys, s),
            None => Ok(ys),
        };
    };
    let weight = layer.weight().contiguous()?;
    let bias = bias_or_zeros(layer.bias(), weight.dim(1)?, xs)?;
    xs.contiguous()?.apply_op3(&weight, &bias, op)
}

/// The native kernel of `layer`, followed by a leaky ReLU of `slope`; `None` for settings the
/// kernels do not cover.
fn transpose_op(layer: &ConvTranspose2d, slope: Option<f64>) -> Option<conv::ConvTranspose2d> {
    let cfg = layer.config();
    let covered = cfg.dilation == 1 && cfg.output_padding == 0;
    covered.then(|| conv::ConvTranspose2d {
        params: ConvParams {
            stride: cfg.stride,
            pad: cfg.padding,
            up: 1,
        },
        slope: slope.map(|s| s as f32),
    })
}

/// The gradients `(dx, dw, db)` of [`upsample_conv2d`] on the native kernels, from `dpre`, the
/// gradient of the layer's output before its leaky ReLU; `dx` only when `need_input`. With
/// `input_leak`, `xs` is the output of a leaky ReLU of that slope and `dx` the gradient before it.
pub fn upsample_conv2d_grads(
    xs: &Tensor,
    scale: usize,
    layer: &Conv2d,
    dpre: &Tensor,
    need_input: bool,
    input_leak: Option<f64>,
) -> Result<LayerGrads> {
    let Some(op) = conv_op(layer, scale, None) else {
        candle_core::bail!("no native gradients for {:?}", layer.config());
    };
    let need = conv::Needs {
        input: need_input,
        weight: true,
        input_leak: input_leak.map(|s| s as f32),
    };
    let (dx, dw, db) = op.grads(xs, &layer.weight().contiguous()?, dpre, need)?;
    LayerGrads::new(dx, dw, db)
}

/// The gradients `(dx, dw, db)` of [`conv_transpose2d`] on the native kernels, from `dpre`, the
/// gradient of the layer's output before its leaky ReLU; `input_leak` as for
/// [`upsample_conv2d_grads`].
pub fn conv_transpose2d_grads(
    xs: &Tensor,
    layer: &ConvTranspose2d,
    dpre: &Tensor,
    input_leak: Option<f64>,
) -> Result<LayerGrads> {
    let Some(op) = transpose_op(layer, None) else {
        candle_core::bail!("no native gradients for {:?}", layer.config());
    };
    let need = conv::Needs {
        input: true,
        weight: true,
        input_leak: input_leak.map(|s| s as f32),
    };
    let (dx, dw, db) = op.grads(xs, &layer.weight().contiguous()?, dpre, need)?;
    LayerGrads::new(dx, dw, db)
}

/// The gradients of one layer's input (when asked for), weight and bias.
pub struct LayerGrads {
    /// Of the input.
    pub input: Option<Tensor>,
    /// Of the weight.
    pub weight: Tensor,
    /// Of the bias.
    pub bias: Tensor,
}

impl LayerGrads {
    fn new(dx: Option<Tensor>, dw: Option<Tensor>, db: Option<Tensor>) -> Result<Self> {
        match (dw, db) {
            (Some(weight), Some(bias)) => Ok(Self {
                input: dx,
                weight,
                bias,
            }),
            _ => candle_core::bail!("a layer's backward pass left out its weight gradient"),
        }
    }
}

/// `grad *= (res > 0 ? 1 : slope)` in place: the gradient through a leaky ReLU from its output
/// `res`, for a contiguous f32 CPU gradient that nothing else reads.
pub fn leaky_relu_grad_in_place(grad: &Tensor, res: &Tensor, slope: f64) -> Result<()> {
    grad.inplace_op2(&res.contiguous()?, &conv::LeakyGradInPlace(slope as f32))
}

/// A leaky ReLU, as [`candle_nn::ops::leaky_relu`] but in one pass each way on the CPU.
pub fn leaky_relu(xs: &Tensor, slope: f64) -> Result<Tensor> {
    if !native(xs) || slope <= 0.0 {
        return candle_nn::ops::leaky_relu(xs, slope);
    }
    xs.contiguous()?.apply_op1(conv::LeakyRelu(slope as f32))
}

/// Per-image binary cross-entropy `(n,)` of logits `(n, ...)` against targets in [0, 1]:
/// `sum max(l, 0) - l x + ln(1 + exp(-|l|))` over each image's values, finite for any logit.
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if native(logits) && targets.dtype() == DType::F32 {
        return logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, loss::BceWithLogits);
    }
    let l = logits;
    let softplus = l.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    let per_value = ((l.relu()? - l.mul(targets)?)? + softplus)?;
    per_value.flatten_from(1)?.sum(candle_core::D::Minus1)
}
