//! Gaussian statistics of features and the Fréchet distance between two Gaussians (Dowson & Landau 1982):
//!
//! `d² = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁ Σ₂)^{1/2}`,
//!
//! computed in f64. The trace term is evaluated through the symmetric form: with `S = Σ₁^{1/2}` ([`sqrtm_psd`]),
//! `Σ₁Σ₂ = S (S Σ₂ S) S⁻¹` is similar to the symmetric PSD matrix `S Σ₂ S`, so
//! `tr (Σ₁Σ₂)^{1/2} = Σᵢ √λᵢ(S Σ₂ S)` (negative round-off eigenvalues clamped to 0; the identity extends to
//! singular `Σ₁` by continuity). Unlike the Schur-based `scipy.linalg.sqrtm` of the non-symmetric product, this
//! never produces complex parts and needs no diagonal offset for rank-deficient covariances.
//!
//! Statistics files are `.npz` with `mu` (D, float64) and `sigma` (D×D, float64), as pytorch-fid and clean-fid
//! write and read them; the covariance is the unbiased one (`np.cov`, divisor N − 1).

use std::path::Path;

use nalgebra::{DMatrix, DVector};

use super::error::{FidError, Result};
use crate::export::npz::{read_npz, take_array, write_npz, NpyArray, NpyData};

/// Mean and covariance of a feature set.
#[derive(Debug, Clone, PartialEq)]
pub struct FidStats {
    /// Mean, length D.
    pub mu: DVector<f64>,
    /// Unbiased covariance, D×D.
    pub sigma: DMatrix<f64>,
    /// Number of samples they were estimated from (0 when read from a file, which does not record it).
    pub n: usize,
}

/// Streams feature batches into mean and covariance, in f64, shifted by the first sample for stability
/// (`Σ = (Σₖ (x−s)(x−s)ᵀ − N (μ−s)(μ−s)ᵀ) / (N−1)`).
#[derive(Debug, Clone)]
pub struct StatsAccumulator {
    dim: usize,
    n: usize,
    shift: Option<DVector<f64>>,
    sum: DVector<f64>,
    outer: DMatrix<f64>,
}

impl StatsAccumulator {
    /// An empty accumulator for D-dimensional features.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            n: 0,
            shift: None,
            sum: DVector::zeros(dim),
            outer: DMatrix::zeros(dim, dim),
        }
    }

    /// Number of samples seen.
    pub fn count(&self) -> usize {
        self.n
    }

    /// Adds `rows` samples given row-major as f32 (`rows × D`).
    pub fn update(&mut self, feats: &[f32]) -> Result<()> {
        if !feats.len().is_multiple_of(self.dim) {
            return Err(FidError::DimensionMismatch {
                a: self.dim,
                b: feats.len(),
            });
        }
        let rows = feats.len() / self.dim;
        if rows == 0 {
            return Ok(());
        }
        let shift = self
            .shift
            .get_or_insert_with(|| {
                DVector::from_iterator(self.dim, feats[..self.dim].iter().map(|&v| v as f64))
            })
            .clone();
        // X: D × rows, centred by the shift.
        let x = DMatrix::from_iterator(
            self.dim,
            rows,
            feats
                .chunks_exact(self.dim)
                .flat_map(|r| r.iter().zip(shift.iter()).map(|(&v, &s)| v as f64 - s)),
        );
        self.sum += x.column_sum();
        self.outer.gemm(1.0, &x, &x.transpose(), 1.0);
        self.n += rows;
        Ok(())
    }

    /// Mean and unbiased covariance; `what` names the set in the error when fewer than 2 samples were seen.
    pub fn finish(&self, what: &str) -> Result<FidStats> {
        if self.n < 2 {
            return Err(FidError::TooFewImages {
                what: what.to_string(),
                n: self.n,
            });
        }
        let n = self.n as f64;
        let shift = self
            .shift
            .clone()
            .unwrap_or_else(|| DVector::zeros(self.dim));
        let dmean = &self.sum / n;
        let mut sigma = (&self.outer - (&dmean * dmean.transpose()) * n) / (n - 1.0);
        // Exact symmetry (the gemm is symmetric up to round-off).
        sigma = (&sigma + sigma.transpose()) * 0.5;
        Ok(FidStats {
            mu: dmean + shift,
            sigma,
            n: self.n,
        })
    }
}

