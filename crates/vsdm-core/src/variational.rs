//! The variational-score update (ALGORITHM.md §C, §E.6): stochastic approximation of the linear forward score
//! on simulated backward trajectories.
//!
//! # The objective
//! With the forward policy z_f = g A x (g = √β; for VSMD Z = √(γβ)(a x + c v) on v) and a frozen backward policy
//! ẑ evaluated on backward trajectories, the SB-FBSDE forward loss restricted to linear policies is
//!
//! L(A) = Σ_n dt · E[ z_f·(½ z_f + ẑ) + ζ ∇·(g z_f) ],   ∇·(g z_f) = β tr A   (γβ Σ c for VSMD)
//!
//! The divergence is computed exactly (no Hutchinson probe: the policy is linear).
//!
//! # Which frozen policy
//! We use the FB-consistent ẑ = g (s_θ − A_k x), with A_k the (EMA) A that generated the trajectories
//! (VSDM-main's choice). The VSMD code and the VSDM image code use ẑ = g s_θ (the *full* score), which adds
//! E[z_f·g A_k x] to the objective — a term that pulls A towards 0 like weight decay, so the two codebases
//! optimise different forward objectives (ALGORITHM.md §C.1, G.1). With ẑ = g(s − A x) the pair (z_f, ẑ) is the
//! SB-FBSDE factorisation g∇log ρ = z_f + ẑ, the only choice under which the loss is the one the theory derives;
//! with ζ = 1 and the exact score, any A whose time-T marginal is N(0, I) is a fixed point, and on Gaussian data
//! the stages settle at the root of the continuous-time expected gradient (`tests/gaussian_bridge.rs`, which
//! computes that root by ODEs). We use it for VSMD as well
//! (ẑ = √(γβ)(s_v − a_k x − c_k v)).
//!
//! # Closed-form gradients
//! Because z_f is linear in the parameters, L is quadratic and its gradient needs only per-trajectory sums:
//! diagonal A: P = Σ dt β x², Q = Σ dt β s x, W = Σ dt β, ∂L/∂a = E[(a − a_k) P + Q] + ζ W;
//! full A: P = Σ dt β x xᵀ, Q = Σ dt β s xᵀ, ∇_A L = (A − A_k) E P + E Q + ζ W I;
//! VSMD (weights γβ): ∂L/∂a = E[(a−a_k)XX + (c−c_k)XV + SX], ∂L/∂c = E[(a−a_k)XV + (c−c_k)VV + SV] + ζW, and
//! dL/dc = ∂L/∂a · a'(c) + ∂L/∂c through the critical-damping transform.
//! Storing these sums per trajectory lets every SA iteration draw a fresh mini-batch of trajectories at the
//! cost of a few vector operations.

use candle_core::{DType, Device, Tensor};
use nalgebra::DMatrix;

use crate::error::{ensure_finite, Error, Result};
use crate::kernel::momentum;
use crate::process::{ForwardProcess, LinearDrift, Process, Vp, Vsdm, Vsmd, VsmdParams};
use crate::rng::NoiseRng;
use crate::sampler::SampleRun;
use crate::schedule::BetaSchedule;

/// The largest magnitude a variational parameter (an entry of A, or c) may take. A sanity bound, not a
/// modelling choice: a diagonal a = −10 already makes the forward process contract at d = 1 − 2a = 21 times VP's
/// rate, a = +10 expand by e^{9.5 B} (B = ∫β), and c = 10 turns VSMD's damping into anti-damping. The largest
/// value in a run recorded in docs/results is VSMD's runaway c = −1.16 (shapes-budget.md, before the paired
/// estimator), the largest in a test the plain estimator's A₁₁ = −2.92 (`tests/gaussian_bridge.rs`); a
/// hand-edited or runaway value beyond the bound would sample nothing but overflow or numerical noise.
pub const PARAM_LIMIT: f64 = 10.0;

