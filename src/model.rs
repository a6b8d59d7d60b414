//! The variational autoencoder (and its plain-autoencoder twin).
//!
//! Shapes, for a batch of `n` images of `c x s x s` and a latent of size `d`:
//! - conv encoder: `(n, c, s, s)` -> strided 4x4 convolutions halving the side per width ->
//!   `(n, w_last, s / 2^k, s / 2^k)` -> flattened -> linear heads `fc_mu`, `fc_logvar`: `(n, d)`;
//! - conv decoder: `(n, d)` -> `fc` -> `(n, w_last, s / 2^k, s / 2^k)` -> `k` upsampling layers
//!   (the last one to `c` channels) -> logits `(n, c, s, s)`;
//! - mlp encoder and decoder: one hidden layer of `hidden` tanh units each way, as in Kingma and
//!   Welling's Frey Face model; the `gaussian` likelihood adds a `fc_out_logvar` head.
//!
//! The `vb.pp(...)` names are the safetensors keys of a checkpoint.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{
    Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, Linear, VarBuilder, VarMap,
};

use crate::config::{Arch, ModelConfig, ModelKind, ReconLoss, Upsample};
use crate::rng::Rng;

mod backward;

pub use backward::Gradients;

/// Slope of the leaky ReLU used between convolutions.
const LEAK: f64 = 0.2;

/// The image shape a model works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageShape {
    /// Channels.
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl ImageShape {
    /// Values per image.
    pub fn numel(&self) -> usize {
        self.channels * self.height * self.width
    }
}

enum UpLayer {
    Transpose(ConvTranspose2d),
    Nearest(Conv2d),
}

impl UpLayer {
    /// The layer, followed by a leaky ReLU of `slope` when given.
    fn forward(&self, xs: &Tensor, slope: Option<f64>) -> Result<Tensor> {
        match self {
            Self::Transpose(t) => crate::ops::conv_transpose2d(xs, t, slope),
            Self::Nearest(conv) => crate::ops::upsample_conv2d(xs, 2, conv, slope),
        }
    }
}

enum Body {
    Conv {
        down: Vec<Conv2d>,
        fc: Linear,
        up: Vec<UpLayer>,
        side: usize,
        top: usize,
    },
    Mlp {
        enc_hidden: Linear,
        dec_hidden: Linear,
        fc_out: Linear,
        fc_out_logvar: Option<Linear>,
    },
}

/// The output of the encoder for a batch.
pub struct Encoded {
    /// Posterior means, `(n, d)`.
    pub mu: Tensor,
    /// Posterior log-variances, `(n, d)`; `None` for a plain autoencoder.
    pub logvar: Option<Tensor>,
}

/// The decoder's output for a batch: parameters of the pixel likelihood.
pub struct Decoded {
    /// Logits (`bce`) or means in [0, 1] (`mse`, `gaussian`), `(n, c, h, w)`.
    pub out: Tensor,
    /// Per-pixel log-variances of the `gaussian` likelihood.
    pub logvar: Option<Tensor>,
}

/// Per-image losses of a batch, averaged over the batch, in nats.
#[derive(Debug, Clone)]
pub struct Losses {
    /// Reconstruction term: negative log-likelihood of the pixels.
    pub recon: Tensor,
    /// KL divergence of the posterior from the standard normal prior (0 for `ae`).
    pub kl: Tensor,
    /// `recon + beta * kl`, the quantity minimised.
    pub total: Tensor,
}

/// A VAE or AE with its weights.
pub struct Vae {
    /// The configuration it was built from.
    pub config: ModelConfig,
    /// The image shape it takes and makes.
    pub shape: ImageShape,
    body: Body,
    fc_mu: Linear,
    fc_logvar: Option<Linear>,
    device: Device,
}

