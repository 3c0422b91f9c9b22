//! Methods, budgets and the training run: the forecasting data turned into a [`vsdm_core::Trainer`] over
//! [`ForecastNet`] with the settings of ALGORITHM.md §F.3 scaled to a CPU budget.

use std::path::Path;

use anyhow::Context;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use vsdm_core::trainer::{TrainConfig, Trainer};
use vsdm_core::variational::VarParams;
use vsdm_core::{BetaSchedule, VsmdParams};

use crate::data::Dataset;
use crate::model::{ForecastNet, NetConfig};
use crate::window::{TrainWindows, WindowConfig};

/// Upper bounds of the command-line counts (updates and iterations; batches and trajectories; solver steps
/// and lengths; network widths and depths).
pub const MAX_COUNT: usize = 1_000_000_000;
pub const MAX_BATCH: usize = 1 << 20;
pub const MAX_STEPS: usize = 1_000_000;
pub const MAX_WIDTH: usize = 65_536;

/// VSMD's default constant β on time series (see [`Budget::schedule`]).
pub const VSMD_BETA: f64 = 3.0;

/// The diffusion method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Variance-preserving diffusion (VSDM with A = 0, not adapted): the DSM baseline.
    Vp,
    /// VSDM: diagonal A, one value per series and horizon step, adapted by stochastic approximation (the default).
    #[default]
    Vsdm,
    /// VSMD: critically damped momentum diffusion with adapted c per series and horizon step.
    Vsmd,
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::Vp => "vp",
            Method::Vsdm => "vsdm",
            Method::Vsmd => "vsmd",
        }
    }

    /// Channels of the diffusion state.
    pub fn state_channels(&self) -> usize {
        if *self == Method::Vsmd {
            2
        } else {
            1
        }
    }
}

/// The compute budget of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct Budget {
    /// Network updates in total.
    #[arg(
        long,
        global = true,
        default_value_t = 500,
        allow_negative_numbers = true
    )]
    pub iters: usize,
    /// Windows per batch.
    #[arg(
        long,
        global = true,
        default_value_t = 16,
        allow_negative_numbers = true
    )]
    pub batch: usize,
    /// Learning rate of the network (Adam).
    #[arg(
        long,
        global = true,
        default_value_t = 1e-3,
        allow_hyphen_values = true
    )]
    pub lr: f64,
    /// Network updates before the first variational stage (fraction of --iters).
    #[arg(long, global = true, default_value_t = 0.2, allow_hyphen_values = true)]
    pub warmup_frac: f64,
    /// Final network-only updates (fraction of --iters).
    #[arg(long, global = true, default_value_t = 0.2, allow_hyphen_values = true)]
    pub cooldown_frac: f64,
    /// Number of variational stages between warm-up and cool-down.
    #[arg(
        long,
        global = true,
        default_value_t = 4,
        allow_negative_numbers = true
    )]
    pub stages: usize,
    /// SA iterations per variational stage.
    #[arg(
        long,
        global = true,
        default_value_t = 40,
        allow_negative_numbers = true
    )]
    pub a_iters: usize,
    /// Adam rate of the variational parameters.
    #[arg(
        long,
        global = true,
        default_value_t = 1e-2,
        allow_hyphen_values = true
    )]
    pub a_lr: f64,
    /// Backward trajectories simulated per stage.
    #[arg(
        long,
        global = true,
        default_value_t = 64,
        allow_negative_numbers = true
    )]
    pub n_traj: usize,
    /// Euler–Maruyama steps of those trajectories.
    #[arg(
        long,
        global = true,
        default_value_t = 25,
        allow_negative_numbers = true
    )]
    pub traj_steps: usize,
    /// Residual channels of the network.
    #[arg(
        long,
        global = true,
        default_value_t = 32,
        allow_negative_numbers = true
    )]
    pub hidden: usize,
    /// Residual blocks.
    #[arg(
        long,
        global = true,
        default_value_t = 2,
        allow_negative_numbers = true
    )]
    pub layers: usize,
    /// Attention heads.
    #[arg(
        long,
        global = true,
        default_value_t = 2,
        allow_negative_numbers = true
    )]
    pub heads: usize,
    /// Time steps per token (0: 6 when it divides context and horizon, else 1).
    #[arg(
        long,
        global = true,
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub patch: usize,
    /// EMA decay of the network weights.
    #[arg(
        long,
        global = true,
        default_value_t = 0.995,
        allow_hyphen_values = true
    )]
    pub ema: f64,
    /// ζ of the variational objective (ALGORITHM.md §C; default: 0.75 for VSDM as in the official code, 1 for
    /// VSMD). Below 1 it adds a constant push of A towards less contraction.
    #[arg(long, global = true, allow_hyphen_values = true)]
    #[serde(default)]
    pub zeta: Option<f64>,
    /// Peak β of the power noise schedule β_t = 0.1 + t^1.7 (β_max − 0.1) (default: this schedule with 10 for
    /// VP and VSDM, the VSDM time-series README's; VSMD's default is a constant β, see --constant-beta).
    #[arg(long, global = true, allow_hyphen_values = true)]
    #[serde(default)]
    pub beta_max: Option<f64>,
    /// A constant β instead of the power schedule (default: 3 for VSMD; the official VSMD time-series script
    /// uses 6, which forecast much worse here, see docs/results/timeseries.md).
    #[arg(
        long,
        global = true,
        conflicts_with = "beta_max",
        allow_hyphen_values = true
    )]
    #[serde(default)]
    pub constant_beta: Option<f64>,
    /// Pair each variational stage's trajectories with reference trajectories from the forward marginal and
    /// subtract their gradient, which removes the Euler–Maruyama bias of the plain estimator (docs/CORE.md,
    /// "Reference trajectories"). Default: on for VSMD, off for VSDM; ignored by VP.
    #[arg(long, global = true)]
    #[serde(default)]
    pub debias: Option<bool>,
    /// VSMD's damping ratio κ of the critical-damping transform (the official `--damp_coef`): 1 (default) is
    /// critically damped, below 1 under-damped (the official time-series script also runs 0.9). Refused beside VP
    /// or VSDM alone (bench applies it to its VSMD runs).
    #[arg(long, global = true, allow_hyphen_values = true)]
    #[serde(default)]
    pub kappa: Option<f64>,
}

