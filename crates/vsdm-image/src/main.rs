//! `vsdm-image`: train VSDM, VSMD or the VP baseline on CIFAR-10, sample, and score samples by FID.
//!
//! Without a subcommand it trains the tiny U-Net with VSDM on the bundled 1000-image CIFAR-10 subset for three
//! minutes on the CPU and writes a sample grid.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::{Args, Parser, Subcommand};
use vsdm_core::hub::Hub;
use vsdm_core::variational::VarParams;
use vsdm_core::{NoiseRng, SamplerConfig, SamplerKind};
use vsdm_eval::export;
use vsdm_image::data::{self, CifarSource};
use vsdm_image::method::{
    train_config, Budget, DataRecord, Method, OutputRecord, Precision, RunSpec,
};
use vsdm_image::sample::{grid_columns, sample_images, Labels};
use vsdm_image::train::{new_trainer, resume_trainer, run_loop, LoopOptions};
use vsdm_image::{weights, UNetConfig};

#[derive(Parser)]
#[command(
    name = "vsdm-image",
    about = "CIFAR-10 with VSDM, VSMD and the VP baseline"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Use CUDA device 0 (needs a build with `--features cuda`).
    #[arg(long, global = true)]
    cuda: bool,
    /// Never download from the Hugging Face hub (also with HF_HUB_OFFLINE=1): `hf:` weights and data come from
    /// the local cache, and a missing file is an error naming the path it is expected at.
    #[arg(long, global = true)]
    offline: bool,
    /// How the U-Net's convolutions run: patch (matrix products, both gradients as convolution forward
    /// passes, the bias in the same op; on CUDA patch matrices from this crate's own kernel, on the CPU
    /// products on shifted views of the padded input, no patch matrix), gemm (the same with candle's im2col
    /// kernel on CUDA; identical to patch on the CPU), cudnn (forward and both gradients
    /// through cuDNN; CUDA, a build with `--features cudnn`), or candle (candle's own conv2d, bias addition and
    /// backward, for comparisons). Default: cudnn in a `cudnn` build running on CUDA, else patch (the fastest
    /// measured on an H100, docs/BENCHMARKS.md).
    #[arg(long, global = true)]
    conv: Option<vsdm_image::unet::fastconv::ConvBackward>,
    /// Group-norm backward: kernel (the analytic backward, with the SiLU that follows most norms in the same op,
    /// on this crate's own CUDA kernels for CUDA f32 and bf16 activations, else as fused; the default), fused
    /// (the same formulas as chains of candle's kernels on CUDA) or candle (candle_nn's op chain and a separate
    /// SiLU), for comparisons.
    #[arg(long, global = true, default_value = "kernel")]
    norm: vsdm_image::unet::fastnorm::NormBackward,
    /// TF32 tensor cores for f32 matrix products and cuDNN convolutions (CUDA; PyTorch's default for
    /// convolutions). Off: exact f32 arithmetic.
    #[arg(long, global = true)]
    tf32: bool,
    /// How `--conv cudnn` picks each convolution's algorithm: find (cuDNN's measured search at the first use of
    /// each shape, the fastest allowed one, PyTorch's `cudnn.benchmark = True`; the default), find-exact (the
    /// same without Winograd and FFT algorithms in exact f32, which keeps f32 within 1e-5 of the CPU; not yet
    /// run on a GPU) or heuristic (cuDNN's first heuristic choice, PyTorch's `cudnn.benchmark = False`).
    #[arg(long, global = true)]
    cudnn_algo: Option<vsdm_image::unet::fastconv::CudnnAlgo>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a network (the default command).
    Train(Box<TrainArgs>),
    /// Sample images from trained weights.
    Sample(SampleArgs),
    /// Sample images and compute their FID against reference statistics or images.
    Fid(FidArgs),
    /// Parameter count and training throughput (forward + backward + AdamW) of a network on random data.
    Bench(BenchArgs),
    /// With `--cuda`: the same seeded forward pass, loss, gradients and training steps on the CPU and on CUDA,
    /// and their relative errors (without `--cuda` the CPU is compared with itself: a determinism check).
    CheckDevice(CheckArgs),
}

#[derive(Args)]
struct CheckArgs {
    /// Networks to compare (`tiny`, `ddpmpp`).
    #[arg(long, num_args = 1.., default_values = ["tiny", "ddpmpp"])]
    arch: Vec<String>,
    /// Methods to compare.
    #[arg(long, num_args = 1.., default_values = ["vsdm"])]
    method: Vec<Method>,
    /// Images per batch.
    #[arg(long, default_value_t = 4, allow_negative_numbers = true)]
    batch: usize,
    /// Full training steps after the gradient comparison (a variational stage after each).
    #[arg(long, default_value_t = 2, allow_negative_numbers = true)]
    steps: usize,
    /// Fail (exit code 1) when an error of the forward pass, loss or gradient exceeds this.
    #[arg(long, default_value_t = 1e-5, allow_hyphen_values = true)]
    tol: f64,
}

#[derive(Args)]
struct BenchArgs {
    /// Networks to measure (`tiny`, `ddpmpp`).
    #[arg(long, num_args = 1.., default_values = ["tiny", "ddpmpp"])]
    arch: Vec<String>,
    /// Method (vsmd doubles the input channels).
    #[arg(long, default_value = "vsdm")]
    method: Method,
    /// Images per batch.
    #[arg(long, default_value_t = 8, allow_negative_numbers = true)]
    batch: usize,
    /// Timed steps after one warm-up step.
    #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
    iters: usize,
    /// Activations' precision: f32, or bf16 with f32 master weights (CUDA only).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
    /// The optimiser: fused (vsdm-core's AdamW with its two-op step, as training uses; the default), chain (the
    /// same AdamW as a chain of candle ops) or candle-nn (candle_nn's AdamW, this benchmark's until 2026-12-05).
    #[arg(long, value_enum, default_value_t = vsdm_image::bench::Adam::Fused)]
    adam: vsdm_image::bench::Adam,
}

