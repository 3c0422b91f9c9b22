//! `vsdm-timeseries`: conditional multivariate probabilistic forecasting with VSDM and VSMD.
//!
//! With no arguments: trains VSDM on the bundled `exchange_rate_nips`, forecasts its rolling test windows with
//! 100 samples each, prints CRPS / CRPS-sum / ND / NRMSE next to a random-walk reference, and writes the
//! forecasts as CSV and fan-chart PNGs under `runs/timeseries/`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use vsdm_core::hub::Hub;
use vsdm_core::{SamplerConfig, SamplerKind};
use vsdm_eval::forecast::Report;
use vsdm_timeseries::data::date_csv::load_date_csv;
use vsdm_timeseries::data::gluonts::load_gluonts_dir;
use vsdm_timeseries::data::registry::{self, default_assets_dir};
use vsdm_timeseries::data::{DataSources, Dataset};
use vsdm_timeseries::forecast::{self, WindowForecast};
use vsdm_timeseries::pipeline::{self, Budget, Method};
use vsdm_timeseries::weights::{self, WeightsSource};
use vsdm_timeseries::window::{Scaling, WindowConfig};

#[derive(Parser, Debug)]
#[command(
    name = "vsdm-timeseries",
    version,
    about = "Probabilistic forecasting with VSDM / VSMD (candle)"
)]
struct Cli {
    /// Registered data set: electricity, solar, traffic, exchange_rate, etth1.
    #[arg(long, global = true, conflicts_with = "data")]
    dataset: Option<String>,
    /// A data set on disk: a GluonTS folder (train/, test/, metadata/) or a CSV with a date column.
    #[arg(long, global = true)]
    data: Option<PathBuf>,
    /// Prediction length for `--data CSV` (GluonTS folders carry theirs in metadata.json).
    #[arg(long, global = true, allow_negative_numbers = true)]
    prediction_length: Option<usize>,
    /// Diffusion method (default vsdm; with --weights, the method the weights were trained with, and an
    /// explicit --method must match it).
    #[arg(long, global = true, value_enum)]
    method: Option<Method>,
    /// Context length (default: 3 × prediction length, the TimeGrad protocol).
    #[arg(long, global = true, allow_negative_numbers = true)]
    context: Option<usize>,
    /// Per-series, per-window normalisation from the context (default: the registry's for the data set, `last`
    /// on exchange_rate, a near random walk where it was measured to help; `std`, pytorch-ts' TimeGrad setting,
    /// elsewhere and for `--data` paths; see docs/results/timeseries.md).
    #[arg(long, global = true, value_enum)]
    scaling: Option<Scaling>,
    /// Output folder.
    #[arg(long, global = true, default_value = "runs/timeseries")]
    out: PathBuf,
    /// Data-set cache folder (default: $VSDM_DATASETS_DIR or ~/.cache/vsdm/datasets).
    #[arg(long, global = true)]
    cache_dir: Option<PathBuf>,
    /// Never download; fail with the path where the file is expected instead.
    #[arg(long, global = true)]
    offline: bool,
    #[arg(
        long,
        global = true,
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    seed: u64,
    /// Samples per forecast.
    #[arg(
        long,
        global = true,
        default_value_t = 100,
        allow_negative_numbers = true
    )]
    samples: usize,
    /// Reverse-time solver: em (reverse SDE), euler or heun (probability-flow ODE).
    #[arg(long, global = true, default_value = "em")]
    sampler: SamplerKind,
    /// Solver steps.
    #[arg(
        long,
        global = true,
        default_value_t = 50,
        allow_negative_numbers = true
    )]
    steps: usize,
    /// Samples per network batch while forecasting (default: up to 100, as many as keep the largest attention
    /// map under 512 MiB: 100 on the exchange rate, 30 at electricity's 370 series).
    #[arg(long, global = true, allow_negative_numbers = true)]
    sample_batch: Option<usize>,
    /// Forecast at most this many test windows (evenly spaced, the last included).
    #[arg(long, global = true, allow_negative_numbers = true)]
    max_windows: Option<usize>,
    /// Model selection without the test set: evaluate on the last N rolling windows of the training series
    /// instead of the test windows; training loses those columns, and runs go to OUT/<dataset>-val/.
    #[arg(long, global = true, allow_negative_numbers = true)]
    validation: Option<usize>,
    /// Weights to forecast with: a folder with model.safetensors + config.json, or hf:OWNER/NAME[@REV] (read
    /// from the Hugging Face cache, $HF_HUB_CACHE or $HF_HOME/hub, downloaded there from $HF_ENDPOINT unless
    /// --offline or HF_HUB_OFFLINE=1).
    #[arg(long, global = true)]
    weights: Option<String>,
    /// Fan charts to draw (one per series of the last window).
    #[arg(
        long,
        global = true,
        default_value_t = 8,
        allow_negative_numbers = true
    )]
    charts: usize,
    /// Checkpoint every N updates (0: only at the end) under OUT/<dataset>/<method>/checkpoints.
    #[arg(
        long,
        global = true,
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    checkpoint_every: usize,
    #[command(flatten)]
    budget: Budget,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train and write weights to OUT/<dataset>/<method>/weights.
    Train,
    /// Forecast the test windows with trained weights; write CSV and fan charts.
    Forecast,
    /// Forecast, then print GluonTS's metrics next to the random-walk reference.
    Evaluate,
    /// Train and evaluate several methods over several seeds; print mean ± spread.
    Bench {
        #[arg(long, value_delimiter = ',', default_value = "vp,vsdm,vsmd")]
        methods: Vec<Method>,
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "0,1,2",
            allow_negative_numbers = true
        )]
        seeds: Vec<u64>,
    },
}

