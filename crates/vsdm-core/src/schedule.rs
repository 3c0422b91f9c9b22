//! Noise schedules β_t and their exact integrals B_t = ∫_0^t β_s ds (ALGORITHM.md §A.2).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// A β schedule on [0, T].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BetaSchedule {
    /// VSDM's power schedule β_t = β_min + (t/T)^r (β_max − β_min); r = 1 is the linear VP schedule.
    Power {
        beta_min: f64,
        beta_max: f64,
        r: f64,
        t_max: f64,
    },
    /// Constant β_t ≡ β (VSMD's schedule; VSDM's Gaussian check uses β = 4).
    Constant { beta: f64, t_max: f64 },
}

/// The largest β a schedule may reach. A sanity bound far above the papers' (β_max 4–20): at β = 1,000 a
/// 200-step sampler already moves by βh = 5 per step, and a value like 1e30 (a mistyped flag) would overflow
/// every sampler step into NaN instead of being refused.
pub const BETA_LIMIT: f64 = 1000.0;

fn check_beta(name: &'static str, beta: f64) -> Result<()> {
    if beta > 0.0 && beta <= BETA_LIMIT {
        Ok(())
    } else {
        Err(Error::invalid(
            name,
            beta,
            format!("β must lie in (0, {BETA_LIMIT}]"),
        ))
    }
}

impl BetaSchedule {
    /// VSDM's default: β_min = 0.1, β_max = 10, r = 1.7, T = 1.
    pub fn vsdm_default() -> Self {
        Self::Power {
            beta_min: 0.1,
            beta_max: 10.0,
            r: 1.7,
            t_max: 1.0,
        }
    }

    /// A validated power schedule.
    pub fn power(beta_min: f64, beta_max: f64, r: f64, t_max: f64) -> Result<Self> {
        let s = Self::Power {
            beta_min,
            beta_max,
            r,
            t_max,
        };
        s.validate()?;
        Ok(s)
    }

    /// A validated constant schedule.
    pub fn constant(beta: f64, t_max: f64) -> Result<Self> {
        let s = Self::Constant { beta, t_max };
        s.validate()?;
        Ok(s)
    }

    /// Checks 0 < β ≤ [`BETA_LIMIT`] everywhere, T > 0, r ≥ 0 and finiteness; the error names the value.
    pub fn validate(&self) -> Result<()> {
        let t_max = self.t_max();
        if !(t_max.is_finite() && t_max > 0.0) {
            return Err(Error::invalid(
                "T",
                t_max,
                "the time horizon must be finite and > 0",
            ));
        }
        match *self {
            Self::Power {
                beta_min,
                beta_max,
                r,
                ..
            } => {
                check_beta("beta_min", beta_min)?;
                check_beta("beta_max", beta_max)?;
                if !(r.is_finite() && r >= 0.0) {
                    return Err(Error::invalid("r", r, "the power must be finite and ≥ 0"));
                }
            }
            Self::Constant { beta, .. } => {
                check_beta("beta", beta)?;
            }
        }
        Ok(())
    }

    /// The horizon T.
    pub fn t_max(&self) -> f64 {
        match *self {
            Self::Power { t_max, .. } | Self::Constant { t_max, .. } => t_max,
        }
    }

    /// β_t (no range check; see [`Self::check_time`]).
    pub fn beta(&self, t: f64) -> f64 {
        match *self {
            Self::Power {
                beta_min,
                beta_max,
                r,
                t_max,
            } => beta_min + (t / t_max).powf(r) * (beta_max - beta_min),
            Self::Constant { beta, .. } => beta,
        }
    }

    /// B_t = ∫_0^t β_s ds in closed form: β_min t + (β_max − β_min) t^{r+1} / ((r+1) T^r), or β t.
    pub fn integral(&self, t: f64) -> f64 {
        match *self {
            Self::Power {
                beta_min,
                beta_max,
                r,
                t_max,
            } => beta_min * t + (beta_max - beta_min) * t * (t / t_max).powf(r) / (r + 1.0),
            Self::Constant { beta, .. } => beta * t,
        }
    }

