//! Stride-1 convolutions as one patch matrix and one matrix product.
//!
//! candle 0.11.1's CPU `conv2d` gathers its patches element by element inside each tile (and transposes the input
//! to NHWC first, single-threaded), which at the tiny network's 32 channels runs at about 23 GFLOP/s on this
//! project's machine (`examples/conv_probe.rs`). Here [`im2col`] copies each row of each shifted window as one
//! slice into a `[C·k·k, B·H'·W']` patch matrix, so the convolution is one product W `[C_out, C·k·k]` · cols
//! (then the batch moved in front), and the weight gradient is dy `[C_out, B·H'·W']` times its transpose. Used
//! by [`super::fastconv`] for CPU tensors, and for CUDA tensors under `--conv patch`
//! ([`super::fastconv::ConvBackward::Patch`]), where the patch matrix comes from this crate's own kernel
//! (`im2col.cu`, compiled to PTX by the build script in a `cuda` build): candle's CUDA `im2col` took 35–43% of a
//! paper-scale training step on an H200. **That kernel has not yet run on a GPU**: its index arithmetic is
//! tested on the CPU (`tests/im2col_kernel.rs` compiles the same source as C++ and runs every block and thread
//! against a direct definition), and `vsdm-image --cuda --conv patch check-device` compares it with the CPU.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};

/// The patch matrix of a stride-1 convolution with a `k×k` kernel and zero padding `p`.
struct Im2Col {
    k: usize,
    p: usize,
}

impl Im2Col {
    fn out_size(&self, n: usize) -> usize {
        n + 2 * self.p + 1 - self.k
    }

    /// The patches in the layout `[C·k·k, B, H'·W']`, so that one matrix product covers the whole batch.
    fn fill<T: WithDType + Copy>(&self, x: &[T], dims: (usize, usize, usize, usize)) -> Vec<T> {
        let (b, c, h, w) = dims;
        let (k, p) = (self.k, self.p);
        let (oh, ow) = (self.out_size(h), self.out_size(w));
        let n = oh * ow;
        let mut cols = vec![T::zero(); c * k * k * b * n];
        for (r, block) in cols.chunks_mut(b * n).enumerate() {
            let (ci, ki, kj) = (r / (k * k), (r / k) % k, r % k);
            // Output columns whose input column x + kj − p lies inside the image.
            let x0 = p.saturating_sub(kj);
            let x1 = ow.min((w + p).saturating_sub(kj));
            if x0 >= x1 {
                continue;
            }
            for (bi, row) in block.chunks_mut(n).enumerate() {
                let plane = &x[(bi * c + ci) * h * w..][..h * w];
                for y in 0..oh {
                    let iy = y + ki;
                    if iy < p || iy - p >= h {
                        continue;
                    }
                    let src = &plane[(iy - p) * w + x0 + kj - p..][..x1 - x0];
                    row[y * ow + x0..y * ow + x1].copy_from_slice(src);
                }
            }
        }
        cols
    }
}

/// The PTX of `im2col.cu` (built by `build.rs` with the CUDA toolkit's nvcc).
#[cfg(feature = "cuda")]
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/im2col.ptx"));

