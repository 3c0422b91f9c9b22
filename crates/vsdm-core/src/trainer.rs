//! The alternating trainer (ALGORITHM.md §C.4), generic over a score network and a data source.
//!
//! One *step* is one network update by denoising score matching on the closed-form kernel of the current (EMA)
//! variational parameters. After `warmup` steps, every `block` steps a variational stage runs: backward
//! trajectories are simulated from N(0, I) by Euler–Maruyama with the EMA network and EMA parameters, and the
//! parameters take `variational.iters` Adam steps on mini-batches of those trajectories, followed by their EMA.
//! The last `cooldown` steps train the network only. `iters` counts network updates, so methods compare at equal
//! network budgets.
//!
//! Checkpoints hold the network, its EMA, the optimiser moments, the variational parameters, their EMA and
//! optimiser, the step counters and the RNG state; a resumed run continues exactly as an uninterrupted one.
//! They are written to a temporary directory and renamed, and the `latest` pointer is replaced atomically, so a
//! crash never destroys the last good checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use crate::error::{Error, Result};
use crate::init::{seeded_var_builder, untracked_var_builder};
use crate::metrics::MetricsLog;
use crate::model::ScoreModel;
use crate::optim::{AdamConfig, AdamF64, AdamW};
use crate::process::{AnyMarginals, ForwardProcess, Marginals, Process};
use crate::progress::Progress;
use crate::rng::{NoiseRng, RngState};
use crate::sampler::{integrate, sample_model, SamplerConfig, SamplerKind};
use crate::schedule::{linspace, BetaSchedule};
use crate::variational::{
    draw_batch, StatsAccumulator, TrajectoryStats, VarParams, VariationalConfig,
};

/// Where training data comes from.
pub trait DataSource {
    /// A batch x_0 `[batch, data shape…]` and, for conditional models, the conditioning (batch first).
    fn next_batch(
        &mut self,
        batch: usize,
        rng: &mut NoiseRng,
        device: &Device,
    ) -> Result<(Tensor, Option<Tensor>)>;

    /// Whether the model needs conditioning (then variational stages draw a batch for it).
    fn conditional(&self) -> bool {
        false
    }
}

/// Rows of an in-memory tensor `[n, shape…]`, drawn uniformly with replacement.
pub struct InMemory {
    data: Tensor,
}

impl InMemory {
    pub fn new(data: Tensor) -> Result<Self> {
        if data.dim(0)? == 0 {
            return Err(Error::invalid("data", "empty", "needs at least one row"));
        }
        Ok(Self { data })
    }
}

impl DataSource for InMemory {
    fn next_batch(
        &mut self,
        batch: usize,
        rng: &mut NoiseRng,
        device: &Device,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let idx = rng.indices(batch, self.data.dim(0)?, self.data.device())?;
        Ok((self.data.index_select(&idx, 0)?.to_device(device)?, None))
    }
}

/// Everything that defines a training run (stored in checkpoints and exported weights).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub schedule: BetaSchedule,
    /// Shape of one data element.
    pub data_shape: Vec<usize>,
    /// Initial variational parameters; their kind selects the method (None = VP, Momentum = VSMD/CLD).
    pub init: VarParams,
    /// Whether the variational parameters are optimised (false: VP, CLD, or a fixed A).
    pub adaptive: bool,
    pub batch_size: usize,
    /// Network updates in total.
    pub iters: usize,
    /// Network updates before the first variational stage.
    pub warmup: usize,
    /// Final network updates without variational stages.
    pub cooldown: usize,
    /// Network updates between variational stages (n_b).
    pub block: usize,
    pub adam: AdamConfig,
    /// Clip the global gradient norm to this value.
    pub grad_clip: Option<f64>,
    /// EMA decay of the network.
    pub ema_decay: f64,
    /// EMA warm-up: at update k the decay is min(ema_decay, (1 + k)/(10 + k)) (the `num_updates` rule of
    /// TensorFlow's ExponentialMovingAverage), so that the EMA of a short run is not dominated by the random
    /// initial weights (with 0.999 and a plain EMA, 0.999^1100 = 33% of the weights after 1,100 updates are
    /// still the initial ones, and samples are noise). Off by default: the papers' long runs use a plain EMA.
    #[serde(default)]
    pub ema_warmup: bool,
    /// Points of the training time grid linspace(t_eps, T, grid).
    pub grid: usize,
    pub t_eps: f64,
    pub variational: VariationalConfig,
    pub seed: u64,
}

