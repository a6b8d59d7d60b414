//! Adam with moments that can be saved and restored, and global-norm gradient clipping.
//!
//! candle-nn's `AdamW` keeps its moments private, so a resumed run would restart them from
//! zero and train differently from one that never stopped. This one exposes them.

use candle_core::Var;
use candle_core::{Result, Tensor};

use crate::checkpoint::AdamMeta;
use crate::model::Gradients;
use crate::ops::adam::{self, AdamStep};

/// Adam over a fixed list of named variables.
pub struct Adam {
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Scalar state (step count and decays).
    pub meta: AdamMeta,
    /// The learning rate of the next update.
    pub lr: f64,
}

/// What one update did.
#[derive(Debug, Clone, Copy)]
pub struct UpdateInfo {
    /// Global L2 norm of the gradient before clipping.
    pub grad_norm: f64,
    /// Whether the gradient was scaled down.
    pub clipped: bool,
}

impl Adam {
    /// Fresh moments for `vars`.
    pub fn new(vars: Vec<(String, Var)>, lr: f64) -> Result<Self> {
        let m = vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let v = vars
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let meta = AdamMeta {
            t: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        };
        Ok(Self {
            vars,
            m,
            v,
            meta,
            lr,
        })
    }

    /// Restores saved moments, by variable name.
    pub fn restore(
        &mut self,
        meta: AdamMeta,
        moments: &std::collections::HashMap<String, (Tensor, Tensor)>,
    ) -> Result<()> {
        for (i, (name, _)) in self.vars.iter().enumerate() {
            if let Some((m, v)) = moments.get(name) {
                // Copies, so that updating them in place leaves the caller's tensors alone.
                self.m[i] = m.copy()?;
                self.v[i] = v.copy()?;
            }
        }
        self.meta = meta;
        Ok(())
    }

    /// `(name, m, v)` for each variable, for checkpoints. The tensors share storage with the
    /// optimiser's, which the next [`Adam::step`] updates in place: write them out before it.
    pub fn moments(&self) -> Vec<(String, Tensor, Tensor)> {
        self.vars
            .iter()
            .zip(self.m.iter().zip(&self.v))
            .map(|((n, _), (m, v))| (n.clone(), m.clone(), v.clone()))
            .collect()
    }

    /// The variables, in order.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Applies one update from `grads`, clipping the global norm to `clip` when it is positive.
    pub fn step(&mut self, grads: &Gradients, clip: f64) -> Result<UpdateInfo> {
        let mut gs = Vec::with_capacity(self.vars.len());
        let mut sq = 0.0f64;
        for (_, var) in &self.vars {
            let g = match grads.get(var.as_tensor()) {
                Some(g) => g.contiguous()?,
                None => var.zeros_like()?,
            };
            sq += match adam::applies(&[&g]) {
                true => adam::sum_squares(&g)?,
                false => g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64,
            };
            gs.push(g);
        }
        // Summed in f64, but judged as the f32 model holds it: a squared norm past f32's range
        // (a gradient norm over about 1.8e19) reads as infinite, which the trainer treats as
        // divergence rather than as a step Adam's normalisation would quietly shrink.
        let grad_norm = ((sq as f32) as f64).sqrt();
        let clipped = clip > 0.0 && grad_norm > clip;
        let scale = if clipped { clip / grad_norm } else { 1.0 };
        self.meta.t += 1;
        let AdamMeta {
            t,
            beta1,
            beta2,
            eps,
        } = self.meta;
        let bc1 = 1.0 - beta1.powi(t as i32);
        let bc2 = 1.0 - beta2.powi(t as i32);
        let step_size = self.lr / bc1;
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let w = var.as_tensor();
            if adam::applies(&[w, &gs[i], &self.m[i], &self.v[i]]) {
                // In place: the moments' storage is this optimiser's own (see `restore`).
                let s = AdamStep {
                    scale,
                    beta1,
                    beta2,
                    step_size,
                    bias2: bc2,
                    eps,
                };
                adam::update(w, &gs[i], &self.m[i], &self.v[i], s)?;
                continue;
            }
            let g = if clipped {
                (&gs[i] * scale)?
            } else {
                gs[i].clone()
            };
            let m = ((&self.m[i] * beta1)? + (&g * (1.0 - beta1))?)?;
            let v = ((&self.v[i] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let denom = ((&v / bc2)?.sqrt()? + eps)?;
            let update = ((&m / &denom)? * step_size)?;
            var.set(&w.sub(&update)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(UpdateInfo { grad_norm, clipped })
    }
}
