//! The training loop of the `train` command: the core's alternating trainer driven step by step, with a progress
//! bar (loss, images/s), checkpoints with exact resume, exported EMA weights and sample grids every N steps.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use vsdm_core::metrics::MetricsLog;
use vsdm_core::progress::Progress;
use vsdm_core::{DataSource, NoiseRng, SamplerConfig, TrainConfig, Trainer};

use crate::error::{Error, Result};
use crate::method::RunSpec;
use crate::sample::{grid_columns, sample_images, Labels};
use crate::unet::UNet;

/// Builds the trainer's two networks: the first call (trained weights) with dropout and the run's precision, the
/// second (EMA, used for sampling) without dropout, in f32.
fn builder(spec: &RunSpec) -> impl Fn(candle_nn::VarBuilder) -> candle_core::Result<UNet> {
    let cfg = spec.unet.clone();
    let dtype = spec.precision.dtype();
    let calls = Cell::new(0usize);
    move |vb| {
        let n = calls.get();
        calls.set(n + 1);
        if n == 0 {
            let mut net = UNet::new_train(vb, &cfg)?;
            net.set_compute_dtype(dtype)?;
            Ok(net)
        } else {
            UNet::new(vb, &cfg)
        }
    }
}

/// A fresh trainer for a run.
pub fn new_trainer(spec: &RunSpec, tc: TrainConfig, device: &Device) -> Result<Trainer<UNet>> {
    spec.precision.check(device)?;
    Ok(Trainer::new(tc, device, builder(spec))?)
}

/// Resumes the latest checkpoint of a run directory (`DIR/run.json`, `DIR/ckpt/`).
pub fn resume_trainer(run_dir: &Path, device: &Device) -> Result<(RunSpec, Trainer<UNet>)> {
    let spec = RunSpec::load(&run_dir.join(RunSpec::FILE))?;
    spec.precision.check(device)?;
    let tr = Trainer::resume(&run_dir.join("ckpt"), device, builder(&spec))?;
    Ok((spec, tr))
}

