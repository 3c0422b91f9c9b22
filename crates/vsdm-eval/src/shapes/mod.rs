//! 2-D sample metrics for the anisotropic toys (ALGORITHM.md §F.1), plain f64 on the host:
//!
//! - [`w2`]: exact 2-Wasserstein distance between equal-size point sets by an optimal assignment
//!   ([`assignment`]; what VSMD's notebooks compute with POT's `ot.emd2`);
//! - [`mmd`] / [`mmd_unbiased`] with a mixture of RBF kernels at [`mmd_bandwidths`], and the
//!   [`energy_distance`];
//! - [`pmf_distance`] (the VSDM runner's "PMF distance": RMSE of 100×100-bin histograms) and [`pmf_l1`];
//! - [`straightness_and_energy`] / [`straightness_with_velocities`]: VSMD's trajectory straightness
//!   dt·Σ_n E‖(x_end − x_start) − v(x_{t_n}, t_n)‖² and the kinetic energy dt·Σ_n E‖v‖² of probability-flow paths.

mod assignment;
mod kernel;
mod paths;
mod pmf;

pub use assignment::{assignment, w2};
pub use kernel::{energy_distance, mmd, mmd_bandwidths, mmd_unbiased, MMD_BANDWIDTH_FACTORS};
pub use paths::{straightness_and_energy, straightness_with_velocities};
pub use pmf::{pmf_distance, pmf_histograms, pmf_l1};

/// Errors of the 2-D metrics, naming the argument and the offending index.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShapeMetricError {
    #[error("{what}: the point sets have {a} and {b} points; exact W2 needs equal sizes")]
    Sizes {
        what: &'static str,
        a: usize,
        b: usize,
    },
    #[error("{what}: empty input")]
    Empty { what: &'static str },
    #[error("{what}: non-finite value at index {index}")]
    NonFinite { what: &'static str, index: usize },
    #[error("{what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}

/// The squared Euclidean distance.
#[inline]
pub(crate) fn sq(a: &[f64; 2], b: &[f64; 2]) -> f64 {
    (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)
}

/// A non-empty set of finite points.
pub(crate) fn check(what: &'static str, p: &[[f64; 2]]) -> Result<(), ShapeMetricError> {
    if p.is_empty() {
        return Err(ShapeMetricError::Empty { what });
    }
    match p
        .iter()
        .position(|q| !(q[0].is_finite() && q[1].is_finite()))
    {
        Some(index) => Err(ShapeMetricError::NonFinite { what, index }),
        None => Ok(()),
    }
}

/// A tiny seeded generator for the tests (uniforms and Box–Muller normals).
#[cfg(test)]
pub(crate) struct Lcg(pub u64);

#[cfg(test)]
impl Lcg {
    pub fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        (-2.0 * self.next().max(1e-300).ln()).sqrt()
            * (2.0 * std::f64::consts::PI * self.next()).cos()
    }
}
