//! Held-out evaluation: reconstruction, KL and negative ELBO per image, in nats and in bits
//! per dimension, and the importance-weighted bound on the negative log-likelihood.
//!
//! For images `x` of `D` values and `K` posterior draws `z_k ~ q(z|x)`:
//! - negative ELBO = E_q[-log p(x|z)] + KL(q(z|x) || N(0, I)), estimated with one draw;
//! - IWAE bound: -log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x), tighter as K grows;
//! - bits per dimension = nats / (D ln 2);
//! - prior gap: KL(N(m, s^2) || N(0, I)) of the diagonal Gaussian that matches the moments of
//!   the aggregate posterior (the encoder's codes of all scored images). The sampler draws from
//!   N(0, I), so a large gap means random latents land where the decoder was never trained: a
//!   plain autoencoder's codes drift far from the prior, a VAE's stay near it.

use candle_core::{Tensor, D};
use serde::Serialize;

use crate::data::{batcher, Dataset};
use crate::model::Vae;
use crate::rng::Rng;

/// Images per forward pass.
const CHUNK: usize = 64;

/// Evaluation figures, per image.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// Images scored.
    pub images: usize,
    /// Values per image.
    pub dims: usize,
    /// Mean reconstruction term, nats.
    pub recon: f64,
    /// Mean KL, nats.
    pub kl: f64,
    /// Mean negative ELBO, nats.
    pub neg_elbo: f64,
    /// Negative ELBO in bits per dimension.
    pub neg_elbo_bpd: f64,
    /// Importance-weighted negative log-likelihood bound, nats (when requested).
    pub iwae_nll: Option<f64>,
    /// The same in bits per dimension.
    pub iwae_bpd: Option<f64>,
    /// Draws per image of the IWAE bound.
    pub samples: usize,
    /// KL of the aggregate posterior's moment-matched diagonal Gaussian from the prior, nats.
    pub prior_gap: f64,
}

impl Report {
    /// A small table for the terminal.
    pub fn table(&self) -> String {
        let mut s = format!("{} images, {} values each\n", self.images, self.dims);
        s.push_str(&format!(
            "{:<26}{:>14}{:>14}\n",
            "per image", "nats", "bits/dim"
        ));
        let bpd = |nats: f64| nats / (self.dims as f64 * std::f64::consts::LN_2);
        for (name, v) in [
            ("reconstruction", self.recon),
            ("KL", self.kl),
            ("negative ELBO", self.neg_elbo),
        ] {
            s.push_str(&format!("{name:<26}{v:>14.3}{:>14.5}\n", bpd(v)));
        }
        if let (Some(n), Some(b)) = (self.iwae_nll, self.iwae_bpd) {
            s.push_str(&format!(
                "{:<26}{n:>14.3}{b:>14.5}\n",
                format!("IWAE NLL bound (K={})", self.samples)
            ));
        }
        s.push_str(&format!(
            "{:<26}{:>14.3}\n",
            "prior gap (latents)", self.prior_gap
        ));
        s
    }
}

/// Scores `ids` of `data` with one draw for the ELBO and `samples` draws for the IWAE bound
/// (0 skips it). Draws come from `seed`, so the figures are reproducible.
pub fn evaluate(
    model: &Vae,
    data: &Dataset,
    ids: &[usize],
    samples: usize,
    seed: u64,
) -> candle_core::Result<Report> {
    let s = model.shape;
    let dims = s.numel();
    let (mut recon, mut kl, mut iwae) = (0.0f64, 0.0f64, 0.0f64);
    let mut moments = Moments::default();
    for (i, chunk) in ids.chunks(CHUNK).enumerate() {
        let xs = batcher::to_f32(data, chunk, &[]);
        let xs = Tensor::from_vec(
            xs,
            (chunk.len(), s.channels, s.height, s.width),
            model.device(),
        )?;
        let enc = model.encode(&xs)?;
        moments.add(&enc)?;
        let mut rng = Rng::keyed(seed, "eval", i as u64);
        let z = model.reparameterize(&enc, &mut rng)?;
        let dec = model.decode_params(&z)?;
        recon += model.recon_nll(&dec, &xs)?.sum_all()?.to_scalar::<f32>()? as f64;
        kl += model.kl(&enc)?.sum_all()?.to_scalar::<f32>()? as f64;
        if samples > 0 {
            iwae += iwae_sum(model, &xs, &enc, samples, &mut rng)?;
        }
    }
    let n = ids.len().max(1) as f64;
    let to_bpd = |nats: f64| nats / (dims as f64 * std::f64::consts::LN_2);
    let (recon, kl) = (recon / n, kl / n);
    let iwae_nll = (samples > 0).then_some(iwae / n);
    Ok(Report {
        images: ids.len(),
        dims,
        recon,
        kl,
        neg_elbo: recon + kl,
        neg_elbo_bpd: to_bpd(recon + kl),
        iwae_nll,
        iwae_bpd: iwae_nll.map(to_bpd),
        samples,
        prior_gap: moments.gap(),
    })
}