impl TrainConfig {
    /// Defaults after the official VSDM toy code, for the method `init` picks: Adam at 1e-3 with
    /// StepLR(1000, 0.99), EMA 0.99, 500 network updates between variational stages, a 100-point time grid
    /// from t_eps = 1e-3, 200 data points per update; ζ = 0.75 (VSDM) or 1 and the paired estimator (VSMD).
    /// Where it is not that code: each data point gets one random time per update (the toy code draws 200
    /// times for each of its 200 points), a stage simulates 1,000 trajectories in SA mini-batches of 500 (3,000
    /// and 1,000 there), and Adam acts on A's entries (the toy code parameterises A = U diag(σ) Vᵀ with its own
    /// rates; [`VariationalConfig`]'s defaults). The applications set their own budgets on top.
    pub fn new(
        schedule: BetaSchedule,
        data_shape: &[usize],
        init: VarParams,
        adaptive: bool,
    ) -> Self {
        let momentum = matches!(init, VarParams::Momentum { .. });
        let zeta = if momentum { 1.0 } else { 0.75 };
        Self {
            schedule,
            data_shape: data_shape.to_vec(),
            init,
            adaptive,
            batch_size: 200,
            iters: 10_000,
            warmup: 0,
            cooldown: 0,
            block: 500,
            adam: AdamConfig {
                lr_step: 1000,
                lr_gamma: 0.99,
                ..AdamConfig::new(1e-3)
            },
            grad_clip: None,
            ema_decay: 0.99,
            ema_warmup: false,
            grid: 100,
            t_eps: 1e-3,
            variational: VariationalConfig {
                zeta,
                debias: momentum,
                ..VariationalConfig::default()
            },
            seed: 0,
        }
    }

    /// Checks every value, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        self.schedule.validate()?;
        let pos = [
            ("batch_size", self.batch_size),
            ("grid", self.grid),
            ("block", self.block),
            (
                "variational.n_trajectories",
                self.variational.n_trajectories,
            ),
            ("variational.batch", self.variational.batch),
            ("variational.steps", self.variational.steps),
            // A stage without updates would simulate its trajectories for nothing.
            ("variational.iters", self.variational.iters),
        ];
        for (name, v) in pos {
            if v == 0 {
                return Err(Error::invalid(name, v, "must be at least 1"));
            }
        }
        if self.data_shape.is_empty() || self.data_shape.contains(&0) {
            return Err(Error::invalid(
                "data_shape",
                format!("{:?}", self.data_shape),
                "needs non-zero dimensions",
            ));
        }
        let n: usize = self.data_shape.iter().product();
        let want = match &self.init {
            VarParams::None => 0,
            VarParams::Diagonal(_) | VarParams::Momentum { .. } => n,
            VarParams::Full { d, .. } => {
                if self.data_shape != [*d] {
                    return Err(Error::invalid(
                        "init",
                        format!("full {d}×{d} A"),
                        format!("needs data of shape [{d}], got {:?}", self.data_shape),
                    ));
                }
                d * d
            }
        };
        if self.init.values().len() != want {
            return Err(Error::invalid(
                "init",
                format!("{} values", self.init.values().len()),
                format!("expected {want} for data shape {:?}", self.data_shape),
            ));
        }
        for (name, v) in [
            ("ema_decay", self.ema_decay),
            ("variational.ema_decay", self.variational.ema_decay),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(Error::invalid(name, v, "must lie in [0, 1)"));
            }
        }
        if !crate::variational::ZETA_RANGE.contains(&self.variational.zeta) {
            return Err(Error::invalid(
                "variational.zeta",
                self.variational.zeta,
                "must lie in [0, 2]",
            ));
        }
        if !(self.t_eps > 0.0 && self.t_eps < self.schedule.t_max()) {
            return Err(Error::invalid("t_eps", self.t_eps, "must lie in (0, T)"));
        }
        for (name, lr) in [
            ("lr", self.adam.lr),
            ("variational.adam.lr", self.variational.adam.lr),
        ] {
            // Adam moves every parameter by about lr per update: beyond 1 a single update swamps any
            // trained value, and a rate like 1e30 overflows the next forward pass.
            if !(lr > 0.0 && lr <= 1.0) {
                return Err(Error::invalid(name, lr, "must lie in (0, 1]"));
            }
        }
        if let Some(c) = self.grad_clip {
            if c.is_nan() || c <= 0.0 {
                return Err(Error::invalid("grad_clip", c, "must be > 0"));
            }
        }
        Ok(())
    }

    /// Whether a variational stage follows network update number `step` (1-based).
    pub fn stage_after(&self, step: usize) -> bool {
        self.adaptive
            && !matches!(self.init, VarParams::None)
            && step > self.warmup
            && step
                .checked_add(self.cooldown)
                .is_some_and(|end| end <= self.iters)
            && (step - self.warmup).is_multiple_of(self.block)
    }
}

/// What one call of [`Trainer::step`] did.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub step: usize,
    pub loss: f64,
    pub grad_norm: f64,
    /// Loss of the variational objective before and after the stage, when one ran.
    pub stage: Option<(f64, f64)>,
}

/// The alternating trainer.
pub struct Trainer<M: ScoreModel> {
    cfg: TrainConfig,
    device: Device,
    varmap: VarMap,
    model: M,
    ema_vars: BTreeMap<String, Var>,
    ema_model: M,
    opt: AdamW,
    params: VarParams,
    params_ema: VarParams,
    a_opt: AdamF64,
    process: Process,
    marginals: AnyMarginals,
    rng: NoiseRng,
    step: usize,
    /// The run's metrics file, when one is kept ([`Trainer::log_metrics`]), with the training time when it was
    /// opened, and this session's training time ([`Trainer::training_seconds`]).
    metrics: Option<(MetricsLog, f64)>,
    seconds: f64,
    /// Raised to stop [`Trainer::run`] after the current update ([`Trainer::stop_when`]).
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// One chunk of backward Euler–Maruyama trajectories with the EMA network, reduced to their statistics.
struct Chain<'a, M: ScoreModel> {
    process: &'a Process,
    marg: &'a AnyMarginals,
    model: &'a M,
    cond: Option<&'a Tensor>,
    cfg: &'a SamplerConfig,
    times: &'a [f64],
    schedule: BetaSchedule,
    k_params: &'a VarParams,
    gamma: f64,
    device: &'a Device,
}

