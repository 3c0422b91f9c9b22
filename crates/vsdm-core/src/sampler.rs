//! Reverse-time samplers (ALGORITHM.md §D, §E.5): Euler–Maruyama on the reverse SDE, Euler and Heun on the
//! probability-flow ODE, for any [`ForwardProcess`] (so the momentum versions come with VSMD's drift).
//!
//! The grid runs from T down to `t_eps` in `steps` uniform steps. The network is given as a closure returning
//! its noise prediction ε̂(z, t); the cached closed form turns it into a score (−L^{−T} ε̂, or −ε̂_v / l_vv).
//! Exact scores (tests, Gaussian data) go through [`sample_with_score`].

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::model::ScoreModel;
use crate::process::{ForwardProcess, Marginals};
use crate::rng::NoiseRng;

/// The integrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SamplerKind {
    /// Euler–Maruyama on the reverse SDE; no noise on the last step. NFE = steps.
    EulerMaruyama,
    /// Euler on the probability-flow ODE. NFE = steps.
    Euler,
    /// Heun (2nd order) on the probability-flow ODE, Euler on the last step. NFE = 2·steps − 1.
    Heun,
}

impl std::str::FromStr for SamplerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "em" | "euler-maruyama" | "sde" => Ok(Self::EulerMaruyama),
            "euler" | "ode" => Ok(Self::Euler),
            "heun" => Ok(Self::Heun),
            _ => Err(Error::invalid(
                "sampler",
                s,
                "expected one of em, euler, heun",
            )),
        }
    }
}

/// Sampler settings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplerConfig {
    pub kind: SamplerKind,
    /// Number of steps (≥ 1).
    pub steps: usize,
    /// Final time δ > 0.
    pub t_eps: f64,
}

impl SamplerConfig {
    pub fn new(kind: SamplerKind, steps: usize) -> Self {
        Self {
            kind,
            steps,
            t_eps: 1e-3,
        }
    }

    /// The number of network evaluations this configuration costs.
    pub fn nfe(&self) -> usize {
        match self.kind {
            SamplerKind::Heun => (2 * self.steps).saturating_sub(1),
            _ => self.steps,
        }
    }

    /// The grid T = t_0 > t_1 > … > t_steps = t_eps.
    pub fn grid(&self, t_max: f64) -> Result<Vec<f64>> {
        if self.steps == 0 {
            return Err(Error::invalid("steps", 0, "needs at least one step"));
        }
        if !(self.t_eps > 0.0 && self.t_eps < t_max) {
            return Err(Error::invalid(
                "t_eps",
                self.t_eps,
                format!("must lie in (0, T = {t_max})"),
            ));
        }
        let h = (t_max - self.t_eps) / self.steps as f64;
        Ok((0..=self.steps)
            .map(|i| {
                if i == self.steps {
                    self.t_eps
                } else {
                    t_max - h * i as f64
                }
            })
            .collect())
    }
}

/// The result of a sampling run.
#[derive(Debug, Clone)]
pub struct SampleRun {
    /// The final state (for VSMD both x and v; use [`ForwardProcess::data_part`]).
    pub state: Tensor,
    /// Network (score) evaluations spent.
    pub nfe: usize,
    /// The grid, from T down to t_eps.
    pub times: Vec<f64>,
    /// When recording: the state at every grid time (`steps + 1` tensors).
    pub trajectory: Vec<Tensor>,
    /// When recording: the score used at each of the first `steps` grid times.
    pub scores: Vec<Tensor>,
}