impl FidStats {
    /// Writes `mu` and `sigma` (float64) to an `.npz`, as pytorch-fid's `--save-stats` does.
    pub fn write_npz(&self, path: &Path) -> Result<()> {
        self.write_npz_with(path, &[])
    }

    /// Writes `mu`, `sigma` and further arrays (e.g. the features) to one `.npz`.
    pub fn write_npz_with(&self, path: &Path, extra: &[(&str, &NpyArray)]) -> Result<()> {
        let d = self.mu.len();
        let mu =
            NpyArray::new(vec![d], NpyData::F64(self.mu.as_slice().to_vec())).expect("mu fills D");
        // nalgebra is column-major; sigma is symmetric, but write it row-major to be exact.
        let sigma = NpyArray::new(
            vec![d, d],
            NpyData::F64(self.sigma.transpose().as_slice().to_vec()),
        )
        .expect("sigma fills D×D");
        let mut arrays = vec![("mu", &mu), ("sigma", &sigma)];
        arrays.extend_from_slice(extra);
        Ok(write_npz(path, &arrays)?)
    }

    /// Reads Inception statistics (`mu`: 2048, `sigma`: 2048×2048, float32 or float64) from an `.npz`.
    pub fn read_npz(path: &Path) -> Result<Self> {
        Self::read_npz_dim(path, super::FEATURE_DIM)
    }

    /// Reads `mu` and `sigma` from an `.npz`, checking that they are D and D×D (`dim`) and finite.
    pub fn read_npz_dim(path: &Path, dim: usize) -> Result<Self> {
        let mut z = read_npz(path)?;
        let mu = take_array(&mut z, path, "mu")?;
        let sigma = take_array(&mut z, path, "sigma")?;
        let shape_err = |key: &str, expected: String, a: &NpyArray| FidError::ArrayShape {
            path: path.to_path_buf(),
            key: key.to_string(),
            expected,
            actual: format!("{} {:?}", a.data.type_name(), a.shape),
        };
        if mu.shape != [dim] {
            return Err(shape_err("mu", format!("float [{dim}]"), &mu));
        }
        if sigma.shape != [dim, dim] {
            return Err(shape_err("sigma", format!("float [{dim}, {dim}]"), &sigma));
        }
        for (key, a) in [("mu", &mu), ("sigma", &sigma)] {
            if matches!(a.data, NpyData::U8(_)) {
                return Err(shape_err(key, "float32 or float64".into(), a));
            }
        }
        let (mu, sigma) = (mu.to_f64(), sigma.to_f64());
        for (key, v) in [("mu", &mu), ("sigma", &sigma)] {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(FidError::ArrayShape {
                    path: path.to_path_buf(),
                    key: key.to_string(),
                    expected: "finite values".into(),
                    actual: format!("{} at flat index {i}", v[i]),
                });
            }
        }
        let s = DMatrix::from_row_slice(dim, dim, &sigma);
        // A covariance is symmetric with a non-negative diagonal; anything else makes the distance
        // meaningless (a negative-definite `sigma` gave a FID of −1,458). The tolerance allows float32 storage
        // and the round-off of statistics computed as X·Xᵀ.
        let scale = s.amax().max(f64::MIN_POSITIVE);
        let bad = |actual: String| FidError::ArrayShape {
            path: path.to_path_buf(),
            key: "sigma".into(),
            expected: "a covariance matrix (symmetric, non-negative diagonal)".into(),
            actual,
        };
        if let Some(i) = (0..dim).find(|&i| s[(i, i)] < -1e-6 * scale) {
            return Err(bad(format!(
                "a matrix whose diagonal element {i} is {}",
                s[(i, i)]
            )));
        }
        let asym = (&s - s.transpose()).amax();
        if asym > 1e-4 * scale {
            return Err(bad(format!(
                "a matrix that is not symmetric: largest |sigma − sigmaᵀ| {asym:.3e} against largest |sigma| {scale:.3e}"
            )));
        }
        Ok(Self {
            mu: DVector::from_vec(mu),
            sigma: s,
            n: 0,
        })
    }
}

