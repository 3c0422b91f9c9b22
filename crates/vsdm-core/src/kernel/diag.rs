//! The per-coordinate OU kernel of VSDM with diagonal A (ALGORITHM.md §A.4, diagonal case).
//!
//! dx_i = −½ β_t d_i x_i dt + √β_t dw, d_i = 1 − 2 a_i. Then
//! μ_{t|0} = e^{−½ B d} x_0 and σ²_{t|0} = (1 − e^{−B d}) / d, with σ² → B as d → 0.
//! Negative d (an expanding coordinate) is allowed.

/// (1 − e^{−x}) / x, continuous at x = 0 and accurate for small |x| (via `expm1`).
pub fn one_minus_exp_over(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        -(-x).exp_m1() / x
    }
}

/// Mean coefficient m = e^{−½ B d} and standard deviation σ = sqrt((1 − e^{−B d}) / d) of the diagonal OU kernel.
pub fn mean_std(b: f64, d: f64) -> (f64, f64) {
    let m = (-0.5 * b * d).exp();
    let var = b * one_minus_exp_over(b * d);
    (m, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RK4 on the scalar moment ODEs dm/dB = −½ d m, dv/dB = −d v + 1: an independent computation.
    fn rk4_moments(b: f64, d: f64, steps: usize) -> (f64, f64) {
        let h = b / steps as f64;
        let f = |y: [f64; 2]| [-0.5 * d * y[0], -d * y[1] + 1.0];
        let mut y = [1.0, 0.0];
        for _ in 0..steps {
            let k1 = f(y);
            let k2 = f([y[0] + 0.5 * h * k1[0], y[1] + 0.5 * h * k1[1]]);
            let k3 = f([y[0] + 0.5 * h * k2[0], y[1] + 0.5 * h * k2[1]]);
            let k4 = f([y[0] + h * k3[0], y[1] + h * k3[1]]);
            for i in 0..2 {
                y[i] += h / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]);
            }
        }
        (y[0], y[1].sqrt())
    }

    #[test]
    fn matches_ode_integration_including_negative_d() {
        for d in [1.0, 0.3, 1e-9, 0.0, -0.4, -1.5, 2.7] {
            for b in [0.01, 0.5, 3.0, 5.05] {
                let (m, s) = mean_std(b, d);
                let (m2, s2) = rk4_moments(b, d, 4000);
                assert!((m - m2).abs() < 1e-10 * m2.abs().max(1.0), "m d={d} b={b}");
                assert!(
                    (s - s2).abs() < 1e-10 * s2.max(1.0),
                    "s d={d} b={b}: {s} vs {s2}"
                );
            }
        }
    }
}