/// The variational parameters of a method.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum VarParams {
    /// VP: nothing to learn.
    None,
    /// Diagonal A, one value per data element.
    Diagonal(Vec<f64>),
    /// Full d×d A, row-major.
    Full { d: usize, a: Vec<f64> },
    /// VSMD: c per element, a = a(c; γ, κ). `adaptive = false` with c = 0 and `kappa = None` is CLD.
    Momentum { c: Vec<f64>, params: VsmdParams },
}

impl VarParams {
    /// The free values (A row-major, or c).
    pub fn values(&self) -> &[f64] {
        match self {
            VarParams::None => &[],
            VarParams::Diagonal(a)
            | VarParams::Full { a, .. }
            | VarParams::Momentum { c: a, .. } => a,
        }
    }

    /// Mutable free values.
    pub fn values_mut(&mut self) -> &mut [f64] {
        match self {
            VarParams::None => &mut [],
            VarParams::Diagonal(a)
            | VarParams::Full { a, .. }
            | VarParams::Momentum { c: a, .. } => a,
        }
    }

    /// The same kind of parameters with other values.
    ///
    /// # Panics
    /// If `v` does not hold as many values as `self`.
    pub fn with_values(&self, v: &[f64]) -> Self {
        let mut out = self.clone();
        out.values_mut().copy_from_slice(v);
        out
    }

    /// Checks that a full A holds d × d values and that every value is finite and within ±[`PARAM_LIMIT`],
    /// naming the first that is not.
    pub fn validate(&self) -> Result<()> {
        if let VarParams::Full { d, a } = self {
            if d.checked_mul(*d) != Some(a.len()) {
                return Err(Error::invalid(
                    "full A",
                    format!("d = {d} with {} values", a.len()),
                    "needs d × d values (row-major)",
                ));
            }
        }
        ensure_finite("variational parameters", self.values())?;
        match self.values().iter().position(|v| v.abs() > PARAM_LIMIT) {
            None => Ok(()),
            Some(i) => Err(Error::invalid(
                "variational parameter",
                format!("{} (index {i})", self.values()[i]),
                format!(
                    "must lie within ±{PARAM_LIMIT}: beyond it the forward process contracts or expands by \
                     factors no sampler resolves (trained values stay within ±3)"
                ),
            )),
        }
    }

    /// The forward process these parameters define.
    pub fn process(
        &self,
        schedule: BetaSchedule,
        shape: &[usize],
        device: &Device,
    ) -> Result<Process> {
        self.validate()?;
        Ok(match self {
            VarParams::None => Process::Vp(Vp::new(schedule, shape)?),
            VarParams::Diagonal(a) => Process::Vsdm(Vsdm::new(
                schedule,
                shape,
                LinearDrift::Diagonal(a.clone()),
                device,
            )?),
            VarParams::Full { d, a } => Process::Vsdm(Vsdm::new(
                schedule,
                shape,
                LinearDrift::Full(DMatrix::from_row_slice(*d, *d, a)),
                device,
            )?),
            VarParams::Momentum { c, params } => match params.kappa {
                Some(_) => {
                    Process::Vsmd(Vsmd::critical(schedule, shape, c.clone(), *params, device)?)
                }
                None => {
                    let n = c.len();
                    Process::Vsmd(Vsmd::with_ac(
                        schedule,
                        shape,
                        vec![0.0; n],
                        c.clone(),
                        *params,
                        device,
                    )?)
                }
            },
        })
    }

    /// The x-coefficients a for VSMD parameters.
    fn momentum_a(c: &[f64], params: &VsmdParams) -> Vec<f64> {
        match params.kappa {
            Some(k) => c
                .iter()
                .map(|&ci| momentum::critical_a(ci, params.gamma, k))
                .collect(),
            None => vec![0.0; c.len()],
        }
    }
}