/// The principal square root of a symmetric positive semi-definite matrix, `V diag(√max(λ, 0)) Vᵀ` from its
/// symmetric eigendecomposition (the input is symmetrised first; negative round-off eigenvalues become 0).
pub fn sqrtm_psd(m: &DMatrix<f64>) -> DMatrix<f64> {
    let sym = (m + m.transpose()) * 0.5;
    let eig = sym.symmetric_eigen();
    let mut v = eig.eigenvectors.clone();
    for (i, &l) in eig.eigenvalues.iter().enumerate() {
        v.column_mut(i).scale_mut(l.max(0.0).sqrt());
    }
    let r = v * eig.eigenvectors.transpose();
    (&r + r.transpose()) * 0.5
}

/// Fréchet distance between two Gaussians (see the module doc for the square-root form).
pub fn frechet_distance(a: &FidStats, b: &FidStats) -> Result<f64> {
    let d = a.mu.len();
    if b.mu.len() != d || a.sigma.nrows() != d || b.sigma.nrows() != d {
        return Err(FidError::DimensionMismatch {
            a: d,
            b: b.mu.len(),
        });
    }
    let diff = &a.mu - &b.mu;
    let s = sqrtm_psd(&a.sigma);
    let m = &s * &b.sigma * &s;
    let m = (&m + m.transpose()) * 0.5;
    let tr_sqrt: f64 = m
        .symmetric_eigenvalues()
        .iter()
        .map(|&l| l.max(0.0).sqrt())
        .sum();
    Ok(diff.dot(&diff) + a.sigma.trace() + b.sigma.trace() - 2.0 * tr_sqrt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagonal_case_has_closed_form() {
        // Commuting covariances: d² = ‖Δμ‖² + Σ (√a − √b)².
        let a = FidStats {
            mu: DVector::from_vec(vec![0.0, 1.0, 2.0]),
            sigma: DMatrix::from_diagonal(&DVector::from_vec(vec![1.0, 4.0, 9.0])),
            n: 0,
        };
        let b = FidStats {
            mu: DVector::from_vec(vec![1.0, 1.0, 0.0]),
            sigma: DMatrix::from_diagonal(&DVector::from_vec(vec![4.0, 1.0, 0.0])),
            n: 0,
        };
        let want = 1.0 + 4.0 + (1.0f64 - 2.0).powi(2) + (2.0f64 - 1.0).powi(2) + 9.0;
        assert!((frechet_distance(&a, &b).unwrap() - want).abs() < 1e-12);
        assert!(frechet_distance(&a, &a).unwrap().abs() < 1e-12);
    }

    #[test]
    fn sqrtm_matches_the_2x2_closed_form() {
        // For SPD 2×2 M: √M = (M + √det M · I) / √(tr M + 2 √det M).
        for (a, b, c) in [(4.0f64, 1.0f64, 3.0f64), (2.0, -1.5, 5.0), (1e-3, 0.0, 9.0)] {
            let m = DMatrix::from_row_slice(2, 2, &[a, b, b, c]);
            let sd: f64 = (a * c - b * b).sqrt();
            let want = (&m + DMatrix::identity(2, 2) * sd) / (a + c + 2.0 * sd).sqrt();
            let got = sqrtm_psd(&m);
            assert!((&got - &want).abs().max() < 1e-12, "{got} vs {want}");
        }
    }

    #[test]
    fn sqrtm_of_singular_gram_matrix_squares_back() {
        // A rank-3 Gram matrix in 6 dimensions, like a covariance from fewer samples than features.
        let x = DMatrix::from_fn(6, 3, |i, j| ((i * 5 + j * 3) % 7) as f64 - 3.0);
        let m = &x * x.transpose();
        let s = sqrtm_psd(&m);
        assert!((&s * &s - &m).abs().max() < 1e-9 * m.abs().max());
        assert!(s.symmetric_eigenvalues().iter().all(|&l| l > -1e-7));
    }

    #[test]
    fn accumulator_matches_two_pass_covariance() {
        // Reference: the textbook two-pass estimate, on data with a large offset.
        let rows = 37;
        let dim = 5;
        let feats: Vec<f32> = (0..rows * dim)
            .map(|i| 1000.0 + ((i * 7919) % 101) as f32 * 0.01)
            .collect();
        let mut acc = StatsAccumulator::new(dim);
        acc.update(&feats[..10 * dim]).unwrap();
        acc.update(&feats[10 * dim..]).unwrap();
        let s = acc.finish("t").unwrap();
        let x = DMatrix::from_row_slice(
            rows,
            dim,
            &feats.iter().map(|&v| v as f64).collect::<Vec<_>>(),
        );
        let mu = x.row_mean();
        for i in 0..dim {
            assert!((s.mu[i] - mu[i]).abs() < 1e-9);
            for j in 0..dim {
                let c: f64 = (0..rows)
                    .map(|r| (x[(r, i)] - mu[i]) * (x[(r, j)] - mu[j]))
                    .sum::<f64>()
                    / (rows - 1) as f64;
                assert!((s.sigma[(i, j)] - c).abs() < 1e-9, "{i},{j}");
            }
        }
    }

    #[test]
    fn one_sample_is_an_error() {
        let mut acc = StatsAccumulator::new(2);
        acc.update(&[1.0, 2.0]).unwrap();
        assert!(acc
            .finish("fake set")
            .unwrap_err()
            .to_string()
            .contains("fake set"));
    }
}

#[cfg(test)]
mod scipy_fixture {
    use super::*;

    /// Writes statistics with μ = 0 and the given 3 × 3 Σ as `dir/name`, and reads them back.
    fn round_trip(
        dir: &Path,
        name: &str,
        sigma: DMatrix<f64>,
    ) -> std::result::Result<FidStats, String> {
        let p = dir.join(name);
        FidStats {
            mu: DVector::zeros(3),
            sigma,
            n: 0,
        }
        .write_npz(&p)
        .unwrap();
        FidStats::read_npz_dim(&p, 3).map_err(|e| e.to_string())
    }

    /// Statistics whose `sigma` is no covariance (negative diagonal, asymmetric) are refused naming the file
    /// and the array; a covariance with float32-sized asymmetry is read.
    #[test]
    fn sigma_must_be_a_covariance() {
        let dir = tempfile::tempdir().unwrap();
        let err = round_trip(dir.path(), "neg.npz", -DMatrix::<f64>::identity(3, 3)).unwrap_err();
        assert!(
            err.contains("neg.npz") && err.contains("diagonal element 0 is -1"),
            "{err}"
        );
        let mut m = DMatrix::<f64>::identity(3, 3);
        m[(0, 1)] = 0.5;
        let err = round_trip(dir.path(), "asym.npz", m.clone()).unwrap_err();
        assert!(
            err.contains("asym.npz") && err.contains("not symmetric"),
            "{err}"
        );
        m[(1, 0)] = 0.5 + 1e-7;
        assert!(round_trip(dir.path(), "fine.npz", m).is_ok());
    }

    /// The tolerances of the covariance checks are relative to the largest |Σ| entry (here 4): a diagonal
    /// down to −1e-6 · 4 and an asymmetry up to 1e-4 · 4 are float32 round-off and read, anything beyond is
    /// refused. A Σ of scale 1 could not tell `· scale` from `/ scale`, hence the 4.
    #[test]
    fn covariance_tolerances_are_relative_to_the_largest_entry() {
        let dir = tempfile::tempdir().unwrap();
        let read = |name: &str, entries: &[((usize, usize), f64)]| {
            let mut sigma = DMatrix::<f64>::from_diagonal_element(3, 3, 1.0);
            sigma[(0, 0)] = 4.0;
            for &(ij, v) in entries {
                sigma[ij] = v;
            }
            round_trip(dir.path(), name, sigma)
        };
        // Diagonal: −1e-6 (a quarter of the tolerance) and −4e-6 (exactly at it) are read; −4.1e-6 is not.
        assert!(read("diag_quarter.npz", &[((2, 2), -1e-6)]).is_ok());
        assert!(read("diag_at.npz", &[((2, 2), -4e-6)]).is_ok());
        let err = read("diag_past.npz", &[((2, 2), -4.1e-6)]).unwrap_err();
        assert!(
            err.contains("diag_past.npz") && err.contains("diagonal element 2"),
            "{err}"
        );
        // A zero diagonal (a constant feature) is a covariance.
        assert!(read("diag_zero.npz", &[((1, 1), 0.0)]).is_ok());
        // Asymmetry: 2e-4 and exactly 4e-4 are read; 4.1e-4 is not.
        assert!(read("asym_half.npz", &[((1, 0), 2e-4)]).is_ok());
        assert!(read("asym_at.npz", &[((1, 0), 4e-4)]).is_ok());
        let err = read("asym_past.npz", &[((1, 0), 4.1e-4)]).unwrap_err();
        assert!(
            err.contains("asym_past.npz") && err.contains("not symmetric"),
            "{err}"
        );
    }

    /// Statistics stored as bytes are refused naming the byte array, whichever of the two it is.
    #[test]
    fn byte_statistics_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let f = |shape: Vec<usize>| {
            let n = shape.iter().product();
            NpyArray::new(shape, NpyData::F64(vec![0.0; n])).unwrap()
        };
        let b = |shape: Vec<usize>| {
            let n = shape.iter().product();
            NpyArray::new(shape, NpyData::U8(vec![0; n])).unwrap()
        };
        for (name, mu, sigma, bad) in [
            ("u8_mu.npz", b(vec![3]), f(vec![3, 3]), "`mu`"),
            ("u8_sigma.npz", f(vec![3]), b(vec![3, 3]), "`sigma`"),
        ] {
            let p = dir.path().join(name);
            write_npz(&p, &[("mu", &mu), ("sigma", &sigma)]).unwrap();
            let err = FidStats::read_npz_dim(&p, 3).unwrap_err().to_string();
            assert!(
                err.contains(name) && err.contains(bad) && err.contains("float32 or float64"),
                "{err}"
            );
        }
        let p = dir.path().join("f64.npz");
        write_npz(&p, &[("mu", &f(vec![3])), ("sigma", &f(vec![3, 3]))]).unwrap();
        assert!(FidStats::read_npz_dim(&p, 3).is_ok());
    }

    /// Against scipy.linalg.sqrtm-based distances (pytorch-fid's formula) on random 24-dimensional statistics,
    /// one pair nearly singular (`scripts/fid_reference.py frechet`).
    #[test]
    fn matches_scipy_sqrtm() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fid_frechet.npz");
        let mut z = crate::export::npz::read_npz(&path).unwrap();
        let mut take = |k: &str| z.remove(k).unwrap().to_f64();
        for (a, b, key) in [("1", "2", "fid12"), ("3", "4", "fid34")] {
            let stats = |i: &str, take: &mut dyn FnMut(&str) -> Vec<f64>| FidStats {
                mu: DVector::from_vec(take(&format!("mu{i}"))),
                sigma: DMatrix::from_row_slice(24, 24, &take(&format!("sigma{i}"))),
                n: 0,
            };
            let (sa, sb) = (stats(a, &mut take), stats(b, &mut take));
            let want = take(key)[0];
            let got = frechet_distance(&sa, &sb).unwrap();
            // scipy's sqrtm of the non-symmetric product loses ~1e-8 relative on the nearly singular pair.
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{key}: {got} vs scipy {want}"
            );
        }
    }
}
