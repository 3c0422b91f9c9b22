//! The multivariate OU kernel of VSDM with a full, time-invariant A (ALGORITHM.md §A.4, general case).
//!
//! dx = −½ β_t D x dt + √β_t dw with D = I − 2A. With B = ∫_0^t β:
//! M_t = exp(−½ B D), and Σ_t solves dΣ/dB = −½(DΣ + ΣDᵀ) + I, Σ_0 = 0. Σ_t is computed by the matrix
//! fraction decomposition exp(½B [[−D, 2I], [0, Dᵀ]]) = [[·, C], [0, E]], Σ_t = C E^{−1} = C M_tᵀ, all in f64.
//! The cost is one (2d)×(2d) matrix exponential per time: meant for small d (toys, low-dimensional series);
//! images and long series use the diagonal kernel.

use crate::error::{Error, Result};
use nalgebra::DMatrix;

/// Closed-form kernel quantities at one time.
#[derive(Debug, Clone)]
pub struct FullKernel {
    /// Mean coefficient M_t = exp(−½ B_t D).
    pub mean: DMatrix<f64>,
    /// Covariance Σ_{t|0}.
    pub cov: DMatrix<f64>,
    /// Lower Cholesky factor L_t, Σ = L Lᵀ.
    pub chol: DMatrix<f64>,
    /// L_t^{−T}, so that ∇log ρ_{t|0}(x_t) = −L_t^{−T} ε.
    pub chol_inv_t: DMatrix<f64>,
}

/// An error naming `what` unless `m` is square.
fn square(what: &str, m: &DMatrix<f64>) -> Result<()> {
    if m.nrows() == m.ncols() {
        Ok(())
    } else {
        Err(crate::error::Error::Shape {
            what: what.into(),
            expected: "a square matrix".into(),
            got: format!("{}×{}", m.nrows(), m.ncols()),
        })
    }
}

/// D = I − 2A.
pub fn drift_matrix(a: &DMatrix<f64>) -> DMatrix<f64> {
    DMatrix::identity(a.nrows(), a.ncols()) - a * 2.0
}

/// M_t and Σ_t for integrated schedule `b` (matrix fraction decomposition).
///
/// # Panics
/// If `d_mat` is not square ([`kernel`] checks it and returns an error instead).
pub fn mean_cov(d_mat: &DMatrix<f64>, b: f64) -> (DMatrix<f64>, DMatrix<f64>) {
    let n = d_mat.nrows();
    let mut g = DMatrix::<f64>::zeros(2 * n, 2 * n);
    g.view_mut((0, 0), (n, n)).copy_from(&(d_mat * (-0.5 * b)));
    g.view_mut((0, n), (n, n))
        .copy_from(&(DMatrix::<f64>::identity(n, n) * b));
    g.view_mut((n, n), (n, n))
        .copy_from(&(d_mat.transpose() * (0.5 * b)));
    let e = g.exp();
    let mean = e.view((0, 0), (n, n)).into_owned();
    let c = e.view((0, n), (n, n)).into_owned();
    let mut cov = &c * mean.transpose();
    // Σ is symmetric in exact arithmetic; remove rounding asymmetry before the Cholesky factorisation.
    cov = (&cov + cov.transpose()) * 0.5;
    (mean, cov)
}

/// Lower Cholesky factor and its inverse transpose; `t` only names the time in the error.
pub fn chol_pair(cov: &DMatrix<f64>, t: f64) -> Result<(DMatrix<f64>, DMatrix<f64>)> {
    square("covariance", cov)?;
    let ch = cov
        .clone()
        .cholesky()
        .ok_or_else(|| Error::NotPositiveDefinite {
            t,
            detail: format!(
                "Cholesky of the {}×{} covariance failed",
                cov.nrows(),
                cov.ncols()
            ),
        })?;
    let l = ch.l();
    let l_inv = l
        .clone()
        .solve_lower_triangular(&DMatrix::identity(l.nrows(), l.ncols()))
        .ok_or_else(|| Error::NotPositiveDefinite {
            t,
            detail: "singular Cholesky factor".into(),
        })?;
    Ok((l, l_inv.transpose()))
}

