//! The training data source: uniform draws with replacement, random horizontal flips, scaling to [−1, 1] and,
//! for class-conditional models, one-hot labels.

use candle_core::{Device, Tensor};
use vsdm_core::{DataSource, NoiseRng};

use super::{to_unit, ImageSet, SIDE};

/// Draws training batches from an [`ImageSet`].
pub struct CifarSource {
    set: ImageSet,
    /// Flip each drawn image left–right with probability ½.
    pub flip: bool,
    /// Return one-hot labels `[batch, classes]` as conditioning.
    pub conditional: bool,
}

impl CifarSource {
    pub fn new(set: ImageSet, flip: bool, conditional: bool) -> vsdm_core::Result<Self> {
        if set.is_empty() {
            return Err(vsdm_core::Error::invalid(
                "data",
                "empty",
                "needs at least one image",
            ));
        }
        Ok(Self {
            set,
            flip,
            conditional,
        })
    }

    pub fn set(&self) -> &ImageSet {
        &self.set
    }

    /// One image as f32 in [−1, 1], mirrored left–right when `flip`.
    fn write_image(&self, i: usize, flip: bool, out: &mut Vec<f32>) {
        let img = self.set.image(i);
        for row in img.chunks_exact(SIDE) {
            if flip {
                out.extend(row.iter().rev().map(|&p| to_unit(p)));
            } else {
                out.extend(row.iter().map(|&p| to_unit(p)));
            }
        }
    }
}

impl DataSource for CifarSource {
    fn next_batch(
        &mut self,
        batch: usize,
        rng: &mut NoiseRng,
        device: &Device,
    ) -> vsdm_core::Result<(Tensor, Option<Tensor>)> {
        let n = self.set.len();
        let k = self.set.classes.len();
        let mut x = Vec::with_capacity(batch * 3 * SIDE * SIDE);
        let mut onehot = vec![0f32; if self.conditional { batch * k } else { 0 }];
        for b in 0..batch {
            let i = rng.index(n);
            let flip = self.flip && rng.uniform() < 0.5;
            self.write_image(i, flip, &mut x);
            if self.conditional {
                onehot[b * k + self.set.labels[i] as usize] = 1.0;
            }
        }
        let x = Tensor::from_vec(x, (batch, 3, SIDE, SIDE), device)?;
        let cond = if self.conditional {
            Some(Tensor::from_vec(onehot, (batch, k), device)?)
        } else {
            None
        };
        Ok((x, cond))
    }

    fn conditional(&self) -> bool {
        self.conditional
    }
}