impl Budget {
    /// Checks the values the trainer's own validation cannot see (it gets the schedule derived from them),
    /// naming the flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.iters == 0 || self.batch == 0 {
            anyhow::bail!(
                "--iters {} --batch {}: training needs at least one update of at least one window",
                self.iters,
                self.batch
            );
        }
        vsdm_eval::cli::at_least_one(&[
            ("--a-iters", self.a_iters),
            ("--n-traj", self.n_traj),
            ("--traj-steps", self.traj_steps),
            ("--layers", self.layers),
        ])?;
        vsdm_eval::cli::learning_rate("--lr", self.lr)?;
        vsdm_eval::cli::learning_rate("--a-lr", self.a_lr)?;
        vsdm_eval::cli::ema_decay("--ema", self.ema)?;
        // Bounds far above any real use: a mistyped count is an error naming it, not an allocation that
        // overflows or aborts.
        vsdm_eval::cli::at_most(&[
            ("--iters", self.iters, MAX_COUNT),
            ("--batch", self.batch, MAX_BATCH),
            ("--stages", self.stages, MAX_COUNT),
            ("--a-iters", self.a_iters, MAX_COUNT),
            ("--n-traj", self.n_traj, MAX_BATCH),
            ("--traj-steps", self.traj_steps, MAX_STEPS),
            ("--hidden", self.hidden, MAX_WIDTH),
            ("--layers", self.layers, MAX_WIDTH),
            ("--heads", self.heads, MAX_WIDTH),
            ("--patch", self.patch, MAX_STEPS),
        ])?;
        if let Some(z) = self.zeta {
            vsdm_eval::cli::zeta(z)?;
        }
        if let Some(k) = self.kappa {
            vsdm_eval::cli::kappa(k)?;
        }
        for (flag, f) in [
            ("--warmup-frac", self.warmup_frac),
            ("--cooldown-frac", self.cooldown_frac),
        ] {
            if !(0.0..=1.0).contains(&f) {
                anyhow::bail!("{flag} {f}: expected a fraction of --iters between 0 and 1");
            }
        }
        if self.warmup_frac + self.cooldown_frac >= 1.0 {
            anyhow::bail!(
                "--warmup-frac {} + --cooldown-frac {} reach 1: no updates would be left for the variational \
                 stages",
                self.warmup_frac,
                self.cooldown_frac
            );
        }
        if self.stages == 0 {
            anyhow::bail!(
                "--stages 0: at least one variational stage (for a diffusion without one, use --method vp)"
            );
        }
        for m in [Method::Vp, Method::Vsmd] {
            self.schedule(m)?;
        }
        if self.heads == 0 || self.hidden == 0 || !self.hidden.is_multiple_of(self.heads) {
            anyhow::bail!(
                "--hidden {} --heads {}: the width must be a positive multiple of the number of heads",
                self.hidden,
                self.heads
            );
        }
        Ok(())
    }

    /// The β schedule of `method`: `--constant-beta` (a constant β), else `--beta-max` (the peak of VSDM's
    /// power schedule β_t = 0.1 + t^1.7 (β_max − 0.1), T = 1), else the method's default: the power schedule
    /// with β_max = 10 for VP and VSDM (the VSDM time-series README's), a constant β = [`VSMD_BETA`] for VSMD.
    ///
    /// VSMD's default is not the official time-series script's constant β = 6 (ALGORITHM.md §A.2): on both data
    /// sets here VSMD forecast much worse with it, and worse with the power schedule (which it used until
    /// 2026-11-29) than with a constant β of 2–3; the sweep and the three-seed tables are in
    /// docs/results/timeseries.md ("VSMD's β schedule").
    pub fn schedule(&self, method: Method) -> anyhow::Result<BetaSchedule> {
        match (self.constant_beta, self.beta_max) {
            (Some(c), Some(m)) => {
                anyhow::bail!("--constant-beta {c} and --beta-max {m}: give one schedule, not both")
            }
            (Some(c), None) => BetaSchedule::constant(c, 1.0)
                .map_err(|e| anyhow::anyhow!("--constant-beta {c}: {e}")),
            (None, None) if method == Method::Vsmd => Ok(BetaSchedule::constant(VSMD_BETA, 1.0)?),
            (None, peak) => {
                let mut s = BetaSchedule::vsdm_default();
                if let (Some(p), BetaSchedule::Power { beta_max, .. }) = (peak, &mut s) {
                    *beta_max = p;
                    s.validate()
                        .map_err(|e| anyhow::anyhow!("--beta-max {p}: {e}"))?;
                }
                Ok(s)
            }
        }
    }

    /// The tiny budget of the test suite.
    pub fn smoke() -> Self {
        Self {
            iters: 12,
            batch: 4,
            lr: 1e-3,
            warmup_frac: 0.25,
            cooldown_frac: 0.25,
            stages: 2,
            a_iters: 3,
            a_lr: 1e-2,
            n_traj: 4,
            traj_steps: 4,
            hidden: 8,
            layers: 1,
            heads: 2,
            patch: 0,
            ema: 0.9,
            zeta: None,
            beta_max: None,
            constant_beta: None,
            debias: None,
            kappa: None,
        }
    }
}

