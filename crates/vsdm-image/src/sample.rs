//! Sampling images from a trained network.

use candle_core::{DType, Device, Tensor};
use vsdm_core::sampler::sample_model;
use vsdm_core::{ForwardProcess, NoiseRng, Process, SamplerConfig};
use vsdm_eval::fid::preprocess::quantize_unit;

use crate::error::{Error, Result};
use crate::unet::UNet;

/// The class labels the sampler gives a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Labels {
    /// None: an unconditional network.
    None,
    /// One of `k` classes per image, drawn uniformly.
    Uniform(usize),
    /// Every image of class `class` of `classes`.
    Class { classes: usize, class: usize },
}

impl Labels {
    /// The labels for a network with `label_dim` classes (0: unconditional) and an optional `--class`, given
    /// as a number or, for CIFAR-10's ten, a name (`cat`); a class the network cannot take is an error naming
    /// the flag.
    pub fn for_network(label_dim: usize, class: Option<&str>) -> Result<Self> {
        let Some(c) = class else {
            return Ok(if label_dim > 0 {
                Self::Uniform(label_dim)
            } else {
                Self::None
            });
        };
        if label_dim == 0 {
            return Err(Error::invalid(
                "--class",
                c,
                "the network is unconditional (trained without --conditional)",
            ));
        }
        let names = crate::data::CIFAR10_CLASSES;
        let by_name = (label_dim == names.len())
            .then(|| names.iter().position(|n| n.eq_ignore_ascii_case(c)))
            .flatten();
        match by_name.or_else(|| c.parse::<usize>().ok()) {
            Some(class) if class < label_dim => Ok(Self::Class {
                classes: label_dim,
                class,
            }),
            _ => Err(Error::invalid(
                "--class",
                c,
                format!(
                    "expected a class number below {label_dim}{}",
                    if label_dim == names.len() {
                        format!(" or one of {}", names.join(", "))
                    } else {
                        String::new()
                    }
                ),
            )),
        }
    }

    /// The conditioning of a batch of `b` images as row-major one-hot rows `[b, classes]` and the number of
    /// classes: each row's class drawn uniformly (`Uniform`) or the given one (`Class`); `None` for an
    /// unconditional network.
    pub fn one_hots(&self, b: usize, rng: &mut NoiseRng) -> Option<(Vec<f32>, usize)> {
        let (k, fixed) = match *self {
            Labels::Uniform(k) => (k, None),
            Labels::Class { classes, class } => (classes, Some(class)),
            Labels::None => return None,
        };
        let mut v = vec![0f32; b * k];
        for row in v.chunks_mut(k.max(1)) {
            row[fixed.unwrap_or_else(|| rng.index(k))] = 1.0;
        }
        Some((v, k))
    }
}

/// Draws `n` images in batches of at most `batch` with the sampler, with `labels` for a class-conditional
/// network. Returns 8-bit images `[n, 3, 32, 32]` (u8, on the CPU;
/// [−1, 1] mapped by round((x + 1)·127.5), clipped) and the network evaluations per image.
#[allow(clippy::too_many_arguments)]
pub fn sample_images(
    process: &Process,
    net: &UNet,
    sampler: &SamplerConfig,
    n: usize,
    batch: usize,
    labels: Labels,
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
        let cond = labels
            .one_hots(b, rng)
            .map(|(v, k)| Tensor::from_vec(v, (b, k), device))
            .transpose()?;
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

#[cfg(test)]
mod tests {
    use super::Labels;
    use vsdm_core::NoiseRng;

    /// A near-square grid: ⌈√n⌉ columns (16 images 4 × 4, 10 in rows of 4, 17 in rows of 5), at least one.
    #[test]
    fn grids_are_near_square() {
        for (n, cols) in [(0, 1), (1, 1), (2, 2), (10, 4), (16, 4), (17, 5), (64, 8)] {
            assert_eq!(super::grid_columns(n), cols, "{n}");
        }
    }

    /// One 1 per row: at the given class, or at classes drawn uniformly (10,000 rows over 10 classes: each
    /// count within 5 standard deviations, √(10,000 · 0.1 · 0.9) = 30, of 1,000); none for an unconditional
    /// network.
    #[test]
    fn one_hot_rows_hold_one_class_each() {
        let mut rng = NoiseRng::new(4);
        assert!(Labels::None.one_hots(3, &mut rng).is_none());
        let (v, k) = Labels::Class {
            classes: 10,
            class: 7,
        }
        .one_hots(4, &mut rng)
        .unwrap();
        assert_eq!((v.len(), k), (40, 10));
        for row in v.chunks(10) {
            let ones: Vec<usize> = (0..10).filter(|&c| row[c] == 1.0).collect();
            assert_eq!(ones, [7]);
            assert_eq!(row.iter().sum::<f32>(), 1.0);
        }
        let (v, k) = Labels::Uniform(10).one_hots(10_000, &mut rng).unwrap();
        assert_eq!((v.len(), k), (100_000, 10));
        let mut counts = [0usize; 10];
        for row in v.chunks(10) {
            assert_eq!(row.iter().sum::<f32>(), 1.0);
            counts[row.iter().position(|&x| x == 1.0).unwrap()] += 1;
        }
        assert!(
            counts.iter().all(|&c| c.abs_diff(1000) <= 150),
            "{counts:?}"
        );
    }

    /// `--class` as a number or a CIFAR-10 name; out of range, unknown, or for an unconditional network: an
    /// error naming the flag and the value.
    #[test]
    fn class_flags_are_read_and_checked() {
        assert_eq!(Labels::for_network(0, None).unwrap(), Labels::None);
        assert_eq!(Labels::for_network(10, None).unwrap(), Labels::Uniform(10));
        let cat = Labels::Class {
            classes: 10,
            class: 3,
        };
        assert_eq!(Labels::for_network(10, Some("cat")).unwrap(), cat);
        assert_eq!(Labels::for_network(10, Some("CAT")).unwrap(), cat);
        assert_eq!(Labels::for_network(10, Some("3")).unwrap(), cat);
        for (dim, c) in [(10, "10"), (10, "zebra"), (4, "cat"), (0, "1")] {
            let e = Labels::for_network(dim, Some(c)).unwrap_err().to_string();
            assert!(e.contains("--class") && e.contains(c), "{dim} {c}: {e}");
        }
    }
}