#[derive(Args, Clone)]
struct TrainArgs {
    /// vsdm (diagonal A per pixel and channel, learned; the default), vp (baseline) or vsmd (momentum,
    /// learned c).
    #[arg(long)]
    method: Option<Method>,
    /// Network: `tiny` (CPU; the default) or `ddpmpp` (EDM's DDPM++, the paper's CIFAR-10 network).
    #[arg(long)]
    arch: Option<String>,
    /// CIFAR-10: a binary batch, a folder of `data_batch_*.bin`, a folder of class folders of PNG/JPEG, a
    /// `.parquet` file in the Hugging Face schema, or `hf:OWNER/NAME[@REV]`, a hub dataset in that schema
    /// (`hf:uoft-cs/cifar10`; its train split; from the local Hugging Face cache, else downloaded into it)
    /// (default: the bundled 1000-image subset).
    #[arg(long)]
    data: Option<String>,
    /// Run directory (default `runs/image-<method>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in `--out` from its latest checkpoint, with the settings it was started with (only
    /// `--iters`, which moves its end, the data, time limit and output options apply).
    #[arg(long)]
    resume: bool,
    /// Replace the run already in `--out`: its checkpoints, weights and sample grids are deleted once the new
    /// run has been set up (without it, a folder that holds a run is refused: `--resume` continues it).
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Network updates in all (default: the architecture's budget).
    #[arg(long, allow_negative_numbers = true)]
    iters: Option<usize>,
    /// Training images per update (default: the architecture's budget, 256 for ddpmpp, 16 for tiny).
    #[arg(long, allow_negative_numbers = true)]
    batch: Option<usize>,
    /// AdamW learning rate (default: the architecture's budget).
    #[arg(long, allow_hyphen_values = true)]
    lr: Option<f64>,
    /// EMA decay of the network (paper scale: 0.9999).
    #[arg(long, allow_hyphen_values = true)]
    ema: Option<f64>,
    /// Clip the global gradient norm to this.
    #[arg(long, allow_hyphen_values = true)]
    grad_clip: Option<f64>,
    /// Base channels of the network (default: the architecture's; 128 for ddpmpp, 32 for tiny).
    #[arg(long, allow_negative_numbers = true)]
    channels: Option<usize>,
    /// Dropout of the residual blocks (default: the architecture's).
    #[arg(long, allow_hyphen_values = true)]
    dropout: Option<f64>,
    /// Network updates between variational stages.
    #[arg(long, allow_negative_numbers = true)]
    block: Option<usize>,
    /// Backward trajectories simulated per variational stage (default: 256 for ddpmpp, 16 for tiny).
    #[arg(long, allow_negative_numbers = true)]
    n_traj: Option<usize>,
    /// Euler–Maruyama steps of those trajectories (default: 100 for ddpmpp, 20 for tiny).
    #[arg(long, allow_negative_numbers = true)]
    traj_steps: Option<usize>,
    /// Stochastic-approximation iterations of A (or c) per stage (default: 100 for ddpmpp, 20 for tiny).
    #[arg(long, allow_negative_numbers = true)]
    a_iters: Option<usize>,
    /// Pair each variational stage's trajectories with reference trajectories from the forward marginal and
    /// subtract their gradient, which removes the Euler–Maruyama bias of the official (plain) estimator at
    /// twice the simulation cost (docs/CORE.md, "Reference trajectories"). Default: on for VSMD, off for VSDM;
    /// ignored by VP.
    #[arg(long)]
    debias: Option<bool>,
    /// ζ of the variational objective (ALGORITHM.md §C; default 0.75 for VSDM as in the official code, 1 for
    /// VSMD). Below 1 it adds a constant push of A towards less contraction.
    #[arg(long, allow_hyphen_values = true)]
    zeta: Option<f64>,
    /// Adam rate of the variational parameters (A, or VSMD's c; default 2e-4 with StepLR(1000, 0.99), the VSDM
    /// toy code's rate; the official image codes use the network's rate (VSDM) or 1/100 of it (VSMD)).
    #[arg(long, allow_hyphen_values = true)]
    a_lr: Option<f64>,
    /// EMA decay of the variational parameters (default 0.99; the official image codes use the network's EMA).
    #[arg(long, allow_hyphen_values = true)]
    a_ema: Option<f64>,
    /// VSMD's damping ratio κ of the critical-damping transform (the official `--damp_coef`): 1 (default) is
    /// critically damped, below 1 under-damped (the official CIFAR-10 runs also use 0.9 and 0.85). VSMD only.
    #[arg(long, allow_hyphen_values = true)]
    kappa: Option<f64>,
    /// Class-conditional network (one-hot labels), as VSMD's CIFAR-10 model.
    #[arg(long)]
    conditional: bool,
    /// Do not flip training images left–right at random.
    #[arg(long)]
    no_flip: bool,
    /// Activations' precision of the training network: f32, or bf16 with f32 master weights (CUDA only; the
    /// optimizer, EMA, loss and sampling stay in f32). Default f32.
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// Stop after this many minutes, the end's checkpoint and sample grid included (training stops early
    /// enough for them); default 3 for the tiny network on the CPU.
    #[arg(long, allow_hyphen_values = true)]
    minutes: Option<f64>,
    /// Checkpoint every N steps (and at the end; 0: only at the end). Default 500; a resumed run keeps its own.
    #[arg(long, allow_negative_numbers = true)]
    ckpt_every: Option<usize>,
    /// Sample grid every N steps (and at the end; 0: only at the end). Default 500; a resumed run keeps its own.
    #[arg(long, allow_negative_numbers = true)]
    sample_every: Option<usize>,
    /// Images per sample grid, a count (the grids go to OUT/samples/; `sample --grid` is instead a PNG path).
    /// Default 16; a resumed run keeps its own.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    grid: Option<usize>,
    /// Steps of the grid sampler (default: the method's sampler, 200 EM steps or 100 Heun steps; for the tiny
    /// network on the CPU 100 EM or 50 Heun steps; a resumed run keeps its own).
    #[arg(long, allow_negative_numbers = true)]
    grid_steps: Option<usize>,
    /// Seed of the run (default 0).
    #[arg(long, allow_negative_numbers = true)]
    seed: Option<u64>,
}

impl TrainArgs {
    fn method(&self) -> Method {
        self.method.unwrap_or(Method::Vsdm)
    }

