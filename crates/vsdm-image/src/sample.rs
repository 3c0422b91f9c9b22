//! Sampling images from a trained network and writing them as a PNG grid.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use vsdm_core::sampler::sample_model;
use vsdm_core::{ForwardProcess, NoiseRng, Process, SamplerConfig};

use crate::data::IMAGE_BYTES;
use crate::error::{Error, Result};
use crate::unet::UNet;

/// Draws `n` images in batches of `batch` (the last may be smaller) with the sampler; for class-conditional
/// networks (`classes = Some(k)`) labels are drawn uniformly. Returns 8-bit channel-first pixels (values in
/// [−1, 1] mapped to 0–255 with rounding and clipping) and the network evaluations per image.
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
) -> Result<(Vec<u8>, usize)> {
    if n == 0 || batch == 0 {
        return Err(Error::invalid(
            "n/batch",
            format!("{n}/{batch}"),
            "must be at least 1",
        ));
    }
    let mut out = Vec::with_capacity(n * IMAGE_BYTES);
    let mut nfe = 0;
    while out.len() < n * IMAGE_BYTES {
        let b = batch.min(n - out.len() / IMAGE_BYTES);
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
        out.extend(to_bytes(&x)?);
    }
    Ok((out, nfe))
}

/// [−1, 1] floats to bytes: round((x + 1)·127.5), clipped to 0–255 (EDM's and torchvision's convention).
pub fn to_bytes(x: &Tensor) -> Result<Vec<u8>> {
    let v = x
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_device(&Device::Cpu)?
        .to_vec1::<f32>()?;
    Ok(v.iter()
        .map(|&x| ((x + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8)
        .collect())
}

/// Writes `n` channel-first 32×32 images as a near-square PNG grid with 2-pixel gaps.
pub fn write_grid(pixels: &[u8], n: usize, path: &Path) -> Result<()> {
    if pixels.len() != n * IMAGE_BYTES || n == 0 {
        return Err(Error::invalid(
            "pixels",
            pixels.len(),
            format!("expected {n} images of {IMAGE_BYTES} bytes"),
        ));
    }
    let cols = (n as f64).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let (gap, side) = (2usize, 32usize);
    let w = cols * (side + gap) + gap;
    let h = rows * (side + gap) + gap;
    let mut img = image::RgbImage::from_pixel(w as u32, h as u32, image::Rgb([255, 255, 255]));
    for i in 0..n {
        let (r, c) = (i / cols, i % cols);
        let src = &pixels[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES];
        for y in 0..side {
            for x in 0..side {
                let p = [0, 1, 2].map(|ch| src[ch * side * side + y * side + x]);
                img.put_pixel(
                    (gap + c * (side + gap) + x) as u32,
                    (gap + r * (side + gap) + y) as u32,
                    image::Rgb(p),
                );
            }
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    }
    img.save(path)
        .map_err(|e| Error::bad_file(path, format!("cannot write PNG: {e}")))
}
