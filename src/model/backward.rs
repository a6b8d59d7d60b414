//! The hand-written backward pass of the conv VAE with the Bernoulli likelihood.
//!
//! candle's autograd accumulates every gradient it passes along into a fresh zero tensor
//! (a fill and an addition per edge of the graph, for every activation-sized tensor) and keeps
//! every node's gradient until the end. This pass walks the known chain of layers instead:
//! each gradient is made once, masked through its leaky ReLU in place, handed to the layer
//! below and dropped. It computes the same gradients as the autograd path, which the tests
//! below check on every layer kind.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, Result, Tensor, TensorId};
use candle_nn::Linear;

use super::{Body, Encoded, UpLayer, Vae, LEAK};
use crate::ops::{self, LayerGrads};

/// What the forward pass keeps for [`backward`].
pub(super) struct Tape {
    /// The batch, `(n, c, h, w)`.
    pub xs: Tensor,
    /// The input of every encoder convolution, then the last one's output.
    pub down: Vec<Tensor>,
    /// The posterior.
    pub enc: Encoded,
    /// The noise of the reparameterisation (none for `ae`).
    pub eps: Option<Tensor>,
    /// The latents the decoder read.
    pub zs: Tensor,
    /// The input of every up layer (the first after the leaky ReLU), then the logits.
    pub up: Vec<Tensor>,
    /// The KL weight.
    pub beta: f64,
}

/// The gradient of a training loss for each weight.
pub enum Gradients {
    /// From candle's autograd.
    Autograd(GradStore),
    /// From the hand-written backward pass, by weight tensor.
    Manual(HashMap<TensorId, Tensor>),
}

impl Gradients {
    /// The gradient for `weight`, if the loss depends on it.
    pub fn get(&self, weight: &Tensor) -> Option<&Tensor> {
        match self {
            Self::Autograd(store) => store.get(weight),
            Self::Manual(map) => map.get(&weight.id()),
        }
    }
}

/// Collects weight gradients by tensor.
#[derive(Default)]
struct Collected(HashMap<TensorId, Tensor>);

impl Collected {
    /// Stores a layer's weight and bias gradients; returns its input gradient, if computed.
    fn layer(&mut self, weight: &Tensor, bias: Option<&Tensor>, g: LayerGrads) -> Option<Tensor> {
        self.0.insert(weight.id(), g.weight);
        if let Some(b) = bias {
            self.0.insert(b.id(), g.bias);
        }
        g.input
    }

    /// `y = x w^T + b` backwards: stores `dw = dy^T x` and `db = sum dy`, returns `dx = dy w`.
    fn linear(&mut self, layer: &Linear, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let w = layer.weight();
        self.0.insert(w.id(), dy.t()?.matmul(&x.detach())?);
        if let Some(b) = layer.bias() {
            self.0.insert(b.id(), dy.sum(0)?);
        }
        dy.matmul(&w.detach())
    }
}