    /// The training settings given on the command line that a resumed run would ignore (it keeps the ones it
    /// was started with), as flags; `--method` only when it contradicts the run's.
    fn fixed_by_the_run(&self, spec: &RunSpec) -> Vec<String> {
        let mut given = Vec::new();
        if let Some(m) = self.method.filter(|&m| m != spec.method) {
            given.push(format!("--method {m} (the run is {})", spec.method));
        }
        let flags: [(&str, bool); 20] = [
            ("--arch", self.arch.is_some()),
            ("--batch", self.batch.is_some()),
            ("--lr", self.lr.is_some()),
            ("--ema", self.ema.is_some()),
            ("--grad-clip", self.grad_clip.is_some()),
            ("--channels", self.channels.is_some()),
            ("--dropout", self.dropout.is_some()),
            ("--block", self.block.is_some()),
            ("--n-traj", self.n_traj.is_some()),
            ("--traj-steps", self.traj_steps.is_some()),
            ("--a-iters", self.a_iters.is_some()),
            ("--debias", self.debias.is_some()),
            ("--zeta", self.zeta.is_some()),
            ("--a-lr", self.a_lr.is_some()),
            ("--a-ema", self.a_ema.is_some()),
            ("--kappa", self.kappa.is_some()),
            ("--conditional", self.conditional),
            ("--no-flip", self.no_flip),
            ("--precision", self.precision.is_some()),
            ("--seed", self.seed.is_some()),
        ];
        given.extend(flags.iter().filter(|f| f.1).map(|f| f.0.to_string()));
        given
    }
}

#[derive(Args, Clone)]
struct SamplerArgs {
    /// em (Euler–Maruyama, the VSDM default), euler or heun (probability flow, the VSMD default).
    #[arg(long)]
    sampler: Option<SamplerKind>,
    /// Steps (default 200 for em, 100 for heun).
    #[arg(long, allow_negative_numbers = true)]
    steps: Option<usize>,
    /// Images per network batch.
    #[arg(long, default_value_t = 64, allow_negative_numbers = true)]
    batch: usize,
    /// Seed of the sampler's noise.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    seed: u64,
    /// For a class-conditional network: every image of this class, a number or a CIFAR-10 name (`cat`);
    /// default: classes drawn uniformly.
    #[arg(long)]
    class: Option<String>,
}

#[derive(Args)]
struct SampleArgs {
    /// A weights folder (`runs/…/weights`) or `hf:OWNER/NAME[@REV]` (a model repository with those files; from
    /// the local Hugging Face cache, else downloaded into it).
    #[arg(long)]
    weights: String,
    /// Number of images.
    #[arg(long, default_value_t = 64, allow_negative_numbers = true)]
    n: usize,
    #[command(flatten)]
    sampler: SamplerArgs,
    /// PNG grid to write (a `.png` path).
    #[arg(long, default_value = "samples.png", value_name = "PNG")]
    grid: PathBuf,
    /// Also write every image as a PNG into this folder.
    #[arg(long)]
    folder: Option<PathBuf>,
    /// Also write all images as `arr_0` (N, 32, 32, 3) uint8 in this `.npz` (the format of FID tools).
    #[arg(long)]
    npz: Option<PathBuf>,
}

#[derive(Args)]
struct FidArgs {
    /// A weights folder or `hf:OWNER/NAME[@REV]`.
    #[arg(long)]
    weights: String,
    /// Number of samples.
    #[arg(long, default_value_t = 10_000, allow_negative_numbers = true)]
    n: usize,
    #[command(flatten)]
    sampler: SamplerArgs,
    /// Reference: `.npz` statistics (`mu`, `sigma`), an `.npz` of images (`arr_0`), or a folder of images.
    #[arg(long)]
    reference: PathBuf,
    /// Inception-v3 weights converted by `vsdm-eval convert` (safetensors; default as vsdm-eval's:
    /// $VSDM_FID_WEIGHTS, else $XDG_CACHE_HOME/vsdm/inception_fid.safetensors, else
    /// ~/.cache/vsdm/inception_fid.safetensors).
    #[arg(long)]
    inception: Option<PathBuf>,
    /// Keep the samples in this `.npz`.
    #[arg(long)]
    npz: Option<PathBuf>,
    /// Images per Inception forward pass (299×299 inputs: at 1000 a single pass needs tens of GiB).
    #[arg(long, default_value_t = 100, allow_negative_numbers = true)]
    fid_batch: usize,
}

/// `println!` that drops the line when stdout is closed (a `| tee` ended by the same Ctrl-C), where
/// `println!` would panic after the run was saved.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}
/// Parses the train defaults when no subcommand is given.
#[derive(Parser)]
struct Defaults {
    #[command(flatten)]
    args: TrainArgs,
}

fn device(cuda: bool) -> Result<Device> {
    if cuda {
        Device::new_cuda(0)
            .context("CUDA device 0 (build with --features cuda on a machine with a GPU)")
    } else {
        Ok(Device::Cpu)
    }
}

/// The bundled 1000-image subset, found through the source tree the binary was built from.
fn bundled_data() -> Result<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/image/cifar10-train-1000.bin");
    if !p.is_file() {
        bail!(
            "the bundled CIFAR-10 subset is not at {} (this binary was built from that source tree and moved, \
             or the tree is gone): pass --data (a CIFAR-10 folder, binary batch, parquet file or hf:uoft-cs/cifar10)",
            p.display()
        );
    }
    // The folder's own name, not the build-time `crates/vsdm-image/../../` spelling.
    Ok(p.canonicalize().unwrap_or(p))
}

/// Bounds of the flags that size buffers: far above any real use, so that a mistyped value is an error that
/// names the flag instead of an allocation that overflows or aborts.
const MAX_STEPS: usize = 100_000;
const MAX_BATCH: usize = 65_536;
const MAX_IMAGES: usize = 10_000_000;
const MAX_CHANNELS: usize = 4_096;
const MAX_ITERS: usize = 1_000_000_000;

