//! The three training methods on images and their defaults (ALGORITHM.md §F.2, §G).

use serde::{Deserialize, Serialize};
use vsdm_core::variational::VarParams;
use vsdm_core::{BetaSchedule, TrainConfig, VsmdParams};

use crate::data::{IMAGE_BYTES, SIDE};
use crate::error::{Error, Result};
use crate::unet::UNetConfig;

/// How the forward process is chosen and trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The VP SDE baseline (A = 0, fixed).
    Vp,
    /// VSDM: a time-invariant diagonal A, one value per pixel and channel, learned by stochastic approximation.
    Vsdm,
    /// VSMD: the critically damped momentum process with learned c per pixel and channel; the network sees
    /// position and velocity (6 channels) and predicts the velocity noise.
    Vsmd,
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "vp" => Ok(Self::Vp),
            "vsdm" => Ok(Self::Vsdm),
            "vsmd" => Ok(Self::Vsmd),
            _ => Err(Error::invalid("method", s, "expected vp, vsdm or vsmd")),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Vp => "vp",
            Self::Vsdm => "vsdm",
            Self::Vsmd => "vsmd",
        })
    }
}

impl Method {
    /// The network for this method: VSMD doubles the input channels.
    pub fn unet(self, base: UNetConfig) -> UNetConfig {
        match self {
            Self::Vsmd => base.for_momentum(),
            _ => base,
        }
    }

    /// The β schedule: VSDM's power schedule (β 0.1 → 10, r = 1.7) for VP and VSDM, VSMD's constant β = 10
    /// for images.
    pub fn schedule(self) -> BetaSchedule {
        match self {
            Self::Vsmd => BetaSchedule::Constant {
                beta: 10.0,
                t_max: 1.0,
            },
            _ => BetaSchedule::vsdm_default(),
        }
    }

    /// Initial variational parameters: none (VP), A = 0 (VSDM), c = 0.01 (VSMD's initialisation), and whether
    /// they are optimised.
    pub fn init(self) -> (VarParams, bool) {
        let n = IMAGE_BYTES;
        match self {
            Self::Vp => (VarParams::None, false),
            Self::Vsdm => (VarParams::Diagonal(vec![0.0; n]), true),
            Self::Vsmd => (
                VarParams::Momentum {
                    c: vec![0.01; n],
                    params: VsmdParams::default(),
                },
                true,
            ),
        }
    }

    /// The default sampler: Euler–Maruyama with 200 steps (VSDM's CIFAR-10 setting) or Heun on the
    /// probability-flow ODE with 100 steps, 199 evaluations (VSMD's).
    pub fn default_sampler(self) -> vsdm_core::SamplerConfig {
        use vsdm_core::{SamplerConfig, SamplerKind};
        match self {
            Self::Vsmd => SamplerConfig::new(SamplerKind::Heun, 100),
            _ => SamplerConfig::new(SamplerKind::EulerMaruyama, 200),
        }
    }
}

/// Training settings that differ between a CPU-sized and a paper-sized run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub batch: usize,
    pub iters: usize,
    pub lr: f64,
    pub ema: f64,
    pub grad_clip: f64,
    /// Network updates between variational stages.
    pub block: usize,
    /// Trajectories, Euler–Maruyama steps and SA iterations per variational stage.
    pub n_traj: usize,
    pub traj_steps: usize,
    pub a_iters: usize,
}

impl Budget {
    /// The paper's scale: batch 256, EMA 0.9999, clipping at 1, lr 2e-4 (VSMD's `training.py` default and dev
    /// runs use 3e-4, VSDM's EDM code 1e-5 on top of a pre-trained model).
    ///
    /// The clipping threshold is VSMD's, but this crate's loss is a mean over the image's 3,072 elements
    /// (docs/CORE.md) where VSMD's sums over them, so its gradient norm is 1/3,072 of VSMD's for the same
    /// network: VSMD's clipping at 1 acts on nearly every update, this one on the large ones only (the tiny
    /// network's first updates have norms of 1.2–1.5). Adam is otherwise indifferent to the loss's scale.
    pub fn paper() -> Self {
        Self {
            batch: 256,
            iters: 400_000,
            lr: 2e-4,
            ema: 0.9999,
            grad_clip: 1.0,
            block: 500,
            n_traj: 256,
            traj_steps: 100,
            a_iters: 100,
        }
    }

    /// A few minutes on a CPU with the tiny network.
    pub fn cpu() -> Self {
        Self {
            batch: 16,
            iters: 2000,
            lr: 1e-3,
            ema: 0.995,
            grad_clip: 1.0,
            block: 50,
            n_traj: 16,
            traj_steps: 20,
            a_iters: 20,
        }
    }
}