/// The trainer's configuration for `method` on windows of `num_series × horizon`.
pub fn train_config(
    method: Method,
    budget: &Budget,
    num_series: usize,
    horizon: usize,
    seed: u64,
) -> anyhow::Result<TrainConfig> {
    let n = num_series * horizon;
    let (init, adaptive) = match method {
        Method::Vp => (VarParams::None, false),
        Method::Vsdm => (VarParams::Diagonal(vec![0.0; n]), true),
        Method::Vsmd => (
            VarParams::Momentum {
                // c from 0 (CLD's value), not the VSMD code's 0.01: the first stage moves it by more.
                c: vec![0.0; n],
                params: VsmdParams {
                    kappa: Some(budget.kappa.unwrap_or(1.0)),
                    ..VsmdParams::default()
                },
            },
            true,
        ),
    };
    let mut c = TrainConfig::new(
        budget.schedule(method)?,
        &[1, num_series, horizon],
        init,
        adaptive,
    );
    c.iters = budget.iters;
    c.batch_size = budget.batch;
    c.adam.lr = budget.lr;
    c.grad_clip = Some(10.0);
    c.ema_decay = budget.ema;
    c.warmup = (budget.iters as f64 * budget.warmup_frac).round() as usize;
    c.cooldown = (budget.iters as f64 * budget.cooldown_frac).round() as usize;
    let middle = budget.iters.saturating_sub(c.warmup + c.cooldown);
    c.block = (middle / budget.stages.max(1)).max(1);
    c.variational.iters = budget.a_iters;
    c.variational.adam.lr = budget.a_lr;
    c.variational.n_trajectories = budget.n_traj;
    c.variational.batch = (budget.n_traj / 2).max(1);
    c.variational.steps = budget.traj_steps;
    if let Some(z) = budget.zeta {
        c.variational.zeta = z;
    }
    if let Some(d) = budget.debias {
        c.variational.debias = d;
    }
    c.seed = seed;
    Ok(c)
}

