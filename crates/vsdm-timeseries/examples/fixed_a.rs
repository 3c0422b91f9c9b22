//! Does a learned A help when the network gets the whole budget on it? Trains VSDM with A fixed (no
//! stochastic-approximation stages) at the EMA A of given trained weights, on the bundled exchange-rate set with
//! the CLI's defaults and `last` scaling, and prints each seed's CRPS and CRPS-sum (same forecast protocol and
//! seeds as `vsdm-timeseries bench`):
//!
//! `cargo run --release -p vsdm-timeseries --example fixed_a -- [--iters N …budget flags] WEIGHTS STEPS SEEDS OUT`
//! e.g. `… -- --iters 1000 runs/timeseries/exchange_rate/bench-vsdm-seed0/weights 25 0,1,2 /tmp/fixed_a`
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use vsdm_core::trainer::ExportedConfig;
use vsdm_core::{SamplerConfig, SamplerKind, VarParams};
use vsdm_timeseries::data::DataSources;
use vsdm_timeseries::forecast;
use vsdm_timeseries::pipeline::{self, Budget, Method};
use vsdm_timeseries::weights;
use vsdm_timeseries::window::WindowConfig;

#[derive(Parser)]
struct Args {
    /// Trained VSDM weights whose EMA A is used (their config.json).
    weights: PathBuf,
    /// Euler–Maruyama steps of the forecasts.
    steps: usize,
    #[arg(value_delimiter = ',')]
    seeds: Vec<u64>,
    out: PathBuf,
    #[command(flatten)]
    budget: Budget,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg_path = args.weights.join("config.json");
    let a = match ExportedConfig::read(&cfg_path)?.params {
        VarParams::Diagonal(a) => a,
        other => anyhow::bail!("{}: not VSDM weights ({other:?})", cfg_path.display()),
    };
    let mut src = DataSources::new(None);
    src.allow_download = false;
    let data = src.load("exchange_rate")?;
    let window = WindowConfig::timegrad(
        data.prediction_length,
        vsdm_timeseries::window::Scaling::Last,
    );
    let budget = args.budget;
    let dev = candle_core::Device::Cpu;
    let mean = a.iter().sum::<f64>() / a.len() as f64;
    println!(
        "A from {}: {} entries, mean {mean:.4}",
        cfg_path.display(),
        a.len()
    );
    for &seed in &args.seeds {
        let mut cfg = pipeline::train_config(
            Method::Vsdm,
            &budget,
            data.num_series(),
            window.horizon,
            seed,
        )?;
        anyhow::ensure!(
            cfg.init.values().len() == a.len(),
            "{}: {} A entries, this data set needs {}",
            cfg_path.display(),
            a.len(),
            cfg.init.values().len()
        );
        cfg.init = VarParams::Diagonal(a.clone());
        cfg.adaptive = false;
        let trained = pipeline::train_with(Method::Vsdm, cfg, &budget, &data, window, &dev, None)?;
        let dir = args.out.join(format!("seed{seed}"));
        weights::save(&trained, &data.name, &dir).with_context(|| dir.display().to_string())?;
        let loaded = weights::load(&dir, &dev)?;
        let fc = loaded.forecaster(
            SamplerConfig::new(SamplerKind::EulerMaruyama, args.steps),
            100,
            &dev,
        );
        let ends = forecast::select_windows(&data.test, None);
        let f = fc.forecast(&data.test, &ends, 100, seed.wrapping_add(1_000))?;
        let r = forecast::score(&f)?;
        println!(
            "seed {seed}: CRPS {:.5} CRPS-sum {:.5} ({:.0} s training)",
            r.marginal.crps, r.sum.crps, trained.seconds
        );
    }
    Ok(())
}
