//! The per-coordinate phase-space kernel of VSMD / CLD (ALGORITHM.md §E.1–E.3).
//!
//! With z = (x, v), stiffness k = 1 − 2γa and friction Γ = γ(1 − 2c):
//! dz = β_t F̄ z dt + (0, √(γβ_t)) dw,  F̄ = [[0, ½], [−½k, −½Γ]],  GGᵀ = β_t diag(0, γ).
//! With B = ∫β: Φ = exp(B F̄), and from z_0 = 0 the covariance Σ solves the Lyapunov ODE, computed by the 4×4
//! matrix fraction exp([[B F̄, B Q̄], [0, −B F̄ᵀ]]) = [[Φ, C], [0, Φ^{−T}]], Σ = C Φᵀ.
//! A = C = 0 is CLD with mass 1 and friction 2 (critical) in time scaled by β/2.

use nalgebra::{Matrix2, Matrix4};

/// The drift coefficients of one coordinate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Oscillator {
    /// Stiffness k = 1 − 2γa.
    pub k: f64,
    /// Friction Γ = γ(1 − 2c).
    pub friction: f64,
    /// Noise scale γ (GGᵀ = γβ on v).
    pub gamma: f64,
}

impl Oscillator {
    /// From the variational coefficients (a, c) of the forward score f(z) = a x + c v.
    pub fn from_ac(a: f64, c: f64, gamma: f64) -> Self {
        Self {
            k: 1.0 - 2.0 * gamma * a,
            friction: gamma * (1.0 - 2.0 * c),
            gamma,
        }
    }

    /// The critical-damping transform (§E.2): a(c; γ, κ) = (1 − (γ − 2γc)² / (4κ)) / (2γ), so k = Γ²/(4κ).
    /// κ = 1 is critically damped; κ < 1 under-damped.
    pub fn critical(c: f64, gamma: f64, kappa: f64) -> Self {
        Self::from_ac(critical_a(c, gamma, kappa), c, gamma)
    }

    /// F̄ = [[0, ½], [−½k, −½Γ]].
    pub fn drift_matrix(&self) -> Matrix2<f64> {
        Matrix2::new(0.0, 0.5, -0.5 * self.k, -0.5 * self.friction)
    }
}

/// a(c) of the critical-damping transform.
pub fn critical_a(c: f64, gamma: f64, kappa: f64) -> f64 {
    let f = gamma - 2.0 * gamma * c;
    (1.0 - f * f / (4.0 * kappa)) / (2.0 * gamma)
}

/// da/dc of the critical-damping transform: (γ − 2γc) / (2κ).
pub fn critical_a_derivative(c: f64, gamma: f64, kappa: f64) -> f64 {
    (gamma - 2.0 * gamma * c) / (2.0 * kappa)
}

/// Kernel quantities of one coordinate at integrated schedule B.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MomentumKernel {
    /// Φ = exp(B F̄), the mean map z_0 ↦ μ_t.
    pub phi: Matrix2<f64>,
    /// Σ_{t|x_0} (includes the initial velocity variance, see [`kernel`]).
    pub cov: Matrix2<f64>,
    /// Cholesky factor entries (l_xx, l_vx, l_vv).
    pub chol: [f64; 3],
}

/// Φ and Σ (from z_0 = 0) by the generic 4×4 matrix fraction; valid for any damping.
pub fn phi_cov_general(osc: &Oscillator, b: f64) -> (Matrix2<f64>, Matrix2<f64>) {
    let f = osc.drift_matrix() * b;
    let mut g = Matrix4::<f64>::zeros();
    g.fixed_view_mut::<2, 2>(0, 0).copy_from(&f);
    g[(1, 3)] = b * osc.gamma;
    g.fixed_view_mut::<2, 2>(2, 2).copy_from(&(-f.transpose()));
    let e = g.exp();
    let phi: Matrix2<f64> = e.fixed_view::<2, 2>(0, 0).into_owned();
    let c: Matrix2<f64> = e.fixed_view::<2, 2>(0, 2).into_owned();
    let cov = c * phi.transpose();
    (phi, (cov + cov.transpose()) * 0.5)
}

/// Φ and Σ (from z_0 = 0) in closed form for critical damping k = Γ²/4 (§E.3): a double eigenvalue −Γ/4.
/// Returns `None` when the oscillator is not critically damped (relative tolerance 1e-12).
pub fn phi_cov_critical(osc: &Oscillator, b: f64) -> Option<(Matrix2<f64>, Matrix2<f64>)> {
    let g = osc.friction;
    let k = osc.k;
    if (k - g * g / 4.0).abs() > 1e-12 * (1.0 + k.abs()) || g <= 0.0 {
        return None;
    }
    let e = (-g * b / 4.0).exp();
    let phi = Matrix2::new(
        e * (1.0 + g * b / 4.0),
        e * b / 2.0,
        -e * k * b / 2.0,
        e * (1.0 - g * b / 4.0),
    );
    let al = g / 2.0;
    let x = al * b;
    let ex = (-x).exp();
    // I_j = ∫_0^B s^j e^{−α s} ds, written with expm1-style care for small αB.
    let i0 = -(-x).exp_m1() / al;
    let i1 = (1.0 - ex * (1.0 + x)) / (al * al);
    let i2 = (2.0 - ex * (x * x + 2.0 * x + 2.0)) / (al * al * al);
    let gm = osc.gamma;
    let sxx = gm * i2 / 4.0;
    let sxv = gm * (i1 / 2.0 - g * i2 / 8.0);
    let svv = gm * (i0 - g * i1 / 2.0 + g * g * i2 / 16.0);
    Some((phi, Matrix2::new(sxx, sxv, sxv, svv)))
}

