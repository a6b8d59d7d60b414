//! Latent-space arithmetic for the gallery: interpolation, walks along one dimension, latent
//! seeds and nearest neighbours by pixel distance.
//!
//! A latent is a `&[f32]` of the model's latent size `d`; a batch of `n` latents is one flat
//! `Vec<f32>` of `n * d` values, latent after latent, as [`crate::model::decode_to_u8`] takes.

use crate::rng::Rng;

/// How two latents are blended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blend {
    /// Straight line: `(1 - t) a + t b`.
    Linear,
    /// Along the great circle (Shoemake's slerp), which keeps the norm of Gaussian latents
    /// near the shell where the prior puts its mass.
    Spherical,
}

impl Blend {
    /// The other blend.
    pub fn toggled(self) -> Self {
        match self {
            Self::Linear => Self::Spherical,
            Self::Spherical => Self::Linear,
        }
    }

    /// A short name for captions.
    pub fn name(self) -> &'static str {
        match self {
            Self::Linear => "linear",
            Self::Spherical => "slerp",
        }
    }
}

/// The latent drawn for one gallery seed: the same seed always gives the same face.
pub fn seed_latent(seed: u64, latent: usize) -> Vec<f32> {
    Rng::keyed(seed, "gallery-face", 0).normals(latent)
}

/// Linear interpolation at `t` in [0, 1].
pub fn lerp(a: &[f32], b: &[f32], t: f32) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + (y - x) * t).collect()
}

/// Spherical interpolation at `t`: the angle between `a` and `b` is swept uniformly and the norm
/// moves linearly from `|a|` to `|b|`, so equal norms stay equal. Nearly parallel or zero vectors
/// fall back to [`lerp`].
pub fn slerp(a: &[f32], b: &[f32], t: f32) -> Vec<f32> {
    let (na, nb) = (norm(a), norm(b));
    if na < 1e-8 || nb < 1e-8 {
        return lerp(a, b, t);
    }
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let cos = (dot / (na * nb)).clamp(-1.0, 1.0);
    let omega = cos.acos();
    let sin = omega.sin();
    if sin.abs() < 1e-6 {
        return lerp(a, b, t);
    }
    let t = f64::from(t);
    let (wa, wb) = (((1.0 - t) * omega).sin() / sin, (t * omega).sin() / sin);
    // Directions on the unit sphere, then the norm blended linearly.
    let scale = (1.0 - t) * na + t * nb;
    a.iter()
        .zip(b)
        .map(|(x, y)| ((wa * f64::from(*x) / na + wb * f64::from(*y) / nb) * scale) as f32)
        .collect()
}

/// `steps` latents from `a` to `b` inclusive (at least two), blended by `blend`.
pub fn interpolate(a: &[f32], b: &[f32], steps: usize, blend: Blend) -> Vec<f32> {
    let steps = steps.max(2);
    let mut out = Vec::with_capacity(steps * a.len());
    for i in 0..steps {
        let t = i as f32 / (steps - 1) as f32;
        let z = match blend {
            Blend::Linear => lerp(a, b, t),
            Blend::Spherical => slerp(a, b, t),
        };
        out.extend(z);
    }
    out
}

/// `steps` copies of `z` (at least two) with dimension `dim` swept evenly from `-span` to
/// `+span`; every other dimension keeps its value.
pub fn walk(z: &[f32], dim: usize, steps: usize, span: f32) -> Vec<f32> {
    let steps = steps.max(2);
    let mut out = Vec::with_capacity(steps * z.len());
    for i in 0..steps {
        let mut v = z.to_vec();
        if let Some(x) = v.get_mut(dim) {
            *x = -span + 2.0 * span * i as f32 / (steps - 1) as f32;
        }
        out.extend(v);
    }
    out
}

/// The latents of a 2-d model's plane: `cols * rows` points on an even grid over
/// `[-span, span]^2`, row after row from the top (largest second coordinate) down.
pub fn plane(cols: usize, rows: usize, span: f32) -> Vec<f32> {
    let at = |i: usize, n: usize| {
        if n < 2 {
            0.0
        } else {
            -span + 2.0 * span * i as f32 / (n - 1) as f32
        }
    };
    let mut out = Vec::with_capacity(cols * rows * 2);
    for r in 0..rows {
        for c in 0..cols {
            out.push(at(c, cols));
            out.push(-at(r, rows));
        }
    }
    out
}

/// The Euclidean norm.
pub fn norm(z: &[f32]) -> f64 {
    z.iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt()
}

/// The index and squared pixel distance of the image in `images` (each `query.len()` bytes,
/// image after image) nearest to `query`; `None` when there is none.
pub fn nearest(query: &[u8], images: &[u8]) -> Option<(usize, u64)> {
    if query.is_empty() {
        return None;
    }
    images
        .chunks_exact(query.len())
        .enumerate()
        .map(|(i, img)| (i, squared_distance(query, img)))
        .min_by_key(|(_, d)| *d)
}

/// The squared L2 distance of two byte images of one size.
pub fn squared_distance(a: &[u8], b: &[u8]) -> u64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (i64::from(*x) - i64::from(*y)).unsigned_abs().pow(2))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_changes_only_the_chosen_dimension() {
        let z = [0.5, -1.0, 2.0];
        let w = walk(&z, 1, 3, 2.0);
        assert_eq!(w, vec![0.5, -2.0, 2.0, 0.5, 0.0, 2.0, 0.5, 2.0, 2.0]);
    }

    #[test]
    fn plane_covers_the_corners() {
        let p = plane(3, 2, 1.0);
        assert_eq!(&p[..2], &[-1.0, 1.0]);
        assert_eq!(&p[4..6], &[1.0, 1.0]);
        assert_eq!(&p[10..], &[1.0, -1.0]);
        assert_eq!(p.len(), 12);
    }

    #[test]
    fn nearest_finds_the_closest_image() {
        let images = [0u8, 0, 100, 100, 250, 250];
        assert_eq!(nearest(&[90, 110], &images), Some((1, 200)));
        assert_eq!(nearest(&[], &images), None);
    }
}