/// The run a folder holds, if any: its newest checkpoint, or what is wrong with its pointer, or its settings
/// file alone (a run stopped before its first checkpoint).
fn run_held(out: &Path) -> Option<String> {
    match vsdm_core::trainer::latest_checkpoint(&out.join("ckpt")) {
        Ok(Some(latest)) => Some(latest),
        Err(e) => Some(format!("its checkpoint pointer is damaged: {e}")),
        Ok(None) => out
            .join(RunSpec::FILE)
            .is_file()
            .then(|| format!("{} without a checkpoint", RunSpec::FILE)),
    }
}

fn train(a: TrainArgs, hub: &Hub, dev: &Device) -> Result<()> {
    if let Some(m) = a.minutes {
        if !(m.is_finite() && m > 0.0) {
            bail!("invalid --minutes {m}: must be a positive number of minutes");
        }
    }
    if let Some(lr) = a.lr {
        vsdm_eval::cli::learning_rate("--lr", lr)?;
    }
    if let Some(z) = a.zeta {
        vsdm_eval::cli::zeta(z)?;
    }
    if let Some(e) = a.ema {
        vsdm_eval::cli::ema_decay("--ema", e)?;
    }
    if let Some(lr) = a.a_lr {
        vsdm_eval::cli::learning_rate("--a-lr", lr)?;
    }
    if let Some(e) = a.a_ema {
        vsdm_eval::cli::ema_decay("--a-ema", e)?;
    }
    if a.method() == Method::Vp && !a.resume {
        for (flag, given) in [("--a-lr", a.a_lr.is_some()), ("--a-ema", a.a_ema.is_some())] {
            if given {
                bail!("{flag}: VP has no variational parameters (it is VSDM with A = 0)");
            }
        }
    }
    if let Some(k) = a.kappa {
        vsdm_eval::cli::kappa(k)?;
        if a.method() != Method::Vsmd && !a.resume {
            bail!("--kappa {k}: the damping ratio is VSMD's (--method vsmd)");
        }
    }
    let given = |v: Option<usize>| v.unwrap_or(1);
    vsdm_eval::cli::at_least_one(&[
        ("--iters", given(a.iters)),
        ("--batch", given(a.batch)),
        ("--channels", given(a.channels)),
        ("--grid", given(a.grid)),
        ("--grid-steps", given(a.grid_steps)),
        ("--traj-steps", given(a.traj_steps)),
        ("--n-traj", given(a.n_traj)),
        ("--a-iters", given(a.a_iters)),
        ("--block", given(a.block)),
    ])?;
    vsdm_eval::cli::at_most(&[
        ("--iters", given(a.iters), MAX_ITERS),
        ("--batch", given(a.batch), MAX_BATCH),
        ("--channels", given(a.channels), MAX_CHANNELS),
        ("--grid", given(a.grid), MAX_BATCH),
        ("--grid-steps", given(a.grid_steps), MAX_STEPS),
        ("--traj-steps", given(a.traj_steps), MAX_STEPS),
        ("--n-traj", given(a.n_traj), MAX_BATCH),
        ("--a-iters", given(a.a_iters), MAX_ITERS),
        ("--block", given(a.block), MAX_ITERS),
    ])?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/image-{}", a.method())));
    vsdm_eval::cli::out_folder("--out", &out)?;
    let held = if a.resume { None } else { run_held(&out) };
    let no_checkpoint = format!("{} without a checkpoint", RunSpec::FILE);
    match (&held, a.overwrite) {
        (Some(h), false) if *h == no_checkpoint => bail!(
            "{} holds a run stopped before its first checkpoint ({h}): nothing to resume; --overwrite \
             replaces it, --out DIR writes elsewhere",
            out.display()
        ),
        (Some(h), false) => bail!(
            "{} holds a run ({h}): --resume continues it, --overwrite replaces it, --out DIR writes \
             elsewhere",
            out.display()
        ),
        _ => {}
    }
    if a.resume && run_held(&out).as_deref() == Some(no_checkpoint.as_str()) {
        bail!(
            "--resume: {} holds a run stopped before its first checkpoint ({no_checkpoint}): nothing to \
             resume; --overwrite starts it again",
            out.display()
        );
    }
    let (mut spec, mut tr) = if a.resume {
        let (spec, mut tr) = resume_trainer(&out, dev)
            .with_context(|| format!("resuming from {}", out.display()))?;
        let ignored = a.fixed_by_the_run(&spec);
        if !ignored.is_empty() {
            bail!(
                "--resume continues {} with the settings it was started with; drop {} (a new run needs another \
                 --out)",
                out.display(),
                ignored.join(", ")
            );
        }
        if let Some(n) = a.iters {
            tr.set_iters(n)
                .with_context(|| format!("--iters {n} for {}", out.display()))?;
        }
        eprintln!(
            "resumed {} at step {} of {}",
            out.display(),
            tr.step_count(),
            tr.config().iters
        );
        (spec, tr)
    } else {
        let arch = a.arch.as_deref().unwrap_or("tiny");
        let mut unet = a.method().unet(UNetConfig::preset(arch)?);
        if let Some(c) = a.channels {
            unet.model_channels = c;
        }
        if let Some(d) = a.dropout {
            unet.dropout = d;
        }
        if a.conditional {
            unet.label_dim = data::CIFAR10_CLASSES.len();
        }
        unet.validate()?;
        let mut budget = if arch == "tiny" {
            Budget::cpu()
        } else {
            Budget::paper()
        };
        budget.batch = a.batch.unwrap_or(budget.batch);
        budget.iters = a.iters.unwrap_or(budget.iters);
        budget.lr = a.lr.unwrap_or(budget.lr);
        budget.ema = a.ema.unwrap_or(budget.ema);
        budget.grad_clip = a.grad_clip.unwrap_or(budget.grad_clip);
        budget.block = a.block.unwrap_or(budget.block);
        budget.n_traj = a.n_traj.unwrap_or(budget.n_traj);
        budget.traj_steps = a.traj_steps.unwrap_or(budget.traj_steps);
        budget.a_iters = a.a_iters.unwrap_or(budget.a_iters);
        let spec = RunSpec {
            method: a.method(),
            unet,
            precision: a.precision.unwrap_or(Precision::F32),
            data: DataRecord::of(a.data.as_deref()),
            output: None,
        };
        let mut tc = train_config(spec.method, &budget, a.seed.unwrap_or(0));
        if let Some(d) = a.debias {
            tc.variational.debias = d;
        }
        if let Some(z) = a.zeta {
            tc.variational.zeta = z;
        }
        if let Some(lr) = a.a_lr {
            tc.variational.adam.lr = lr;
        }
        if let Some(d) = a.a_ema {
            tc.variational.ema_decay = d;
        }
        if let Some(k) = a.kappa {
            let VarParams::Momentum { params, .. } = &mut tc.init else {
                bail!("--kappa {k}: the damping ratio is VSMD's (--method vsmd)");
            };
            params.kappa = Some(k);
        }
        let tr = new_trainer(&spec, tc, dev)?;
        (spec, tr)
    };
    if tr.step_count() >= tr.config().iters {
        println!(
            "{} is already at {}/{} updates; continue it with --resume --iters N",
            out.display(),
            tr.step_count(),
            tr.config().iters
        );
        return Ok(());
    }
    let arch = spec.unet.arch_name();
    // A resumed run goes on with the images it was started on unless --data names others (it records the
    // images it last trained on).
    let data_path = match (&a.data, &spec.data) {
        (Some(d), DataRecord::Given(was)) if a.resume && DataRecord::of(Some(d)) != spec.data => {
            eprintln!(
                "{} was trained on {was} so far; going on with --data {d}",
                out.display()
            );
            d.clone()
        }
        (Some(d), _) => d.clone(),
        (None, DataRecord::Given(was)) => was.clone(),
        (None, DataRecord::Unrecorded) if a.resume => {
            let p = bundled_data()?.display().to_string();
            eprintln!(
                "{} does not record the images it was trained on (made by an earlier version): going on with \
                 the bundled subset ({p}); pass --data to choose",
                out.join(RunSpec::FILE).display()
            );
            p
        }
        (None, _) => bundled_data()?.display().to_string(),
    };
    // Recorded for the next resume: the images given now, else the recorded ones (the bundled subset where
    // none were recorded).
    if a.data.is_some() {
        spec.data = DataRecord::of(a.data.as_deref());
    } else if spec.data.is_unrecorded() {
        spec.data = DataRecord::Bundled;
    }
    let set = data::open_source(&data_path, hub, data::Split::Train).with_context(|| {
        if a.resume && a.data.is_none() {
            format!(
                "loading CIFAR-10 from {data_path}, the images the run was trained on (--data names others to \
                 go on with)"
            )
        } else {
            format!("loading CIFAR-10 from {data_path}")
        }
    })?;
    if spec.unet.label_dim > 0 && set.classes.len() != spec.unet.label_dim {
        bail!(
            "{}: {} classes, the conditional network expects {}",
            data_path,
            set.classes.len(),
            spec.unet.label_dim
        );
    }
    eprintln!(
        "training {} ({} network) on {} images from {}; run directory {}",
        spec.method,
        arch,
        set.len(),
        data_path,
        out.display()
    );
    let mut source = CifarSource::new(set, !a.no_flip, spec.unet.label_dim > 0)?;
    if let Some(held) = held {
        // --overwrite, and the new run is set up: the old one goes now, so that no file of it can be read
        // back as this run's (its settings with these checkpoints, or the reverse).
        for name in ["ckpt", "weights", "samples", RunSpec::FILE] {
            let p = out.join(name);
            let gone = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else if p.exists() {
                std::fs::remove_file(&p)
            } else {
                Ok(())
            };
            gone.with_context(|| format!("--overwrite: removing {}", p.display()))?;
        }
        eprintln!("replaced the run in {} ({held})", out.display());
    }
    // The output settings: as given, else (resuming) the run's own, else the defaults; recorded for the next
    // resume.
    let was = spec.output.unwrap_or_default();
    let output = OutputRecord {
        ckpt_every: a.ckpt_every.unwrap_or(was.ckpt_every),
        sample_every: a.sample_every.unwrap_or(was.sample_every),
        grid: a.grid.unwrap_or(was.grid),
        grid_steps: a.grid_steps.or(was.grid_steps),
    };
    spec.output = Some(output);
    let mut sampler = spec.method.default_sampler();
    let cpu_tiny = arch == "tiny" && dev.is_cpu();
    if let Some(s) = output.grid_steps {
        sampler.steps = s;
    } else if cpu_tiny {
        sampler.steps /= 2;
    }
    let max_minutes = a.minutes.or(if cpu_tiny { Some(3.0) } else { None });
    let opts = LoopOptions {
        out: out.clone(),
        ckpt_every: output.ckpt_every,
        sample_every: output.sample_every,
        grid: output.grid,
        sampler,
        max_seconds: max_minutes.map(|m| m * 60.0),
        progress: true,
        stop: Some(vsdm_eval::cli::stop_on_interrupt()),
    };
    let s = run_loop(&mut tr, &spec, &mut source, &opts, dev)?;
    say!(
        "{} steps this session (now at {}/{}), loss {:.4} → {:.4} (mean of the last 10%: {:.4}), {:.1} images/s",
        s.steps_done,
        tr.step_count(),
        tr.config().iters,
        s.first_loss,
        s.last_loss,
        s.tail_loss,
        s.images_per_second
    );
    if let Some(g) = s.last_grid {
        say!("sample grid: {}", g.display());
    }
    say!("weights (EMA): {}", out.join("weights").display());
    if s.interrupted {
        // Interrupted is not finished: a script's next step (`&& sample …`) should not run.
        std::process::exit(130);
    }
    Ok(())
}