/// The gradients of the tape's total loss, `mean recon + beta mean KL`, for every weight.
pub(super) fn backward(model: &Vae, tape: Tape) -> Result<HashMap<TensorId, Tensor>> {
    let Body::Conv {
        down,
        fc,
        up: layers,
        ..
    } = &model.body
    else {
        candle_core::bail!("the hand-written backward pass is for the conv model only");
    };
    let n = tape.xs.dim(0)?;
    let mut grads = Collected::default();

    // Reconstruction: the mean over images of per-image sums.
    let logits = tape.up.last().expect("the tape holds the logits");
    let per_image = Tensor::full(1.0 / n as f32, n, tape.xs.device())?;
    let mut grad = ops::loss::grad_logits(logits, &tape.xs, &per_image)?;

    // Decoder, last layer first. Every up layer's input is a leaky ReLU's output (of the layer
    // before, or of the linear layer for the first), so each input gradient is taken through
    // that activation as the layer makes it.
    for (i, layer) in layers.iter().enumerate().rev() {
        let input = &tape.up[i];
        let (g, weight, bias) = match layer {
            UpLayer::Transpose(t) => (
                ops::conv_transpose2d_grads(input, t, &grad, Some(LEAK))?,
                t.weight(),
                t.bias(),
            ),
            UpLayer::Nearest(c) => (
                ops::upsample_conv2d_grads(input, 2, c, &grad, true, Some(LEAK))?,
                c.weight(),
                c.bias(),
            ),
        };
        grad = grads
            .layer(weight, bias, g)
            .expect("asked for the input gradient");
    }
    let dz = grads.linear(fc, &tape.zs, &grad.flatten_from(1)?)?;

    // Latent: z = mu + exp(logvar / 2) eps, and beta times the batch mean of
    // KL = -1/2 sum(1 + logvar - mu^2 - exp(logvar)).
    let last = tape
        .down
        .last()
        .expect("the tape holds the encoder's output");
    let features = last.flatten_from(1)?;
    let k = tape.beta / n as f64;
    let enc = &tape.enc;
    let (from_logvar, dmu) = match (&enc.logvar, &tape.eps, &model.fc_logvar) {
        (Some(logvar), Some(eps), Some(head)) => {
            let (mu, logvar) = (enc.mu.detach(), logvar.detach());
            let dmu = (&dz + (mu * k)?)?;
            let through_z = (&dz * eps)?.mul(&(&logvar * 0.5)?.exp()?)?;
            let dlogvar = ((through_z * 0.5)? + logvar.exp()?.affine(0.5 * k, -0.5 * k)?)?;
            (Some(grads.linear(head, &features, &dlogvar)?), dmu)
        }
        _ => (None, dz),
    };
    let from_mu = grads.linear(&model.fc_mu, &features, &dmu)?;
    let dfeatures = match from_logvar {
        Some(d) => (d + from_mu)?,
        None => from_mu,
    };

    // Encoder, last convolution first; the images themselves need no gradient, and the input
    // of every other convolution is the leaky ReLU's output of the one before.
    let mut grad = dfeatures.reshape(last.shape())?;
    ops::leaky_relu_grad_in_place(&grad, last, LEAK)?;
    for (i, conv) in down.iter().enumerate().rev() {
        let leak = (i > 0).then_some(LEAK);
        let g = ops::upsample_conv2d_grads(&tape.down[i], 1, conv, &grad, i > 0, leak)?;
        if let Some(dx) = grads.layer(conv.weight(), conv.bias(), g) {
            grad = dx;
        }
    }
    Ok(grads.0)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::config::{Config, ModelConfig, ModelKind, Upsample};
    use crate::model::{self, ImageShape};
    use crate::rng::Rng;

    fn config(kind: ModelKind, upsample: Upsample) -> ModelConfig {
        let mut c = Config::default().model;
        c.kind = kind;
        c.upsample = upsample;
        c.image_size = 16;
        c.latent = 6;
        c.widths = vec![4, 8];
        c
    }

    /// Both backward passes on one model and batch: `(name, autograd, hand-written)` per weight.
    fn both(kind: ModelKind, upsample: Upsample, beta: f64) -> Vec<(String, Vec<f32>, Vec<f32>)> {
        let c = config(kind, upsample);
        let shape = ImageShape {
            channels: 3,
            height: 16,
            width: 16,
        };
        let (vae, varmap) = model::init(&c, shape, 3, &Device::Cpu).unwrap();
        let mut rng = Rng::new(5);
        let values: Vec<f32> = (0..5 * 3 * 16 * 16).map(|_| rng.uniform() as f32).collect();
        let xs = Tensor::from_vec(values, (5, 3, 16, 16), &Device::Cpu).unwrap();

        let fwd = vae.forward_train(&xs, beta, &mut Rng::new(9)).unwrap();
        assert!(
            fwd.tape.is_some(),
            "the conv model takes the hand-written path"
        );
        let auto = fwd.losses.total.backward().unwrap();
        let fwd = vae.forward_train(&xs, beta, &mut Rng::new(9)).unwrap();
        let manual = vae.backward(fwd).unwrap();
        assert!(matches!(manual, Gradients::Manual(_)));

        model::named_vars(&varmap)
            .into_iter()
            .map(|(name, var)| {
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let a = flat(
                    auto.get(var.as_tensor())
                        .expect("autograd reaches every weight"),
                );
                let m = flat(
                    manual
                        .get(var.as_tensor())
                        .unwrap_or_else(|| panic!("{name}")),
                );
                (name, a, m)
            })
            .collect()
    }

    fn assert_close(cases: Vec<(String, Vec<f32>, Vec<f32>)>) {
        assert!(cases.len() >= 10, "every layer's weight and bias");
        for (name, a, m) in cases {
            assert_eq!(a.len(), m.len(), "{name}");
            let scale = a.iter().fold(0f32, |s, v| s.max(v.abs())).max(1e-6);
            let worst = a
                .iter()
                .zip(&m)
                .fold(0f32, |s, (x, y)| s.max((x - y).abs()));
            assert!(
                worst <= 1e-4 * scale,
                "{name}: hand-written gradient differs by {worst} (largest value {scale})"
            );
        }
    }

    #[test]
    fn matches_autograd_for_the_transposed_decoder() {
        assert_close(both(ModelKind::Vae, Upsample::Transpose, 0.7));
    }

    #[test]
    fn matches_autograd_for_the_upsampling_decoder() {
        assert_close(both(ModelKind::Vae, Upsample::Nearest, 1.0));
    }

    #[test]
    fn matches_autograd_for_the_plain_autoencoder() {
        assert_close(both(ModelKind::Ae, Upsample::Transpose, 1.0));
    }

    #[test]
    fn other_models_fall_back_to_autograd() {
        let mut c = config(ModelKind::Vae, Upsample::Transpose);
        c.recon_loss = crate::config::ReconLoss::Mse;
        let shape = ImageShape {
            channels: 3,
            height: 16,
            width: 16,
        };
        let (vae, _) = model::init(&c, shape, 3, &Device::Cpu).unwrap();
        let xs = Tensor::full(0.5f32, (2, 3, 16, 16), &Device::Cpu).unwrap();
        let fwd = vae.forward_train(&xs, 1.0, &mut Rng::new(1)).unwrap();
        assert!(fwd.tape.is_none());
        assert!(matches!(vae.backward(fwd).unwrap(), Gradients::Autograd(_)));
    }
}