/// Threads per block and blocks for `rows` rows of `n` positions: one block per row (at most 2³⁰ blocks, which
/// then stride over the rest), the threads rounded up to whole warps, at most 256.
#[cfg(feature = "cuda")]
fn launch_dims(rows: usize, n: usize) -> (u32, u32) {
    let threads = n.div_ceil(32).clamp(1, 8) * 32;
    (rows.clamp(1, 1 << 30) as u32, threads as u32)
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::{CudaDType, WrapErr};
        use candle_core::{CudaDevice, CudaStorage, DType};

        let (b, c, h, w) = l.shape().dims4()?;
        let (oh, ow) = (self.out_size(h), self.out_size(w));
        let (start, _) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("im2col: input not contiguous".into()))?;
        let rows = c * self.k * self.k * b;
        let n = oh * ow;
        let dims: Vec<u32> = [b, c, h, w, self.k, self.p, oh, ow]
            .iter()
            .map(|&d| {
                u32::try_from(d).map_err(|_| {
                    candle_core::Error::Msg(format!("im2col: dimension {d} does not fit 32 bits"))
                })
            })
            .collect::<Result<_>>()?;
        if c * h * w >= 1 << 32 || n >= 1 << 32 {
            candle_core::bail!("im2col: an image of {c}×{h}×{w} is too large for the CUDA kernel");
        }
        let (grid, threads) = launch_dims(rows, n);
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        fn run<T: CudaDType + DeviceRepr>(
            s: &CudaStorage,
            dev: &CudaDevice,
            kernel: &str,
            start: usize,
            len: usize,
            dims: &[u32],
            cfg: LaunchConfig,
        ) -> Result<CudaStorage> {
            let x = s.as_cuda_slice::<T>()?.slice(start..);
            // SAFETY: every element is written by the kernel (rows × positions, all of them).
            let out = unsafe { dev.alloc::<T>(len)? };
            let func = dev.get_or_load_custom_func(kernel, "vsdm_image_im2col", PTX)?;
            let mut builder = func.builder();
            builder.arg(&x);
            builder.arg(&out);
            for d in dims {
                builder.arg(d);
            }
            // SAFETY: the arguments match the kernel's signature (two pointers, eight u32).
            unsafe { builder.launch(cfg) }.w()?;
            Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
        }
        let dev = s.device();
        let len = rows * n;
        let out = match s.dtype() {
            DType::F32 => run::<f32>(s, dev, "im2col_b32", start, len, &dims, cfg)?,
            DType::F64 => run::<f64>(s, dev, "im2col_b64", start, len, &dims, cfg)?,
            DType::F16 => run::<half::f16>(s, dev, "im2col_b16", start, len, &dims, cfg)?,
            DType::BF16 => run::<half::bf16>(s, dev, "im2col_b16", start, len, &dims, cfg)?,
            dt => candle_core::bail!("im2col: floating-point inputs only, got {dt:?}"),
        };
        Ok((out, Shape::from((c * self.k * self.k, b * n))))
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let (oh, ow) = (self.out_size(h), self.out_size(w));
        let (start, end) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("im2col: input not contiguous".into()))?;
        let shape = Shape::from((c * self.k * self.k, b * oh * ow));
        let dims = (b, c, h, w);
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(self.fill(&v[start..end], dims)),
            CpuStorage::F64(v) => CpuStorage::F64(self.fill(&v[start..end], dims)),
            CpuStorage::F16(v) => CpuStorage::F16(self.fill(&v[start..end], dims)),
            CpuStorage::BF16(v) => CpuStorage::BF16(self.fill(&v[start..end], dims)),
            _ => candle_core::bail!("im2col: floating-point inputs only"),
        };
        Ok((out, shape))
    }
}

/// `[B, C, H, W]` → `[C·k·k, B·H'·W']` (H' = H + 2p − k + 1): rows ordered (channel, kernel row, kernel column)
/// as a `[C_out, C, k, k]` weight flattens, columns (image, output position). No graph is recorded (callers
/// pass detached tensors).
pub fn im2col(x: &Tensor, k: usize, p: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if x.elem_count() == 0 {
        candle_core::bail!("im2col: empty input {:?}", x.dims());
    }
    if h + 2 * p < k || w + 2 * p < k {
        candle_core::bail!("im2col: a {k}×{k} kernel does not fit a {h}×{w} input padded by {p}");
    }
    x.contiguous()?.apply_op1_no_bwd(&Im2Col { k, p })
}

/// conv2d(x, W) with stride 1 and zero padding `p` (W `[C_out, C, k, k]`, square), on `x`'s device: one matrix
/// product W `[C_out, C·k·k]` · cols `[C·k·k, B·H'·W']`, then the batch moved in front.
pub fn conv2d(x: &Tensor, w: &Tensor, p: usize) -> Result<Tensor> {
    let (b, c, h, wd) = x.dims4()?;
    let (co, ci, k, kw) = w.dims4()?;
    if k != kw || c != ci {
        candle_core::bail!(
            "conv2d: weight {:?} does not fit input {:?} (square kernels over the input's channels)",
            w.dims(),
            x.dims()
        );
    }
    let cols = im2col(x, k, p)?;
    let (oh, ow) = (h + 2 * p + 1 - k, wd + 2 * p + 1 - k);
    w.reshape((co, ci * k * k))?
        .matmul(&cols)?
        .reshape((co, b, oh, ow))?
        .transpose(0, 1)?
        .contiguous()
}