/// The trainer's configuration for a method and budget.
pub fn train_config(method: Method, budget: &Budget, seed: u64) -> TrainConfig {
    let (init, adaptive) = method.init();
    let mut c = TrainConfig::new(method.schedule(), &[3, SIDE, SIDE], init, adaptive);
    c.batch_size = budget.batch;
    c.iters = budget.iters;
    c.adam = vsdm_core::optim::AdamConfig::new(budget.lr);
    c.ema_decay = budget.ema;
    // EMA warm-up (min(decay, (1 + k)/(10 + k))): short runs otherwise sample from an EMA still dominated by
    // the random initial weights (seen on the GPU: 1,100 updates at 0.999 gave pure-noise grids).
    c.ema_warmup = true;
    c.grad_clip = Some(budget.grad_clip);
    c.block = budget.block;
    // Training times are drawn from a 1,000-point grid on [t_eps, T] (both official codes use 100 points;
    // a finer grid only makes the draw closer to uniform on the interval).
    c.grid = 1000;
    c.variational.n_trajectories = budget.n_traj;
    c.variational.batch = budget.n_traj.div_ceil(2);
    c.variational.steps = budget.traj_steps;
    c.variational.iters = budget.a_iters;
    c.variational.zeta = if method == Method::Vsmd { 1.0 } else { 0.75 };
    c.seed = seed;
    c
}

/// Precision of the training network's activations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bf16 activations with f32 master weights ([`crate::unet::UNet::set_compute_dtype`]): the optimizer, the
    /// EMA, the loss and the sampler stay in f32. CUDA only (candle's CPU convolution has no bf16 kernel).
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
        }
    }

    /// An error for a precision `device` cannot run.
    pub fn check(self, device: &candle_core::Device) -> Result<()> {
        if self == Precision::Bf16 && device.is_cpu() {
            return Err(Error::invalid(
                "--precision",
                self,
                "bf16 needs --cuda: candle's CPU convolution has no bf16 kernel",
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// What a run directory or a weights folder records besides the trainer's own config (`run.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub method: Method,
    pub unet: UNetConfig,
    /// Activations' precision of the training network (absent in older run files: f32).
    #[serde(default)]
    pub precision: Precision,
    /// The training images, so that `--resume` goes on with them (absent in older run files and in weights
    /// folders).
    #[serde(default, skip_serializing_if = "DataRecord::is_unrecorded")]
    pub data: DataRecord,
    /// The checkpoint, grid and sampler settings of `train`, which `--resume` keeps unless given again
    /// (absent in older run files and outside `train`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputRecord>,
}

/// What `train` writes and how often, as `run.json` records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    /// Checkpoint every N steps (0: only at the end).
    pub ckpt_every: usize,
    /// Sample grid every N steps (0: only at the end).
    pub sample_every: usize,
    /// Images per grid.
    pub grid: usize,
    /// Steps of the grid sampler (`None`: the method's default).
    pub grid_steps: Option<usize>,
}

impl Default for OutputRecord {
    /// `train`'s defaults.
    fn default() -> Self {
        Self {
            ckpt_every: 500,
            sample_every: 500,
            grid: 16,
            grid_steps: None,
        }
    }
}

/// The training images a run was started (or last resumed) on, as `run.json` records them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataRecord {
    /// Not recorded: a run file written before the record existed, or a run not made by `train`.
    #[default]
    Unrecorded,
    /// The bundled 1,000-image subset (no `--data`).
    Bundled,
    /// `--data` as given for the hub (`hf:…`), made absolute for a path.
    Given(String),
}

impl DataRecord {
    /// Whether nothing is recorded (then `run.json` leaves the field out).
    pub fn is_unrecorded(&self) -> bool {
        *self == Self::Unrecorded
    }

    /// The record of a `--data` argument (`None`: the bundled subset).
    pub fn of(data: Option<&str>) -> Self {
        match data {
            None => Self::Bundled,
            Some(d) if d.starts_with("hf:") => Self::Given(d.to_string()),
            Some(d) => Self::Given(
                std::path::absolute(d)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| d.to_string()),
            ),
        }
    }
}

impl RunSpec {
    pub const FILE: &'static str = "run.json";

    /// Writes `run.json` into `dir`, through a temporary file renamed into place: a crash while writing leaves
    /// the previous record whole (`--resume` reads it).
    pub fn save(&self, dir: &std::path::Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let p = dir.join(Self::FILE);
        let s =
            serde_json::to_string_pretty(self).map_err(|e| Error::bad_file(&p, e.to_string()))?;
        let tmp = dir.join(".run.json.tmp");
        std::fs::write(&tmp, s).map_err(Error::io(&tmp))?;
        std::fs::rename(&tmp, &p).map_err(Error::io(&p))
    }