impl<M: ScoreModel> Chain<'_, M> {
    fn stats(&self, z_t: Tensor, rng: &mut NoiseRng) -> Result<TrajectoryStats> {
        let b = z_t.dim(0)?;
        let mut acc = StatsAccumulator::new(self.k_params, self.gamma);
        let times = self.times;
        integrate(
            self.process,
            self.cfg,
            times,
            z_t,
            |z, t, n| {
                let tt = Tensor::full(t as f32, b, self.device)?;
                let eps = self.model.forward(z, &tt, self.cond)?;
                self.marg.score_at(&eps, n)
            },
            rng,
            |n, z, s| acc.add(z, s, times[n] - times[n + 1], self.schedule.beta(times[n])),
        )?;
        acc.finish()
    }
}

fn sorted_vars(vm: &VarMap) -> BTreeMap<String, Var> {
    vm.data()
        .lock()
        .expect("var map lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn ckpt_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

const FORMAT: &str = "vsdm-checkpoint-v1";

/// The file in a checkpoint folder that names its newest checkpoint (written last, by a rename).
const LATEST: &str = "latest";

/// The name of the newest checkpoint that [`Trainer::save_checkpoint`] recorded in `dir` (`ckpt-…`): `Ok(None)`
/// when `dir` holds no run (no pointer file), an error naming the pointer when it is there but unreadable or
/// empty (a run whose pointer was damaged: resuming it, or starting over in its place, must not go ahead
/// silently). Programs use it to tell a user that a folder already holds a run before they start another.
pub fn latest_checkpoint(dir: &Path) -> Result<Option<String>> {
    let latest = dir.join(LATEST);
    if !latest.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&latest).map_err(|e| ckpt_err(&latest, e.to_string()))?;
    let name = name.trim();
    if name.is_empty() || name.contains(['/', '\\']) {
        return Err(ckpt_err(
            &latest,
            format!(
                "names no checkpoint ({name:?}); write the name of a ckpt-* folder of {} into it, or remove \
                 the folder to start over",
                dir.display()
            ),
        ));
    }
    Ok(Some(name.to_string()))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CheckpointMeta {
    format: String,
    config: TrainConfig,
    step: usize,
    opt_step: usize,
    a_opt_step: usize,
    rng: RngState,
    /// Human-readable copies; the exact values are the f64 tensors in the safetensors file.
    params: VarParams,
    params_ema: VarParams,
}

impl<M: ScoreModel> Trainer<M> {
    /// A fresh run. `build` constructs the network from a `VarBuilder` (it is called three times: for the
    /// trained weights, for their EMA's variables, and for the EMA network on untracked views of those). The initial weights follow the layers' own initialisers, drawn from the run's
    /// seed ([`crate::init::seeded_var_builder`]).
    pub fn new<B>(cfg: TrainConfig, device: &Device, build: B) -> Result<Self>
    where
        B: Fn(VarBuilder) -> candle_core::Result<M>,
    {
        cfg.validate()?;
        let rng = NoiseRng::new(cfg.seed);
        // The initial weights come from their own stream (stream 1) of the run's seed.
        let mut init_rng = NoiseRng::new(cfg.seed);
        init_rng.inner().set_stream(1);
        let varmap = VarMap::new();
        let model = build(seeded_var_builder(&varmap, init_rng, DType::F32, device))?;
        let vars = sorted_vars(&varmap);
        let ema_map = VarMap::new();
        // This build only creates the EMA's variables (its network is built below, on views of them).
        build(VarBuilder::from_varmap(&ema_map, DType::F32, device))?;
        let ema_vars = sorted_vars(&ema_map);
        if ema_vars.len() != vars.len() {
            return Err(Error::invalid(
                "model",
                "builder",
                "the network builder is not deterministic in its variables",
            ));
        }
        for (k, v) in &vars {
            let e = ema_vars.get(k).ok_or_else(|| {
                Error::invalid(
                    "model",
                    k,
                    "the network builder is not deterministic in its variables",
                )
            })?;
            e.set(v.as_tensor())?;
        }
        // The EMA network runs only forward passes (trajectory simulation, sampling, forecasting). Built on
        // the variables themselves, every one of them recorded a graph: each fused layer's value copied into
        // its carried op, every intermediate kept until the output was dropped, and the attention of the
        // time-series network keeping its probabilities. It is rebuilt here on untracked views of the same
        // variables (`detach` shares their storage, so the in-place EMA updates and checkpoint restores reach
        // it), whose forward passes record nothing; the values are the same.
        let ema_model = build(untracked_var_builder(&ema_map, DType::F32, device))?;
        let opt = AdamW::new(vars, cfg.adam)?;
        let params = cfg.init.clone();
        let process = params.process(cfg.schedule, &cfg.data_shape, device)?;
        let marginals = process.marginals(&Self::grid_of(&cfg), device)?;
        let a_opt = AdamF64::new(params.values().len(), cfg.variational.adam);
        Ok(Self {
            device: device.clone(),
            varmap,
            model,
            ema_vars,
            ema_model,
            opt,
            params_ema: params.clone(),
            params,
            a_opt,
            process,
            marginals,
            rng,
            step: 0,
            cfg,
            metrics: None,
            seconds: 0.0,
            stop: None,
        })
    }

    fn grid_of(cfg: &TrainConfig) -> Vec<f64> {
        linspace(cfg.t_eps, cfg.schedule.t_max(), cfg.grid)
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Seconds this trainer has spent in [`Trainer::step`] since it was built or resumed (each update's time
    /// from its batch to the end of its variational stage).
    pub fn training_seconds(&self) -> f64 {
        self.seconds
    }

    /// Keeps the run's metrics in the CSV file `path` from now on, one row per update ([`crate::metrics`]):
    /// a new file, or, for a resumed run, the file it left with the rows after this checkpoint's step dropped.
    pub fn log_metrics(&mut self, path: &Path) -> Result<()> {
        self.metrics = Some((MetricsLog::open(path, self.step)?, self.seconds));
        Ok(())
    }

    /// Moves the end of the run to `iters` network updates (e.g. to continue a resumed run past its planned
    /// end). The cool-down is counted back from the new end. The result equals a run planned with `iters` from
    /// the start as long as this run has not entered its cool-down (`step ≤ old iters − cooldown`, or no
    /// cool-down), since until then the two schedules agree. Fails if `iters` is below the updates done.
    pub fn set_iters(&mut self, iters: usize) -> Result<()> {
        if iters < self.step {
            return Err(Error::invalid(
                "iters",
                iters,
                format!("the run has already done {} updates", self.step),
            ));
        }
        self.cfg.iters = iters;
        Ok(())
    }
    /// Network updates done.
    pub fn step_count(&self) -> usize {
        self.step
    }
    /// The trained network.
    pub fn model(&self) -> &M {
        &self.model
    }
    /// The network with EMA weights (used for trajectories and sampling).
    pub fn ema_model(&self) -> &M {
        &self.ema_model
    }
    /// The trained variational parameters.
    pub fn params(&self) -> &VarParams {
        &self.params
    }
    /// Their EMA (defines the process used for training targets and sampling).
    pub fn params_ema(&self) -> &VarParams {
        &self.params_ema
    }
    /// The forward process of the EMA parameters.
    pub fn process(&self) -> &Process {
        &self.process
    }
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }
    /// The trained weights, sorted by name (the variables' tensors: they change with every update).
    pub fn weights(&self) -> Vec<(String, Tensor)> {
        sorted_vars(&self.varmap)
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().clone()))
            .collect()
    }
    /// The EMA weights, sorted by name.
    pub fn ema_weights(&self) -> Vec<(String, Tensor)> {
        self.ema_vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }
    pub fn rng(&mut self) -> &mut NoiseRng {
        &mut self.rng
    }

    /// The denoising loss of a batch: mean over elements of (ε̂ − ε)² (ε_v for VSMD).
    pub fn score_loss(&mut self, x0: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        let b = x0.dim(0)?;
        let idx = self.rng.indices(b, self.cfg.grid, &self.device)?;
        let eps = self.rng.randn(&self.process.state_shape(b), &self.device)?;
        // For VSMD the kernel marginalises v_0, so x_0 alone and state-shaped noise define z_t.
        let (zt, target) = self.marginals.perturb(x0, &idx, &eps)?;
        let times: Vec<f32> = Self::grid_of(&self.cfg).iter().map(|&t| t as f32).collect();
        let t = Tensor::from_vec(times, self.cfg.grid, &self.device)?.index_select(&idx, 0)?;
        // The network's dropout masks from a seed derived from the run's seed and this update's number (without
        // drawing from the seeded generator, whose data and noise streams are unchanged): a resumed run draws
        // the masks the uninterrupted run drew.
        let noise =
            crate::rng::derive_seed(crate::rng::derive_seed(self.cfg.seed, 2), self.step as u64);
        self.model.set_noise_seed(noise);
        let pred = self.model.forward(&zt, &t, cond)?;
        if pred.dims() != target.dims() {
            return Err(Error::Shape {
                what: "network output".into(),
                expected: format!("{:?}", target.dims()),
                got: format!("{:?}", pred.dims()),
            });
        }
        Ok((pred - target)?.sqr()?.mean_all()?)
    }

    /// One network update, then a variational stage if one is due.
    pub fn step<D: DataSource + ?Sized>(&mut self, data: &mut D) -> Result<StepReport> {
        let t0 = std::time::Instant::now();
        let (x0, cond) = data.next_batch(self.cfg.batch_size, &mut self.rng, &self.device)?;
        let loss_t = self.score_loss(&x0, cond.as_ref())?;
        let loss = loss_t.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !loss.is_finite() {
            return Err(Error::Diverged {
                step: self.step + 1,
                what: "training loss",
                value: loss,
            });
        }
        let grads = loss_t.backward()?;
        let grad_norm = self.opt.grad_norm(&grads)?;
        if !grad_norm.is_finite() {
            return Err(Error::Diverged {
                step: self.step + 1,
                what: "gradient norm",
                value: grad_norm,
            });
        }
        let scale = match self.cfg.grad_clip {
            Some(c) if grad_norm > c => c / (grad_norm + 1e-6),
            _ => 1.0,
        };
        self.opt.step(&grads, scale)?;
        self.update_ema()?;
        self.step += 1;
        let stage = if self.cfg.stage_after(self.step) {
            Some(self.variational_stage(data)?)
        } else {
            None
        };
        let report = StepReport {
            step: self.step,
            loss,
            grad_norm,
            stage,
        };
        self.seconds += t0.elapsed().as_secs_f64();
        if let Some((m, from)) = &mut self.metrics {
            // The file counts the time before it was opened (earlier sessions, or this trainer's updates
            // before a reopening) itself.
            m.record(&report, self.seconds - *from)?;
        }
        Ok(report)
    }

    fn update_ema(&mut self) -> Result<()> {
        let mut d = self.cfg.ema_decay;
        if self.cfg.ema_warmup {
            // Called after `self.step` updates (0-based index of the update just made).
            let k = self.step as f64;
            d = d.min((1.0 + k) / (10.0 + k));
        }
        for (k, v) in sorted_vars(&self.varmap) {
            let e = &self.ema_vars[&k];
            let (et, vt) = (e.as_tensor(), v.as_tensor());
            // One in-place op (the chain's bits, `adamw::ema`) where it applies, else candle's chain.
            if crate::adamw::applies(et) && crate::adamw::applies(vt) {
                crate::adamw::ema(et, vt, d, crate::adamw::Backend::Native)?;
            } else {
                e.set(&((et * d)? + (vt * (1.0 - d))?)?)?;
            }
        }
        Ok(())
    }

    /// Simulates backward trajectories from N(0, I) with the EMA network and EMA parameters and returns their
    /// statistics. With `variational.debias`, each chunk is paired with reference trajectories that start from
    /// the forward process's time-T marginal (a data batch through the closed-form kernel, with the same
    /// standard normal draw) and replay the same Brownian increments ([`TrajectoryStats::with_reference`]).
    pub fn simulate_stats<D: DataSource + ?Sized>(
        &mut self,
        data: &mut D,
    ) -> Result<TrajectoryStats> {
        let vc = self.cfg.variational;
        let cfg = SamplerConfig {
            kind: SamplerKind::EulerMaruyama,
            steps: vc.steps,
            t_eps: self.cfg.t_eps,
        };
        let times = cfg.grid(self.cfg.schedule.t_max())?;
        let marg = self.process.marginals(&times, &self.device)?;
        let gamma = match &self.params_ema {
            VarParams::Momentum { params, .. } => params.gamma,
            _ => 1.0,
        };
        let chunk = 256.min(vc.n_trajectories);
        let (mut parts, mut refs) = (Vec::new(), Vec::new());
        let mut done = 0;
        while done < vc.n_trajectories {
            let b = chunk.min(vc.n_trajectories - done);
            let (x0, cond) = if vc.debias || data.conditional() {
                let (x0, cond) = data.next_batch(b, &mut self.rng, &self.device)?;
                (Some(x0), cond)
            } else {
                (None, None)
            };
            let eps = self.rng.randn(&self.process.state_shape(b), &self.device)?;
            let replay = vc.debias.then(|| self.rng.clone());
            let chain = Chain {
                process: &self.process,
                marg: &marg,
                model: &self.ema_model,
                cond: cond.as_ref(),
                cfg: &cfg,
                times: &times,
                schedule: self.cfg.schedule,
                k_params: &self.params_ema,
                gamma,
                device: &self.device,
            };
            parts.push(chain.stats(eps.clone(), &mut self.rng)?);
            if let (Some(mut rng), Some(x0)) = (replay, x0) {
                let at_t = Tensor::zeros(b, DType::U32, &self.device)?;
                let (z_t, _) = marg.perturb(&x0, &at_t, &eps)?;
                refs.push(chain.stats(z_t, &mut rng)?);
            }
            done += b;
        }
        let stats = StatsAccumulator::merge(parts)?;
        if refs.is_empty() {
            Ok(stats)
        } else {
            stats.with_reference(&StatsAccumulator::merge(refs)?)
        }
    }

    /// A variational stage; returns the objective on the first and the last mini-batch.
    pub fn variational_stage<D: DataSource + ?Sized>(
        &mut self,
        data: &mut D,
    ) -> Result<(f64, f64)> {
        let stats = self.simulate_stats(data)?;
        let vc = self.cfg.variational;
        let (mut first, mut last) = (f64::NAN, f64::NAN);
        for i in 0..vc.iters {
            let batch = draw_batch(&mut self.rng, stats.len(), vc.batch);
            let (loss, grad) = stats.loss_and_grad(&self.params, vc.zeta, &batch);
            if i == 0 {
                first = loss;
            }
            last = loss;
            let mut theta = self.params.values().to_vec();
            self.a_opt.step(&mut theta, &grad);
            crate::error::ensure_finite("variational parameters after an SA step", &theta)?;
            self.params = self.params.with_values(&theta);
            let d = vc.ema_decay;
            let ema: Vec<f64> = self
                .params_ema
                .values()
                .iter()
                .zip(&theta)
                .map(|(e, t)| d * e + (1.0 - d) * t)
                .collect();
            self.params_ema = self.params_ema.with_values(&ema);
        }
        self.refresh_process()?;
        tracing::debug!(
            step = self.step,
            first,
            last,
            params = ?self.params.values(),
            ema = ?self.params_ema.values(),
            "variational stage"
        );
        Ok((first, last))
    }

    fn refresh_process(&mut self) -> Result<()> {
        self.process =
            self.params_ema
                .process(self.cfg.schedule, &self.cfg.data_shape, &self.device)?;
        self.marginals = self
            .process
            .marginals(&Self::grid_of(&self.cfg), &self.device)?;
        Ok(())
    }

    /// Runs until `iters` network updates, with a progress bar ([`crate::progress`]), logging every `log_every`
    /// steps and a checkpoint every `ckpt_every` steps (and at the end) when `ckpt_dir` is given.
    pub fn run<D: DataSource + ?Sized>(
        &mut self,
        data: &mut D,
        ckpt_dir: Option<&Path>,
        ckpt_every: usize,
        log_every: usize,
    ) -> Result<Vec<StepReport>> {
        let pb = Progress::new("training", self.cfg.iters as u64, "steps");
        self.run_with(pb, data, ckpt_dir, ckpt_every, log_every)
    }

    /// Makes [`Trainer::run`] stop once `flag` is raised (by Ctrl-C: `vsdm_eval::cli::stop_on_interrupt`):
    /// after the current update it writes a checkpoint (with a checkpoint folder) and returns
    /// [`Error::Interrupted`].
    pub fn stop_when(&mut self, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {
        self.stop = Some(flag);
    }

    /// [`Trainer::run`] without a progress bar or lines: for runs inside a larger job that reports its own
    /// progress (the shapes experiment's many short runs).
    pub fn run_quiet<D: DataSource + ?Sized>(
        &mut self,
        data: &mut D,
        ckpt_dir: Option<&Path>,
        ckpt_every: usize,
        log_every: usize,
    ) -> Result<Vec<StepReport>> {
        self.run_with(Progress::hidden(), data, ckpt_dir, ckpt_every, log_every)
    }

    fn run_with<D: DataSource + ?Sized>(
        &mut self,
        pb: Progress,
        data: &mut D,
        ckpt_dir: Option<&Path>,
        ckpt_every: usize,
        log_every: usize,
    ) -> Result<Vec<StepReport>> {
        let total = self.cfg.iters;
        pb.start_at(self.step as u64);
        let mut reports = Vec::new();
        let start = std::time::Instant::now();
        let mut done_here = 0usize;
        while self.step < total {
            let r = self.step(data)?;
            done_here += 1;
            let rate = done_here as f64 * self.cfg.batch_size as f64
                / start.elapsed().as_secs_f64().max(1e-9);
            pb.set_message(format!("loss {:.4} · {:.0} samples/s", r.loss, rate));
            pb.set_position(r.step as u64);
            if let Some((a, b)) = r.stage {
                tracing::info!(step = r.step, before = a, after = b, "variational stage");
            }
            if log_every > 0 && r.step % log_every == 0 {
                tracing::info!(
                    step = r.step,
                    loss = r.loss,
                    grad_norm = r.grad_norm,
                    "training"
                );
            }
            let stop = self
                .stop
                .as_ref()
                .is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst));
            if let Some(dir) = ckpt_dir {
                if stop || (ckpt_every > 0 && (r.step % ckpt_every == 0 || r.step == total)) {
                    self.save_checkpoint(dir)?;
                }
            }
            reports.push(r);
            // Also after the last update: the run is complete and saved, but its caller asked to stop, so the
            // command stops rather than go on (to forecast, say); rerun, it finds the finished run.
            if stop {
                pb.finish();
                return Err(Error::Interrupted {
                    step: self.step,
                    checkpoint: ckpt_dir.map(|d| d.display().to_string()),
                });
            }
        }
        pb.finish();
        Ok(reports)
    }

    /// Samples `batch` data points with the EMA network from the prior N(0, Σ_T(A_ema)); returns the data part.
    pub fn sample(
        &mut self,
        cond: Option<&Tensor>,
        batch: usize,
        cfg: &SamplerConfig,
    ) -> Result<Tensor> {
        let run = sample_model(
            &self.process,
            &self.ema_model,
            cond,
            cfg,
            batch,
            &mut self.rng,
            &self.device,
        )?;
        self.process.data_part(&run.state)
    }

    fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (k, v) in sorted_vars(&self.varmap) {
            out.insert(format!("model.{k}"), v.as_tensor().clone());
        }
        for (k, v) in &self.ema_vars {
            out.insert(format!("ema.{k}"), v.as_tensor().clone());
        }
        for (k, t) in self.opt.state_tensors() {
            out.insert(format!("opt.{k}"), t);
        }
        let f64t = |v: &[f64]| Tensor::from_vec(v.to_vec(), v.len(), &Device::Cpu);
        if !self.params.values().is_empty() {
            out.insert("var.params".into(), f64t(self.params.values())?);
            out.insert("var.params_ema".into(), f64t(self.params_ema.values())?);
            out.insert("var.adam_m".into(), f64t(&self.a_opt.m)?);
            out.insert("var.adam_v".into(), f64t(&self.a_opt.v)?);
        }
        Ok(out)
    }

    /// Fails with [`Error::DivergedWeights`] when the network's or its EMA's weights hold a NaN or an infinity:
    /// the loss and the gradient norm are checked before every update, but an update with a finite gradient
    /// can still overflow the weights (a learning rate far too large), and the next loss would only tell after
    /// a checkpoint of them had been written. [`Trainer::save_checkpoint`] and [`Trainer::export`] call it.
    pub fn ensure_finite_weights(&self) -> Result<()> {
        let vars = sorted_vars(&self.varmap);
        let model = vars
            .iter()
            .map(|(k, v)| (format!("model.{k}"), v.as_tensor()));
        let ema = self
            .ema_vars
            .iter()
            .map(|(k, v)| (format!("ema.{k}"), v.as_tensor()));
        match crate::error::first_non_finite(model.chain(ema))? {
            None => Ok(()),
            Some(name) => Err(Error::DivergedWeights {
                step: self.step,
                name,
            }),
        }
    }

    /// Writes a checkpoint under `dir` (atomically: a temporary directory renamed into place, then the `latest`
    /// pointer replaced by rename) and keeps the previous one. Returns its directory.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<PathBuf> {
        self.ensure_finite_weights()?;
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |source| Error::Io { path: p, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let name = format!("ckpt-{:09}", self.step);
        let tmp = dir.join(format!(".tmp-{name}"));
        let fin = dir.join(&name);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        write_safetensors(&self.tensors()?, &tmp.join("state.safetensors"))?;
        let meta = CheckpointMeta {
            format: FORMAT.into(),
            config: self.cfg.clone(),
            step: self.step,
            opt_step: self.opt.step_count(),
            a_opt_step: self.a_opt.step,
            rng: self.rng.state(),
            params: self.params.clone(),
            params_ema: self.params_ema.clone(),
        };
        let json =
            serde_json::to_string_pretty(&meta).map_err(|e| ckpt_err(&tmp, e.to_string()))?;
        std::fs::write(tmp.join("state.json"), json).map_err(io(&tmp))?;
        if fin.exists() {
            std::fs::remove_dir_all(&fin).map_err(io(&fin))?;
        }
        std::fs::rename(&tmp, &fin).map_err(io(&fin))?;
        // An unreadable pointer keeps every older checkpoint: which one it meant is unknown.
        let previous = latest_checkpoint(dir);
        let latest = dir.join(LATEST);
        let ltmp = dir.join(".latest.tmp");
        std::fs::write(&ltmp, &name).map_err(io(&ltmp))?;
        std::fs::rename(&ltmp, &latest).map_err(io(&latest))?;
        // Keep the newest and the previous checkpoint.
        if let (Ok(previous), Ok(entries)) = (previous, std::fs::read_dir(dir)) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n.starts_with("ckpt-") && n != name && Some(n.as_str()) != previous.as_deref() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(fin)
    }

    /// Resumes from the latest checkpoint in `dir` (or from a `ckpt-*` directory given directly).
    pub fn resume<B>(dir: &Path, device: &Device, build: B) -> Result<Self>
    where
        B: Fn(VarBuilder) -> candle_core::Result<M>,
    {
        let ck = if dir.join("state.json").exists() {
            dir.to_path_buf()
        } else {
            let name = latest_checkpoint(dir)?.ok_or_else(|| {
                ckpt_err(
                    &dir.join(LATEST),
                    "no checkpoint here (the file is missing)",
                )
            })?;
            dir.join(name)
        };
        let meta_path = ck.join("state.json");
        let text =
            std::fs::read_to_string(&meta_path).map_err(|e| ckpt_err(&meta_path, e.to_string()))?;
        let meta: CheckpointMeta = serde_json::from_str(&text)
            .map_err(|e| ckpt_err(&meta_path, format!("unreadable: {e}")))?;
        if meta.format != FORMAT {
            return Err(ckpt_err(
                &meta_path,
                format!("format {:?}, expected {FORMAT:?}", meta.format),
            ));
        }
        let mut tr = Self::new(meta.config.clone(), device, build)?;
        let st_path = ck.join("state.safetensors");
        let tensors = candle_core::safetensors::load(&st_path, device)
            .map_err(|e| ckpt_err(&st_path, format!("unreadable: {e}")))?;
        if let Some(bad) = crate::error::first_non_finite_in(&tensors)? {
            return Err(ckpt_err(
                &st_path,
                format!(
                    "tensor {bad} holds NaN or infinite values: resume from an earlier checkpoint"
                ),
            ));
        }
        let get = |k: &str| -> Result<&Tensor> {
            tensors
                .get(k)
                .ok_or_else(|| ckpt_err(&st_path, format!("missing tensor {k}")))
        };
        let set = |var: &Var, k: &str| -> Result<()> {
            let t = get(k)?;
            if t.dims() != var.dims() {
                return Err(ckpt_err(
                    &st_path,
                    format!(
                        "tensor {k} has shape {:?}, the network expects {:?}",
                        t.dims(),
                        var.dims()
                    ),
                ));
            }
            var.set(t)?;
            Ok(())
        };
        for (k, v) in sorted_vars(&tr.varmap) {
            set(&v, &format!("model.{k}"))?;
        }
        for (k, v) in &tr.ema_vars {
            set(v, &format!("ema.{k}"))?;
        }
        tr.opt
            .load_state(meta.opt_step, &|k| {
                tensors.get(&format!("opt.{k}")).cloned()
            })
            .map_err(|e| ckpt_err(&st_path, e))?;
        let host =
            |k: &str| -> Result<Vec<f64>> { Ok(get(k)?.to_dtype(DType::F64)?.to_vec1::<f64>()?) };
        if !tr.params.values().is_empty() {
            let n = tr.params.values().len();
            let (p, pe, m, v) = (
                host("var.params")?,
                host("var.params_ema")?,
                host("var.adam_m")?,
                host("var.adam_v")?,
            );
            if [p.len(), pe.len(), m.len(), v.len()]
                .iter()
                .any(|&l| l != n)
            {
                return Err(ckpt_err(
                    &st_path,
                    format!("variational tensors do not hold {n} values"),
                ));
            }
            tr.params = tr.params.with_values(&p);
            tr.params_ema = tr.params_ema.with_values(&pe);
            tr.a_opt.m = m;
            tr.a_opt.v = v;
        }
        tr.a_opt.step = meta.a_opt_step;
        tr.rng = NoiseRng::from_state(&meta.rng);
        tr.step = meta.step;
        tr.refresh_process()?;
        Ok(tr)
    }

    /// Writes the EMA network as `model.safetensors` and `config.json` (the training config and the EMA
    /// variational parameters): the layout of the published weights (`--weights PATH` or `hf:OWNER/NAME`).
    pub fn export(&self, dir: &Path) -> Result<()> {
        self.ensure_finite_weights()?;
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |source| Error::Io { path: p, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut ts = HashMap::new();
        for (k, v) in &self.ema_vars {
            ts.insert(k.clone(), v.as_tensor().clone());
        }
        let tmp = dir.join(".model.safetensors.tmp");
        write_safetensors(&ts, &tmp)?;
        std::fs::rename(&tmp, dir.join("model.safetensors")).map_err(io(dir))?;
        let cfg = ExportedConfig {
            config: self.cfg.clone(),
            params: self.params_ema.clone(),
            step: self.step,
        };
        let json = serde_json::to_string_pretty(&cfg).map_err(|e| ckpt_err(dir, e.to_string()))?;
        let tmp = dir.join(".config.json.tmp");
        std::fs::write(&tmp, json).map_err(io(&tmp))?;
        std::fs::rename(&tmp, dir.join("config.json")).map_err(io(dir))?;
        Ok(())
    }
}

