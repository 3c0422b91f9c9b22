//! VP (Song et al. 2021): dx = −½ β_t x dt + √β_t dw, the single-variate baseline. It is VSDM with A = 0.

use candle_core::{Device, Tensor};

use super::{check_shape, check_times, per_sample, ForwardProcess, Marginals};
use crate::error::{Error, Result};
use crate::kernel::diag::mean_std;
use crate::schedule::BetaSchedule;

/// The variance-preserving SDE.
#[derive(Debug, Clone)]
pub struct Vp {
    schedule: BetaSchedule,
    shape: Vec<usize>,
}

impl Vp {
    /// VP on data elements of shape `shape` (e.g. `[3, 32, 32]` or `[2]`).
    pub fn new(schedule: BetaSchedule, shape: &[usize]) -> Result<Self> {
        schedule.validate()?;
        super::check_data_shape(shape)?;
        Ok(Self {
            schedule,
            shape: shape.to_vec(),
        })
    }
}

/// Cached m_t = e^{−B_t/2}, σ_t = sqrt(1 − e^{−B_t}).
#[derive(Debug, Clone)]
pub struct VpMarginals {
    times: Vec<f64>,
    mean: Tensor,
    std: Tensor,
    std_host: Vec<f64>,
}

impl ForwardProcess for Vp {
    type Marginals = VpMarginals;

    fn schedule(&self) -> &BetaSchedule {
        &self.schedule
    }

    fn data_shape(&self) -> &[usize] {
        &self.shape
    }

    fn state_factor(&self) -> usize {
        1
    }

    fn marginals(&self, times: &[f64], device: &Device) -> Result<VpMarginals> {
        check_times(&self.schedule, times)?;
        let (m, s): (Vec<f64>, Vec<f64>) = times
            .iter()
            .map(|&t| mean_std(self.schedule.integral(t), 1.0))
            .unzip();
        let to = |v: &[f64]| {
            Tensor::from_vec(
                v.iter().map(|&x| x as f32).collect::<Vec<_>>(),
                v.len(),
                device,
            )
        };
        Ok(VpMarginals {
            times: times.to_vec(),
            mean: to(&m)?,
            std: to(&s)?,
            std_host: s,
        })
    }

    fn drift(&self, z: &Tensor, t: f64) -> Result<Tensor> {
        Ok((z * (-0.5 * self.schedule.beta(t)))?)
    }

    fn diffusion_sq(&self, t: f64) -> f64 {
        self.schedule.beta(t)
    }

    fn noise_increment(&self, xi: &Tensor, t: f64, h: f64) -> Result<Tensor> {
        Ok((xi * (self.schedule.beta(t) * h).sqrt())?)
    }

    fn initial_state(&self, x0: &Tensor, _xi: &Tensor) -> Result<Tensor> {
        Ok(x0.clone())
    }

    fn reverse_drift(
        &self,
        z: &Tensor,
        t: f64,
        score: &Tensor,
        probability_flow: bool,
    ) -> Result<Tensor> {
        let lam = if probability_flow { 0.5 } else { 1.0 };
        let beta = self.schedule.beta(t);
        Ok(((z * (-0.5 * beta))? - (score * (lam * beta))?)?)
    }

    fn prior_from_noise(&self, xi: &Tensor) -> Result<Tensor> {
        check_shape("prior noise", xi, &self.shape, 1)?;
        let (_, s) = mean_std(self.schedule.integral(self.schedule.t_max()), 1.0);
        Ok((xi * s)?)
    }
}

impl Marginals for VpMarginals {
    fn times(&self) -> &[f64] {
        &self.times
    }

    fn perturb(&self, x0: &Tensor, idx: &Tensor, eps: &Tensor) -> Result<(Tensor, Tensor)> {
        if x0.rank() < 2 {
            return Err(Error::Shape {
                what: "x0".into(),
                expected: "[batch, data dimensions…] (a batch of scalars is [batch, 1])".into(),
                got: format!("{:?}", x0.dims()),
            });
        }
        let shape: Vec<usize> = x0.dims()[1..].to_vec();
        check_shape("eps", eps, &shape, 1)?;
        let r = x0.rank();
        let m = per_sample(&self.mean.index_select(idx, 0)?, r)?;
        let s = per_sample(&self.std.index_select(idx, 0)?, r)?;
        let xt = (x0.broadcast_mul(&m)? + eps.broadcast_mul(&s)?)?;
        Ok((xt, eps.clone()))
    }

    fn score_at(&self, eps_hat: &Tensor, n: usize) -> Result<Tensor> {
        let std = self.std_host.get(n).ok_or_else(|| {
            Error::invalid(
                "grid index",
                n,
                format!("the marginals hold {} times", self.std_host.len()),
            )
        })?;
        Ok((eps_hat * (-1.0 / std))?)
    }
}
