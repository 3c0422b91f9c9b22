//! Inception's convolutions on the CPU as per-image matrix products over a patch matrix built by slice copies.
//!
//! candle 0.11.1's CPU `conv2d` (`cpu_backend/conv2d.rs`, "tiled im2col") first transposes the whole input to
//! NHWC on one thread, then gathers each 512-position tile's patches element by element into a column-strided
//! buffer, multiplies, and scatters the tile back one element at a time; its 1×1 path copies every image in and
//! out around the product. On the FID network that bookkeeping took more of a CPU profile than the matrix
//! products themselves (`perf` on `vsdm-eval stats`: 33% in the tiling closure against 29% in the GEMM kernel).
//! Here:
//!
//! - a 1×1, stride-1, unpadded convolution is one product `W [C_out, C]` · `x_b [C, H·W]` per image, reading
//!   the input in place and writing the output in NCHW order (no copy either way);
//! - any other one (the network's k×k, 1×n and n×1 kernels, stride 1 or 2, padding per axis) first copies,
//!   per image, each kernel offset's shifted window into a `[C·kh·kw, H'·W']` patch matrix — for stride 1 one
//!   slice per output row, in parallel over (image, channel) — and then makes the same product.
//!
//! The products go through candle's `matmul` (the `gemm` crate, parallel), with the weight broadcast over the
//! batch, so the output comes out as `[B, C_out, H'·W']` directly. Images are taken in chunks that keep a patch
//! matrix under [`PATCH_BUDGET`] elements. CUDA tensors and other dtypes keep candle's `conv2d` (on the GPU
//! that path is the one checked against PyTorch, `docs/results/fid.md`). Forward only: FID needs no gradient.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// The most elements the patch matrices of one product may hold (64 Mi f32 = 256 MiB); a batch is split into
/// chunks of images that fit (at least one image). Below glibc's mmap threshold (which
/// `crate::cli::tune_allocator` raises to 1 GiB) the buffer is reused from the heap instead of being mapped and
/// page-faulted afresh for every layer. With the 32 MiB threshold of before 2026-12-06 (stop 33) this budget
/// ran 1.12× slower than 6 Mi elements (24 MiB); with the 1 GiB threshold it runs 1.07× faster (median
/// images/s of 7 alternated runs, 1.04× the peak memory; docs/benchmarks/eval-fid.md).
pub const PATCH_BUDGET: usize = 1 << 26;

/// Geometry of a convolution: kernel height and width, stride (both axes) and zero padding (rows, columns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub padding: (usize, usize),
}

impl Geometry {
    /// Output height and width for an `h × w` input, or an error naming the geometry when the kernel does not fit.
    pub fn output(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let (ph, pw) = self.padding;
        let (hp, wp) = (h + 2 * ph, w + 2 * pw);
        if self.stride == 0 || hp < self.kh || wp < self.kw {
            candle_core::bail!("convolution {self:?} does not fit an input of {h}×{w}");
        }
        Ok((
            (hp - self.kh) / self.stride + 1,
            (wp - self.kw) / self.stride + 1,
        ))
    }
}

/// The patch matrices `[B, C·kh·kw, H'·W']` of a contiguous f32 `[B, C, H, W]` input: row (c, i, j) of image b
/// holds, at output position (y, x), the input at (b, c, y·s + i − p_h, x·s + j − p_w), or 0 outside the image.
struct Patches(Geometry);

impl Patches {
    /// `out` is the output size, [`Geometry::output`] of (h, w).
    fn fill(
        &self,
        x: &[f32],
        (b, c, h, w): (usize, usize, usize, usize),
        out: (usize, usize),
    ) -> Vec<f32> {
        let Geometry {
            kh,
            kw,
            stride: s,
            padding: (ph, pw),
        } = self.0;
        let (oh, ow) = out;
        let n = oh * ow;
        let per_channel = kh * kw * n;
        let mut cols = vec![0f32; b * c * per_channel];
        // One task per (image, channel): its kh·kw rows are contiguous in the output.
        cols.par_chunks_mut(per_channel)
            .enumerate()
            .for_each(|(bc, block)| {
                let plane = &x[bc * h * w..][..h * w];
                for (r, row) in block.chunks_mut(n).enumerate() {
                    let (i, j) = (r / kw, r % kw);
                    // Output columns whose input column x·s + j − p_w lies inside the image.
                    let x0 = pw.saturating_sub(j).div_ceil(s);
                    let x1 = if w + pw > j {
                        ow.min((w + pw - j - 1) / s + 1)
                    } else {
                        0
                    };
                    if x0 >= x1 {
                        continue;
                    }
                    for y in 0..oh {
                        let iy = y * s + i;
                        if iy < ph || iy - ph >= h {
                            continue;
                        }
                        let src = &plane[(iy - ph) * w..][..w];
                        let dst = &mut row[y * ow + x0..y * ow + x1];
                        let first = x0 * s + j - pw;
                        if s == 1 {
                            dst.copy_from_slice(&src[first..first + dst.len()]);
                        } else {
                            for (d, v) in dst.iter_mut().zip(src[first..].iter().step_by(s)) {
                                *d = *v;
                            }
                        }
                    }
                }
            });
        cols
    }
}

