//! Time and peak memory of one training step (forward + backward) and one sampling-mode forward pass (on a
//! network that records no graph, as the trainer's EMA network and loaded weights are, with the batch sharing
//! one window's conditioning as a forecast's samples do) of the forecasting
//! network on a grid of the given size:
//! `cargo run --release -p vsdm-timeseries --example net_speed -- SERIES CONTEXT HORIZON BATCH [HEADS PATCH]`
//! (electricity: `370 72 24 4`). Runs on the first CUDA device when built with `--features cuda` and one is
//! present, else on the CPU; peak memory is the process's resident memory (on a GPU, measure the device's with
//! `nvidia-smi`, as `scripts/gpu/session.sh core` does). Each is called once to warm up, then `STEPS` times
//! (environment, default 3); the last line has the medians. `ONLY=sample` (or `train`) times only that one,
//! for profiling. The network has 4 time features (electricity's
//! hourly set). `python bench/forecast_net.py bench --features 4 …` times PyTorch's twin of it the same way.
//!
//! `net_speed check SERIES CONTEXT HORIZON BATCH` instead compares that device with the CPU: the same weights
//! and inputs, the output, the loss and every parameter's gradient of one training step, as relative errors
//! ‖device − CPU‖∞ / ‖CPU‖∞ in exact f32 (TF32 off); it fails above 1e-4. (Without a GPU it compares the CPU
//! with itself: a run of the code path, not a check.)
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use vsdm_core::{NoiseRng, ScoreModel};
use vsdm_timeseries::model::{ForecastNet, NetConfig};

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_string();
            l.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// ‖a − b‖∞ / ‖b‖∞ (‖a − b‖∞ where b = 0).
fn rel(a: &Tensor, b: &Tensor) -> anyhow::Result<f64> {
    let inf = |t: &Tensor| -> anyhow::Result<f64> {
        Ok(t.abs()?
            .flatten_all()?
            .max(0)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?)
    };
    let b = b.to_device(&Device::Cpu)?;
    let d = inf(&(a.to_device(&Device::Cpu)? - &b)?)?;
    let n = inf(&b)?;
    Ok(d / if n > 0.0 { n } else { 1.0 })
}

