//! [`Process`]: one type for the three forward processes, for code that picks the method at run time.

use candle_core::{Device, Tensor};

use super::{ForwardProcess, Marginals, Vp, VpMarginals, Vsdm, VsdmMarginals, Vsmd, VsmdMarginals};
use crate::error::Result;
use crate::schedule::BetaSchedule;

/// VP, VSDM or VSMD, chosen at run time.
#[derive(Debug, Clone)]
pub enum Process {
    Vp(Vp),
    Vsdm(Vsdm),
    Vsmd(Vsmd),
}

/// The marginals of a [`Process`].
#[derive(Debug, Clone)]
pub enum AnyMarginals {
    Vp(VpMarginals),
    Vsdm(VsdmMarginals),
    Vsmd(VsmdMarginals),
}

macro_rules! each {
    ($self:expr, $p:ident => $body:expr) => {
        match $self {
            Process::Vp($p) => $body,
            Process::Vsdm($p) => $body,
            Process::Vsmd($p) => $body,
        }
    };
}

impl ForwardProcess for Process {
    type Marginals = AnyMarginals;

    fn schedule(&self) -> &BetaSchedule {
        each!(self, p => p.schedule())
    }

    fn data_shape(&self) -> &[usize] {
        each!(self, p => p.data_shape())
    }

    fn state_factor(&self) -> usize {
        each!(self, p => p.state_factor())
    }

    fn marginals(&self, times: &[f64], device: &Device) -> Result<AnyMarginals> {
        Ok(match self {
            Process::Vp(p) => AnyMarginals::Vp(p.marginals(times, device)?),
            Process::Vsdm(p) => AnyMarginals::Vsdm(p.marginals(times, device)?),
            Process::Vsmd(p) => AnyMarginals::Vsmd(p.marginals(times, device)?),
        })
    }

    fn drift(&self, z: &Tensor, t: f64) -> Result<Tensor> {
        each!(self, p => p.drift(z, t))
    }

    fn diffusion_sq(&self, t: f64) -> f64 {
        each!(self, p => p.diffusion_sq(t))
    }

    fn noise_increment(&self, xi: &Tensor, t: f64, h: f64) -> Result<Tensor> {
        each!(self, p => p.noise_increment(xi, t, h))
    }

    fn initial_state(&self, x0: &Tensor, xi: &Tensor) -> Result<Tensor> {
        each!(self, p => p.initial_state(x0, xi))
    }

    fn reverse_drift(&self, z: &Tensor, t: f64, score: &Tensor, pf: bool) -> Result<Tensor> {
        each!(self, p => p.reverse_drift(z, t, score, pf))
    }

    fn prior_from_noise(&self, xi: &Tensor) -> Result<Tensor> {
        each!(self, p => p.prior_from_noise(xi))
    }
}

impl Marginals for AnyMarginals {
    fn times(&self) -> &[f64] {
        match self {
            AnyMarginals::Vp(m) => m.times(),
            AnyMarginals::Vsdm(m) => m.times(),
            AnyMarginals::Vsmd(m) => m.times(),
        }
    }

    fn perturb(&self, x0: &Tensor, idx: &Tensor, eps: &Tensor) -> Result<(Tensor, Tensor)> {
        match self {
            AnyMarginals::Vp(m) => m.perturb(x0, idx, eps),
            AnyMarginals::Vsdm(m) => m.perturb(x0, idx, eps),
            AnyMarginals::Vsmd(m) => m.perturb(x0, idx, eps),
        }
    }

    fn score_at(&self, eps_hat: &Tensor, n: usize) -> Result<Tensor> {
        match self {
            AnyMarginals::Vp(m) => m.score_at(eps_hat, n),
            AnyMarginals::Vsdm(m) => m.score_at(eps_hat, n),
            AnyMarginals::Vsmd(m) => m.score_at(eps_hat, n),
        }
    }
}