/// The weight gradient of [`conv2d`] for the output gradient `dy` `[B, C_out, H', W']`: one matrix product
/// dy `[C_out, B·H'·W']` · colsᵀ.
pub fn conv2d_weight_grad(x: &Tensor, dy: &Tensor, k: usize, p: usize) -> Result<Tensor> {
    let (b, co, oh, ow) = dy.dims4()?;
    let ci = x.dim(1)?;
    dy.transpose(0, 1)?
        .contiguous()?
        .reshape((co, b * oh * ow))?
        .matmul(&im2col(x, k, p)?.t()?)?
        .reshape((co, ci, k, k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unet::testutil::rel;
    use candle_core::{DType, Device};
    use vsdm_core::NoiseRng;

    #[test]
    fn mismatched_weights_are_errors() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 5, 5), DType::F32, &dev).unwrap();
        for w in [(2, 4, 3, 3), (2, 3, 3, 1)] {
            let e = conv2d(&x, &Tensor::zeros(w, DType::F32, &dev).unwrap(), 1)
                .unwrap_err()
                .to_string();
            assert!(e.contains("does not fit input [1, 3, 5, 5]"), "{e}");
        }
        assert!(im2col(&x, 9, 1).is_err());
        // An empty batch is an error, not a panic.
        let empty = Tensor::zeros((0, 3, 5, 5), DType::F32, &dev).unwrap();
        assert!(conv2d(
            &empty,
            &Tensor::zeros((2, 3, 3, 3), DType::F32, &dev).unwrap(),
            1
        )
        .is_err());
    }

    /// Equal to candle's conv2d and to its weight gradient (candle's correlation of the batch-transposed
    /// tensors), for odd kernels, "same", smaller and larger padding, non-square inputs and f64.
    #[test]
    fn matches_candles_conv2d() {
        let dev = Device::Cpu;
        let mut rng = NoiseRng::new(5);
        for &(b, ci, co, h, w, k, p) in &[
            (2usize, 3usize, 4usize, 6usize, 5usize, 3usize, 1usize),
            (1, 2, 3, 7, 7, 3, 0),
            (3, 4, 2, 5, 6, 1, 0),
            (2, 2, 2, 6, 6, 5, 2),
            (1, 3, 2, 4, 4, 3, 2),
        ] {
            for dt in [DType::F32, DType::F64] {
                let x = rng
                    .randn(&[b, ci, h, w], &dev)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap();
                let wt = rng
                    .randn(&[co, ci, k, k], &dev)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap();
                let y0 = x.conv2d(&wt, p, 1, 1, 1).unwrap();
                let y1 = conv2d(&x, &wt, p).unwrap();
                let case = format!("b{b} ci{ci} co{co} {h}×{w} k{k} p{p} {dt:?}");
                assert_eq!(y0.dims(), y1.dims(), "{case}");
                assert!(rel(&y0, &y1) < 1e-5, "{case}: value {}", rel(&y0, &y1));
                let dy = rng.randn(y0.dims(), &dev).unwrap().to_dtype(dt).unwrap();
                let g0 = x
                    .transpose(0, 1)
                    .unwrap()
                    .conv2d(&dy.transpose(0, 1).unwrap(), p, 1, 1, 1)
                    .unwrap()
                    .transpose(0, 1)
                    .unwrap();
                let g1 = conv2d_weight_grad(&x, &dy, k, p).unwrap();
                assert!(
                    rel(&g0, &g1) < 1e-5,
                    "{case}: weight gradient {}",
                    rel(&g0, &g1)
                );
            }
        }
    }
}
