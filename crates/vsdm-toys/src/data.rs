//! The anisotropic 2-D data sets of both papers (ALGORITHM.md §F.1), seedable through [`NoiseRng`].

use candle_core::{Device, Tensor};
use rand_distr::Distribution;
use vsdm_core::NoiseRng;

/// A 2-D data set.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
pub enum Shape {
    /// VSDM's spiral: θ = √U·3π − π/2, r = θ + π, (r cos θ, r sin θ) + 0.25·N(0, I), × 0.4, then ×1 on x, ×8 on y.
    Spiral,
    /// The 5-frequency sin-mask checkerboard on [−2π, 2π]² (sin x · sin y > 0), stretched ×6 on x.
    Checkerboard,
    /// N((−8, 2), [[1, 1], [1, 5]]): the Gaussian-bridge check.
    Gaussian,
}

impl Shape {
    pub fn name(&self) -> &'static str {
        match self {
            Shape::Spiral => "spiral 1:8",
            Shape::Checkerboard => "checkerboard 6:1",
            Shape::Gaussian => "Gaussian",
        }
    }

    /// `n` points, row-major [n, 2].
    pub fn sample(&self, n: usize, rng: &mut NoiseRng) -> Vec<[f64; 2]> {
        let normal = |rng: &mut NoiseRng| -> f64 { rand_distr::StandardNormal.sample(rng.inner()) };
        let pi = std::f64::consts::PI;
        match self {
            Shape::Spiral => (0..n)
                .map(|_| {
                    let th = rng.uniform().sqrt() * 3.0 * pi - pi / 2.0;
                    let r = th + pi;
                    let x = (r * th.cos() + 0.25 * normal(rng)) * 0.4;
                    let y = (r * th.sin() + 0.25 * normal(rng)) * 0.4;
                    [x, 8.0 * y]
                })
                .collect(),
            Shape::Checkerboard => {
                let mut out = Vec::with_capacity(n);
                while out.len() < n {
                    let x = (rng.uniform() * 2.0 - 1.0) * 2.0 * pi;
                    let y = (rng.uniform() * 2.0 - 1.0) * 2.0 * pi;
                    if x.sin() * y.sin() > 0.0 {
                        out.push([6.0 * x, y]);
                    }
                }
                out
            }
            Shape::Gaussian => (0..n)
                .map(|_| {
                    // Cholesky of [[1, 1], [1, 5]] is [[1, 0], [1, 2]].
                    let (e1, e2) = (normal(rng), normal(rng));
                    [-8.0 + e1, 2.0 + e1 + 2.0 * e2]
                })
                .collect(),
        }
    }
}

/// Points as an f32 tensor [n, 2].
pub fn to_tensor(points: &[[f64; 2]], device: &Device) -> candle_core::Result<Tensor> {
    let v: Vec<f32> = points
        .iter()
        .flat_map(|p| [p[0] as f32, p[1] as f32])
        .collect();
    Tensor::from_vec(v, (points.len(), 2), device)
}

/// An f32 tensor [n, 2] as points.
pub fn from_tensor(t: &Tensor) -> candle_core::Result<Vec<[f64; 2]>> {
    Ok(t.to_dtype(candle_core::DType::F64)?
        .to_vec2::<f64>()?
        .into_iter()
        .map(|r| [r[0], r[1]])
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_has_its_moments_and_shapes_are_anisotropic() {
        let mut rng = NoiseRng::new(0);
        let g = Shape::Gaussian.sample(40_000, &mut rng);
        let n = g.len() as f64;
        let m = [
            g.iter().map(|p| p[0]).sum::<f64>() / n,
            g.iter().map(|p| p[1]).sum::<f64>() / n,
        ];
        let c =
            |i: usize, j: usize| g.iter().map(|p| (p[i] - m[i]) * (p[j] - m[j])).sum::<f64>() / n;
        assert!(
            (m[0] + 8.0).abs() < 0.03 && (m[1] - 2.0).abs() < 0.05,
            "{m:?}"
        );
        assert!(
            (c(0, 0) - 1.0).abs() < 0.05
                && (c(0, 1) - 1.0).abs() < 0.08
                && (c(1, 1) - 5.0).abs() < 0.2
        );
        let spread = |pts: &[[f64; 2]], i: usize| {
            let m = pts.iter().map(|p| p[i]).sum::<f64>() / pts.len() as f64;
            (pts.iter().map(|p| (p[i] - m).powi(2)).sum::<f64>() / pts.len() as f64).sqrt()
        };
        let s = Shape::Spiral.sample(5000, &mut rng);
        assert!(
            spread(&s, 1) > 5.0 * spread(&s, 0),
            "the spiral is stretched on y"
        );
        let c = Shape::Checkerboard.sample(5000, &mut rng);
        assert!(
            (spread(&c, 0) / spread(&c, 1) - 6.0).abs() < 0.5,
            "the checkerboard is stretched ×6 on x"
        );
        assert!(c.iter().all(|p| (p[0] / 6.0).sin() * p[1].sin() > 0.0));
    }
}