fn main() -> std::process::ExitCode {
    vsdm_eval::cli::tune_allocator();
    vsdm_eval::cli::init_logging("info");
    vsdm_eval::cli::exit(run(Cli::parse()))
}

fn load_data(cli: &Cli) -> anyhow::Result<Dataset> {
    let data = load_test_protocol(cli)?;
    match cli.validation {
        Some(n) => data
            .validation(n)
            .map_err(|e| anyhow::anyhow!("--validation {n}: {e}")),
        None => Ok(data),
    }
}

fn load_test_protocol(cli: &Cli) -> anyhow::Result<Dataset> {
    if let Some(path) = &cli.data {
        if !path.exists() {
            anyhow::bail!("--data {}: no such file or folder", path.display());
        }
        let name = path
            .file_name()
            .map_or("data".into(), |n| n.to_string_lossy().to_string());
        if path.join("train").join("train.json").is_file() {
            return Ok(load_gluonts_dir(path, &name, cli.prediction_length)?);
        }
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".csv") || lower.ends_with(".csv.gz") {
            let h = cli.prediction_length.unwrap_or(24);
            let csv = load_date_csv(path, None)?;
            let per_day = csv.series.freq.periods_per_day();
            return Dataset::from_full_series(name, csv.series, h, 0.2, per_day)
                .and_then(|d| d.with_series_names(csv.columns))
                .with_context(|| format!("{} with --prediction-length {h}", path.display()));
        }
        let hint = if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
            " (a GluonTS archive: unpack it first, `tar xzf`, and pass the folder)"
        } else if lower.ends_with(".txt") || lower.ends_with(".txt.gz") {
            " (an LSTNet text file has no dates: the registered data sets read theirs, `--dataset`; for a file of \
             your own, add a date column and save it as .csv)"
        } else {
            ""
        };
        anyhow::bail!(
            "--data {}: expected a GluonTS folder (with train/train.json) or a .csv/.csv.gz file with a date \
             column{hint}",
            path.display()
        );
    }
    let mut sources = DataSources::new(cli.cache_dir.clone());
    sources.allow_download = !cli.offline;
    Ok(sources.load(cli.dataset.as_deref().unwrap_or("exchange_rate"))?)
}

/// Before a run that trains and then forecasts: every test window it will forecast fits the window it trains
/// for (else the error, naming the data set, comes now instead of after the training).
fn check_test_windows(cli: &Cli, data: &Dataset) -> anyhow::Result<()> {
    let ends = forecast::select_windows(&data.test, cli.max_windows);
    forecast::check_windows(&data.test, &ends, &window(cli, data))
        .with_context(|| format!("the test split of {}", data.name))
}

fn run_dir(cli: &Cli, data: &Dataset, method: Method) -> PathBuf {
    cli.out.join(&data.name).join(method.name())
}