fn sampler_of(a: &SamplerArgs, method: Method) -> SamplerConfig {
    let mut s = method.default_sampler();
    if let Some(k) = a.sampler {
        s = SamplerConfig::new(k, if k == SamplerKind::Heun { 100 } else { 200 });
    }
    if let Some(n) = a.steps {
        s.steps = n;
    }
    s
}

/// Samples `n` images, `[n, 3, 32, 32]` u8.
fn draw(w: &weights::Loaded, a: &SamplerArgs, n: usize, dev: &Device) -> Result<Tensor> {
    let sampler = sampler_of(a, w.spec.method);
    let labels = Labels::for_network(w.spec.unet.label_dim, a.class.as_deref())?;
    let mut rng = NoiseRng::new(a.seed);
    let t0 = std::time::Instant::now();
    let pb = vsdm_core::progress::Progress::new("sampling", n as u64, "images");
    let mut parts = Vec::new();
    let (mut done, mut nfe) = (0, 0);
    while done < n {
        let b = a.batch.min(n - done);
        let (x, k) = sample_images(&w.process, &w.net, &sampler, b, b, labels, &mut rng, dev)?;
        parts.push(x);
        nfe = k;
        done += b;
        pb.set_position(done as u64);
    }
    pb.finish();
    eprintln!(
        "{n} images with {:?}, {} steps, NFE {nfe} per image, in {:.1} s",
        sampler.kind,
        sampler.steps,
        t0.elapsed().as_secs_f64()
    );
    Ok(Tensor::cat(&parts, 0)?)
}