/// The network configuration for `method` on `window` with `features` time features.
pub fn net_config(
    method: Method,
    budget: &Budget,
    num_series: usize,
    window: &WindowConfig,
    features: usize,
) -> NetConfig {
    let base = NetConfig::small(
        num_series,
        window.context,
        window.horizon,
        features,
        method.state_channels(),
    );
    NetConfig {
        hidden: budget.hidden,
        heads: budget.heads,
        layers: budget.layers,
        patch: if budget.patch > 0 {
            budget.patch
        } else {
            base.patch
        },
        ..base
    }
}

/// The window and network of a checkpointed run, kept beside its checkpoints in `run.json`. The trainer's
/// checkpoint holds only its own settings, and neither the context length nor the scaling changes a weight's
/// shape: without this record a resumed run with another `--context` or `--scaling` would go on silently under
/// settings it did not start with.
#[derive(Debug, Clone, Copy, Serialize)]
struct RunSettings {
    window: WindowConfig,
    network: NetConfig,
}

const RUN_SETTINGS: &str = "run.json";

/// The flag that stops every training of this process after its current update (with a checkpoint where the
/// run keeps them): [`stop_training_on`].
static STOP: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
    std::sync::OnceLock::new();

/// Makes [`train`] and [`train_with`] stop once `flag` is raised (the command line passes Ctrl-C's,
/// `vsdm_eval::cli::stop_on_interrupt`); the training then returns `vsdm_core::Error::Interrupted`. The first
/// flag given stays.
pub fn stop_training_on(flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let _ = STOP.set(flag);
}

/// The leaves where two JSON values differ, as `path: before → now`, appended to `out`.
fn differences(
    path: &str,
    before: &serde_json::Value,
    now: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (before, now) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                differences(
                    &sub,
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if before != now => out.push(format!("{path}: {before} → {now}")),
        _ => {}
    }
}

/// A finished training run.
pub struct Trained {
    pub method: Method,
    pub trainer: Trainer<ForecastNet>,
    pub net: NetConfig,
    pub window: WindowConfig,
    /// Wall-clock seconds of training.
    pub seconds: f64,
    /// Updates made by this call (fewer than the budget when it resumed a checkpoint; 0 when that checkpoint
    /// had already reached it).
    pub updates: usize,
    /// Mean loss over the last 10% of this call's updates; `None` when it made none.
    pub final_loss: Option<f64>,
}

/// Trains `method` on the training matrix of `data`; with `ckpt = Some((dir, every))` checkpoints into `dir`
/// every `every` updates and resumes from it when it holds one.
pub fn train(
    method: Method,
    budget: &Budget,
    data: &Dataset,
    window: WindowConfig,
    seed: u64,
    device: &Device,
    ckpt: Option<(&Path, usize)>,
) -> anyhow::Result<Trained> {
    let cfg = train_config(method, budget, data.num_series(), window.horizon, seed)?;
    train_with(method, cfg, budget, data, window, device, ckpt)
}