/// Writes `tensors` as a safetensors file at `path`, a temporary name the caller then renames, with the
/// permissions any new file gets (the process's umask: usually readable by all). `candle_core::safetensors::save`
/// goes through safetensors' own temporary file, created owner-only (0600), so weights and checkpoints written
/// with it could not be read by a colleague on a shared machine. The file is built in memory first (a
/// paper-scale checkpoint with its optimiser moments: about 0.9 GB more at its peak), and a leftover file at
/// `path` is removed first, so that it cannot pass its permissions on.
pub fn write_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let bytes = safetensors::tensor::serialize(tensors, None).map_err(|e| Error::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    std::fs::write(path, bytes).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

/// The weights folder a `--weights` path means: the folder itself, or, when the path is one of the folder's
/// files (`files`, e.g. `model.safetensors` or `config.json`: a path copied from a listing), the folder
/// holding it.
pub fn weights_folder(path: &Path, files: &[&str]) -> PathBuf {
    let named = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| files.contains(&n));
    match path.parent() {
        Some(parent) if named && path.is_file() => {
            if parent.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                parent.to_path_buf()
            }
        }
        _ => path.to_path_buf(),
    }
}

/// The `config.json` next to exported weights.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ExportedConfig {
    pub config: TrainConfig,
    /// The variational parameters to sample with (EMA).
    pub params: VarParams,
    pub step: usize,
}