/// The sampler flags' bounds.
fn check_sampler(a: &SamplerArgs) -> Result<()> {
    vsdm_eval::cli::at_least_one(&[("--batch", a.batch), ("--steps", a.steps.unwrap_or(1))])?;
    vsdm_eval::cli::at_most(&[
        ("--batch", a.batch, MAX_BATCH),
        ("--steps", a.steps.unwrap_or(1), MAX_STEPS),
    ])
}

fn sample(a: SampleArgs, hub: &Hub, dev: &Device) -> Result<()> {
    vsdm_eval::cli::at_least_one(&[("--n", a.n)])?;
    vsdm_eval::cli::at_most(&[("--n", a.n, MAX_IMAGES)])?;
    check_sampler(&a.sampler)?;
    vsdm_eval::cli::png_path("--grid", &a.grid)?;
    // Every output is checked before the sampling: a path that cannot be written fails now, not after it.
    for p in std::iter::once(&a.grid).chain(&a.npz) {
        vsdm_eval::cli::create_parent(p)?;
    }
    if let Some(d) = &a.folder {
        vsdm_eval::cli::create_parent(&d.join("0.png"))?;
    }
    let w = weights::load(&a.weights, hub, dev)?;
    let images = draw(&w, &a.sampler, a.n, dev)?;
    export::save_grid_png(&images, &a.grid, grid_columns(a.n))?;
    println!("grid: {}", a.grid.display());
    if let Some(d) = &a.folder {
        export::save_png_folder(&images, d, 0)?;
        println!("images: {}", d.display());
    }
    if let Some(p) = &a.npz {
        export::save_npz_u8(&images, p)?;
        println!("npz: {}", p.display());
    }
    Ok(())
}

fn fid(a: FidArgs, hub: &Hub, dev: &Device) -> Result<()> {
    use vsdm_eval::fid::{self, FidInput, InceptionV3, StatsAccumulator, FEATURE_DIM};
    vsdm_eval::cli::at_least_one(&[("--fid-batch", a.fid_batch)])?;
    vsdm_eval::cli::at_most(&[
        ("--n", a.n, MAX_IMAGES),
        ("--fid-batch", a.fid_batch, MAX_BATCH),
    ])?;
    if a.n < 2 {
        bail!(
            "--n {}: a FID needs at least 2 samples (their covariance)",
            a.n
        );
    }
    check_sampler(&a.sampler)?;
    if let Some(p) = &a.npz {
        vsdm_eval::cli::create_parent(p)?;
    }
    let reference = FidInput::open(&a.reference)?;
    let net = InceptionV3::load(
        &vsdm_eval::cli::inception_weights(a.inception.as_deref())?,
        dev,
    )?;
    // The reference first: a reference that cannot be scored (one image, bad statistics) fails before the
    // sampling, not after it.
    let real = reference.into_stats(&net, a.fid_batch)?;
    let w = weights::load(&a.weights, hub, dev)?;
    let images = draw(&w, &a.sampler, a.n, dev)?;
    if let Some(p) = &a.npz {
        export::save_npz_u8(&images, p)?;
    }
    let mut acc = StatsAccumulator::new(FEATURE_DIM);
    let bs = a.fid_batch;
    let mut start = 0;
    while start < a.n {
        let b = bs.min(a.n - start);
        let f = fid::features_u8(&net, &images.narrow(0, start, b)?)?.to_device(&Device::Cpu)?;
        acc.update(&f.flatten_all()?.to_vec1::<f32>()?)?;
        start += b;
    }
    let fake = acc.finish("samples")?;
    let d = fid::frechet_distance(&fake, &real)?;
    println!("FID {d:.3} ({} samples vs {})", a.n, a.reference.display());
    Ok(())
}

fn bench(a: BenchArgs, dev: &Device) -> Result<()> {
    use vsdm_image::unet::{fastconv::conv_label, fastnorm::norm_backward};
    vsdm_eval::cli::at_least_one(&[("--batch", a.batch), ("--iters", a.iters)])?;
    vsdm_eval::cli::at_most(&[
        ("--batch", a.batch, MAX_BATCH),
        ("--iters", a.iters, MAX_ITERS),
    ])?;
    for arch in &a.arch {
        UNetConfig::preset(arch)?;
    }
    a.precision.check(dev)?;
    println!(
        "convolutions: {}; group-norm backward: {:?}; precision: {}; optimiser: {:?}; TF32: {}",
        conv_label(),
        norm_backward(),
        a.precision,
        a.adam,
        // candle's CPU build answers `true` here whatever was set: TF32 exists only on CUDA.
        if dev.is_cpu() {
            "n/a (CPU)"
        } else if candle_core::cuda::gemm_reduced_precision_f32() {
            "on"
        } else {
            "off"
        }
    );
    println!("| network | parameters | batch | train img/s | forward img/s |");
    println!("|---|---:|---:|---:|---:|");
    let mut graphs = Vec::new();
    for arch in &a.arch {
        let cfg = a.method.unet(UNetConfig::preset(arch)?);
        let r = vsdm_image::bench::throughput(
            &cfg,
            a.batch,
            a.iters,
            a.precision.dtype(),
            a.adam,
            dev,
        )?;
        println!(
            "| {arch} | {} | {} | {:.2} | {:.2} |",
            r.parameters, r.batch, r.train_images_per_second, r.forward_images_per_second
        );
        graphs.push(format!(
            "autograd graph of one loss ({arch}, batch {}): {} tensors, {:.1} MB (unpatched candle's backward \
             would zero-fill each one's gradient and add into it, ≥ {:.1} MB of traffic per step; the vendored \
             candle-core stores single contributions instead, vendor/README.md)",
            r.batch,
            r.graph_tensors,
            r.graph_bytes as f64 / 1e6,
            4.0 * r.graph_bytes as f64 / 1e6
        ));
    }
    for g in graphs {
        println!("{g}");
    }
    Ok(())
}