/// The `check` mode: one training step on `dev` and on the CPU from the same weights and inputs.
fn check(cfg: NetConfig, b: usize, dev: &Device) -> anyhow::Result<()> {
    candle_core::cuda::set_gemm_reduced_precision_f32(false);
    let cpu = Device::Cpu;
    let (d, c, h) = (cfg.num_series, cfg.context, cfg.horizon);
    let vm_cpu = VarMap::new();
    let net_cpu = ForecastNet::new(VarBuilder::from_varmap(&vm_cpu, DType::F32, &cpu), cfg)?;
    let vm_dev = VarMap::new();
    let net_dev = ForecastNet::new(VarBuilder::from_varmap(&vm_dev, DType::F32, dev), cfg)?;
    let params = vm_cpu.data().lock().unwrap().clone();
    for (name, var) in vm_dev.data().lock().unwrap().iter() {
        var.set(&params[name].as_tensor().to_device(dev)?)?;
    }
    let mut rng = NoiseRng::new(1);
    let x = rng.randn(&[b, 1, d, h], &cpu)?;
    let cond = rng.randn(&[b, 5, d, c + h], &cpu)?;
    let t = Tensor::full(0.5f32, b, &cpu)?;
    let step = |net: &ForecastNet, dev: &Device| -> anyhow::Result<_> {
        let y = net.forward(
            &x.to_device(dev)?,
            &t.to_device(dev)?,
            Some(&cond.to_device(dev)?),
        )?;
        let loss = y.sqr()?.mean_all()?;
        let grads = loss.backward()?;
        Ok((y, loss, grads))
    };
    let (y0, l0, g0) = step(&net_cpu, &cpu)?;
    let (y1, l1, g1) = step(&net_dev, dev)?;
    let mut worst = (0f64, String::new());
    let dev_vars = vm_dev.data().lock().unwrap().clone();
    for (name, var) in &params {
        let a = g1
            .get(dev_vars[name].as_tensor())
            .ok_or_else(|| anyhow::anyhow!("{name}: no gradient on {dev:?}"))?;
        let b = g0
            .get(var.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("{name}: no gradient on the CPU"))?;
        let e = rel(a, b)?;
        if e >= worst.0 || e.is_nan() {
            worst = (e, name.clone());
        }
    }
    let (ey, el) = (rel(&y1, &y0)?, rel(&l1, &l0)?);
    println!(
        "{cfg:?}, batch {b}: {dev:?} vs CPU (f32, TF32 off): output {ey:.2e}, loss {el:.2e}, worst gradient \
         {:.2e} ({}) over {} parameter tensors",
        worst.0,
        worst.1,
        params.len()
    );
    let bad = [ey, el, worst.0].iter().any(|e| e.is_nan() || *e > 1e-4);
    anyhow::ensure!(!bad, "{dev:?} differs from the CPU by more than 1e-4");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // As the command-line programs do, so that a step costs here what it costs in `vsdm-timeseries`.
    vsdm_eval::cli::tune_allocator();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let checking = args.first().is_some_and(|a| a == "check");
    if checking {
        args.remove(0);
    }
    let a: Vec<usize> = args.iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
    if a.len() < 4 {
        anyhow::bail!("usage: net_speed [check] SERIES CONTEXT HORIZON BATCH [HEADS PATCH]");
    }
    let (d, c, h, b) = (a[0], a[1], a[2], a[3]);
    let base = NetConfig::small(d, c, h, 4, 1);
    let cfg = NetConfig {
        heads: a.get(4).copied().unwrap_or(base.heads),
        patch: a.get(5).copied().unwrap_or(base.patch),
        ..base
    };
    let dev = Device::cuda_if_available(0)?;
    if checking {
        return check(cfg, b, &dev);
    }
    let vm = VarMap::new();
    let net = ForecastNet::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), cfg)?;
    let mut rng = NoiseRng::new(0);
    let x = rng.randn(&[b, 1, d, h], &dev)?;
    let cond = rng.randn(&[b, 5, d, c + h], &dev)?;
    let t = Tensor::full(0.5f32, b, &dev)?;
    println!("{cfg:?}, batch {b}, device {dev:?}");
    // One warm-up call, then STEPS timed calls each (their median is the figure to compare: the same
    // methodology as `bench/forecast_net.py bench`, PyTorch's twin of this network).
    let steps: usize = std::env::var("STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let only = std::env::var("ONLY").unwrap_or_default();
    let (train_steps, sample_steps) = match only.as_str() {
        "sample" => (0, steps),
        "train" => (steps, 0),
        "" => (steps, steps),
        o => anyhow::bail!("ONLY={o}: expected sample or train"),
    };
    let mut train = Vec::new();
    for i in 0..=train_steps {
        if train_steps == 0 {
            break;
        }
        let s = std::time::Instant::now();
        let loss = net.forward(&x, &t, Some(&cond))?.sqr()?.mean_all()?;
        let _g = loss.backward()?;
        dev.synchronize()?;
        let e = s.elapsed().as_secs_f64();
        println!(
            "train step (forward + backward): {e:.3} s; peak memory {:.0} MiB",
            peak_rss_mib()
        );
        if i > 0 {
            train.push(e);
        }
    }
    // Sampling runs the EMA network, which the trainer builds on untracked views of its variables (and a
    // network loaded from disk has plain tensors): the same here, so that no graph is recorded.
    let mut sampler = ForecastNet::new(
        vsdm_core::init::untracked_var_builder(&vm, DType::F32, &dev),
        cfg,
    )?;
    sampler.set_inference(true);
    // A forecast's samples share one window's conditioning (`forecast::repeat_batch`, a broadcast view).
    let sample_cond = vsdm_timeseries::forecast::repeat_batch(&cond.narrow(0, 0, 1)?, b)?;
    let mut sample = Vec::new();
    for i in 0..=sample_steps {
        if sample_steps == 0 {
            break;
        }
        let s = std::time::Instant::now();
        sampler.forward(&x, &t, Some(&sample_cond))?;
        dev.synchronize()?;
        if i > 0 {
            sample.push(s.elapsed().as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    println!(
        "medians of {steps} after a warm-up: train step {:.4} s, sampling forward {:.4} s",
        median(&mut train),
        median(&mut sample)
    );
    Ok(())
}
