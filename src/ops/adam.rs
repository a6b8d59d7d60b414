//! Adam's update in place, one parallel pass per tensor on the CPU.
//!
//! Written with candle's ops, one update reads and writes each parameter-sized tensor about a
//! dozen times and allocates as many new ones, on one thread. Here the moments and the weights
//! are updated where they lie.

use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor};
use rayon::prelude::*;

use super::conv::{f32_slice, f32_slice_mut};

/// Values per parallel task.
const CHUNK: usize = 1 << 14;

/// One Adam update's constants: `g' = scale g`, `m = beta1 m + (1 - beta1) g'`,
/// `v = beta2 v + (1 - beta2) g'^2`, `w -= step_size m / (sqrt(v / bias2) + eps)`.
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    /// Factor applied to the gradient first (global-norm clipping).
    pub scale: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Learning rate over the first moment's bias correction.
    pub step_size: f64,
    /// The second moment's bias correction, `1 - beta2^t`.
    pub bias2: f64,
    /// Added to the denominator.
    pub eps: f64,
}

fn same_len(a: usize, b: usize) -> Result<()> {
    if a != b {
        candle_core::bail!("Adam update of {a} values from {b}");
    }
    Ok(())
}

/// `moment = decay moment + (1 - decay) (scale g)^power`, power 1 or 2, in place.
struct Moment {
    decay: f32,
    scale: f32,
    square: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "facestudio-adam-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let moment = f32_slice_mut(s1, l1)?;
        let g = f32_slice(s2, l2)?;
        same_len(moment.len(), g.len())?;
        let (decay, scale, square) = (self.decay, self.scale, self.square);
        moment
            .par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(m, g)| {
                for (m, &g) in m.iter_mut().zip(g) {
                    let g = g * scale;
                    let g = if square { g * g } else { g };
                    *m = decay * *m + (1.0 - decay) * g;
                }
            });
        Ok(())
    }
}

/// `w -= step_size m / (sqrt(v / bias2) + eps)`, in place.
struct Apply {
    step_size: f32,
    bias2: f32,
    eps: f32,
}

impl InplaceOp3 for Apply {
    fn name(&self) -> &'static str {
        "facestudio-adam-apply"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let w = f32_slice_mut(s1, l1)?;
        let (m, v) = (f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        same_len(w.len(), m.len())?;
        same_len(w.len(), v.len())?;
        let (step, bias2, eps) = (self.step_size, self.bias2, self.eps);
        w.par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|(w, (m, v))| {
                for ((w, &m), &v) in w.iter_mut().zip(m).zip(v) {
                    *w -= m / ((v / bias2).sqrt() + eps) * step;
                }
            });
        Ok(())
    }
}

/// Whether [`update`] and [`sum_squares`] run here for these tensors: f32 on the CPU,
/// contiguous, with the native kernels chosen.
pub fn applies(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| super::native(t) && t.is_contiguous())
}

/// The sum of the squares of a tensor's values, in f64, in parallel, the same on every call.
pub fn sum_squares(t: &Tensor) -> Result<f64> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("sum_squares runs on the CPU only");
    };
    let xs = f32_slice(cpu, layout)?;
    // Chunk sums added in order, so the result does not depend on the scheduling.
    let chunks: Vec<f64> = xs
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
        .collect();
    Ok(chunks.iter().sum())
}

/// One Adam update of the weights `w` and moments `m`, `v` in place from the gradient `g`.
/// Only for tensors where [`applies`] holds.
pub fn update(w: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, s: AdamStep) -> Result<()> {
    let moment = |decay: f64, square| Moment {
        decay: decay as f32,
        scale: s.scale as f32,
        square,
    };
    m.inplace_op2(g, &moment(s.beta1, false))?;
    v.inplace_op2(g, &moment(s.beta2, true))?;
    let apply = Apply {
        step_size: s.step_size as f32,
        bias2: s.bias2 as f32,
        eps: s.eps as f32,
    };
    w.inplace_op3(m, v, &apply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::Device;

    fn random(n: usize, seed: u64) -> Tensor {
        Tensor::from_vec(Rng::new(seed).normals(n), n, &Device::Cpu).unwrap()
    }

    #[test]
    fn matches_the_update_written_with_candle_ops() {
        let n = 40_000; // several parallel chunks and a short last one
        let (w, g, m) = (random(n, 1), random(n, 2), random(n, 3));
        let v = random(n, 4).abs().unwrap();
        let s = AdamStep {
            scale: 0.7,
            beta1: 0.9,
            beta2: 0.999,
            step_size: 1e-3 / (1.0 - 0.9f64.powi(3)),
            bias2: 1.0 - 0.999f64.powi(3),
            eps: 1e-8,
        };
        let g2 = (&g * s.scale).unwrap();
        let m2 = ((&m * s.beta1).unwrap() + (&g2 * (1.0 - s.beta1)).unwrap()).unwrap();
        let v2 = (&v * s.beta2).unwrap() + (g2.sqr().unwrap() * (1.0 - s.beta2)).unwrap();
        let v2 = v2.unwrap();
        let denom = ((&v2 / s.bias2).unwrap().sqrt().unwrap() + s.eps).unwrap();
        let w2 = (&w - ((&m2 / &denom).unwrap() * s.step_size).unwrap()).unwrap();
        assert!(applies(&[&w, &g, &m, &v]));
        update(&w, &g, &m, &v, s).unwrap();
        for (ours, theirs) in [(&w, &w2), (&m, &m2), (&v, &v2)] {
            let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
        }
        let sq = (g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()) as f64;
        assert!((sum_squares(&g).unwrap() - sq).abs() < 1e-3 * sq);
    }

    #[test]
    fn mismatched_lengths_are_errors() {
        let (w, g) = (random(5, 1), random(6, 2));
        let s = AdamStep {
            scale: 1.0,
            beta1: 0.9,
            beta2: 0.999,
            step_size: 1e-3,
            bias2: 1e-3,
            eps: 1e-8,
        };
        let err = update(&w, &g, &random(5, 3), &random(5, 4), s).unwrap_err();
        assert!(
            err.to_string().contains("Adam update of 5 values from 6"),
            "{err}"
        );
    }
}