fn check_device(a: CheckArgs, dev: &Device) -> Result<()> {
    use vsdm_image::devcheck::compare;
    vsdm_eval::cli::at_least_one(&[("--batch", a.batch), ("--steps", a.steps)])?;
    vsdm_eval::cli::at_most(&[
        ("--batch", a.batch, MAX_BATCH),
        ("--steps", a.steps, MAX_STEPS),
    ])?;
    if !(a.tol.is_finite() && a.tol > 0.0) {
        bail!("--tol {}: must be a positive number", a.tol);
    }
    for arch in &a.arch {
        UNetConfig::preset(arch)?;
    }
    let which = if dev.is_cpu() { "CPU" } else { "CUDA" };
    // The f32 comparisons below are of exact f32 arithmetic; TF32 is measured on its own in the convolution
    // table.
    candle_core::cuda::set_gemm_reduced_precision_f32(false);
    // A convolution or group norm above its tolerance is reported at the end, after the network comparisons (on
    // a GPU lease the network's figures are worth having even then: cuDNN's f32 weight gradient missed 1e-5 once
    // on an H200 and stopped the check before them).
    let op_failures: Vec<_> = [
        check_convolutions(a.batch, dev),
        check_norms(dev),
        check_elementwise(dev),
    ]
    .into_iter()
    .filter_map(|r| r.err())
    .collect();
    println!("relative errors ‖{which} − CPU‖∞ / ‖CPU‖∞, f32, worst tensor");
    println!(
        "| network | method | parameters | batch | init | forward | loss | gradient (worst tensor) | weights after | update after | EMA after | A/c after | steps (stages) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|");
    let mut worst = 0f64;
    for arch in &a.arch {
        for &m in &a.method {
            let spec = vsdm_image::RunSpec {
                method: m,
                unet: m.unet(UNetConfig::preset(arch)?),
                precision: vsdm_image::method::Precision::F32,
                data: Default::default(),
                output: None,
            };
            let r = compare(&spec, a.batch, a.steps, 1, &Device::Cpu, dev)?;
            println!(
                "| {arch} | {m} | {} | {} | {:.1e} | {:.1e} | {:.1e} | {:.1e} ({}) | {:.1e} | {:.1e} | {:.1e} | {:.1e} | {} ({}) |",
                r.parameters,
                r.batch,
                r.init_weights,
                r.forward,
                r.loss,
                r.gradient,
                r.gradient_worst,
                r.weights_after,
                r.update_after,
                r.ema_after,
                r.variational_after,
                r.steps,
                r.stages
            );
            worst = worst.max(r.forward).max(r.loss).max(r.gradient);
        }
    }
    // Mixed precision on this device: bf16 activations on CUDA (f16 on the CPU, which has no bf16 convolution)
    // against f32 activations, same f32 weights and batch.
    let low = if dev.is_cpu() {
        candle_core::DType::F16
    } else {
        candle_core::DType::BF16
    };
    println!(
        "\n{low:?} activations with f32 master weights vs f32, on {which}: relative L2 error, worst tensor"
    );
    println!("| network | method | output | gradient (worst tensor) |");
    println!("|---|---|---:|---|");
    let mut low_worst = (0f64, 0f64);
    for arch in &a.arch {
        for &m in &a.method {
            let cfg = m.unet(UNetConfig::preset(arch)?);
            let r = vsdm_image::devcheck::precision_agreement(&cfg, a.batch, low, dev)?;
            println!(
                "| {arch} | {m} | {:.1e} | {:.1e} ({}) |",
                r.forward, r.gradient, r.gradient_worst
            );
            low_worst = (low_worst.0.max(r.forward), low_worst.1.max(r.gradient));
        }
    }
    let (tol_out, tol_grad) = vsdm_image::devcheck::LOW_PRECISION_TOL;
    if !(low_worst.0 <= tol_out && low_worst.1 <= tol_grad) {
        bail!(
            "{low:?}: output error {:.2e} / gradient error {:.2e} exceed the documented {tol_out} / {tol_grad}",
            low_worst.0,
            low_worst.1
        );
    }
    if worst.is_nan() || worst > a.tol {
        bail!(
            "the worst forward/loss/gradient error {worst:.2e} exceeds --tol {}",
            a.tol
        );
    }
    if !op_failures.is_empty() {
        let all: Vec<String> = op_failures.iter().map(|e| format!("{e:#}")).collect();
        bail!("{}", all.join("; "));
    }
    Ok(())
}