impl Vae {
    /// Builds a model, registering its weights in `vb` (usually backed by a [`VarMap`]).
    pub fn new(config: &ModelConfig, shape: ImageShape, vb: VarBuilder) -> Result<Self> {
        let d = config.latent;
        let (body, features) = match config.arch {
            Arch::Conv => build_conv(config, shape, &vb)?,
            Arch::Mlp => build_mlp(config, shape, &vb)?,
        };
        let fc_mu = candle_nn::linear(features, d, vb.pp("fc_mu"))?;
        let fc_logvar = match config.kind {
            ModelKind::Vae => Some(candle_nn::linear(features, d, vb.pp("fc_logvar"))?),
            ModelKind::Ae => None,
        };
        Ok(Self {
            config: config.clone(),
            shape,
            body,
            fc_mu,
            fc_logvar,
            device: vb.device().clone(),
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Encodes images `(n, c, h, w)` in [0, 1].
    pub fn encode(&self, xs: &Tensor) -> Result<Encoded> {
        self.encode_traced(xs, None)
    }

    /// [`Vae::encode`], pushing onto `trace` (conv body only) the input of every convolution
    /// and the last one's output.
    fn encode_traced(&self, xs: &Tensor, mut trace: Option<&mut Vec<Tensor>>) -> Result<Encoded> {
        let features = match &self.body {
            Body::Conv { down, .. } => {
                let mut h = xs.clone();
                for conv in down {
                    if let Some(t) = trace.as_deref_mut() {
                        t.push(h.clone());
                    }
                    h = crate::ops::conv2d(&h, conv, Some(LEAK))?;
                }
                if let Some(t) = trace {
                    t.push(h.clone());
                }
                h.flatten_from(1)?
            }
            Body::Mlp { enc_hidden, .. } => enc_hidden.forward(&xs.flatten_from(1)?)?.tanh()?,
        };
        let mu = self.fc_mu.forward(&features)?;
        let logvar = self
            .fc_logvar
            .as_ref()
            .map(|l| l.forward(&features))
            .transpose()?;
        Ok(Encoded { mu, logvar })
    }

    /// Decodes latents `(n, d)` to the parameters of the pixel likelihood.
    pub fn decode_params(&self, zs: &Tensor) -> Result<Decoded> {
        self.decode_traced(zs, None)
    }

    /// [`Vae::decode_params`], pushing onto `trace` (conv body only) the input of every up
    /// layer and the last one's output.
    fn decode_traced(&self, zs: &Tensor, mut trace: Option<&mut Vec<Tensor>>) -> Result<Decoded> {
        let n = zs.dim(0)?;
        let s = self.shape;
        match &self.body {
            Body::Conv {
                fc, up, side, top, ..
            } => {
                let h = fc.forward(zs)?.reshape((n, *top, *side, *side))?;
                // A leaky ReLU before every up layer: the last layer's output is left linear,
                // every other one carries the activation the next layer reads.
                let mut h = crate::ops::leaky_relu(&h, LEAK)?;
                for (i, layer) in up.iter().enumerate() {
                    if let Some(t) = trace.as_deref_mut() {
                        t.push(h.clone());
                    }
                    let last = i + 1 == up.len();
                    h = layer.forward(&h, (!last).then_some(LEAK))?;
                    if last && self.config.recon_loss != ReconLoss::Bce {
                        h = candle_nn::ops::sigmoid(&h)?;
                    }
                }
                if let Some(t) = trace {
                    t.push(h.clone());
                }
                Ok(Decoded {
                    out: h,
                    logvar: None,
                })
            }
            Body::Mlp {
                dec_hidden,
                fc_out,
                fc_out_logvar,
                ..
            } => {
                let h = dec_hidden.forward(zs)?.tanh()?;
                let mut out = fc_out.forward(&h)?;
                if self.config.recon_loss != ReconLoss::Bce {
                    out = candle_nn::ops::sigmoid(&out)?;
                }
                let out = out.reshape((n, s.channels, s.height, s.width))?;
                let logvar = match fc_out_logvar {
                    Some(l) => Some(l.forward(&h)?.reshape((n, s.channels, s.height, s.width))?),
                    None => None,
                };
                Ok(Decoded { out, logvar })
            }
        }
    }

    /// Decodes latents `(n, d)` to images `(n, c, h, w)` in [0, 1] (the likelihood's mean).
    pub fn decode(&self, zs: &Tensor) -> Result<Tensor> {
        let params = self.decode_params(zs)?;
        match self.config.recon_loss {
            ReconLoss::Bce => candle_nn::ops::sigmoid(&params.out),
            ReconLoss::Mse | ReconLoss::Gaussian => Ok(params.out),
        }
    }

    /// Draws latents for training: `mu + sigma * eps` with `eps` from `rng`; `mu` for `ae`.
    pub fn reparameterize(&self, enc: &Encoded, rng: &mut Rng) -> Result<Tensor> {
        let eps = self.draw_eps(enc, rng)?;
        self.reparameterize_with(enc, eps.as_ref())
    }

    /// The standard normal noise of [`Vae::reparameterize`]; none for `ae`.
    fn draw_eps(&self, enc: &Encoded, rng: &mut Rng) -> Result<Option<Tensor>> {
        if enc.logvar.is_none() {
            return Ok(None);
        }
        let values = rng.normals(enc.mu.elem_count());
        Tensor::from_vec(values, enc.mu.shape(), &self.device).map(Some)
    }

    fn reparameterize_with(&self, enc: &Encoded, eps: Option<&Tensor>) -> Result<Tensor> {
        match (&enc.logvar, eps) {
            (Some(logvar), Some(eps)) => enc.mu.add(&(logvar * 0.5)?.exp()?.mul(eps)?),
            _ => Ok(enc.mu.clone()),
        }
    }

    /// Negative log-likelihood of `xs` under the decoded parameters, per image `(n,)`, in nats.
    pub fn recon_nll(&self, dec: &Decoded, xs: &Tensor) -> Result<Tensor> {
        let per_pixel = match self.config.recon_loss {
            // Binary cross-entropy on logits, finite for large logits, in one fused op.
            ReconLoss::Bce => return crate::ops::bce_with_logits(&dec.out, xs),
            ReconLoss::Mse => {
                let sigma = self.config.gaussian_sigma;
                let c = 0.5 * (2.0 * std::f64::consts::PI * sigma * sigma).ln();
                (xs - &dec.out)?.sqr()?.affine(0.5 / (sigma * sigma), c)?
            }
            ReconLoss::Gaussian => {
                let logvar = dec
                    .logvar
                    .as_ref()
                    .expect("the gaussian decoder has a logvar head");
                let c = 0.5 * (2.0 * std::f64::consts::PI).ln();
                let sq = (xs - &dec.out)?.sqr()?.mul(&logvar.neg()?.exp()?)?;
                ((sq + logvar)? * 0.5)?.affine(1.0, c)?
            }
        };
        per_pixel.flatten_from(1)?.sum(D::Minus1)
    }

    /// KL divergence of the posterior from N(0, I), per image `(n,)`.
    pub fn kl(&self, enc: &Encoded) -> Result<Tensor> {
        let n = enc.mu.dim(0)?;
        let Some(logvar) = &enc.logvar else {
            return Tensor::zeros(n, DType::F32, &self.device);
        };
        let inner = ((logvar.affine(1.0, 1.0)? - enc.mu.sqr()?)? - logvar.exp()?)?;
        (inner.sum(D::Minus1)? * -0.5)?.contiguous()
    }

    /// The training forward pass of a batch: its losses averaged over its images, and what
    /// [`Vae::backward`] needs.
    ///
    /// The conv model with the Bernoulli likelihood on the CPU's native kernels keeps its
    /// activations for a hand-written backward pass; every other model is differentiated by
    /// candle's autograd from the losses' graph.
    pub fn forward_train(&self, xs: &Tensor, beta: f64, rng: &mut Rng) -> Result<Forward> {
        let taped = matches!(self.body, Body::Conv { .. })
            && self.config.recon_loss == ReconLoss::Bce
            && crate::ops::native(xs);
        let (mut down, mut up) = (Vec::new(), Vec::new());
        let enc = self.encode_traced(xs, taped.then_some(&mut down))?;
        let eps = self.draw_eps(&enc, rng)?;
        let zs = self.reparameterize_with(&enc, eps.as_ref())?;
        let dec = self.decode_traced(&zs, taped.then_some(&mut up))?;
        let recon = self.recon_nll(&dec, xs)?.mean_all()?;
        let kl = self.kl(&enc)?.mean_all()?;
        let total = (&recon + (&kl * beta)?)?;
        let tape = taped.then(|| backward::Tape {
            xs: xs.clone(),
            down,
            enc,
            eps,
            zs,
            up,
            beta,
        });
        Ok(Forward {
            losses: Losses { recon, kl, total },
            tape,
        })
    }

    /// The gradients of `fwd`'s total loss for every weight.
    pub fn backward(&self, fwd: Forward) -> Result<Gradients> {
        match fwd.tape {
            Some(tape) => backward::backward(self, tape).map(Gradients::Manual),
            None => fwd.losses.total.backward().map(Gradients::Autograd),
        }
    }
}

/// A training forward pass (see [`Vae::forward_train`]).
pub struct Forward {
    /// The batch's losses.
    pub losses: Losses,
    tape: Option<backward::Tape>,
}

fn build_conv(config: &ModelConfig, shape: ImageShape, vb: &VarBuilder) -> Result<(Body, usize)> {
    let widths = &config.widths;
    let down_cfg = Conv2dConfig {
        padding: 1,
        stride: 2,
        ..Default::default()
    };
    let mut down = Vec::with_capacity(widths.len());
    let mut in_c = shape.channels;
    for (i, &w) in widths.iter().enumerate() {
        down.push(candle_nn::conv2d(
            in_c,
            w,
            4,
            down_cfg,
            vb.pp(format!("enc.conv{i}")),
        )?);
        in_c = w;
    }
    let side = shape.height >> widths.len();
    let top = *widths.last().expect("validated: at least one width");
    let features = top * side * side;
    let fc = candle_nn::linear(config.latent, features, vb.pp("dec.fc"))?;
    let mut up = Vec::with_capacity(widths.len());
    for i in (0..widths.len()).rev() {
        let out_c = if i == 0 {
            shape.channels
        } else {
            widths[i - 1]
        };
        let name = format!("dec.up{}", widths.len() - 1 - i);
        up.push(up_layer(config.upsample, widths[i], out_c, vb.pp(name))?);
    }
    Ok((
        Body::Conv {
            down,
            fc,
            up,
            side,
            top,
        },
        features,
    ))
}

fn up_layer(kind: Upsample, in_c: usize, out_c: usize, vb: VarBuilder) -> Result<UpLayer> {
    Ok(match kind {
        Upsample::Transpose => {
            let cfg = ConvTranspose2dConfig {
                padding: 1,
                stride: 2,
                ..Default::default()
            };
            UpLayer::Transpose(candle_nn::conv_transpose2d(in_c, out_c, 4, cfg, vb)?)
        }
        Upsample::Nearest => {
            let cfg = Conv2dConfig {
                padding: 1,
                ..Default::default()
            };
            UpLayer::Nearest(candle_nn::conv2d(in_c, out_c, 3, cfg, vb)?)
        }
    })
}

fn build_mlp(config: &ModelConfig, shape: ImageShape, vb: &VarBuilder) -> Result<(Body, usize)> {
    let (pixels, hidden) = (shape.numel(), config.hidden);
    let enc_hidden = candle_nn::linear(pixels, hidden, vb.pp("enc.hidden"))?;
    let dec_hidden = candle_nn::linear(config.latent, hidden, vb.pp("dec.hidden"))?;
    let fc_out = candle_nn::linear(hidden, pixels, vb.pp("dec.out"))?;
    let fc_out_logvar = match config.recon_loss {
        ReconLoss::Gaussian => Some(candle_nn::linear(hidden, pixels, vb.pp("dec.out_logvar"))?),
        _ => None,
    };
    Ok((
        Body::Mlp {
            enc_hidden,
            dec_hidden,
            fc_out,
            fc_out_logvar,
        },
        hidden,
    ))
}

/// Builds a model with freshly initialised weights drawn from `seed`.
///
/// candle's own initialisers draw from an unseedable generator, so every weight is overwritten
/// here from [`Rng`]: uniform in `±1/sqrt(fan_in)` (PyTorch's default scale), biases too.
pub fn init(
    config: &ModelConfig,
    shape: ImageShape,
    seed: u64,
    device: &Device,
) -> Result<(Vae, VarMap)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let model = Vae::new(config, shape, vb)?;
    let vars = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let var = &vars[name];
        let fan_in = fan_in(name, var.dims(), &vars);
        let bound = 1.0 / (fan_in as f64).sqrt();
        let mut rng = Rng::keyed(seed, name, 0);
        let values: Vec<f32> = (0..var.elem_count())
            .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
            .collect();
        var.set(&Tensor::from_vec(values, var.shape(), device)?)?;
    }
    drop(vars);
    Ok((model, varmap))
}

/// Inputs feeding each output unit of a layer, from its weight's shape.
///
/// Convolutions store `(out, in, k, k)` and transposed ones `(in, out, k, k)`; PyTorch takes
/// the fan-in of both from dimension 1, and so does this, to match its default scale.
fn fan_in(
    name: &str,
    dims: &[usize],
    vars: &std::collections::HashMap<String, candle_core::Var>,
) -> usize {
    let weight_dims = match name.strip_suffix(".bias") {
        Some(layer) => vars
            .get(&format!("{layer}.weight"))
            .map(|v| v.dims().to_vec()),
        None => None,
    }
    .unwrap_or_else(|| dims.to_vec());
    match weight_dims.as_slice() {
        [_, i, kh, kw] => i * kh * kw,
        [_, i] => *i,
        other => other.iter().product::<usize>().max(1),
    }
}

/// Sorted `(name, variable)` pairs of a model's weights.
pub fn named_vars(varmap: &VarMap) -> Vec<(String, candle_core::Var)> {
    let vars = varmap.data().lock().expect("varmap lock");
    let mut all: Vec<(String, candle_core::Var)> =
        vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// Decodes latents in chunks and returns u8 CHW images, for grids and galleries.
pub fn decode_to_u8(model: &Vae, zs: &[f32]) -> Result<Vec<u8>> {
    let d = model.config.latent;
    let n = zs.len() / d;
    let mut out = Vec::with_capacity(n * model.shape.numel());
    for chunk in zs.chunks(64 * d) {
        let z = Tensor::from_slice(chunk, (chunk.len() / d, d), model.device())?;
        let xs = model.decode(&z)?.clamp(0.0, 1.0)?.affine(255.0, 0.5)?;
        let values: Vec<f32> = xs.flatten_all()?.to_vec1()?;
        out.extend(values.into_iter().map(|v| v as u8));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn tiny_config(arch: Arch, kind: ModelKind) -> ModelConfig {
        let mut c = Config::default().model;
        c.arch = arch;
        c.kind = kind;
        c.image_size = 32;
        c.latent = 4;
        c.widths = vec![4, 8];
        c.hidden = 16;
        c
    }

    fn shape(c: &ModelConfig) -> ImageShape {
        ImageShape {
            channels: 3,
            height: c.image_size,
            width: c.image_size,
        }
    }

    #[test]
    fn shapes_flow_through_every_variant() {
        for arch in [Arch::Conv, Arch::Mlp] {
            for up in [Upsample::Transpose, Upsample::Nearest] {
                let mut c = tiny_config(arch, ModelKind::Vae);
                c.upsample = up;
                let (m, _) = init(&c, shape(&c), 0, &Device::Cpu).unwrap();
                let xs = Tensor::full(0.5f32, (2, 3, 32, 32), &Device::Cpu).unwrap();
                let enc = m.encode(&xs).unwrap();
                assert_eq!(enc.mu.dims(), &[2, 4]);
                assert_eq!(m.decode(&enc.mu).unwrap().dims(), &[2, 3, 32, 32]);
            }
        }
    }

    #[test]
    fn init_is_deterministic_per_seed() {
        let c = tiny_config(Arch::Conv, ModelKind::Vae);
        let z = Tensor::ones((1, 4), DType::F32, &Device::Cpu).unwrap();
        let out = |seed| {
            let (m, _) = init(&c, shape(&c), seed, &Device::Cpu).unwrap();
            m.decode(&z)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(out(1), out(1));
        assert_ne!(out(1), out(2));
    }

    #[test]
    fn kl_matches_closed_form() {
        let c = tiny_config(Arch::Mlp, ModelKind::Vae);
        let (m, _) = init(&c, shape(&c), 0, &Device::Cpu).unwrap();
        let mu = Tensor::new(&[[1.0f32, 0.0, 0.0, 0.0]], &Device::Cpu).unwrap();
        let logvar = Tensor::new(&[[0.0f32, 2.0f32.ln(), 0.0, 0.0]], &Device::Cpu).unwrap();
        let kl = m
            .kl(&Encoded {
                mu,
                logvar: Some(logvar),
            })
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        // 0.5 * (mu^2) + 0.5 * (sigma^2 - 1 - ln sigma^2) for the two non-trivial dimensions
        let expected = 0.5 + 0.5 * (2.0 - 1.0 - 2.0f32.ln());
        assert!((kl - expected).abs() < 1e-5, "{kl} vs {expected}");
    }

    #[test]
    fn bce_matches_direct_formula() {
        let c = tiny_config(Arch::Mlp, ModelKind::Ae);
        let (m, _) = init(&c, shape(&c), 0, &Device::Cpu).unwrap();
        let logits = Tensor::full(0.3f32, (1, 3, 32, 32), &Device::Cpu).unwrap();
        let xs = Tensor::full(0.8f32, (1, 3, 32, 32), &Device::Cpu).unwrap();
        let nll = m
            .recon_nll(
                &Decoded {
                    out: logits,
                    logvar: None,
                },
                &xs,
            )
            .unwrap();
        let p = 1.0 / (1.0 + (-0.3f64).exp());
        let direct = -(0.8 * p.ln() + 0.2 * (1.0 - p).ln()) * 3072.0;
        let got = nll.to_vec1::<f32>().unwrap()[0] as f64;
        assert!((got - direct).abs() < 1e-2, "{got} vs {direct}");
    }
}