impl ExportedConfig {
    /// Reads `config.json`, naming the file on error.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ckpt_err(path, e.to_string()))?;
        let c: Self =
            serde_json::from_str(&text).map_err(|e| ckpt_err(path, format!("unreadable: {e}")))?;
        c.config
            .validate()
            .map_err(|e| ckpt_err(path, e.to_string()))?;
        let same_kind = match (&c.params, &c.config.init) {
            (VarParams::None, VarParams::None)
            | (VarParams::Diagonal(_), VarParams::Diagonal(_))
            | (VarParams::Momentum { .. }, VarParams::Momentum { .. }) => true,
            (VarParams::Full { d, .. }, VarParams::Full { d: d0, .. }) => d == d0,
            _ => false,
        };
        if !same_kind {
            return Err(ckpt_err(
                path,
                "`params` are not of the kind (and size) of the configured method's (`config.init`)",
            ));
        }
        let (got, want) = (c.params.values().len(), c.config.init.values().len());
        if got != want {
            return Err(ckpt_err(
                path,
                format!(
                    "`params` holds {got} values, but the configured method (`config.init`) has {want}"
                ),
            ));
        }
        c.params
            .validate()
            .map_err(|e| ckpt_err(path, format!("`params`: {e}")))?;
        Ok(c)
    }

    /// The sampling process of these weights.
    pub fn process(&self, device: &Device) -> Result<Process> {
        self.params
            .process(self.config.schedule, &self.config.data_shape, device)
    }
}