/// [`train`] with a trainer configuration of the caller's (e.g. a given, fixed A: `cfg.init` and
/// `cfg.adaptive = false`); the network comes from `budget` as in [`train`].
pub fn train_with(
    method: Method,
    cfg: TrainConfig,
    budget: &Budget,
    data: &Dataset,
    window: WindowConfig,
    device: &Device,
    ckpt: Option<(&Path, usize)>,
) -> anyhow::Result<Trained> {
    budget.validate()?;
    let (ckpt_dir, ckpt_every) = match ckpt {
        Some((dir, every)) => (Some(dir), every),
        None => (None, 0),
    };
    let mut source = TrainWindows::new(data.train.clone(), window)?;
    let d = data.num_series();
    let net = net_config(method, budget, d, &window, source.features());
    // Fail early (with the reason) rather than inside the trainer's builder.
    ForecastNet::new(
        candle_nn::VarBuilder::zeros(candle_core::DType::F32, device),
        net,
    )?;
    let build = move |vb: candle_nn::VarBuilder| ForecastNet::new(vb, net);
    let settings = RunSettings {
        window,
        network: net,
    };
    let mut trainer = match ckpt_dir {
        // A damaged pointer is an error naming it: starting over would delete that run's checkpoints.
        Some(dir) if vsdm_core::trainer::latest_checkpoint(dir)?.is_some() => {
            tracing::info!(dir = %dir.display(), "resuming from checkpoint");
            let tr = Trainer::resume(dir, device, build)?;
            let mut diff = Vec::new();
            differences(
                "",
                &serde_json::to_value(tr.config())?,
                &serde_json::to_value(&cfg)?,
                &mut diff,
            );
            if diff.is_empty() && tr.config() != &cfg {
                diff.push("the trainer's settings".into());
            }
            let path = dir.join(RUN_SETTINGS);
            if path.is_file() {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let old: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{}: not the settings of a run", path.display()))?;
                differences("", &old, &serde_json::to_value(settings)?, &mut diff);
            }
            if !diff.is_empty() {
                anyhow::bail!(
                    "the checkpoint in {} was made with other settings ({}); use another --out or remove it",
                    dir.display(),
                    diff.join("; ")
                );
            }
            tr
        }
        _ => {
            // Built first: settings it refuses leave no folder behind.
            let tr = Trainer::new(cfg, device, build)?;
            if let Some(dir) = ckpt_dir {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let path = dir.join(RUN_SETTINGS);
                let tmp = dir.join(".run.json.tmp");
                std::fs::write(&tmp, serde_json::to_string_pretty(&settings)?)
                    .with_context(|| format!("writing {}", tmp.display()))?;
                std::fs::rename(&tmp, &path)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            tr
        }
    };
    if let Some(dir) = ckpt_dir {
        // The run's folder, beside its checkpoints.
        let run = dir.parent().unwrap_or(dir);
        trainer.log_metrics(&run.join(vsdm_core::metrics::MetricsLog::FILE))?;
    }
    tracing::info!(
        method = method.name(),
        series = d,
        context = window.context,
        horizon = window.horizon,
        "training"
    );
    if let Some(flag) = STOP.get() {
        trainer.stop_when(flag.clone());
        vsdm_eval::cli::training(true);
    }
    let start = std::time::Instant::now();
    let reports = trainer.run(&mut source, ckpt_dir, ckpt_every, 100);
    // What follows (exporting, forecasting, the next method of a bench) quits at once on Ctrl-C.
    vsdm_eval::cli::training(false);
    let reports = reports?;
    let seconds = start.elapsed().as_secs_f64();
    let tail = reports.len().div_ceil(10);
    let final_loss = (tail > 0)
        .then(|| reports.iter().rev().take(tail).map(|r| r.loss).sum::<f64>() / tail as f64);
    Ok(Trained {
        method,
        trainer,
        net,
        window,
        seconds,
        updates: reports.len(),
        final_loss,
    })
}

#[cfg(test)]
mod tests {
    use super::differences;
    use serde_json::json;

    /// Every leaf that differs, by its dotted path, in key order; a key on one side only reads as null on the
    /// other; arrays and numbers compare whole; equal values give nothing.
    #[test]
    fn differences_name_each_changed_leaf() {
        let before =
            json!({"a": 1, "b": {"c": [1, 2], "d": "x", "gone": true}, "same": {"k": 0.5}});
        let now = json!({"a": 2, "b": {"c": [1, 3], "d": "x", "new": 1}, "same": {"k": 0.5}});
        let mut out = Vec::new();
        differences("", &before, &now, &mut out);
        assert_eq!(
            out,
            [
                "a: 1 → 2",
                "b.c: [1,2] → [1,3]",
                "b.gone: true → null",
                "b.new: null → 1",
            ]
        );
        let mut none = Vec::new();
        differences("", &before, &before.clone(), &mut none);
        assert!(none.is_empty(), "{none:?}");
        let mut top = vec!["kept".to_string()];
        differences("run", &json!(1), &json!({"x": 1}), &mut top);
        assert_eq!(top, ["kept", "run: 1 → {\"x\":1}"]);
    }
}