/// Where and how often the loop writes.
#[derive(Debug, Clone)]
pub struct LoopOptions {
    /// Run directory: `run.json`, `ckpt/`, `weights/` (EMA export), `samples/step-N.png`.
    pub out: PathBuf,
    /// Checkpoint (and weight export) every this many steps, and at the end; 0: only at the end.
    pub ckpt_every: usize,
    /// Sample grid every this many steps, and at the end; 0: only at the end.
    pub sample_every: usize,
    /// Images in a grid.
    pub grid: usize,
    /// Sampler of the grids.
    pub sampler: SamplerConfig,
    /// Stop (with a checkpoint) after this much wall-clock time; the end's checkpoint and sample grid are
    /// drawn within it (the training stops early enough for them, see [`run_loop`]).
    pub max_seconds: Option<f64>,
    /// Show a progress bar.
    pub progress: bool,
    /// Raised (by Ctrl-C: [`vsdm_eval::cli::stop_on_interrupt`]) to stop after the current update with a
    /// checkpoint and the weights, without the end's sample grid.
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// What a loop did.
#[derive(Debug, Clone)]
pub struct LoopSummary {
    pub steps_done: usize,
    pub first_loss: f64,
    pub last_loss: f64,
    /// Mean loss of the last 10% of steps.
    pub tail_loss: f64,
    pub images_per_second: f64,
    pub last_grid: Option<PathBuf>,
    /// Stopped by [`LoopOptions::stop`].
    pub interrupted: bool,
    /// Seconds after the last update: the end's checkpoint and sample grid.
    pub end_seconds: f64,
}

/// A grid's images drawn by the EMA network with `sampler`, from a fixed noise stream of its own: grids are
/// comparable across steps and the trainer's RNG (hence exact resume) is untouched.
fn draw_grid(
    tr: &Trainer<UNet>,
    spec: &RunSpec,
    opts: &LoopOptions,
    sampler: &SamplerConfig,
    device: &Device,
) -> Result<candle_core::Tensor> {
    let mut rng = NoiseRng::new(tr.config().seed ^ 0x5eed);
    let labels = Labels::for_network(spec.unet.label_dim, None)?;
    let net = tr.ema_model();
    sample_images(
        tr.process(),
        net,
        sampler,
        opts.grid,
        opts.grid,
        labels,
        &mut rng,
        device,
    )
    .map(|(images, _)| images)
}

fn grid_now(
    tr: &Trainer<UNet>,
    spec: &RunSpec,
    opts: &LoopOptions,
    device: &Device,
) -> Result<PathBuf> {
    let images = draw_grid(tr, spec, opts, &opts.sampler, device)?;
    let dir = opts.out.join("samples");
    let path = dir.join(format!("step-{:07}.png", tr.step_count()));
    std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
    vsdm_eval::export::save_grid_png(&images, &path, grid_columns(opts.grid))
        .map_err(|e| Error::bad_file(&path, e.to_string()))?;
    Ok(path)
}

/// Seconds the end's sample grid will take: the median of three one-step draws of the grid's images (not the
/// first alone, which may pay for loading kernels; not the fastest, which on a busy machine is a lucky moment),
/// times the grid sampler's network evaluations.
fn grid_seconds_estimate(
    tr: &Trainer<UNet>,
    spec: &RunSpec,
    opts: &LoopOptions,
    device: &Device,
) -> Result<f64> {
    let one = SamplerConfig {
        steps: 1,
        ..opts.sampler
    };
    // One step is one network evaluation for every sampler (Heun's last step is an Euler step).
    let mut per_nfe = [0.0; 3];
    for v in &mut per_nfe {
        let t = Instant::now();
        draw_grid(tr, spec, opts, &one, device)?;
        *v = t.elapsed().as_secs_f64();
    }
    per_nfe.sort_by(f64::total_cmp);
    Ok(per_nfe[1] * opts.sampler.nfe() as f64)
}

fn save(tr: &Trainer<UNet>, spec: &RunSpec, out: &Path) -> Result<()> {
    tr.save_checkpoint(&out.join("ckpt"))?;
    let w = out.join("weights");
    tr.export(&w)?;
    // The published weights' run.json says what the network is, not where this machine kept its images or
    // how often this run wrote (the run folder's run.json keeps those for --resume).
    RunSpec {
        data: crate::method::DataRecord::Unrecorded,
        output: None,
        ..spec.clone()
    }
    .save(&w)
}

/// Trains until the configured number of steps (or the time limit), writing checkpoints, weights and grids.
///
/// With a time limit the run ends within it: the training stops when the time spent plus what the end still
/// costs (its sample grid and checkpoint, and a periodic grid or checkpoint due at this update, which would
/// come before them) reaches the limit. The grid's cost is measured before the first step
/// ([`grid_seconds_estimate`]) and again by each grid drawn on the way; the checkpoint's by each one written on
/// the way (none before the first); before the run stops on these figures the grid's cost is measured once more,
/// so that a figure taken at a busy moment does not end the run early. At least one step is made, however short
/// the limit.
pub fn run_loop<D: DataSource>(
    tr: &mut Trainer<UNet>,
    spec: &RunSpec,
    data: &mut D,
    opts: &LoopOptions,
    device: &Device,
) -> Result<LoopSummary> {
    spec.save(&opts.out)?;
    tr.log_metrics(&opts.out.join(MetricsLog::FILE))?;
    let total = tr.config().iters;
    let batch = tr.config().batch_size;
    let pb = if opts.progress {
        Progress::new("training", total as u64, "steps")
    } else {
        Progress::hidden()
    };
    pb.start_at(tr.step_count() as u64);
    let start = Instant::now();
    // What the end costs beyond the last update: its sample grid's and its checkpoint's seconds.
    let (mut grid_secs, mut ckpt_secs) = (0.0, 0.0);
    let over = |grid: f64, ckpt: f64| {
        opts.max_seconds
            .is_some_and(|s| start.elapsed().as_secs_f64() + grid + ckpt >= s)
    };
    // The progress lines' time left under the limit: the training's, which ends the end's cost before it.
    let show_deadline = |grid: f64, ckpt: f64| {
        if let Some(limit) = opts.max_seconds {
            let left = limit - start.elapsed().as_secs_f64() - grid - ckpt;
            if let Ok(d) = std::time::Duration::try_from_secs_f64(left.max(0.0)) {
                pb.set_deadline(d);
            }
        }
    };
    // (Nothing to estimate for a run that is already done.)
    if let Some(limit) = opts.max_seconds.filter(|_| tr.step_count() < total) {
        grid_secs = grid_seconds_estimate(tr, spec, opts, device)?;
        if grid_secs >= limit {
            pb.println(format!(
                "the end's sample grid ({} images, {} network evaluations) takes about {:.1} s, more than the time \
                 limit: one step is made (a smaller --grid or --grid-steps leaves time to train)",
                opts.grid,
                opts.sampler.nfe(),
                grid_secs
            ));
        }
        show_deadline(grid_secs, ckpt_secs);
    }
    let mut checked_again = false;
    // When the last update ended.
    let mut ended = None;
    let mut losses = Vec::new();
    let mut last_grid = None;
    let mut interrupted = false;
    if opts.stop.is_some() {
        // From here Ctrl-C stops after an update (before, it quits at once).
        vsdm_eval::cli::training(true);
    }
    // Time in the trainer's updates during this loop (it sums each update's).
    let secs0 = tr.training_seconds();
    let train_secs = |tr: &Trainer<UNet>| tr.training_seconds() - secs0;
    while tr.step_count() < total {
        let r = tr.step(data)?;
        losses.push(r.loss);
        let rate = losses.len() as f64 * batch as f64 / train_secs(tr).max(1e-9);
        pb.set_message(format!("loss {:.4} · {:.1} img/s", r.loss, rate));
        pb.set_position(r.step as u64);
        if let Some((a, b)) = r.stage {
            tracing::info!(step = r.step, before = a, after = b, "variational stage");
        }
        let grid_due = opts.sample_every > 0 && r.step % opts.sample_every == 0;
        let ckpt_due = opts.ckpt_every > 0 && r.step % opts.ckpt_every == 0;
        // Going on past this update pays the grid and checkpoint due at it before the end's: if that leaves no
        // time, this update's are the end's.
        let past_limit = |grid: f64, ckpt: f64| {
            over(
                if grid_due { 2.0 * grid } else { grid },
                if ckpt_due { 2.0 * ckpt } else { ckpt },
            )
        };
        // (The planned last update ends the run as planned, whatever the clock says.)
        let mut out_of_time = r.step < total && past_limit(grid_secs, ckpt_secs);
        if out_of_time && !checked_again {
            // The grid's cost may have been measured at a busy moment (another process, a load spike): measured
            // again, once, before the run stops on it.
            checked_again = true;
            grid_secs = grid_seconds_estimate(tr, spec, opts, device)?;
            out_of_time = past_limit(grid_secs, ckpt_secs);
            show_deadline(grid_secs, ckpt_secs);
        }
        // A request during the last update is not an interruption: the run ends as planned.
        interrupted = r.step < total
            && opts
                .stop
                .as_ref()
                .is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst));
        let last = r.step == total || out_of_time;
        // The run ends after this update (as planned, at the time limit, or interrupted).
        let ending = last || interrupted;
        if ending {
            ended = Some(Instant::now());
        }
        if ending || ckpt_due {
            let t = Instant::now();
            save(tr, spec, &opts.out)?;
            ckpt_secs = t.elapsed().as_secs_f64();
            show_deadline(grid_secs, ckpt_secs);
            tracing::info!(step = r.step, loss = r.loss, "checkpoint");
        }
        if ending {
            // The run is saved: Ctrl-C during the end's sample grid quits at once.
            vsdm_eval::cli::training(false);
        }
        if interrupted {
            pb.println(format!(
                "interrupted after {} steps; checkpoint and weights written; `vsdm-image train --resume --out \
                 {}` continues (with this command's global options, such as --cuda)",
                r.step,
                opts.out.display()
            ));
            break;
        }
        if last || grid_due {
            let t = Instant::now();
            let p = grid_now(tr, spec, opts, device)?;
            grid_secs = t.elapsed().as_secs_f64();
            show_deadline(grid_secs, ckpt_secs);
            pb.println(format!("step {}: sample grid {}", r.step, p.display()));
            last_grid = Some(p);
        }
        if out_of_time {
            pb.println(format!(
                "time limit reached after {} steps; `vsdm-image train --resume --out {}` continues (with this \
                 command's global options, such as --cuda)",
                r.step,
                opts.out.display()
            ));
            break;
        }
    }
    pb.finish();
    let n = losses.len();
    let tail = &losses[n - n.div_ceil(10).min(n)..];
    Ok(LoopSummary {
        steps_done: n,
        first_loss: losses.first().copied().unwrap_or(f64::NAN),
        last_loss: losses.last().copied().unwrap_or(f64::NAN),
        tail_loss: tail.iter().sum::<f64>() / tail.len().max(1) as f64,
        images_per_second: n as f64 * batch as f64 / train_secs(tr).max(1e-9),
        last_grid,
        interrupted,
        end_seconds: ended.map_or(0.0, |t: Instant| t.elapsed().as_secs_f64()),
    })
}