fn window(cli: &Cli, data: &Dataset) -> WindowConfig {
    let scaling = cli.scaling.unwrap_or_else(|| {
        registry::DATASETS
            .iter()
            .find(|s| s.name == data.name)
            .map_or(Scaling::Std, |s| s.scaling)
    });
    let mut w = WindowConfig::timegrad(data.prediction_length, scaling);
    if let Some(c) = cli.context {
        w.context = c;
    }
    w
}

/// Peak resident memory of this process in MiB (Linux; None elsewhere).
fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Where the weights for `forecast` / `evaluate` come from: --weights, this run's output, or the bundled ones.
fn weights_dir(cli: &Cli, data: &Dataset, method: Method) -> anyhow::Result<PathBuf> {
    if let Some(w) = &cli.weights {
        return match w.parse::<WeightsSource>()? {
            WeightsSource::Local(p) => Ok(p),
            WeightsSource::Hub(r) => weights::from_hub(&Hub::from_env(cli.offline), &r),
        };
    }
    let own = run_dir(cli, data, method).join("weights");
    if own.join("model.safetensors").is_file() {
        return Ok(own);
    }
    let bundled = default_assets_dir().map(|a| {
        a.join("timeseries-weights")
            .join(format!("{}-{}", data.name, method.name()))
    });
    match bundled {
        Some(b) if b.join("model.safetensors").is_file() => Ok(b),
        _ => {
            // The command that trains them, with the data and method of this one.
            let source = match (&cli.data, &cli.dataset) {
                (Some(p), _) => format!(" --data {}", p.display()),
                (None, Some(d)) => format!(" --dataset {d}"),
                (None, None) => String::new(),
            };
            anyhow::bail!(
                "no weights for {} on {}: run `vsdm-timeseries{source} --method {} train` first (it writes \
                 {}), or pass --weights",
                method.name(),
                data.name,
                method.name(),
                own.display()
            )
        }
    }
}

struct Row {
    name: String,
    report: Report,
    train_s: f64,
    forecast_s: f64,
}

/// What [`forecast_with`] made.
struct Forecasted {
    forecasts: Vec<WindowForecast>,
    /// Seconds the forecasts took.
    forecast_s: f64,
    /// The weights' training seconds (their record).
    train_s: f64,
    /// The weights' method.
    method: Method,
    /// The weights' window (context, horizon, scaling).
    window: WindowConfig,
}

