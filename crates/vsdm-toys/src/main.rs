//! `vsdm-toys`: the anisotropic-shapes experiment.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use vsdm_toys::data::Shape;
use vsdm_toys::experiment::Budget;
use vsdm_toys::report::{gaussian_check, markdown, methods, run_all, write_report, Settings};

#[derive(Parser)]
#[command(
    name = "vsdm-toys",
    about = "Anisotropic 2-D shapes: VP vs VSDM vs CLD vs VSMD"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train every method on every shape over several seeds and write shapes.md and PNGs.
    Shapes {
        /// Output folder (shapes.md goes here, PNGs under shapes/).
        #[arg(long, default_value = "docs/results")]
        out: PathBuf,
        /// Number of seeds (first-seed, first-seed + 1, …).
        #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
        seeds: u64,
        /// The first seed.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        first_seed: u64,
        /// Network updates per run.
        #[arg(long, allow_negative_numbers = true)]
        iters: Option<usize>,
        /// Hidden width of the score network.
        #[arg(long, allow_negative_numbers = true)]
        hidden: Option<usize>,
        /// Worker threads (each runs whole trainings single-threaded).
        #[arg(long, default_value_t = 2, allow_negative_numbers = true)]
        jobs: usize,
        /// The tiny budget of the test suite.
        #[arg(long)]
        smoke: bool,
        /// Only these shapes.
        #[arg(long, value_enum, num_args = 1..)]
        shape: Vec<Shape>,
        /// Only these methods (vp10, vsdm10, vp20, vsdm20, cld, vsmd, vsmd0.9).
        #[arg(long, num_args = 1..)]
        method: Vec<String>,
        /// Learning rate of A (or c) in the table's runs.
        #[arg(long, allow_hyphen_values = true)]
        a_lr: Option<f64>,
        /// ζ of VSDM in the table's runs (VSMD keeps its code's 1).
        #[arg(long, allow_hyphen_values = true)]
        zeta: Option<f64>,
        /// The paired variational gradient (reference trajectories, docs/CORE.md) for VSDM and VSMD alike
        /// (default: on for VSMD, off for VSDM).
        #[arg(long)]
        debias: Option<bool>,
        /// Learning rate of A in the Gaussian-bridge check (the official code's 3e-4 by default).
        #[arg(long, default_value_t = 3e-4, allow_hyphen_values = true)]
        gaussian_lr: f64,
    },
}

fn main() -> std::process::ExitCode {
    vsdm_eval::cli::tune_allocator();
    vsdm_eval::cli::init_logging("warn");
    vsdm_eval::cli::exit(run())
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Shapes {
            out,
            seeds,
            first_seed,
            iters,
            hidden,
            jobs,
            smoke,
            shape,
            method,
            a_lr,
            zeta,
            debias,
            gaussian_lr,
        } => {
            vsdm_eval::cli::out_folder("--out", &out)?;
            vsdm_eval::cli::at_least_one(&[
                ("--seeds", seeds.try_into().unwrap_or(usize::MAX)),
                ("--jobs", jobs),
                ("--iters", iters.unwrap_or(1)),
                ("--hidden", hidden.unwrap_or(1)),
            ])?;
            // Bounds far above any real use: a mistyped count is an error naming it, not an overflow.
            vsdm_eval::cli::at_most(&[
                ("--seeds", seeds.try_into().unwrap_or(usize::MAX), 1_000_000),
                ("--jobs", jobs, 1_024),
                ("--iters", iters.unwrap_or(1), 1_000_000_000),
                ("--hidden", hidden.unwrap_or(1), 65_536),
            ])?;
            if let Some(lr) = a_lr {
                vsdm_eval::cli::learning_rate("--a-lr", lr)?;
            }
            vsdm_eval::cli::learning_rate("--gaussian-lr", gaussian_lr)?;
            if let Some(z) = zeta {
                vsdm_eval::cli::zeta(z)?;
            }
            if jobs > 1 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
                // Whole runs in parallel, each on one core: faster than splitting small matrices.
                std::env::set_var("RAYON_NUM_THREADS", "1");
            }
            let mut budget = if smoke {
                Budget::smoke()
            } else {
                Budget::full()
            };
            if let Some(i) = iters {
                budget.iters = i;
            }
            if let Some(h) = hidden {
                budget.hidden = h;
            }
            if let Some(lr) = a_lr {
                budget.a_lr = lr;
            }
            if let Some(z) = zeta {
                budget.zeta = z;
            }
            budget.debias = debias;
            let settings = Settings {
                budget,
                seeds: (first_seed..first_seed.checked_add(seeds).ok_or_else(|| {
                    anyhow::anyhow!(
                        "--first-seed {first_seed} + --seeds {seeds}: past the largest seed"
                    )
                })?)
                    .collect(),
                shapes: if let Some(twice) = shape
                    .iter()
                    .enumerate()
                    .find_map(|(i, s)| shape[..i].contains(s).then_some(s))
                {
                    bail!(
                        "--shape {}: given twice",
                        format!("{twice:?}").to_lowercase()
                    )
                } else if shape.is_empty() {
                    vec![Shape::Spiral, Shape::Checkerboard]
                } else {
                    shape
                },
                methods: {
                    let all = methods();
                    let mut chosen = Vec::new();
                    for m in &method {
                        match all.iter().find(|x| x.slug() == *m) {
                            Some(x) if chosen.contains(x) => {
                                bail!("--method {m}: given twice (each method runs once per shape and seed)")
                            }
                            Some(x) => chosen.push(*x),
                            None => bail!(
                                "--method {m}: unknown; choose from {}",
                                all.iter().map(|x| x.slug()).collect::<Vec<_>>().join(", ")
                            ),
                        }
                    }
                    if chosen.is_empty() {
                        all
                    } else {
                        chosen
                    }
                },
                n_eval: if smoke { 200 } else { 2000 },
                n_paths: if smoke { 50 } else { 300 },
                jobs,
                gaussian_stages: if smoke { 2 } else { 20 },
                smoke,
            };
            let start = std::time::Instant::now();
            let png = out.join("shapes");
            std::fs::create_dir_all(&png)?;
            let results = run_all(&settings, Some(&png))?;
            let g = gaussian_check(&settings.budget, settings.gaussian_stages, gaussian_lr, 0)?;
            let command = std::env::args().collect::<Vec<_>>().join(" ");
            let command = command.replacen(
                &std::env::args().next().unwrap_or_default(),
                "cargo run --release -p vsdm-toys --",
                1,
            );
            let md = markdown(
                &results,
                &settings,
                &g,
                &command,
                start.elapsed().as_secs_f64(),
            );
            write_report(&out, &md)?;
            println!("{md}");
            Ok(())
        }
    }
}