/// The U-Net's group norm (`--norm`) on this device against candle_nn's `GroupNorm` on the CPU in f32: f32
/// activations to 1e-5 and, on CUDA, bf16 activations (f32 scale and shift) to 2e-2.
fn check_norms(dev: &Device) -> Result<()> {
    use vsdm_image::devcheck::{norm_agreement, NORM_CASES};
    use vsdm_image::unet::fastnorm::norm_backward;
    let which = if dev.is_cpu() { "CPU" } else { "CUDA" };
    println!(
        "group norm ({:?}) on {which} vs candle_nn's GroupNorm on the CPU in f32: relative errors ‖·‖∞",
        norm_backward()
    );
    println!("| activations | case | value | input gradient | scale gradient | shift gradient | tolerance |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let mut failed = Vec::new();
    for (name, dtype, tol) in [
        ("f32", candle_core::DType::F32, 1e-5),
        ("bf16", candle_core::DType::BF16, 2e-2),
    ] {
        // candle's CPU backend has bf16 tensors but the comparison is of the CUDA kernels.
        if dev.is_cpu() && name != "f32" {
            continue;
        }
        for r in norm_agreement(&NORM_CASES, dtype, dev)? {
            println!(
                "| {name} | {} | {:.1e} | {:.1e} | {:.1e} | {:.1e} | {tol:.0e} |",
                r.case, r.value, r.input_gradient, r.scale_gradient, r.shift_gradient
            );
            let worst = r.worst();
            if worst.is_nan() || worst > tol {
                failed.push(format!("{name} {}: {worst:.2e} > {tol:.0e}", r.case));
            }
        }
    }
    println!();
    if !failed.is_empty() {
        bail!("group-norm errors above tolerance: {}", failed.join("; "));
    }
    Ok(())
}

/// The element-wise kernels whose CPU loops do the same f32 operations (dropout, the AdamW step, the EMA) on
/// this device against the CPU: the same bits expected; a relative error above 1e-6 fails.
fn check_elementwise(dev: &Device) -> Result<()> {
    let which = if dev.is_cpu() { "CPU" } else { "CUDA" };
    println!("element-wise kernels on {which} vs their CPU loops (the same bits expected)");
    println!("| kernel | values | differing values | relative error ‖·‖∞ |");
    println!("|---|---:|---:|---:|");
    let mut failed = Vec::new();
    for r in vsdm_image::devcheck::kernel_agreement(dev)? {
        println!(
            "| {} | {} | {} | {:.1e} |",
            r.kernel, r.values, r.differing, r.error
        );
        if r.error.is_nan() || r.error > 1e-6 {
            failed.push(format!("{}: {:.2e}", r.kernel, r.error));
        }
    }
    println!();
    if !failed.is_empty() {
        bail!("element-wise kernels above 1e-6: {}", failed.join("; "));
    }
    Ok(())
}

/// The layer convolution (`--conv`) on this device against candle's plain f32 conv2d on the CPU, per arithmetic
/// (f32; on CUDA also TF32 and bf16), with the documented tolerances (`devcheck::CONV_TOL`).
fn check_convolutions(batch: usize, dev: &Device) -> Result<()> {
    use vsdm_image::devcheck::{conv_agreement, CONV_CASES, CONV_TOL};
    use vsdm_image::unet::fastconv::conv_label;
    let which = if dev.is_cpu() { "CPU" } else { "CUDA" };
    println!(
        "convolution + bias ({}) on {which} vs candle's conv2d + bias on the CPU in f32: relative errors ‖·‖∞",
        conv_label()
    );
    println!(
        "| arithmetic | case | value | input gradient | weight gradient | bias gradient | tolerance |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    let cases: Vec<_> = CONV_CASES
        .iter()
        .map(|&(_, ci, co, h, k)| (batch.max(1), ci, co, h, k))
        .collect();
    let mut failed = Vec::new();
    for (name, tol) in CONV_TOL {
        let dtype = match name {
            "bf16" => candle_core::DType::BF16,
            _ => candle_core::DType::F32,
        };
        if dev.is_cpu() && name != "f32" {
            continue;
        }
        candle_core::cuda::set_gemm_reduced_precision_f32(name == "tf32");
        let rows = conv_agreement(&cases, dtype, dev);
        candle_core::cuda::set_gemm_reduced_precision_f32(false);
        for r in rows? {
            let worst = r.worst();
            println!(
                "| {name} | {} | {:.1e} | {:.1e} | {:.1e} | {:.1e} | {tol:.0e} |",
                r.case, r.forward, r.input_gradient, r.weight_gradient, r.bias_gradient
            );
            if worst.is_nan() || worst > tol {
                failed.push(format!("{name} {}: {worst:.2e} > {tol:.0e}", r.case));
            }
        }
    }
    println!();
    if !failed.is_empty() {
        bail!("convolution errors above tolerance: {}", failed.join("; "));
    }
    Ok(())
}

/// Applies `--conv`, `--cudnn-algo`, `--norm` and `--tf32`, refusing combinations this binary or device cannot
/// run.
fn kernels(cli: &Cli, dev: &Device) -> Result<()> {
    use vsdm_image::unet::fastconv::{set_conv_backward, ConvBackward, CudnnAlgo, NO_CUDNN};
    let conv = cli
        .conv
        .unwrap_or(if cfg!(feature = "cudnn") && !dev.is_cpu() {
            ConvBackward::Cudnn
        } else {
            ConvBackward::Patch
        });
    if conv == ConvBackward::Cudnn {
        if !cfg!(feature = "cudnn") {
            bail!(NO_CUDNN);
        }
        if dev.is_cpu() {
            bail!("--conv cudnn runs on CUDA only: add --cuda, or use --conv patch on the CPU");
        }
    }
    if cli.tf32 && dev.is_cpu() {
        bail!("--tf32 is a CUDA setting (tensor cores); the CPU computes in f32");
    }
    if let Some(algo) = cli.cudnn_algo.filter(|_| conv != ConvBackward::Cudnn) {
        bail!(
            "--cudnn-algo {} chooses cuDNN's algorithms: it needs --conv cudnn",
            algo.name()
        );
    }
    set_conv_backward(conv);
    vsdm_image::unet::fastconv::set_cudnn_algo(cli.cudnn_algo.unwrap_or(CudnnAlgo::Find));
    vsdm_image::unet::fastnorm::set_norm_backward(cli.norm);
    candle_core::cuda::set_gemm_reduced_precision_f32(cli.tf32);
    Ok(())
}

fn main() -> std::process::ExitCode {
    vsdm_eval::cli::tune_allocator();
    vsdm_eval::cli::init_logging("warn");
    vsdm_eval::cli::exit(run())
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let dev = device(cli.cuda)?;
    kernels(&cli, &dev)?;
    let hub = Hub::from_env(cli.offline);
    match cli.cmd {
        None => train(Defaults::parse_from(["vsdm-image"]).args, &hub, &dev),
        Some(Cmd::Train(a)) => train(*a, &hub, &dev),
        Some(Cmd::Sample(a)) => sample(a, &hub, &dev),
        Some(Cmd::Fid(a)) => fid(a, &hub, &dev),
        Some(Cmd::Bench(a)) => bench(a, &dev),
        Some(Cmd::CheckDevice(a)) => check_device(a, &dev),
    }
}