/// Forecasts the test windows with the weights in `dir`. `expect`: the method the caller asked for, refused if the
/// weights were trained with another (their config decides the forward process, so a label taken from the
/// command line would misname the row).
fn forecast_with(
    cli: &Cli,
    data: &Dataset,
    dir: &Path,
    expect: Option<Method>,
    device: &candle_core::Device,
    seed: u64,
) -> anyhow::Result<Forecasted> {
    let loaded = weights::load(dir, device)?;
    let method = loaded.cfg.method;
    if let Some(m) = expect.filter(|&m| m != method) {
        anyhow::bail!(
            "--method {}: the weights in {} were trained with {}; pass --method {} or leave --method out",
            m.name(),
            dir.display(),
            method.name(),
            method.name()
        );
    }
    // κ shapes the forward process VSMD weights were trained on; a contradicting --kappa is refused like
    // --method (the weights' own is used either way), and so is any --kappa beside VP or VSDM weights.
    match (cli.budget.kappa, &loaded.process) {
        (Some(k), vsdm_core::Process::Vsmd(p)) => {
            if let Some(theirs) = p.params().kappa.filter(|&t| t != k) {
                anyhow::bail!(
                    "--kappa {k}: the weights in {} were trained with κ = {theirs}; leave --kappa out to \
                     forecast with them",
                    dir.display()
                );
            }
        }
        (Some(k), _) => anyhow::bail!(
            "--kappa {k}: the weights in {} are {}'s, which has no damping ratio; leave --kappa out",
            dir.display(),
            method.name()
        ),
        (None, _) => {}
    }
    if loaded.cfg.network.num_series != data.num_series() {
        anyhow::bail!(
            "weights in {} were trained on {} ({} series); this data set has {} series",
            dir.display(),
            loaded.cfg.dataset,
            loaded.cfg.network.num_series,
            data.num_series()
        );
    }
    // The network forecasts the horizon it was trained for, from the context it was trained with, scaled as it
    // was: a data set or flag that asks for other windows is refused rather than scored on a mismatch (the
    // random-walk reference would use the asked-for window and the table would compare unlike things).
    let w = loaded.cfg.window;
    let mut clash = Vec::new();
    if w.horizon != data.prediction_length {
        clash.push(format!(
            "horizon {} (the data set's prediction length is {}: --prediction-length)",
            w.horizon, data.prediction_length
        ));
    }
    if let Some(c) = cli.context.filter(|&c| c != w.context) {
        clash.push(format!("context {} (--context {c})", w.context));
    }
    if let Some(sc) = cli.scaling.filter(|&sc| sc != w.scaling) {
        let name = |s: Scaling| format!("{s:?}").to_lowercase();
        clash.push(format!(
            "scaling {} (--scaling {})",
            name(w.scaling),
            name(sc)
        ));
    }
    if !clash.is_empty() {
        anyhow::bail!(
            "the weights in {} were trained with {}; forecast with their settings or train weights for these",
            dir.display(),
            clash.join(", ")
        );
    }
    let ends = forecast::select_windows(&data.test, cli.max_windows);
    let sample_batch = cli
        .sample_batch
        .unwrap_or_else(|| loaded.cfg.network.sample_batch_within(512 << 20, 100));
    let fc = loaded.forecaster(
        SamplerConfig::new(cli.sampler, cli.steps),
        sample_batch,
        device,
    );
    let start = Instant::now();
    let out = fc.forecast(&data.test, &ends, cli.samples, seed.wrapping_add(1_000))?;
    Ok(Forecasted {
        forecasts: out,
        forecast_s: start.elapsed().as_secs_f64(),
        train_s: loaded.cfg.train_seconds,
        method,
        window: w,
    })
}

/// The random-walk reference on the windows `window` (the scored model's).
fn baseline_row(
    cli: &Cli,
    data: &Dataset,
    window: &WindowConfig,
    seed: u64,
) -> anyhow::Result<Row> {
    let ends = forecast::select_windows(&data.test, cli.max_windows);
    let start = Instant::now();
    let f = forecast::random_walk(&data.test, &ends, window, cli.samples, seed)?;
    Ok(Row {
        name: "random walk".into(),
        report: forecast::score(&f)?,
        train_s: 0.0,
        forecast_s: start.elapsed().as_secs_f64(),
    })
}

/// A note under a table holding non-finite metrics (GluonTS's, which divide by Σ|y| of the test targets).
fn note_non_finite(rows: &[Row]) {
    let bad: Vec<&str> = rows
        .iter()
        .filter(|r| {
            let (m, s) = (&r.report.marginal, &r.report.sum);
            ![m.crps, s.crps, m.nd, m.nrmse]
                .iter()
                .all(|v| v.is_finite())
        })
        .map(|r| r.name.as_str())
        .collect();
    if !bad.is_empty() {
        eprintln!(
            "note: metrics of {} are not finite: CRPS, ND and NRMSE divide by the sum (or mean) of |y| over the \
             test targets, which is 0 here (all-zero test windows) — these windows cannot be scored this way",
            bad.join(", ")
        );
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "| method | CRPS | CRPS-sum | ND | NRMSE | train s | forecast s |\n|---|---|---|---|---|---|---|"
    );
    for r in rows {
        println!(
            "| {} | {:.5} | {:.5} | {:.5} | {:.5} | {:.1} | {:.1} |",
            r.name,
            r.report.marginal.crps,
            r.report.sum.crps,
            r.report.marginal.nd,
            r.report.marginal.nrmse,
            r.train_s,
            r.forecast_s
        );
    }
}