    /// Reads `run.json`, naming the file on error.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let s = std::fs::read_to_string(path).map_err(Error::io(path))?;
        let spec: Self = serde_json::from_str(&s)
            .map_err(|e| Error::bad_file(path, format!("unreadable: {e}")))?;
        spec.unet
            .validate()
            .map_err(|e| Error::bad_file(path, e.to_string()))?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The precision survives `run.json` (so `--resume` keeps it); a run file written before the field existed
    /// reads as f32; an unknown precision is an error naming the file.
    #[test]
    fn run_spec_precision_round_trip_and_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let spec = RunSpec {
            method: Method::Vsdm,
            unet: UNetConfig::tiny(),
            precision: Precision::Bf16,
            data: DataRecord::of(Some("hf:uoft-cs/cifar10")),
            output: Some(OutputRecord::default()),
        };
        spec.save(dir.path()).unwrap();
        let path = dir.path().join(RunSpec::FILE);
        assert_eq!(RunSpec::load(&path).unwrap(), spec);
        // Saved through a temporary file, none left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [RunSpec::FILE]);

        let mut old: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        old.as_object_mut().unwrap().remove("precision");
        std::fs::write(&path, old.to_string()).unwrap();
        assert_eq!(RunSpec::load(&path).unwrap().precision, Precision::F32);

        old["precision"] = "f8".into();
        std::fs::write(&path, old.to_string()).unwrap();
        let e = RunSpec::load(&path).unwrap_err().to_string();
        assert!(e.contains("run.json") && e.contains("f8"), "{e}");
        assert!(Precision::Bf16.check(&candle_core::Device::Cpu).is_err());
        assert!(Precision::F32.check(&candle_core::Device::Cpu).is_ok());
    }

    /// Each method by its name (any case) and back, an unknown name refused naming it; the precisions print
    /// as the flag spells them.
    #[test]
    fn names_parse_and_print() {
        for (name, m) in [
            ("vp", Method::Vp),
            ("vsdm", Method::Vsdm),
            ("vsmd", Method::Vsmd),
        ] {
            assert_eq!(name.parse::<Method>().unwrap(), m);
            assert_eq!(name.to_uppercase().parse::<Method>().unwrap(), m);
            assert_eq!(m.to_string(), name);
        }
        let e = "ddpm".parse::<Method>().unwrap_err().to_string();
        assert!(e.contains("ddpm") && e.contains("vp, vsdm or vsmd"), "{e}");
        for p in [Precision::F32, Precision::Bf16] {
            let flag = <Precision as clap::ValueEnum>::from_str(&p.to_string(), false).unwrap();
            assert_eq!(flag, p);
        }
    }

    /// The papers' image settings per method (ALGORITHM.md §F.2, §G): VSDM's power schedule for VP and VSDM,
    /// VSMD's constant β = 10; Euler–Maruyama with 200 steps, Heun with 100 for VSMD; ζ 0.75 (VSDM's code), 1
    /// for VSMD; VSMD's six input channels.
    #[test]
    fn each_method_has_its_papers_defaults() {
        use vsdm_core::SamplerKind;
        let budget = Budget::cpu();
        for m in [Method::Vp, Method::Vsdm, Method::Vsmd] {
            let vsmd = m == Method::Vsmd;
            let want = if vsmd {
                BetaSchedule::Constant {
                    beta: 10.0,
                    t_max: 1.0,
                }
            } else {
                BetaSchedule::vsdm_default()
            };
            assert_eq!(m.schedule(), want, "{m}");
            let s = m.default_sampler();
            let want = if vsmd {
                (SamplerKind::Heun, 100)
            } else {
                (SamplerKind::EulerMaruyama, 200)
            };
            assert_eq!((s.kind, s.steps), want, "{m}");
            let c = train_config(m, &budget, 0);
            assert_eq!(c.variational.zeta, if vsmd { 1.0 } else { 0.75 }, "{m}");
            assert_eq!(c.schedule, m.schedule(), "{m}");
            let base = UNetConfig::tiny();
            assert_eq!(m.unet(base).in_channels, if vsmd { 6 } else { 3 }, "{m}");
        }
    }

    /// `--data` as recorded: nothing given is the bundled subset, a hub reference verbatim, a path made
    /// absolute; an unrecorded field is left out of `run.json`, a recorded one written.
    #[test]
    fn data_records_name_the_training_images() {
        assert_eq!(DataRecord::of(None), DataRecord::Bundled);
        assert_eq!(
            DataRecord::of(Some("hf:uoft-cs/cifar10@main")),
            DataRecord::Given("hf:uoft-cs/cifar10@main".into())
        );
        let here = std::env::current_dir().unwrap();
        assert_eq!(
            DataRecord::of(Some("some/images")),
            DataRecord::Given(here.join("some/images").display().to_string())
        );
        let spec = |data| RunSpec {
            method: Method::Vp,
            unet: UNetConfig::tiny(),
            precision: Precision::F32,
            data,
            output: None,
        };
        let json = |d| serde_json::to_value(spec(d)).unwrap();
        assert!(json(DataRecord::Unrecorded).get("data").is_none());
        assert_eq!(json(DataRecord::Bundled)["data"], "bundled");
    }
}