/// All kernel quantities at integrated schedule `b` (time `t` for error messages).
pub fn kernel(d_mat: &DMatrix<f64>, b: f64, t: f64) -> Result<FullKernel> {
    square("drift matrix D", d_mat)?;
    let (mean, cov) = mean_cov(d_mat, b);
    crate::error::ensure_finite("Σ_t", cov.as_slice())?;
    let (chol, chol_inv_t) = chol_pair(&cov, t)?;
    Ok(FullKernel {
        mean,
        cov,
        chol,
        chol_inv_t,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// RK4 on the Lyapunov ODE dΣ/dB = −½(DΣ + ΣDᵀ) + I and dM/dB = −½ D M: an independent computation.
    fn rk4(d: &DMatrix<f64>, b: f64, steps: usize) -> (DMatrix<f64>, DMatrix<f64>) {
        let n = d.nrows();
        let id = DMatrix::<f64>::identity(n, n);
        let fs = |s: &DMatrix<f64>| -(d * s + s * d.transpose()) * 0.5 + &id;
        let fm = |m: &DMatrix<f64>| -(d * m) * 0.5;
        let h = b / steps as f64;
        let (mut m, mut s) = (id.clone(), DMatrix::<f64>::zeros(n, n));
        for _ in 0..steps {
            let (k1, j1) = (fs(&s), fm(&m));
            let (k2, j2) = (fs(&(&s + &k1 * (0.5 * h))), fm(&(&m + &j1 * (0.5 * h))));
            let (k3, j3) = (fs(&(&s + &k2 * (0.5 * h))), fm(&(&m + &j2 * (0.5 * h))));
            let (k4, j4) = (fs(&(&s + &k3 * h)), fm(&(&m + &j3 * h)));
            s += (k1 + k2 * 2.0 + k3 * 2.0 + k4) * (h / 6.0);
            m += (j1 + j2 * 2.0 + j3 * 2.0 + j4) * (h / 6.0);
        }
        (m, s)
    }

    fn random_a(n: usize, scale: f64, seed: u64) -> DMatrix<f64> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        DMatrix::from_fn(n, n, |_, _| rng.random_range(-scale..scale))
    }

    #[test]
    fn matrix_fraction_matches_lyapunov_ode() {
        for (n, scale, seed) in [(2, 0.4, 1), (3, 0.8, 2), (5, 0.5, 3), (2, 1.2, 4)] {
            let a = random_a(n, scale, seed);
            let d = drift_matrix(&a);
            for b in [0.05, 1.0, 4.0] {
                let (m, s) = mean_cov(&d, b);
                let (m2, s2) = rk4(&d, b, 4000);
                let scale_s = s2.amax().max(1.0);
                assert!(
                    (&m - &m2).amax() < 1e-10 * m2.amax().max(1.0),
                    "M n={n} b={b}"
                );
                assert!(
                    (&s - &s2).amax() < 1e-10 * scale_s,
                    "Σ n={n} b={b}: {}",
                    (&s - &s2).amax()
                );
            }
        }
    }

    #[test]
    fn expanding_directions_are_allowed() {
        // a_11 = 0.9 gives d = −0.8 < 0: the coordinate expands and its variance grows faster than B.
        let a = DMatrix::from_row_slice(2, 2, &[0.9, 0.1, -0.2, 0.1]);
        let d = drift_matrix(&a);
        let k = kernel(&d, 3.0, 0.5).unwrap();
        let (_, s2) = rk4(&d, 3.0, 4000);
        assert!((&k.cov - &s2).amax() < 1e-10 * s2.amax());
        assert!(k.cov[(0, 0)] > 3.0);
        let recon = &k.chol * k.chol.transpose();
        assert!((&recon - &k.cov).amax() < 1e-12 * k.cov.amax());
        let prod = k.chol_inv_t.transpose() * &k.chol;
        assert!((prod - DMatrix::<f64>::identity(2, 2)).amax() < 1e-12);
    }

    #[test]
    fn diagonal_a_agrees_with_the_scalar_kernel() {
        let a = DMatrix::from_diagonal(&nalgebra::DVector::from_vec(vec![0.2, -0.6, 0.45]));
        let d = drift_matrix(&a);
        let (m, s) = mean_cov(&d, 2.3);
        for i in 0..3 {
            let (mi, si) = crate::kernel::diag::mean_std(2.3, 1.0 - 2.0 * a[(i, i)]);
            assert!((m[(i, i)] - mi).abs() < 1e-12);
            assert!((s[(i, i)] - si * si).abs() < 1e-12);
        }
    }
}