/// A run folder whose checkpoints cannot be resumed (no `latest` pointer) but which still holds an earlier
/// run's checkpoints or weights is refused: training afresh there would replace them without a word. A folder
/// with neither (a run stopped before its first checkpoint, which leaves only `run.json`) starts over as before.
fn refuse_orphaned_run(dir: &Path, ckpt: &Path) -> anyhow::Result<()> {
    if vsdm_core::trainer::latest_checkpoint(ckpt)?.is_some() {
        return Ok(());
    }
    let mut held: Vec<String> = match std::fs::read_dir(ckpt) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("ckpt-"))
            .map(|name| format!("checkpoints/{name}"))
            .collect(),
        Err(_) => Vec::new(),
    };
    held.sort();
    let weights = dir.join("weights").join("model.safetensors");
    if weights.is_file() {
        held.push("weights/model.safetensors".into());
    }
    if held.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "{} holds an earlier run ({}) but no checkpoint to resume ({} is missing): remove {} (or pass another \
         --out) to train afresh, or write the name of a ckpt-* folder into {} to resume it",
        dir.display(),
        held.join(", "),
        ckpt.join("latest").display(),
        dir.display(),
        ckpt.join("latest").display()
    )
}

fn train_and_save(
    cli: &Cli,
    data: &Dataset,
    method: Method,
    seed: u64,
    device: &candle_core::Device,
    dir: &Path,
) -> anyhow::Result<()> {
    let ckpt = dir.join("checkpoints");
    refuse_orphaned_run(dir, &ckpt)?;
    let every = if cli.checkpoint_every > 0 {
        cli.checkpoint_every
    } else {
        cli.budget.iters
    };
    let trained = pipeline::train(
        method,
        &cli.budget,
        data,
        window(cli, data),
        seed,
        device,
        Some((&ckpt, every)),
    )?;
    let wdir = dir.join("weights");
    let Some(loss) = trained.final_loss else {
        // The checkpoint had already reached the budget: its weights stay as they were written.
        if !wdir.join("model.safetensors").is_file() {
            weights::save(&trained, &data.name, &wdir)?;
        }
        eprintln!(
            "{} on {} is already trained: the checkpoint in {} has its {} updates (another --out, or removing \
             it, trains afresh); weights in {}",
            method.name(),
            data.name,
            ckpt.display(),
            cli.budget.iters,
            wdir.display()
        );
        return Ok(());
    };
    weights::save(&trained, &data.name, &wdir)?;
    let resumed = if trained.updates < cli.budget.iters {
        format!(
            ", resumed from a checkpoint at {}",
            cli.budget.iters - trained.updates
        )
    } else {
        String::new()
    };
    eprintln!(
        "trained {} on {} in {:.1} s ({} updates{resumed}, final loss {:.4}, peak memory {:.0} MiB); weights in {}",
        method.name(),
        data.name,
        trained.seconds,
        cli.budget.iters,
        loss,
        peak_rss_mib().unwrap_or(f64::NAN),
        wdir.display()
    );
    Ok(())
}

