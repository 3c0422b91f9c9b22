//! # vsdm-core
//!
//! The mathematics of Variational Schrödinger Diffusion Models (VSDM, Deng et al., ICML 2024) and
//! Variational Schrödinger Momentum Diffusion (VSMD, Rojas et al., AISTATS 2025):
//! β schedules, forward processes with closed-form marginals, denoising losses, the variational-score (A)
//! update by stochastic approximation, samplers and the alternating trainer.

pub mod adamw;
pub mod carried;
pub mod compare;
pub mod error;
pub mod fastmath;
#[cfg(feature = "hub")]
pub mod hub;
pub mod init;
pub mod kernel;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod process;
pub mod progress;
pub mod rng;
pub mod sampler;
pub mod schedule;
pub mod trainer;
pub mod variational;

pub use error::{Error, Result};
pub use model::ScoreModel;
pub use process::{ForwardProcess, LinearDrift, Marginals, Process, Vp, Vsdm, Vsmd, VsmdParams};
pub use rng::NoiseRng;
pub use sampler::{SampleRun, SamplerConfig, SamplerKind};
pub use schedule::BetaSchedule;
pub use trainer::{
    weights_folder, DataSource, ExportedConfig, InMemory, StepReport, TrainConfig, Trainer,
};
pub use variational::{VarParams, VariationalConfig};