/// Per-trajectory sufficient statistics of a batch of backward trajectories, with the parameters that
/// generated them (A_k).
#[derive(Debug, Clone)]
pub struct TrajectoryStats {
    kind: StatsKind,
    /// A_k (or c_k).
    k_params: VarParams,
    /// W = Σ dt β (γβ for VSMD).
    w: f64,
    n_traj: usize,
    /// Per-trajectory discretisation correction `[B × n]`: the gradient at A_k (ζ = 1) of the paired
    /// reference trajectories ([`TrajectoryStats::with_reference`]); subtracted from every mini-batch gradient.
    bias: Option<Vec<f64>>,
}

#[derive(Debug, Clone)]
enum StatsKind {
    /// [B × n] each.
    Diagonal { p: Vec<f64>, q: Vec<f64> },
    /// [B × d × d] each, row-major.
    Full { d: usize, p: Vec<f64>, q: Vec<f64> },
    /// [B × n] each: XX, XV, VV, SX, SV.
    Momentum { s: [Vec<f64>; 5] },
}

fn host(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

/// Accumulates [`TrajectoryStats`] step by step while trajectories are simulated (nothing is stored but the
/// running sums, so image-sized batches fit in memory).
pub struct StatsAccumulator {
    k_params: VarParams,
    gamma: f64,
    w: f64,
    acc: Vec<Option<Tensor>>,
    n_traj: usize,
}

impl StatsAccumulator {
    /// For trajectories generated by the process of `k_params` (γ: VSMD's noise scale, ignored otherwise).
    pub fn new(k_params: &VarParams, gamma: f64) -> Self {
        Self {
            k_params: k_params.clone(),
            gamma,
            w: 0.0,
            acc: vec![None; 5],
            n_traj: 0,
        }
    }

    /// Adds one grid time: state z and score s at time t with step h, β = β_t.
    pub fn add(&mut self, z: &Tensor, s: &Tensor, h: f64, beta: f64) -> Result<()> {
        let mom = matches!(self.k_params, VarParams::Momentum { .. });
        let wb = h * beta * if mom { self.gamma } else { 1.0 };
        let z = z.flatten_from(1)?.to_dtype(DType::F32)?;
        let s = s.flatten_from(1)?.to_dtype(DType::F32)?;
        // The state's and the score's widths must be the parameters' (a state of another process would give
        // statistics that `loss_and_grad` indexes past).
        let n = self.k_params.values().len();
        let (want_z, want_s) = match &self.k_params {
            VarParams::None => (z.dim(1)?, z.dim(1)?),
            VarParams::Diagonal(_) => (n, n),
            VarParams::Full { d, .. } => (*d, *d),
            VarParams::Momentum { .. } => (2 * n, n),
        };
        if z.dim(1)? != want_z || s.dim(1)? != want_s || s.dim(0)? != z.dim(0)? {
            return Err(Error::Shape {
                what: "trajectory state and score".into(),
                expected: format!("[batch, {want_z}] and [batch, {want_s}] for these parameters"),
                got: format!("{:?} and {:?}", z.dims(), s.dims()),
            });
        }
        // Every step of a trajectory batch holds the same trajectories.
        if self.acc.iter().any(Option::is_some) && z.dim(0)? != self.n_traj {
            return Err(Error::Shape {
                what: "trajectory state".into(),
                expected: format!("the {} trajectories of the earlier steps", self.n_traj),
                got: format!("{:?}", z.dims()),
            });
        }
        let terms: Vec<Tensor> = match &self.k_params {
            VarParams::None => vec![],
            VarParams::Diagonal(_) => vec![z.sqr()?, (&s * &z)?],
            VarParams::Full { .. } => {
                let zr = z.unsqueeze(1)?;
                vec![z.unsqueeze(2)?.matmul(&zr)?, s.unsqueeze(2)?.matmul(&zr)?]
            }
            VarParams::Momentum { .. } => {
                let c = z.dim(1)? / 2;
                let (x, v) = (z.narrow(1, 0, c)?, z.narrow(1, c, c)?);
                vec![x.sqr()?, (&x * &v)?, v.sqr()?, (&s * &x)?, (&s * &v)?]
            }
        };
        // Counted only once the step is known to fit: a refused step leaves the sums as they were.
        self.w += wb;
        self.n_traj = z.dim(0)?;
        for (i, t) in terms.into_iter().enumerate() {
            let t = (t * wb)?;
            self.acc[i] = Some(match self.acc[i].take() {
                Some(a) => (a + t)?,
                None => t,
            });
        }
        Ok(())
    }

    /// The statistics (host f64).
    pub fn finish(self) -> Result<TrajectoryStats> {
        let take = |i: usize| -> Result<Vec<f64>> {
            let t = self.acc[i]
                .as_ref()
                .ok_or_else(|| Error::invalid("trajectory", 0, "no time step was accumulated"))?;
            let v = host(t)?;
            ensure_finite("trajectory statistics", &v)?;
            Ok(v)
        };
        let kind = match &self.k_params {
            VarParams::None => StatsKind::Diagonal {
                p: vec![],
                q: vec![],
            },
            VarParams::Diagonal(_) => StatsKind::Diagonal {
                p: take(0)?,
                q: take(1)?,
            },
            VarParams::Full { d, .. } => StatsKind::Full {
                d: *d,
                p: take(0)?,
                q: take(1)?,
            },
            VarParams::Momentum { .. } => StatsKind::Momentum {
                s: [take(0)?, take(1)?, take(2)?, take(3)?, take(4)?],
            },
        };
        Ok(TrajectoryStats {
            kind,
            k_params: self.k_params,
            w: self.w,
            n_traj: self.n_traj,
            bias: None,
        })
    }

    /// Merges the statistics of another chunk of trajectories (same parameters and grid).
    pub fn merge(stats: Vec<TrajectoryStats>) -> Result<TrajectoryStats> {
        let mut it = stats.into_iter();
        let mut out = it
            .next()
            .ok_or_else(|| Error::invalid("trajectory chunks", 0, "nothing to merge"))?;
        for s in it {
            if s.bias.is_some() || out.bias.is_some() {
                return Err(Error::invalid(
                    "trajectory chunks",
                    "debiased",
                    "merge the chunks before pairing them with a reference",
                ));
            }
            out.n_traj += s.n_traj;
            match (&mut out.kind, s.kind) {
                (StatsKind::Diagonal { p, q }, StatsKind::Diagonal { p: p2, q: q2 })
                | (StatsKind::Full { p, q, .. }, StatsKind::Full { p: p2, q: q2, .. }) => {
                    p.extend(p2);
                    q.extend(q2);
                }
                (StatsKind::Momentum { s: a }, StatsKind::Momentum { s: b }) => {
                    for (x, y) in a.iter_mut().zip(b) {
                        x.extend(y);
                    }
                }
                _ => return Err(Error::invalid("trajectory chunks", "mixed", "kinds differ")),
            }
        }
        Ok(out)
    }
}

/// Checks that a recorded run holds a state and a time for every score (its fields are public, so a run can
/// be put together by hand).
fn check_run(run: &SampleRun) -> Result<()> {
    let n = run.scores.len();
    if n == 0 || run.trajectory.len() < n || run.times.len() < n + 1 {
        return Err(Error::invalid(
            "trajectory",
            format!(
                "{n} scores, {} states, {} times",
                run.trajectory.len(),
                run.times.len()
            ),
            "the run was not recorded, or its parts disagree (a state per score and one time more)",
        ));
    }
    Ok(())
}

impl TrajectoryStats {
    /// The statistics of a recorded run (`run.trajectory` and `run.scores` from
    /// [`crate::sampler::sample_with_eps`] with recording on). `k_params` are the parameters of the process
    /// that produced the run.
    pub fn from_run(
        run: &SampleRun,
        k_params: &VarParams,
        schedule: &BetaSchedule,
        gamma: f64,
    ) -> Result<Self> {
        check_run(run)?;
        let n_steps = run.scores.len();
        let mut acc = StatsAccumulator::new(k_params, gamma);
        for n in 0..n_steps {
            let h = run.times[n] - run.times[n + 1];
            acc.add(
                &run.trajectory[n],
                &run.scores[n],
                h,
                schedule.beta(run.times[n]),
            )?;
        }
        acc.finish()
    }

    /// Number of trajectories.
    pub fn len(&self) -> usize {
        self.n_traj
    }

    /// True when there is no trajectory.
    pub fn is_empty(&self) -> bool {
        self.n_traj == 0
    }

    /// Pairs these trajectories (started from N(0, I)) with `reference`: trajectories simulated with the same
    /// network, parameters A_k, grid and Brownian increments, but started from the forward process's own
    /// time-T marginal (data pushed through the closed-form kernel). Every mini-batch gradient then has the
    /// reference's gradient at A_k and ζ = 1 subtracted, trajectory by trajectory.
    ///
    /// Why: in continuous time, with the score of the forward marginal, the reference trajectories follow
    /// that marginal, and Stein's identity (E[s xᵀ] = −I; for VSMD E[s_v v] = −1, E[s_v x] = 0) makes their
    /// gradient at A_k and ζ = 1 exactly zero: what is left in the N(0, I) trajectories' gradient is the prior
    /// mismatch that is meant to drive A (ALGORITHM.md §A.6, §C.1). An Euler–Maruyama chain does not satisfy
    /// the identity: for the momentum process, whose position–velocity rotation Euler–Maruyama inflates, the
    /// bias at 50 steps is of the order of the signal and has the same sign at every c on wide data, so the
    /// stochastic approximation walks c away without end (docs/results/shapes-budget.md). The reference chain
    /// carries the same discretisation (and score-error) bias, so the difference keeps the signal and drops
    /// most of the bias; the paired trajectories share their noise, which keeps the difference's variance
    /// low. The estimator has the same continuous-time limit as the plain one, so its fixed point is the
    /// method's; the official codes use the plain one.
    pub fn with_reference(mut self, reference: &TrajectoryStats) -> Result<Self> {
        if reference.n_traj != self.n_traj || reference.k_params != self.k_params {
            return Err(Error::invalid(
                "reference trajectories",
                reference.n_traj,
                format!(
                    "must pair one to one with the {} trajectories and share their parameters",
                    self.n_traj
                ),
            ));
        }
        let mut bias = Vec::with_capacity(self.n_traj * self.k_params.values().len());
        for j in 0..reference.n_traj {
            bias.extend(
                reference
                    .plain_loss_and_grad(&reference.k_params, 1.0, &[j])
                    .1,
            );
        }
        ensure_finite("reference-trajectory gradient", &bias)?;
        self.bias = Some(bias);
        Ok(self)
    }

    /// The loss L and its gradient with respect to the free values, averaged over the trajectories `batch`
    /// (less the reference's gradient, when paired with one by [`TrajectoryStats::with_reference`]; the
    /// loss then drops the matching linear term, so that the gradient stays the loss's).
    ///
    /// # Panics
    /// If an index in `batch` is not below [`TrajectoryStats::len`], or `params` are not of the kind and size
    /// of the parameters that generated the trajectories (draw the batch with [`draw_batch`]; the trainer
    /// passes its own parameters).
    pub fn loss_and_grad(&self, params: &VarParams, zeta: f64, batch: &[usize]) -> (f64, Vec<f64>) {
        let (mut loss, mut grad) = self.plain_loss_and_grad(params, zeta, batch);
        if let Some(bias) = &self.bias {
            let n = grad.len();
            let nb = batch.len() as f64;
            for (i, (g, theta)) in grad.iter_mut().zip(params.values()).enumerate() {
                let b = batch.iter().map(|&j| bias[j * n + i]).sum::<f64>() / nb;
                *g -= b;
                loss -= b * theta;
            }
        }
        (loss, grad)
    }

    fn plain_loss_and_grad(
        &self,
        params: &VarParams,
        zeta: f64,
        batch: &[usize],
    ) -> (f64, Vec<f64>) {
        let theta = params.values();
        let k = self.k_params.values();
        let nb = batch.len() as f64;
        let w = self.w;
        match &self.kind {
            StatsKind::Diagonal { p, q } => {
                let n = theta.len();
                let mut g = vec![0.0; n];
                let mut loss = 0.0;
                for &j in batch {
                    for i in 0..n {
                        let (pi, qi) = (p[j * n + i], q[j * n + i]);
                        g[i] += (theta[i] - k[i]) * pi + qi;
                        loss += 0.5 * theta[i] * theta[i] * pi + theta[i] * (qi - k[i] * pi);
                    }
                }
                g.iter_mut().for_each(|x| *x = *x / nb + zeta * w);
                (loss / nb + zeta * w * theta.iter().sum::<f64>(), g)
            }
            StatsKind::Full { d, p, q } => {
                let d = *d;
                let a = DMatrix::from_row_slice(d, d, theta);
                let ak = DMatrix::from_row_slice(d, d, k);
                let mut pm = DMatrix::<f64>::zeros(d, d);
                let mut qm = DMatrix::<f64>::zeros(d, d);
                for &j in batch {
                    pm += DMatrix::from_row_slice(d, d, &p[j * d * d..(j + 1) * d * d]);
                    qm += DMatrix::from_row_slice(d, d, &q[j * d * d..(j + 1) * d * d]);
                }
                pm /= nb;
                qm /= nb;
                let g = (&a - &ak) * &pm + &qm + DMatrix::identity(d, d) * (zeta * w);
                // ½ tr(A P Aᵀ) + tr(Aᵀ(Q − A_k P)) + ζ W tr A.
                let loss = 0.5 * (&a * &pm * a.transpose()).trace()
                    + (a.transpose() * (&qm - &ak * &pm)).trace()
                    + zeta * w * a.trace();
                (loss, g.transpose().as_slice().to_vec())
            }
            StatsKind::Momentum { s } => {
                let VarParams::Momentum { params: mp, .. } = &self.k_params else {
                    unreachable!("momentum statistics come from momentum parameters")
                };
                let n = theta.len();
                let a = VarParams::momentum_a(theta, mp);
                let ak = VarParams::momentum_a(k, mp);
                let mut g = vec![0.0; n];
                let mut loss = 0.0;
                for &j in batch {
                    for i in 0..n {
                        let o = j * n + i;
                        let (xx, xv, vv, sx, sv) = (s[0][o], s[1][o], s[2][o], s[3][o], s[4][o]);
                        let (da, dc) = (a[i] - ak[i], theta[i] - k[i]);
                        let ga = da * xx + dc * xv + sx;
                        let gc = da * xv + dc * vv + sv;
                        let dadc = match mp.kappa {
                            Some(kp) => momentum::critical_a_derivative(theta[i], mp.gamma, kp),
                            None => 0.0,
                        };
                        g[i] += ga * dadc + gc;
                        // Z(½Z + ẑ)/γβ summed: ½(a x + c v)² + (a x + c v)(s − a_k x − c_k v).
                        let (ai, ci) = (a[i], theta[i]);
                        let zz = ai * ai * xx + 2.0 * ai * ci * xv + ci * ci * vv;
                        let zs =
                            ai * (sx - ak[i] * xx - k[i] * xv) + ci * (sv - ak[i] * xv - k[i] * vv);
                        loss += 0.5 * zz + zs;
                    }
                }
                g.iter_mut().for_each(|x| *x = *x / nb + zeta * w);
                (loss / nb + zeta * w * theta.iter().sum::<f64>(), g)
            }
        }
    }
}

/// The interaction coefficients ζ this implementation accepts: [0, 2]. The official codes use 0.75 (VSDM),
/// 0.85 (its low-NFE runs) and 1 (VSMD, and VSDM's Gaussian check); below 1 ζ pushes A towards less
/// contraction by β(1 − ζ) per unit time (ALGORITHM.md §C), above 1 towards more.
pub const ZETA_RANGE: std::ops::RangeInclusive<f64> = 0.0..=2.0;

/// Settings of the variational (A) stage.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VariationalConfig {
    /// Interaction coefficient ζ (0.75 in VSDM's code, 1 in VSMD's).
    pub zeta: f64,
    /// Backward trajectories simulated per stage.
    pub n_trajectories: usize,
    /// Trajectories per SA iteration.
    pub batch: usize,
    /// Euler–Maruyama steps of the trajectories.
    pub steps: usize,
    /// SA iterations per stage (n_f).
    pub iters: usize,
    /// Adam settings for the parameters.
    pub adam: crate::optim::AdamConfig,
    /// EMA decay of the parameters.
    pub ema_decay: f64,
    /// Pair every stage's N(0, I) trajectories with reference trajectories from the forward process's
    /// time-T marginal and subtract their gradient ([`TrajectoryStats::with_reference`]), at twice the
    /// simulation cost. On by default for VSMD, whose c otherwise drifts without end on wide data; off for
    /// VSDM, where the Euler–Maruyama bias is small (docs/results/shapes-budget.md), and for old checkpoints.
    #[serde(default)]
    pub debias: bool,
}