/// Integrates from `z_t` at T down the grid with a score function `score(z, t, n)` (n the grid index of t),
/// calling `observe(n, z_n, s_n)` with the state and the score used at each of the first `steps` grid times.
/// Returns the final state and the NFE. Use this to accumulate statistics without storing trajectories.
pub fn integrate<P, F, O>(
    process: &P,
    cfg: &SamplerConfig,
    times: &[f64],
    z_t: Tensor,
    mut score: F,
    rng: &mut NoiseRng,
    mut observe: O,
) -> Result<(Tensor, usize)>
where
    P: ForwardProcess,
    F: FnMut(&Tensor, f64, usize) -> Result<Tensor>,
    O: FnMut(usize, &Tensor, &Tensor) -> Result<()>,
{
    if times.len() != cfg.steps + 1 {
        return Err(Error::Shape {
            what: "sampler time grid".into(),
            expected: format!("{} times (steps + 1)", cfg.steps + 1),
            got: format!("{} times", times.len()),
        });
    }
    let mut z = z_t;
    let mut nfe = 0;
    let pf = cfg.kind != SamplerKind::EulerMaruyama;
    for i in 0..cfg.steps {
        let (t, t_next) = (times[i], times[i + 1]);
        let h = t - t_next;
        let last = i + 1 == cfg.steps;
        // Sampling never needs gradients: detach so that a network built from variables does not chain the
        // graph of every step.
        let s = score(&z, t, i)?.detach();
        nfe += 1;
        let b = process.reverse_drift(&z, t, &s, pf)?;
        observe(i, &z, &s)?;
        let euler = (&z - (&b * h)?)?;
        z = match cfg.kind {
            SamplerKind::EulerMaruyama if !last => {
                let xi = rng.randn(z.dims(), z.device())?;
                (euler + process.noise_increment(&xi, t, h)?)?
            }
            SamplerKind::Heun if !last => {
                let s2 = score(&euler, t_next, i + 1)?.detach();
                nfe += 1;
                let b2 = process.reverse_drift(&euler, t_next, &s2, true)?;
                (&z - ((b + b2)? * (0.5 * h))?)?
            }
            _ => euler,
        };
        crate::error::ensure_finite_tensor("sampler state", &z, t_next)?;
    }
    Ok((z, nfe))
}

/// Samples with an exact score function `score(z, t, n)` (n the grid index of t), starting from `z_t` at T.
pub fn sample_with_score<P, F>(
    process: &P,
    cfg: &SamplerConfig,
    z_t: Tensor,
    score: F,
    rng: &mut NoiseRng,
    record: bool,
) -> Result<SampleRun>
where
    P: ForwardProcess,
    F: FnMut(&Tensor, f64, usize) -> Result<Tensor>,
{
    let times = cfg.grid(process.schedule().t_max())?;
    let mut trajectory = Vec::new();
    let mut scores = Vec::new();
    let (state, nfe) = integrate(process, cfg, &times, z_t, score, rng, |_, z, s| {
        if record {
            trajectory.push(z.clone());
            scores.push(s.clone());
        }
        Ok(())
    })?;
    if record {
        trajectory.push(state.clone());
    }
    Ok(SampleRun {
        state,
        nfe,
        times,
        trajectory,
        scores,
    })
}

/// Samples with a noise-prediction closure `eps(z, t)`; the closed form on the sampler's grid converts ε̂ to a
/// score.
pub fn sample_with_eps<P, F>(
    process: &P,
    cfg: &SamplerConfig,
    z_t: Tensor,
    mut eps: F,
    rng: &mut NoiseRng,
    record: bool,
) -> Result<SampleRun>
where
    P: ForwardProcess,
    F: FnMut(&Tensor, f64) -> Result<Tensor>,
{
    let times = cfg.grid(process.schedule().t_max())?;
    let marg = process.marginals(&times, z_t.device())?;
    sample_with_score(
        process,
        cfg,
        z_t,
        |z, t, n| marg.score_at(&eps(z, t)?, n),
        rng,
        record,
    )
}

/// Draws `batch` samples from a trained network: z_T from the prior N(0, Σ_{T|0}), then the chosen integrator.
/// `cond` (batch first) is passed through to the network. Returns the run; its `state` holds (x, v) for VSMD.
/// (To record trajectories, call [`sample_with_eps`].)
pub fn sample_model<P: ForwardProcess, M: ScoreModel + ?Sized>(
    process: &P,
    model: &M,
    cond: Option<&Tensor>,
    cfg: &SamplerConfig,
    batch: usize,
    rng: &mut NoiseRng,
    device: &candle_core::Device,
) -> Result<SampleRun> {
    let xi = rng.randn(&process.state_shape(batch), device)?;
    let z_t = process.prior_from_noise(&xi)?;
    sample_with_eps(
        process,
        cfg,
        z_t,
        |z, t| {
            let tt = Tensor::full(t as f32, batch, device)?;
            Ok(model.forward(z, &tt, cond)?)
        },
        rng,
        false,
    )
}
