//! Sampling images from a trained network.

use candle_core::{DType, Device, Tensor};
use vsdm_core::sampler::sample_model;
use vsdm_core::{ForwardProcess, NoiseRng, Process, SamplerConfig};
use vsdm_eval::fid::preprocess::quantize_unit;

use crate::error::{Error, Result};
use crate::unet::UNet;

/// Draws `n` images in batches of at most `batch` with the sampler; for class-conditional networks
/// (`classes = Some(k)`) labels are drawn uniformly. Returns 8-bit images `[n, 3, 32, 32]` (u8, on the CPU;
/// [−1, 1] mapped by round((x + 1)·127.5), clipped) and the network evaluations per image.
#[allow(clippy::too_many_arguments)]
pub fn sample_images(
    process: &Process,
    net: &UNet,
    sampler: &SamplerConfig,
    n: usize,
    batch: usize,
    classes: Option<usize>,
    rng: &mut NoiseRng,
    device: &Device,
) -> Result<(Tensor, usize)> {
    if n == 0 || batch == 0 {
        return Err(Error::invalid(
            "n/batch",
            format!("{n}/{batch}"),
            "must be at least 1",
        ));
    }
    let mut parts = Vec::new();
    let (mut done, mut nfe) = (0, 0);
    while done < n {
        let b = batch.min(n - done);
        let cond = match classes {
            Some(k) => {
                let mut v = vec![0f32; b * k];
                for i in 0..b {
                    v[i * k + rng.index(k)] = 1.0;
                }
                Some(Tensor::from_vec(v, (b, k), device)?)
            }
            None => None,
        };
        let run = sample_model(process, net, cond.as_ref(), sampler, b, rng, device)?;
        nfe = run.nfe;
        let x = process.data_part(&run.state)?;
        parts.push(
            quantize_unit(&x)?
                .to_dtype(DType::U8)?
                .to_device(&Device::Cpu)?,
        );
        done += b;
    }
    Ok((Tensor::cat(&parts, 0)?, nfe))
}

/// Columns of a near-square grid of `n` images.
pub fn grid_columns(n: usize) -> usize {
    ((n as f64).sqrt().ceil() as usize).max(1)
}