impl Default for VariationalConfig {
    fn default() -> Self {
        Self {
            zeta: 0.75,
            n_trajectories: 1000,
            batch: 500,
            steps: 100,
            iters: 100,
            adam: crate::optim::AdamConfig {
                lr_step: 1000,
                lr_gamma: 0.99,
                ..crate::optim::AdamConfig::new(2e-4)
            },
            ema_decay: 0.99,
            debias: false,
        }
    }
}

/// Draws a mini-batch of `k` distinct trajectory indices out of `n` (a partial Fisher–Yates shuffle).
pub fn draw_batch(rng: &mut NoiseRng, n: usize, k: usize) -> Vec<usize> {
    let k = k.min(n);
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..k {
        let j = i + rng.index(n - i);
        idx.swap(i, j);
    }
    idx.truncate(k);
    idx
}

/// The loss computed directly from its definition on a recorded run (used to check the closed-form gradient):
/// Σ_n dt · mean_b [ z_f·(½ z_f + ẑ) + ζ div ], with z_f from `process` (the parameters being evaluated) and
/// ẑ = g s − z_f^{(k)} from `process_k` (the parameters that generated the run).
pub fn direct_loss(
    process: &Process,
    process_k: &Process,
    run: &SampleRun,
    zeta: f64,
) -> Result<f64> {
    check_run(run)?;
    let mut total = 0.0;
    for n in 0..run.scores.len() {
        let t = run.times[n];
        let h = t - run.times[n + 1];
        let z = &run.trajectory[n];
        let s = &run.scores[n];
        let b = process.schedule().beta(t);
        let (zf, zk, g, div) = match (process, process_k) {
            (Process::Vsdm(p), Process::Vsdm(pk)) => {
                let tr = match p.a() {
                    LinearDrift::Diagonal(a) => a.iter().sum(),
                    LinearDrift::Full(a) => a.trace(),
                };
                (
                    p.forward_policy(z, t)?,
                    pk.forward_policy(z, t)?,
                    b.sqrt(),
                    b * tr,
                )
            }
            (Process::Vsmd(p), Process::Vsmd(pk)) => {
                let gm = p.params().gamma;
                (
                    p.forward_policy(z, t)?,
                    pk.forward_policy(z, t)?,
                    (gm * b).sqrt(),
                    gm * b * p.c().iter().sum::<f64>(),
                )
            }
            _ => {
                return Err(Error::invalid(
                    "process",
                    "VP",
                    "has no variational parameters",
                ))
            }
        };
        let zhat = ((s * g)? - zk)?;
        let inner = (&zf * ((&zf * 0.5)? + zhat)?)?
            .flatten_from(1)?
            .sum(1)?
            .mean(0)?;
        total += h * (inner.to_dtype(DType::F64)?.to_scalar::<f64>()? + zeta * div);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::{sample_with_score, SamplerConfig, SamplerKind};

    /// Records an EM run of `k` with an arbitrary smooth stand-in score (the gradient identity holds for any
    /// frozen ẑ) and compares the closed-form gradient with central differences of [`direct_loss`].
    fn check(k: VarParams, theta: VarParams, shape: &[usize]) {
        let dev = Device::Cpu;
        let sched = BetaSchedule::power(0.1, 10.0, 1.7, 1.0).unwrap();
        let pk = k.process(sched, shape, &dev).unwrap();
        let mut rng = NoiseRng::new(5);
        let z0 = rng.randn(&pk.state_shape(64), &dev).unwrap();
        let score_shape = {
            let mut s = vec![64];
            s.extend_from_slice(shape);
            s
        };
        let cfg = SamplerConfig::new(SamplerKind::EulerMaruyama, 20);
        let run = sample_with_score(
            &pk,
            &cfg,
            z0,
            |z, t, _| {
                let x = pk.data_part(z)?.reshape(score_shape.as_slice())?;
                Ok(((x.tanh()? * (-1.3 * t))? + 0.2)?)
            },
            &mut rng,
            true,
        )
        .unwrap();
        let gamma = match &k {
            VarParams::Momentum { params, .. } => params.gamma,
            _ => 1.0,
        };
        let stats = TrajectoryStats::from_run(&run, &k, &sched, gamma).unwrap();
        let all: Vec<usize> = (0..64).collect();
        let zeta = 0.75;
        let (loss, grad) = stats.loss_and_grad(&theta, zeta, &all);
        let direct = |p: &VarParams| {
            direct_loss(&p.process(sched, shape, &dev).unwrap(), &pk, &run, zeta).unwrap()
        };
        let l0 = direct(&theta);
        assert!(
            (loss - l0).abs() <= 1e-4 * (1.0 + l0.abs()),
            "loss {loss} vs direct {l0}"
        );
        let delta = 1e-2;
        for i in 0..theta.values().len() {
            let mut up = theta.values().to_vec();
            up[i] += delta;
            let mut dn = theta.values().to_vec();
            dn[i] -= delta;
            let fd =
                (direct(&theta.with_values(&up)) - direct(&theta.with_values(&dn))) / (2.0 * delta);
            assert!(
                (fd - grad[i]).abs() <= 2e-3 * (1.0 + fd.abs()),
                "component {i}: closed form {} vs finite difference {fd}",
                grad[i]
            );
        }
    }

    #[test]
    fn diagonal_gradient_matches_finite_differences() {
        check(
            VarParams::Diagonal(vec![0.1, -0.3, 0.6, 0.0]),
            VarParams::Diagonal(vec![0.25, -0.1, 0.4, -0.7]),
            &[2, 2],
        );
    }

    #[test]
    fn full_gradient_matches_finite_differences() {
        check(
            VarParams::Full {
                d: 2,
                a: vec![0.2, -0.1, 0.3, 0.5],
            },
            VarParams::Full {
                d: 2,
                a: vec![0.4, 0.2, -0.2, 0.1],
            },
            &[2],
        );
    }

    #[test]
    fn momentum_gradient_through_the_critical_transform_matches_finite_differences() {
        for kappa in [1.0, 0.9] {
            let params = VsmdParams {
                kappa: Some(kappa),
                ..Default::default()
            };
            check(
                VarParams::Momentum {
                    c: vec![0.05, -0.1],
                    params,
                },
                VarParams::Momentum {
                    c: vec![0.15, 0.02],
                    params,
                },
                &[2],
            );
        }
    }

    #[test]
    fn batches_are_distinct_indices() {
        let mut rng = NoiseRng::new(3);
        let mut b = draw_batch(&mut rng, 50, 20);
        assert_eq!(b.len(), 20);
        b.sort();
        b.dedup();
        assert_eq!(b.len(), 20);
        assert!(b.iter().all(|&i| i < 50));
    }
}