/// The kernel of x_t | x_0 when v_0 ~ N(0, σ_{v0}²) is marginalised: Σ = Σ_0→t + σ_{v0}² Φ e_v e_vᵀ Φᵀ.
/// Uses the analytic critical form when it applies, else the 4×4 matrix fraction.
pub fn kernel(osc: &Oscillator, b: f64, v0_var: f64) -> MomentumKernel {
    let (phi, mut cov) = phi_cov_critical(osc, b).unwrap_or_else(|| phi_cov_general(osc, b));
    let (px, pv) = (phi[(0, 1)], phi[(1, 1)]);
    cov[(0, 0)] += v0_var * px * px;
    cov[(0, 1)] += v0_var * px * pv;
    cov[(1, 0)] += v0_var * px * pv;
    cov[(1, 1)] += v0_var * pv * pv;
    let lxx = cov[(0, 0)].max(0.0).sqrt();
    let lvx = if lxx > 0.0 { cov[(0, 1)] / lxx } else { 0.0 };
    let lvv = (cov[(1, 1)] - lvx * lvx).max(0.0).sqrt();
    MomentumKernel {
        phi,
        cov,
        chol: [lxx, lvx, lvv],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RK4 on dΣ/dB = F̄Σ + ΣF̄ᵀ + Q̄ and dΦ/dB = F̄Φ: an independent computation.
    fn rk4(osc: &Oscillator, b: f64, steps: usize) -> (Matrix2<f64>, Matrix2<f64>) {
        let f = osc.drift_matrix();
        let q = Matrix2::new(0.0, 0.0, 0.0, osc.gamma);
        let fs = |s: &Matrix2<f64>| f * s + s * f.transpose() + q;
        let h = b / steps as f64;
        let (mut p, mut s) = (Matrix2::<f64>::identity(), Matrix2::<f64>::zeros());
        for _ in 0..steps {
            let (k1, j1) = (fs(&s), f * p);
            let (k2, j2) = (fs(&(s + k1 * (0.5 * h))), f * (p + j1 * (0.5 * h)));
            let (k3, j3) = (fs(&(s + k2 * (0.5 * h))), f * (p + j2 * (0.5 * h)));
            let (k4, j4) = (fs(&(s + k3 * h)), f * (p + j3 * h));
            s += (k1 + k2 * 2.0 + k3 * 2.0 + k4) * (h / 6.0);
            p += (j1 + j2 * 2.0 + j3 * 2.0 + j4) * (h / 6.0);
        }
        (p, s)
    }

    fn close(a: &Matrix2<f64>, b: &Matrix2<f64>, tol: f64) -> bool {
        (a - b).amax() <= tol * b.amax().max(1.0)
    }

    #[test]
    fn general_kernel_matches_lyapunov_ode() {
        for (c, kappa) in [
            (0.0, 1.0),
            (0.01, 1.0),
            (0.2, 0.9),
            (-0.3, 0.85),
            (0.1, 0.5),
        ] {
            let osc = Oscillator::critical(c, 2.0, kappa);
            for b in [0.01, 1.0, 6.0, 10.0] {
                let (p, s) = phi_cov_general(&osc, b);
                let (p2, s2) = rk4(&osc, b, 5000);
                assert!(close(&p, &p2, 1e-10), "Φ c={c} κ={kappa} B={b}");
                assert!(
                    close(&s, &s2, 1e-10),
                    "Σ c={c} κ={kappa} B={b}: {s} vs {s2}"
                );
            }
        }
    }

    #[test]
    fn critical_closed_form_equals_general_at_kappa_one() {
        for c in [0.0, 0.01, 0.25, -0.4] {
            let osc = Oscillator::critical(c, 2.0, 1.0);
            for b in [1e-3, 0.3, 2.0, 10.0, 40.0] {
                let (p, s) = phi_cov_critical(&osc, b).expect("κ = 1 is critical");
                let (p2, s2) = phi_cov_general(&osc, b);
                assert!(close(&p, &p2, 1e-11), "Φ c={c} B={b}");
                assert!(close(&s, &s2, 1e-11), "Σ c={c} B={b}");
            }
        }
        assert!(phi_cov_critical(&Oscillator::critical(0.1, 2.0, 0.9), 1.0).is_none());
    }

    /// Every oscillator the critical transform builds takes the closed form, whatever its scale: the round-off
    /// left in k − Γ²/4 grows with |k| (and is tiny against a tiny k near c = ½), which the tolerance
    /// 1e-12 · (1 + |k|) absorbs. It matters beyond speed: with strong damping the general path's 4 × 4
    /// exponential holds e^{+ΓB/4} and overflows, while the closed form stays finite.
    #[test]
    fn every_critical_oscillator_takes_the_closed_form() {
        for gamma in [0.25, 0.5, 1.0, 2.0, 3.0, 8.0, 50.0, 1000.0] {
            for i in -300..50 {
                let c = i as f64 / 100.0;
                let osc = Oscillator::critical(c, gamma, 1.0);
                assert!(
                    phi_cov_critical(&osc, 1.0).is_some(),
                    "γ = {gamma}, c = {c}: k − Γ²/4 = {:e}",
                    osc.k - osc.friction * osc.friction / 4.0
                );
            }
        }
        let strong = Oscillator::critical(0.0, 1000.0, 1.0);
        let general = phi_cov_general(&strong, 10.0);
        assert!(
            !(general.0.iter().chain(general.1.iter())).all(|x| x.is_finite()),
            "the general path was expected to overflow here"
        );
        let k = kernel(&strong, 10.0, 1.0);
        assert!(k
            .phi
            .iter()
            .chain(k.cov.iter())
            .chain(&k.chol)
            .all(|x| x.is_finite()));
    }

    /// At B = 0 nothing has moved: Φ = I and the law is the initial one, x fixed and v ~ N(0, σ²_v0), whose
    /// Cholesky factor has a zero first column (the x row has no noise to divide by).
    #[test]
    fn the_kernel_at_b_zero_is_the_initial_law() {
        for osc in [
            Oscillator::critical(0.1, 2.0, 1.0),
            Oscillator::critical(0.1, 2.0, 0.8),
        ] {
            let k = kernel(&osc, 0.0, 0.3);
            assert_eq!(k.phi, Matrix2::identity());
            assert_eq!(k.cov, Matrix2::new(0.0, 0.0, 0.0, 0.3));
            assert_eq!(k.chol, [0.0, 0.0, 0.3f64.sqrt()]);
        }
    }

    #[test]
    fn transform_keeps_the_oscillator_critical_and_matches_the_reference_value() {
        // §E.2: γ = 2, c = 0.01 gives a = 0.0099.
        assert!((critical_a(0.01, 2.0, 1.0) - 0.0099).abs() < 1e-12);
        let osc = Oscillator::critical(0.3, 2.0, 1.0);
        assert!((osc.k - osc.friction * osc.friction / 4.0).abs() < 1e-14);
        let osc = Oscillator::critical(0.3, 2.0, 0.9);
        assert!(
            osc.k > osc.friction * osc.friction / 4.0,
            "κ < 1 is under-damped"
        );
        // da/dc against a central difference.
        let h = 1e-6;
        let fd = (critical_a(0.2 + h, 2.0, 0.9) - critical_a(0.2 - h, 2.0, 0.9)) / (2.0 * h);
        assert!((fd - critical_a_derivative(0.2, 2.0, 0.9)).abs() < 1e-8);
    }

    #[test]
    fn stationary_limits() {
        // §E.3: Var_x = 4γ/Γ³, Var_v = γ/Γ, Cov = 0 as B → ∞ (critical case; any damping with k = Γ²/4).
        for c in [0.0, 0.1, -0.2] {
            let osc = Oscillator::critical(c, 2.0, 1.0);
            let k = kernel(&osc, 400.0, 1.0);
            let g = osc.friction;
            assert!((k.cov[(0, 0)] - 4.0 * 2.0 / g.powi(3)).abs() < 1e-9);
            assert!((k.cov[(1, 1)] - 2.0 / g).abs() < 1e-9);
            assert!(k.cov[(0, 1)].abs() < 1e-9);
        }
        // CLD (c = 0): N(0, I).
        let k = kernel(&Oscillator::from_ac(0.0, 0.0, 2.0), 400.0, 1.0);
        assert!((k.cov - Matrix2::identity()).amax() < 1e-9);
    }

    #[test]
    fn initial_velocity_variance_is_propagated() {
        let osc = Oscillator::critical(0.05, 2.0, 0.9);
        let (phi, s0) = phi_cov_general(&osc, 0.7);
        let k = kernel(&osc, 0.7, 1.0);
        let want = s0 + phi * Matrix2::new(0.0, 0.0, 0.0, 1.0) * phi.transpose();
        assert!(close(&k.cov, &want, 1e-14));
        let [lxx, lvx, lvv] = k.chol;
        let l = Matrix2::new(lxx, 0.0, lvx, lvv);
        assert!(close(&(l * l.transpose()), &k.cov, 1e-13));
    }
}
