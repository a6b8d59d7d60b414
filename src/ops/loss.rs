//! The Bernoulli reconstruction loss on logits, fused into one pass each way on the CPU.
//!
//! Written with candle's element-wise ops, `max(l, 0) - l x + ln(1 + e^-|l|)` summed per image
//! makes eight full-size temporaries forward and more backward; this op reads the logits and
//! targets once forward and once backward.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv::{f32_slice, par_zeroed};

/// Per-image binary cross-entropy `(n,)` of logits `l` against targets `x` in [0, 1], both
/// `(n, ...)`: `sum_j max(l_j, 0) - l_j x_j + ln(1 + exp(-|l_j|))`, summed in f64.
pub struct BceWithLogits;

/// Image count and values per image of an `(n, ...)` layout.
fn per_image(l: &Layout) -> Result<(usize, usize)> {
    let dims = l.dims();
    let Some(&n) = dims.first() else {
        candle_core::bail!("the loss needs a batch dimension, got a scalar");
    };
    let per = dims[1..].iter().product::<usize>();
    Ok((n, per))
}

fn same_shape(l1: &Layout, l2: &Layout) -> Result<()> {
    if l1.dims() != l2.dims() {
        candle_core::bail!(
            "logits {:?} and targets {:?} differ in shape",
            l1.dims(),
            l2.dims()
        );
    }
    Ok(())
}

impl CustomOp2 for BceWithLogits {
    fn name(&self) -> &'static str {
        "facestudio-bce-with-logits"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        same_shape(l1, l2)?;
        let (logits, targets) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let (n, per) = per_image(l1)?;
        let sums: Vec<f32> = (0..n)
            .into_par_iter()
            .map(|i| {
                let (l, x) = (&logits[i * per..][..per], &targets[i * per..][..per]);
                let sum: f64 = l
                    .iter()
                    .zip(x)
                    .map(|(&l, &x)| (l.max(0.0) - l * x + (-l.abs()).exp().ln_1p()) as f64)
                    .sum();
                sum as f32
            })
            .collect();
        Ok((CpuStorage::F32(sums), Shape::from(n)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad_logits(logits, targets, grad)?), None))
    }
}

/// The gradient of [`BceWithLogits`] for the logits, from the gradient `grad (n,)` of its
/// per-image sums.
pub fn grad_logits(logits: &Tensor, targets: &Tensor, grad: &Tensor) -> Result<Tensor> {
    logits
        .contiguous()?
        .apply_op3_no_bwd(&targets.contiguous()?, &grad.contiguous()?, &BceGrad)
}

/// `(sigmoid(l) - x) g_i` for every value of image `i`: the gradient of [`BceWithLogits`].
struct BceGrad;

impl CustomOp3 for BceGrad {
    fn name(&self) -> &'static str {
        "facestudio-bce-with-logits-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        same_shape(l1, l2)?;
        let (logits, targets) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let grad = f32_slice(s3, l3)?;
        let (n, per) = per_image(l1)?;
        if grad.len() != n {
            candle_core::bail!("loss gradient of {} values for {n} images", grad.len());
        }
        let out = par_zeroed(logits.len(), per, |i, out| {
            let (l, x, g) = (
                &logits[i * per..][..per],
                &targets[i * per..][..per],
                grad[i],
            );
            for ((o, &l), &x) in out.iter_mut().zip(l).zip(x) {
                *o = (1.0 / (1.0 + (-l).exp()) - x) * g;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::{Device, Var, D};

    /// The loss written with candle's own ops, as the model wrote it before this op.
    fn reference(l: &Tensor, x: &Tensor) -> Tensor {
        let softplus = l.abs().unwrap().neg().unwrap().exp().unwrap();
        let softplus = softplus.affine(1.0, 1.0).unwrap().log().unwrap();
        let per_pixel = ((l.relu().unwrap() - l.mul(x).unwrap()).unwrap() + softplus).unwrap();
        per_pixel.flatten_from(1).unwrap().sum(D::Minus1).unwrap()
    }

    #[test]
    fn matches_candle_ops_forward_and_backward() {
        let mut rng = Rng::new(3);
        let shape = (5, 3, 7, 6);
        let n: usize = 5 * 3 * 7 * 6;
        // Logits from tiny to large in both signs, targets anywhere in [0, 1].
        let l: Vec<f32> = rng.normals(n).iter().map(|v| v * 6.0).collect();
        let x: Vec<f32> = (0..n).map(|_| rng.uniform() as f32).collect();
        let dev = Device::Cpu;
        let lv = Var::from_vec(l, shape, &dev).unwrap();
        let xt = Tensor::from_vec(x, shape, &dev).unwrap();
        let weights = Tensor::new(&[1.0f32, -2.0, 0.5, 3.0, 0.0], &dev).unwrap();

        let fused = lv.as_tensor().apply_op2(&xt, BceWithLogits).unwrap();
        let plain = reference(lv.as_tensor(), &xt);
        let (a, b) = (
            fused.to_vec1::<f32>().unwrap(),
            plain.to_vec1::<f32>().unwrap(),
        );
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        }

        let g1 = (fused * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (plain * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (g1, g2) = (g1.get(&lv).unwrap(), g2.get(&lv).unwrap());
        let diff = (g1 - g2).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        // The gradient is (sigmoid(l) - x) times the image's weight: zero for the last image.
        let last = g1.get(4).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(last.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn stays_finite_for_huge_logits() {
        let dev = Device::Cpu;
        let l = Tensor::new(&[[1e4f32, -1e4, 0.0]], &dev).unwrap();
        let x = Tensor::new(&[[0.0f32, 1.0, 0.5]], &dev).unwrap();
        let loss = l
            .apply_op2(&x, BceWithLogits)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            (loss[0] - (1e4 + 1e4 + std::f32::consts::LN_2)).abs() < 1e-2,
            "{loss:?}"
        );
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let dev = Device::Cpu;
        let l = Tensor::zeros((2, 3), candle_core::DType::F32, &dev).unwrap();
        let x = Tensor::zeros((2, 4), candle_core::DType::F32, &dev).unwrap();
        let err = l.apply_op2(&x, BceWithLogits).unwrap_err().to_string();
        assert!(err.contains("differ in shape"), "{err}");
    }
}