    /// Fails unless 0 < t ≤ T (with a relative tolerance of 1e-12 at T).
    pub fn check_time(&self, t: f64) -> Result<()> {
        let t_max = self.t_max();
        if t.is_finite() && t > 0.0 && t <= t_max * (1.0 + 1e-12) {
            Ok(())
        } else {
            Err(Error::TimeOutOfRange { t, t_max })
        }
    }
}

/// `n` evenly spaced times from `t0` to `t1` inclusive (numpy's `linspace`).
pub fn linspace(t0: f64, t1: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![t0],
        _ => (0..n)
            .map(|i| t0 + (t1 - t0) * i as f64 / (n - 1) as f64)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Composite Simpson's rule, an independent way to integrate β.
    fn simpson(f: impl Fn(f64) -> f64, a: f64, b: f64, n: usize) -> f64 {
        let h = (b - a) / n as f64;
        let mut s = f(a) + f(b);
        for i in 1..n {
            let w = if i % 2 == 1 { 4.0 } else { 2.0 };
            s += w * f(a + i as f64 * h);
        }
        s * h / 3.0
    }

    #[test]
    fn integral_matches_quadrature() {
        for s in [
            BetaSchedule::vsdm_default(),
            BetaSchedule::power(0.1, 20.0, 1.0, 1.0).unwrap(),
            BetaSchedule::power(0.3, 4.0, 2.5, 2.0).unwrap(),
            BetaSchedule::constant(4.0, 1.0).unwrap(),
        ] {
            for t in [0.013, 0.3, 0.77, s.t_max()] {
                let q = simpson(|u| s.beta(u), 0.0, t, 20_000);
                assert!(
                    (q - s.integral(t)).abs() < 1e-9 * (1.0 + q),
                    "{s:?} t={t}: {q} vs {}",
                    s.integral(t)
                );
            }
        }
    }

    /// Against numpy.linspace (values printed by numpy 2 for the same arguments).
    #[test]
    fn linspace_matches_numpy() {
        let close = |a: Vec<f64>, b: &[f64]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-15)
        };
        assert!(close(
            linspace(0.001, 1.0, 5),
            &[0.001, 0.25075, 0.5005, 0.75025, 1.0]
        ));
        assert!(close(linspace(-1.0, 0.5, 4), &[-1.0, -0.5, 0.0, 0.5]));
        assert!(close(linspace(1.0, 0.0, 3), &[1.0, 0.5, 0.0]));
        assert!(close(linspace(2.0, 3.0, 1), &[2.0]));
        assert!(linspace(2.0, 3.0, 0).is_empty());
    }

    #[test]
    fn bad_values_are_named() {
        let e = BetaSchedule::power(0.0, 10.0, 1.7, 1.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("beta_min = 0"), "{e}");
        let e = BetaSchedule::constant(-1.0, 1.0).unwrap_err().to_string();
        assert!(e.contains("beta = -1"), "{e}");
        let e = BetaSchedule::constant(f64::NAN, 1.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("beta = NaN"), "{e}");
        let e = BetaSchedule::power(0.1, 1e30, 1.7, 1.0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("beta_max = 1000000") && e.contains("(0, 1000]"),
            "{e}"
        );
        assert!(BetaSchedule::constant(BETA_LIMIT, 1.0).is_ok());
        // A negative power makes β(t) infinite at t = 0; an infinite one is not a schedule.
        for r in [-1.0, f64::INFINITY] {
            let e = BetaSchedule::power(0.1, 10.0, r, 1.0)
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("r = {r}")), "{e}");
        }
        assert!(BetaSchedule::power(0.1, 10.0, 0.0, 1.0).is_ok());
        let e = BetaSchedule::constant(1.0, 0.0).unwrap_err().to_string();
        assert!(e.contains("T = 0"), "{e}");
        let s = BetaSchedule::vsdm_default();
        assert!(s.check_time(0.0).is_err());
        assert!(s
            .check_time(1.5)
            .unwrap_err()
            .to_string()
            .contains("t = 1.5"));
        assert!(s.check_time(f64::NAN).is_err());
        assert!(s.check_time(1.0).is_ok());
    }
}
