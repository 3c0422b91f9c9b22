//! Time and peak memory of one training step (forward + backward) and one sampling-mode forward pass of the
//! forecasting network on a grid of the given size:
//! `cargo run --release -p vsdm-timeseries --example net_speed -- SERIES CONTEXT HORIZON BATCH [HEADS PATCH]`
//! (electricity: `370 72 24 4`). Runs on the first CUDA device when built with `--features cuda` and one is
//! present, else on the CPU; peak memory is the process's resident memory (on a GPU, measure the device's with
//! `nvidia-smi`, as `scripts/gpu/session.sh core` does).
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

fn main() -> anyhow::Result<()> {
    // As the command-line programs do, so that a step costs here what it costs in `vsdm-timeseries`.
    vsdm_eval::cli::tune_allocator();
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    if a.len() < 4 {
        anyhow::bail!("usage: net_speed SERIES CONTEXT HORIZON BATCH [HEADS PATCH]");
    }
    let (d, c, h, b) = (a[0], a[1], a[2], a[3]);
    let base = NetConfig::small(d, c, h, 4, 1);
    let cfg = NetConfig {
        heads: a.get(4).copied().unwrap_or(base.heads),
        patch: a.get(5).copied().unwrap_or(base.patch),
        ..base
    };
    let dev = Device::cuda_if_available(0)?;
    let vm = VarMap::new();
    let mut net = ForecastNet::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), cfg)?;
    let mut rng = NoiseRng::new(0);
    let x = rng.randn(&[b, 1, d, h], &dev)?;
    let cond = rng.randn(&[b, 5, d, c + h], &dev)?;
    let t = Tensor::full(0.5f32, b, &dev)?;
    println!("{cfg:?}, batch {b}, device {dev:?}");
    for _ in 0..3 {
        let s = std::time::Instant::now();
        let loss = net.forward(&x, &t, Some(&cond))?.sqr()?.mean_all()?;
        let _g = loss.backward()?;
        dev.synchronize()?;
        println!(
            "train step (forward + backward): {:.3} s; peak memory {:.0} MiB",
            s.elapsed().as_secs_f64(),
            peak_rss_mib()
        );
    }
    net.set_inference(true);
    let s = std::time::Instant::now();
    net.forward(&x, &t, Some(&cond))?;
    dev.synchronize()?;
    println!("sampling forward: {:.3} s", s.elapsed().as_secs_f64());
    Ok(())
}