impl CustomOp1 for Patches {
    fn name(&self) -> &'static str {
        "fid-patches"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let (oh, ow) = self.0.output(h, w)?;
        let (start, end) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("fid-patches: input not contiguous".into()))?;
        let CpuStorage::F32(v) = s else {
            candle_core::bail!("fid-patches: f32 inputs only, got {:?}", s.dtype());
        };
        let cols = self.fill(&v[start..end], (b, c, h, w), (oh, ow));
        let shape = Shape::from((b, c * self.0.kh * self.0.kw, oh * ow));
        Ok((CpuStorage::F32(cols), shape))
    }
}

/// `x [B, C, H, W]` convolved with `weight [C_out, C, kh, kw]` (no bias), stride and zero padding of `geometry`
/// — the same values as candle's `conv2d` after padding the input, computed as described in the module doc on
/// the CPU in f32, and by candle's `conv2d` otherwise.
pub fn conv2d(x: &Tensor, weight: &Tensor, geometry: Geometry) -> Result<Tensor> {
    conv2d_within(x, weight, geometry, PATCH_BUDGET)
}

/// [`conv2d`] with patch matrices of at most `budget` elements per product (one image at least).
fn conv2d_within(x: &Tensor, weight: &Tensor, geometry: Geometry, budget: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (cout, cin, kh, kw) = weight.dims4()?;
    if cin != c || (kh, kw) != (geometry.kh, geometry.kw) {
        candle_core::bail!(
            "convolution weight {:?} does not match an input of {c} channels and a {}×{} kernel",
            weight.dims(),
            geometry.kh,
            geometry.kw
        );
    }
    let (oh, ow) = geometry.output(h, w)?;
    if !x.device().is_cpu() || x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        return candle_conv2d(x, weight, geometry);
    }
    let k = c * kh * kw;
    let n = oh * ow;
    let w2 = weight.reshape((1, cout, k))?;
    let pointwise = kh == 1 && kw == 1 && geometry.stride == 1 && geometry.padding == (0, 0);
    let x = x.contiguous()?;
    let chunk = (budget / (k * n).max(1)).clamp(1, b.max(1));
    let mut outs = Vec::with_capacity(b.div_ceil(chunk));
    for start in (0..b).step_by(chunk) {
        let len = chunk.min(b - start);
        let xb = x.narrow(0, start, len)?;
        let cols = if pointwise {
            xb.reshape((len, c, n))?
        } else {
            xb.apply_op1_no_bwd(&Patches(geometry))?
        };
        outs.push(w2.broadcast_as((len, cout, k))?.matmul(&cols)?);
    }
    let y = if outs.len() == 1 {
        outs.pop().expect("one chunk")
    } else {
        Tensor::cat(&outs, 0)?
    };
    y.reshape((b, cout, oh, ow))
}