fn evaluate(cli: &Cli, data: &Dataset, device: &candle_core::Device) -> anyhow::Result<()> {
    let wdir = weights_dir(cli, data, cli.method.unwrap_or_default())?;
    let Forecasted {
        forecasts: f,
        forecast_s: fs,
        train_s: ts,
        method,
        window: w,
    } = forecast_with(cli, data, &wdir, cli.method, device, cli.seed)?;
    let out = run_dir(cli, data, method).join("forecast");
    let files = forecast::export(&out, &f, &data.series_names, cli.charts)?;
    let rows = vec![
        Row {
            name: method.name().into(),
            report: forecast::score(&f)?,
            train_s: ts,
            forecast_s: fs,
        },
        baseline_row(cli, data, &w, cli.seed)?,
    ];
    println!(
        "{}: {} series, {} test windows, {} samples, sampler {:?} × {} steps, weights {}",
        data.name,
        data.num_series(),
        f.len(),
        cli.samples,
        cli.sampler,
        cli.steps,
        wdir.display()
    );
    print_table(&rows);
    note_non_finite(&rows);
    let json: Vec<_> = rows
        .iter()
        .map(|r| serde_json::json!({"method": r.name, "report": r.report, "train_s": r.train_s, "forecast_s": r.forecast_s}))
        .collect();
    std::fs::write(
        out.join("metrics.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    eprintln!(
        "wrote {} files under {} (forecasts.csv{}, metrics.json)",
        files.len() + 1,
        out.display(),
        if files.len() > 1 { ", fan_*.png" } else { "" }
    );
    Ok(())
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let sd = if v.len() > 1 {
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (m, sd)
}

fn bench(
    cli: &Cli,
    data: &Dataset,
    methods: &[Method],
    seeds: &[u64],
    device: &candle_core::Device,
) -> anyhow::Result<()> {
    let mut all: Vec<(String, Vec<Row>)> = vec![("random walk".into(), Vec::new())];
    for m in methods {
        all.push((m.name().into(), Vec::new()));
    }
    for &seed in seeds {
        all[0]
            .1
            .push(baseline_row(cli, data, &window(cli, data), seed)?);
        for (k, &m) in methods.iter().enumerate() {
            let dir = cli
                .out
                .join(&data.name)
                .join(format!("bench-{}-seed{seed}", m.name()));
            train_and_save(cli, data, m, seed, device, &dir)?;
            // The training time the weights record (a rerun over a finished checkpoint trains nothing).
            let Forecasted {
                forecasts: f,
                forecast_s: fs,
                train_s: ts,
                ..
            } = forecast_with(cli, data, &dir.join("weights"), Some(m), device, seed)?;
            let report = forecast::score(&f)?;
            eprintln!(
                "seed {seed} {}: CRPS {:.5} CRPS-sum {:.5}",
                m.name(),
                report.marginal.crps,
                report.sum.crps
            );
            all[k + 1].1.push(Row {
                name: m.name().into(),
                report,
                train_s: ts,
                forecast_s: fs,
            });
        }
    }
    let vp_time = all
        .iter()
        .find(|(n, _)| n == "vp")
        .map(|(_, r)| mean_sd(&r.iter().map(|x| x.train_s).collect::<Vec<_>>()).0);
    let mut md = format!(
        "{}: {} series, {} test windows, {} samples, sampler {:?} × {} steps, {} updates × batch {}, seeds {:?}\n\n\
         | method | CRPS | CRPS-sum | ND | NRMSE | train s | train time / VP |\n|---|---|---|---|---|---|---|\n",
        data.name,
        data.num_series(),
        forecast::select_windows(&data.test, cli.max_windows).len(),
        cli.samples,
        cli.sampler,
        cli.steps,
        cli.budget.iters,
        cli.budget.batch,
        seeds
    );
    for (name, rows) in &all {
        let col = |f: &dyn Fn(&Row) -> f64| mean_sd(&rows.iter().map(f).collect::<Vec<_>>());
        // One seed has no spread: its value alone.
        let fmt = |(m, s): (f64, f64)| {
            if rows.len() > 1 {
                format!("{m:.5} ± {s:.5}")
            } else {
                format!("{m:.5}")
            }
        };
        let (t, _) = col(&|r| r.train_s);
        md += &format!(
            "| {name} | {} | {} | {} | {} | {:.0} | {} |\n",
            fmt(col(&|r| r.report.marginal.crps)),
            fmt(col(&|r| r.report.sum.crps)),
            fmt(col(&|r| r.report.marginal.nd)),
            fmt(col(&|r| r.report.marginal.nrmse)),
            t,
            vp_time.map_or("–".into(), |v| if t > 0.0 {
                format!("{:.2}", t / v)
            } else {
                "–".into()
            })
        );
    }
    println!("{md}");
    let path = cli.out.join(&data.name).join("bench.md");
    std::fs::write(&path, &md).with_context(|| path.display().to_string())?;
    eprintln!(
        "(± is the sample standard deviation over seeds; table written to {})",
        path.display()
    );
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    vsdm_eval::cli::out_folder("--out", &cli.out)?;
    let device = candle_core::Device::cuda_if_available(0)?;
    vsdm_eval::cli::at_least_one(&[
        ("--samples", cli.samples),
        ("--steps", cli.steps),
        ("--sample-batch", cli.sample_batch.unwrap_or(1)),
        ("--context", cli.context.unwrap_or(1)),
        ("--prediction-length", cli.prediction_length.unwrap_or(1)),
        ("--max-windows", cli.max_windows.unwrap_or(1)),
        ("--validation", cli.validation.unwrap_or(1)),
    ])?;
    {
        use vsdm_timeseries::pipeline::{MAX_BATCH, MAX_STEPS};
        vsdm_eval::cli::at_most(&[
            ("--samples", cli.samples, MAX_BATCH),
            ("--steps", cli.steps, MAX_STEPS),
            ("--context", cli.context.unwrap_or(1), MAX_STEPS),
            (
                "--prediction-length",
                cli.prediction_length.unwrap_or(1),
                MAX_STEPS,
            ),
            ("--validation", cli.validation.unwrap_or(1), MAX_STEPS),
        ])?;
    }
    if cli.prediction_length.is_some() && cli.data.is_none() {
        anyhow::bail!(
            "--prediction-length applies to --data only: the registered data sets carry theirs (GluonTS metadata)"
        );
    }
    if let Some(Command::Bench { methods, seeds }) = &cli.command {
        // bench trains its own runs: weights or a single method given beside it would be ignored.
        if let Some(w) = &cli.weights {
            anyhow::bail!(
                "--weights {w}: bench trains every method of --methods itself; evaluate weights with `evaluate`"
            );
        }
        if let Some(m) = cli.method {
            anyhow::bail!(
                "--method {}: bench runs the methods of --methods (default vp,vsdm,vsmd); give --methods {} instead",
                m.name(),
                m.name()
            );
        }
        // A repeated entry would train the same run twice and count it twice in the mean ± spread.
        if let Some(m) = methods
            .iter()
            .enumerate()
            .find_map(|(i, m)| methods[..i].contains(m).then_some(m))
        {
            anyhow::bail!("--methods lists {} twice", m.name());
        }
        if let Some(s) = seeds
            .iter()
            .enumerate()
            .find_map(|(i, s)| seeds[..i].contains(s).then_some(s))
        {
            anyhow::bail!(
                "--seeds lists {s} twice: each seed would be counted twice in the spread"
            );
        }
    }
    // κ is VSMD's damping ratio: beside VP or VSDM alone it would be silently ignored (as the image CLI
    // refuses it). Weights named without --method bring their own method, checked when they are loaded.
    if let Some(k) = cli.budget.kappa {
        let vsmd = match &cli.command {
            Some(Command::Bench { methods, .. }) => methods.contains(&Method::Vsmd),
            _ => cli
                .method
                .map_or(cli.weights.is_some(), |m| m == Method::Vsmd),
        };
        if !vsmd {
            anyhow::bail!("--kappa {k}: the damping ratio is VSMD's (--method vsmd, or bench --methods with vsmd)");
        }
    }
    let data = load_data(&cli)?;
    let method = cli.method.unwrap_or_default();
    let dir = run_dir(&cli, &data, method);
    if matches!(
        cli.command,
        None | Some(Command::Train) | Some(Command::Bench { .. })
    ) {
        // Ctrl-C stops a training after its current update, with a checkpoint the same command resumes.
        pipeline::stop_training_on(vsdm_eval::cli::stop_on_interrupt());
    }
    match &cli.command {
        Some(Command::Train) => {
            train_and_save(&cli, &data, method, cli.seed, &device, &dir)?;
        }
        Some(Command::Forecast) => {
            let wdir = weights_dir(&cli, &data, method)?;
            let Forecasted {
                forecasts: f,
                forecast_s: fs,
                method,
                ..
            } = forecast_with(&cli, &data, &wdir, cli.method, &device, cli.seed)?;
            let dir = run_dir(&cli, &data, method);
            let files =
                forecast::export(&dir.join("forecast"), &f, &data.series_names, cli.charts)?;
            eprintln!(
                "forecast {} windows × {} samples in {fs:.1} s with the weights in {}; wrote {} files under {}",
                f.len(),
                cli.samples,
                wdir.display(),
                files.len(),
                dir.join("forecast").display()
            );
        }
        Some(Command::Evaluate) => evaluate(&cli, &data, &device)?,
        Some(Command::Bench { methods, seeds }) => {
            check_test_windows(&cli, &data)?;
            bench(&cli, &data, methods, seeds, &device)?
        }
        None => {
            if cli.weights.is_some() {
                anyhow::bail!(
                    "--weights is for `forecast` and `evaluate`; without a subcommand this trains new weights"
                );
            }
            check_test_windows(&cli, &data)?;
            train_and_save(&cli, &data, method, cli.seed, &device, &dir)?;
            evaluate(&cli, &data, &device)?;
        }
    }
    Ok(())
}
