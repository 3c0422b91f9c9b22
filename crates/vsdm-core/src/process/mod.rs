//! Forward processes in the spirit of score_sde's `SDE` class: drift, diffusion, closed-form marginal, prior,
//! and the reverse-SDE / probability-flow drift given a score.
//!
//! Three implementations: [`Vp`] (single-variate baseline), [`Vsdm`] (multivariate OU with diagonal or full A)
//! and [`Vsmd`] (phase-space momentum process; CLD when c = 0). All tensors are f32, batch first; closed forms
//! are computed in f64 and cached on a time grid as device tensors ([`Marginals`]).
//!
//! The *state* z is the data x for VP and VSDM, and (x, v) concatenated along dimension 1 for VSMD.

mod any;
mod vp;
mod vsdm;
mod vsmd;

pub use any::{AnyMarginals, Process};
pub use vp::{Vp, VpMarginals};
pub use vsdm::{LinearDrift, Vsdm, VsdmMarginals};
pub use vsmd::{Vsmd, VsmdMarginals, VsmdParams};

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::schedule::BetaSchedule;

/// A linear forward SDE dz = f(z, t) dt + g(t) dw with a closed-form transition kernel.
pub trait ForwardProcess {
    /// Closed forms cached on a time grid.
    type Marginals: Marginals;

    /// The β schedule.
    fn schedule(&self) -> &BetaSchedule;

    /// Shape of one data element (without the batch dimension).
    fn data_shape(&self) -> &[usize];

    /// 1 for VP and VSDM, 2 for VSMD (position and velocity channels).
    fn state_factor(&self) -> usize;

    /// Shape of a batch of states.
    fn state_shape(&self, batch: usize) -> Vec<usize> {
        let mut s = vec![batch];
        s.extend_from_slice(self.data_shape());
        s[1] *= self.state_factor();
        s
    }

    /// Caches the closed-form marginal at every time of `times` (each in (0, T]).
    fn marginals(&self, times: &[f64], device: &Device) -> Result<Self::Marginals>;

    /// The forward drift f(z, t).
    fn drift(&self, z: &Tensor, t: f64) -> Result<Tensor>;

    /// g(t)² on the noise-driven coordinates (β_t for VSDM, γβ_t on v for VSMD).
    fn diffusion_sq(&self, t: f64) -> f64;

    /// g(t) √h ξ for a state-shaped standard normal ξ (zero on the position channels of VSMD).
    fn noise_increment(&self, xi: &Tensor, t: f64, h: f64) -> Result<Tensor>;

    /// The initial state from data: x_0 itself, or (x_0, v_0) with v_0 = σ_{v0} ξ for VSMD (ξ data-shaped).
    fn initial_state(&self, x0: &Tensor, xi: &Tensor) -> Result<Tensor>;

    /// Reverse-time drift b(z, t) = f − g² s (reverse SDE) or f − ½ g² s (probability flow), where `score` is
    /// in the layout of [`Marginals::score_at`]. A reverse step from t to t − h is z − h b (+ noise).
    fn reverse_drift(
        &self,
        z: &Tensor,
        t: f64,
        score: &Tensor,
        probability_flow: bool,
    ) -> Result<Tensor>;

    /// A draw from the prior N(0, Σ_{T|0}) given state-shaped standard normal noise.
    fn prior_from_noise(&self, xi: &Tensor) -> Result<Tensor>;

    /// The data part of a state (x of (x, v)).
    fn data_part(&self, z: &Tensor) -> Result<Tensor> {
        if self.state_factor() == 1 {
            Ok(z.clone())
        } else {
            let c = z.dim(1)? / self.state_factor();
            Ok(z.narrow(1, 0, c)?)
        }
    }
}

/// The closed-form marginal of a forward process, cached on a time grid.
pub trait Marginals {
    /// The grid times.
    fn times(&self) -> &[f64];

    /// Draws z_t from the kernel at grid indices `idx` (u32, `[batch]`) given data `x0` and state-shaped
    /// standard normal `eps`. Returns (z_t, target), where target is the noise the network predicts: ε for VP
    /// and VSDM, the velocity noise ε_v for VSMD.
    fn perturb(&self, x0: &Tensor, idx: &Tensor, eps: &Tensor) -> Result<(Tensor, Tensor)>;

    /// The score implied by a noise prediction at grid index `n`: −L^{−T} ε̂ (VSDM) or −ε̂_v / l_vv (VSMD).
    fn score_at(&self, eps_hat: &Tensor, n: usize) -> Result<Tensor>;
}

/// Checks a process's data shape (one element, without the batch dimension): at least one dimension, none 0.
pub(crate) fn check_data_shape(shape: &[usize]) -> Result<()> {
    if shape.is_empty() || shape.contains(&0) {
        return Err(Error::invalid(
            "data shape",
            format!("{shape:?}"),
            "needs at least one dimension and no zero dimension (a batch of scalars is data shape [1])",
        ));
    }
    Ok(())
}

/// Checks a batch's per-element shape against the process's data shape.
pub(crate) fn check_shape(what: &str, x: &Tensor, expected: &[usize], factor: usize) -> Result<()> {
    let dims = x.dims();
    let ok = !expected.is_empty()
        && dims.len() == expected.len() + 1
        && dims[1] == expected[0] * factor
        && dims[2..] == expected[1..];
    if ok {
        Ok(())
    } else {
        let mut e = expected.to_vec();
        if let Some(first) = e.first_mut() {
            *first *= factor;
        }
        Err(Error::Shape {
            what: what.to_string(),
            expected: format!(
                "[batch, {}]",
                e.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            got: format!("{dims:?}"),
        })
    }
}

/// Validates a grid: non-empty, every time in (0, T].
pub(crate) fn check_times(schedule: &BetaSchedule, times: &[f64]) -> Result<()> {
    if times.is_empty() {
        return Err(Error::invalid("time grid", "[]", "needs at least one time"));
    }
    times.iter().try_for_each(|&t| schedule.check_time(t))
}

/// Reshapes a `[batch]` coefficient so it broadcasts over a `[batch, …]` tensor of rank `rank`.
pub(crate) fn per_sample(c: &Tensor, rank: usize) -> Result<Tensor> {
    let mut shape = vec![c.dim(0)?];
    shape.extend(std::iter::repeat_n(1, rank - 1));
    Ok(c.reshape(shape)?)
}

/// An f32 tensor of shape `[n, shape…]` from row-major f64 values.
pub(crate) fn grid_tensor(
    values: Vec<f64>,
    n: usize,
    shape: &[usize],
    device: &Device,
) -> Result<Tensor> {
    let mut s = vec![n];
    s.extend_from_slice(shape);
    let v: Vec<f32> = values.into_iter().map(|x| x as f32).collect();
    Ok(Tensor::from_vec(v, s, device)?)
}