/// candle's own `conv2d`, with asymmetric padding applied to the input first (candle pads both axes alike).
pub fn candle_conv2d(x: &Tensor, weight: &Tensor, geometry: Geometry) -> Result<Tensor> {
    let (ph, pw) = geometry.padding;
    if ph == pw {
        x.conv2d(weight, ph, geometry.stride, 1, 1)
    } else {
        x.pad_with_zeros(D::Minus2, ph, ph)?
            .pad_with_zeros(D::Minus1, pw, pw)?
            .conv2d(weight, 0, geometry.stride, 1, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fid::layers::LAYERS;
    use candle_core::Device;

    fn geom(kh: usize, kw: usize, stride: usize, padding: (usize, usize)) -> Geometry {
        Geometry {
            kh,
            kw,
            stride,
            padding,
        }
    }

    fn max_rel_err(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let s = b.abs().unwrap().max_all().unwrap();
        d.to_scalar::<f32>().unwrap() / s.to_scalar::<f32>().unwrap().max(1e-30)
    }

    /// Every distinct geometry of the FID network (kernel, stride, padding, from the layer table), plus a few
    /// that it lacks (stride 2 with padding, stride 3, a kernel wider than the padded input is not), on small
    /// random inputs whose sizes are odd and even, against candle's `conv2d` on the padded input.
    #[test]
    fn equals_candle_conv2d_on_every_geometry_of_the_network() {
        let dev = Device::Cpu;
        let mut geometries: Vec<Geometry> = LAYERS
            .iter()
            .map(|l| geom(l.shape[2], l.shape[3], l.stride, l.padding))
            .collect();
        geometries.extend([
            geom(3, 3, 2, (1, 1)),
            geom(5, 3, 3, (2, 0)),
            geom(1, 1, 2, (0, 0)),
        ]);
        geometries.sort_by_key(|g| (g.kh, g.kw, g.stride, g.padding));
        geometries.dedup();
        assert!(geometries.len() >= 10, "{geometries:?}");
        for (gi, g) in geometries.iter().enumerate() {
            for (b, c, co, h, w) in [(2, 3, 5, 9, 8), (3, 4, 2, 8, 11)] {
                let x = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap();
                let wt = Tensor::randn(0f32, 1.0, (co, c, g.kh, g.kw), &dev).unwrap();
                let want = candle_conv2d(&x, &wt, *g).unwrap();
                let got = conv2d(&x, &wt, *g).unwrap();
                assert_eq!(got.dims(), want.dims(), "geometry {gi} {g:?}");
                let e = max_rel_err(&got, &want);
                assert!(
                    e < 1e-5,
                    "geometry {g:?}, input {b}×{c}×{h}×{w}: relative error {e}"
                );
            }
        }
    }

    /// Chunking: a batch whose patch matrices exceed the budget is split and put back in order, and a
    /// non-contiguous input (a channel slice) gives the same as its contiguous copy.
    #[test]
    fn chunked_and_strided_inputs_give_the_same_values() {
        let dev = Device::Cpu;
        let g = geom(3, 3, 1, (1, 1));
        // 64 channels × 9 × 48² positions per image, a budget of 4 images: 8 images in 2 chunks, 7 in 2
        // (the second shorter), 1 in 1.
        let x = Tensor::randn(0f32, 1.0, (8, 70, 48, 48), &dev).unwrap();
        let xs = x.narrow(1, 3, 64).unwrap();
        assert!(!xs.is_contiguous());
        let wt = Tensor::randn(0f32, 0.1, (4, 64, 3, 3), &dev).unwrap();
        let k = 64 * 9 * 48 * 48;
        for b in [8, 7, 1] {
            let xs = xs.narrow(0, 0, b).unwrap();
            let got = conv2d_within(&xs, &wt, g, 4 * k + 1).unwrap();
            let want = candle_conv2d(&xs.contiguous().unwrap(), &wt, g).unwrap();
            let e = max_rel_err(&got, &want);
            assert!(e < 1e-5, "batch {b}: relative error {e}");
        }
        let got = conv2d(&xs, &wt, g).unwrap();
        let want = candle_conv2d(&xs.contiguous().unwrap(), &wt, g).unwrap();
        let e = max_rel_err(&got, &want);
        assert!(e < 1e-5, "relative error {e}");
    }

    #[test]
    fn mismatched_shapes_are_errors_naming_them() {
        let dev = Device::Cpu;
        let err = |input: (usize, usize, usize, usize), weight: (usize, usize, usize, usize)| {
            let x = Tensor::zeros(input, DType::F32, &dev).unwrap();
            let w = Tensor::zeros(weight, DType::F32, &dev).unwrap();
            conv2d(&x, &w, geom(3, 3, 1, (0, 0)))
                .unwrap_err()
                .to_string()
        };
        let e = err((1, 4, 8, 8), (2, 5, 3, 3));
        assert!(e.contains("[2, 5, 3, 3]"), "{e}");
        let e = err((1, 4, 2, 2), (2, 4, 3, 3));
        assert!(e.contains("2×2"), "{e}");
    }
}