/// Running per-dimension sums of the posterior means and variances.
#[derive(Default)]
struct Moments {
    n: f64,
    mu: Vec<f64>,
    mu_sq: Vec<f64>,
    var: Vec<f64>,
}

impl Moments {
    fn add(&mut self, enc: &crate::model::Encoded) -> candle_core::Result<()> {
        let mu: Vec<Vec<f32>> = enc.mu.to_vec2()?;
        let var: Option<Vec<Vec<f32>>> = enc
            .logvar
            .as_ref()
            .map(|lv| lv.exp()?.to_vec2())
            .transpose()?;
        for (row, m) in mu.iter().enumerate() {
            if self.mu.is_empty() {
                self.mu = vec![0.0; m.len()];
                self.mu_sq = vec![0.0; m.len()];
                self.var = vec![0.0; m.len()];
            }
            for (j, &v) in m.iter().enumerate() {
                self.mu[j] += f64::from(v);
                self.mu_sq[j] += f64::from(v) * f64::from(v);
                self.var[j] += var.as_ref().map_or(0.0, |vs| f64::from(vs[row][j]));
            }
            self.n += 1.0;
        }
        Ok(())
    }

    /// KL(N(m, s^2) || N(0, 1)) summed over dimensions, where m and s^2 are the mean and
    /// variance of the mixture of the posteriors (variance of the means plus mean variance).
    fn gap(&self) -> f64 {
        if self.n == 0.0 {
            return 0.0;
        }
        let mut total = 0.0;
        for j in 0..self.mu.len() {
            let m = self.mu[j] / self.n;
            let s2 = (self.mu_sq[j] / self.n - m * m).max(0.0) + self.var[j] / self.n;
            let s2 = s2.max(1e-12);
            total += 0.5 * (s2 + m * m - 1.0 - s2.ln());
        }
        total
    }
}

/// Sum over the batch of `-log (1/K) sum_k w_k`, computed with a log-sum-exp.
fn iwae_sum(
    model: &Vae,
    xs: &Tensor,
    enc: &crate::model::Encoded,
    k: usize,
    rng: &mut Rng,
) -> candle_core::Result<f64> {
    let log2pi = (2.0 * std::f64::consts::PI).ln();
    let mut log_w: Vec<Tensor> = Vec::with_capacity(k);
    for _ in 0..k {
        let z = model.reparameterize(enc, rng)?;
        let dec = model.decode_params(&z)?;
        let log_px = model.recon_nll(&dec, xs)?.neg()?;
        let d = z.dim(1)? as f64;
        let log_pz = (z.sqr()?.sum(D::Minus1)? * -0.5)?.affine(1.0, -0.5 * d * log2pi)?;
        let log_qz = match &enc.logvar {
            Some(logvar) => {
                let sq = (&z - &enc.mu)?.sqr()?.mul(&logvar.neg()?.exp()?)?;
                ((sq + logvar)?.sum(D::Minus1)? * -0.5)?.affine(1.0, -0.5 * d * log2pi)?
            }
            // A plain autoencoder has a point posterior: the bound is not defined, so score it
            // as if q were the prior (the ELBO's reconstruction term with a prior draw is not
            // what an AE is trained for either; its ELBO above is the meaningful figure).
            None => log_pz.clone(),
        };
        log_w.push(((log_px + log_pz)? - log_qz)?);
    }
    let stacked = Tensor::stack(&log_w, 1)?; // (n, k)
    let max = stacked.max_keepdim(1)?;
    let lse = (stacked.broadcast_sub(&max)?.exp()?.sum_keepdim(1)?.log()? + &max)?;
    let per_image = lse.affine(1.0, -(k as f64).ln())?.neg()?;
    Ok(per_image.sum_all()?.to_scalar::<f32>()? as f64)
}
