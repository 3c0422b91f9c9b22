//! Stride-1 convolutions as one patch matrix and one matrix product.
//!
//! candle 0.11.1's CPU `conv2d` gathers its patches element by element inside each tile (and transposes the input
//! to NHWC first, single-threaded), which at the tiny network's 32 channels runs at about 23 GFLOP/s on this
//! project's machine (`examples/conv_probe.rs`). Here the patches are copied as slices into one matrix, so a
//! convolution is one matrix product and its weight gradient another, in one of two layouts:
//!
//! - Channel-major ([`im2col`], `[C·k·k, B·H'·W']`, one row per (channel, kernel offset)): W `[C_out, C·k·k]` ·
//!   cols, then the batch moved in front; the weight gradient dy `[C_out, B·H'·W']` · colsᵀ. Used on CUDA under
//!   `--conv patch` ([`super::fastconv::ConvBackward::Patch`]) and on the CPU from [`POSITION_MAJOR_BELOW`]
//!   output channels up. On CUDA the matrix comes from this crate's own kernel (`im2col.cu`, compiled to PTX by
//!   the build script in a `cuda` build): candle's CUDA `im2col` took 35–43% of a paper-scale training step on
//!   an H200. It first ran on an H100 on 2026-12-05 (`check-device`: ≤ 2.0e-6 in f32) and is the default
//!   since; its index arithmetic is tested on the CPU (`tests/im2col_kernel.rs` compiles the same source as
//!   C++ and runs every block and thread against a direct definition), and `vsdm-image --cuda --conv patch check-device` compares it with the CPU.
//! - Position-major ([`PatchRows`], `[B·H'·W', k·k·C]`, one row per output position, built from the input moved
//!   channels last), on the CPU below [`POSITION_MAJOR_BELOW`] output channels: rows · W'ᵀ gives the output
//!   channels last, moved back by a tiled transposition, and the weight gradient is rowsᵀ · dy (dy channels
//!   last). With the channel count as the product's short side, gemm 0.17 runs these products 2–3.5× faster than
//!   the channel-major ones at 32–96 channels (`examples/mm_probe.rs`), which made the tiny U-Net's training
//!   step faster by the ratios in docs/benchmarks/image.md (2026-12-05).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};
use vsdm_core::fastmath::{matmul, par_fill, par_rows_mut};

/// The output size along an axis of `n` input pixels of a stride-1 convolution with a `k`-wide kernel and zero
/// padding `p` (callers check that the kernel fits, [`check_fit`]).
fn out_size(n: usize, k: usize, p: usize) -> usize {
    n + 2 * p + 1 - k
}

/// The patch matrix of a stride-1 convolution with a `k×k` kernel and zero padding `p`.
struct Im2Col {
    k: usize,
    p: usize,
}

impl Im2Col {
    fn out_size(&self, n: usize) -> usize {
        out_size(n, self.k, self.p)
    }

    /// The patches in the layout `[C·k·k, B, H'·W']`, so that one matrix product covers the whole batch.
    fn fill<T: WithDType + Copy + Send + Sync>(
        &self,
        x: &[T],
        (b, c, h, w): (usize, usize, usize, usize),
        (oh, ow): (usize, usize),
    ) -> Vec<T> {
        let (k, p) = (self.k, self.p);
        let n = oh * ow;
        let mut cols = vec![T::zero(); c * k * k * b * n];
        // One task per row (channel, kernel offset): each holds the whole batch's positions.
        par_rows_mut(
            (&mut cols, b * n),
            (&mut [] as &mut [u8], 0),
            c * k * k,
            |r0, blocks, _| {
                for (i, block) in blocks.chunks_mut(b * n).enumerate() {
                    let r = r0 + i;
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
            },
        );
        cols
    }
}

/// `$body` (a function of `$x`, the contiguous slice of a float CPU storage `$s` with layout `$l`, generic over
/// the float type) wrapped back into a storage of the same type; an error naming `$name` for a non-contiguous
/// layout or a non-float type.
macro_rules! map_floats {
    ($s:expr, $l:expr, $name:expr, |$x:ident| $body:expr) => {{
        let (start, end) = $l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: input not contiguous", $name)))?;
        match $s {
            CpuStorage::F32(v) => {
                let $x = &v[start..end];
                CpuStorage::F32($body)
            }
            CpuStorage::F64(v) => {
                let $x = &v[start..end];
                CpuStorage::F64($body)
            }
            CpuStorage::F16(v) => {
                let $x = &v[start..end];
                CpuStorage::F16($body)
            }
            CpuStorage::BF16(v) => {
                let $x = &v[start..end];
                CpuStorage::BF16($body)
            }
            _ => candle_core::bail!("{}: floating-point inputs only", $name),
        }
    }};
}

/// The patch matrix of a stride-1 convolution with one row per output position: `[B·H'·W', k·k·C]`, each row
/// the position's receptive field in the order (kernel row, kernel column, channel), the CPU layout (module
/// documentation). With the input channels last, a row's k input pixels at one kernel row are one contiguous
/// run of k·C values, so it fills with slice copies.
struct PatchRows {
    k: usize,
    p: usize,
}

impl PatchRows {
    fn fill<T: WithDType + Copy + Send + Sync>(
        &self,
        x: &[T],
        (b, c, h, w): (usize, usize, usize, usize),
        (oh, ow): (usize, usize),
    ) -> Vec<T> {
        let (k, p) = (self.k, self.p);
        // The input channels last, `[B, H, W, C]`.
        let xh = transpose_batched(x, b, c, h * w);
        let row = k * k * c;
        // One row per (image, output row); every element of it is written below: each kernel row's segment
        // of k·c values is the input's run where it lies inside the image and zeros around it (the padding).
        // SAFETY: every segment is written whole, zeros where no input value lands.
        let cols = unsafe {
            par_fill(b * oh, ow * row, |r0, blocks| {
                let zero = |d: &mut [std::mem::MaybeUninit<T>]| {
                    for e in d {
                        e.write(T::zero());
                    }
                };
                for (i, block) in blocks.chunks_mut(ow * row).enumerate() {
                    let by = r0 + i;
                    let (bi, y) = (by / oh, by % oh);
                    let img = &xh[bi * h * w * c..][..h * w * c];
                    for (xo, r) in block.chunks_mut(row).enumerate() {
                        // Kernel columns whose input column xo + j − p lies inside the image.
                        let j0 = p.saturating_sub(xo).min(k);
                        let j1 = k.min((w + p).saturating_sub(xo)).max(j0);
                        for (i, seg) in r.chunks_mut(k * c).enumerate() {
                            let iy = y + i;
                            if iy < p || iy - p >= h || j0 == j1 {
                                zero(seg);
                                continue;
                            }
                            let (head, rest) = seg.split_at_mut(j0 * c);
                            let (mid, tail) = rest.split_at_mut((j1 - j0) * c);
                            zero(head);
                            zero(tail);
                            let src = &img[((iy - p) * w + xo + j0 - p) * c..][..mid.len()];
                            for (d, v) in mid.iter_mut().zip(src) {
                                d.write(*v);
                            }
                        }
                    }
                }
            })
        };
        cols
    }
}

impl CustomOp1 for PatchRows {
    fn name(&self) -> &'static str {
        "patch-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let (oh, ow) = (out_size(h, self.k, self.p), out_size(w, self.k, self.p));
        let shape = Shape::from((b * oh * ow, self.k * self.k * c));
        let out = map_floats!(s, l, self.name(), |x| self.fill(x, (b, c, h, w), (oh, ow)));
        Ok((out, shape))
    }
}

/// `[B, R, C]` → `[B, C, R]` (row-major slices), in parallel over the batch, in 16×16 tiles. Within a tile the
/// inner loop reads the source's rows contiguously when R ≤ C/8, else writes the destination's rows
/// contiguously: the faster of the two orders at each of the network's shapes in a probe of both.
fn transpose_batched<T: WithDType + Copy + Send + Sync>(
    x: &[T],
    b: usize,
    r: usize,
    c: usize,
) -> Vec<T> {
    const TILE: usize = 16;
    // SAFETY: the tiles cover every (i, j) of each image, so each output element is written once.
    unsafe {
        par_fill(b, r * c, |b0, dsts| {
            for (bi, dst) in dsts.chunks_mut(r * c).enumerate() {
                let src = &x[(b0 + bi) * r * c..][..r * c];
                for i0 in (0..r).step_by(TILE) {
                    let i1 = (i0 + TILE).min(r);
                    for j0 in (0..c).step_by(TILE) {
                        let j1 = (j0 + TILE).min(c);
                        if r * 8 <= c {
                            for i in i0..i1 {
                                for (j, v) in (j0..j1).zip(&src[i * c + j0..i * c + j1]) {
                                    dst[j * r + i].write(*v);
                                }
                            }
                        } else {
                            for j in j0..j1 {
                                for (i, d) in (i0..i1).zip(&mut dst[j * r + i0..j * r + i1]) {
                                    d.write(src[i * c + j]);
                                }
                            }
                        }
                    }
                }
            }
        })
    }
}

/// [`transpose_batched`] as an op on a contiguous CPU tensor `[B, R, C]`, no graph recorded.
struct SwapLast2;

impl CustomOp1 for SwapLast2 {
    fn name(&self) -> &'static str {
        "swap-last-2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, r, c) = l.shape().dims3()?;
        let out = map_floats!(s, l, self.name(), |x| transpose_batched(x, b, r, c));
        Ok((out, Shape::from((b, c, r))))
    }
}

/// `[B, R, C]` → `[B, C, R]` for a CPU tensor (contiguous result), no graph recorded.
fn swap_last2(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&SwapLast2)
}

/// `[B, C, H, W]` → `[B·H'·W', k·k·C]` (CPU tensors): rows ordered (image, output position), columns
/// (kernel row, kernel column, channel). No graph is recorded (callers pass detached tensors).
fn patch_rows(x: &Tensor, k: usize, p: usize) -> Result<Tensor> {
    check_fit(x, k, p)?;
    x.contiguous()?.apply_op1_no_bwd(&PatchRows { k, p })
}

fn check_fit(x: &Tensor, k: usize, p: usize) -> Result<()> {
    let (_, _, h, w) = x.dims4()?;
    if x.elem_count() == 0 {
        candle_core::bail!("im2col: empty input {:?}", x.dims());
    }
    if h + 2 * p < k || w + 2 * p < k {
        candle_core::bail!("im2col: a {k}×{k} kernel does not fit a {h}×{w} input padded by {p}");
    }
    Ok(())
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
        let shape = Shape::from((c * self.k * self.k, b * oh * ow));
        let out = map_floats!(s, l, self.name(), |x| self.fill(x, (b, c, h, w), (oh, ow)));
        Ok((out, shape))
    }
}

/// `[B, C, H, W]` → `[C·k·k, B·H'·W']` (H' = H + 2p − k + 1): rows ordered (channel, kernel row, kernel column)
/// as a `[C_out, C, k, k]` weight flattens, columns (image, output position). No graph is recorded (callers
/// pass detached tensors).
pub fn im2col(x: &Tensor, k: usize, p: usize) -> Result<Tensor> {
    check_fit(x, k, p)?;
    x.contiguous()?.apply_op1_no_bwd(&Im2Col { k, p })
}

/// Below this many output channels a CPU convolution takes the position-major patch matrix ([`PatchRows`]).
/// At 128–256 channels the channel-major product already runs near gemm's peak (`examples/mm_probe.rs`), and
/// with every layer position-major the DDPM++ bench (`vsdm-image bench --arch ddpmpp --batch 4`) ran its
/// forward at 0.73× the images/s of the channel-major build (two alternating rounds, 2026-12-05); with this
/// threshold it is level.
const POSITION_MAJOR_BELOW: usize = 128;

/// Whether a convolution of `x` with `co` output channels takes the position-major layout (module
/// documentation).
fn position_major(x: &Tensor, co: usize) -> bool {
    x.device().is_cpu() && co < POSITION_MAJOR_BELOW
}

/// The largest patch matrix made at once on the CPU, in bytes: below glibc's largest mmap threshold
/// (32 MiB, which `vsdm_eval::cli::tune_allocator` sets), so the matrix reuses freed heap memory instead of a
/// fresh mapping that the kernel page-faults and zeroes on every call (the tiny network's 32×32 decoder blocks,
/// at 64 and 96 input channels, make 38 and 57 MB at batch 16).
const PATCH_BUDGET: usize = 24 << 20;

/// `(first image, images)` of consecutive chunks of `x`'s batch whose patch matrices of `per_image` elements
/// each stay within [`PATCH_BUDGET`] (one image at least) on the CPU; the whole batch at once on a GPU.
fn image_chunks(x: &Tensor, per_image: usize) -> impl Iterator<Item = (usize, usize)> {
    let b = x.dim(0).unwrap_or(0);
    let chunk = if x.device().is_cpu() {
        (PATCH_BUDGET / (per_image * x.dtype().size_in_bytes()).max(1)).clamp(1, b.max(1))
    } else {
        b.max(1)
    };
    (0..b)
        .step_by(chunk)
        .map(move |start| (start, chunk.min(b - start)))
}

/// conv2d(x, W) with stride 1 and zero padding `p` (W `[C_out, C, k, k]`, square), on `x`'s device: one matrix
/// product, position-major below [`POSITION_MAJOR_BELOW`] output channels on the CPU (rows `[B·H'·W', k·k·C]`
/// · W'ᵀ, then the channels moved in front of the positions), else channel-major (W `[C_out, C·k·k]` · cols
/// `[C·k·k, B·H'·W']`, then the batch moved in front).
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
    let (oh, ow) = (out_size(h, k, p), out_size(wd, k, p));
    let rows = position_major(x, co);
    // Position-major: [n·H'·W', k·k·C] · W'ᵀ with W' the weight in (kernel row, kernel column, channel) order.
    let wm = if rows {
        w.permute((0, 2, 3, 1))?.reshape((co, k * k * ci))?.t()?
    } else {
        w.reshape((co, ci * k * k))?
    };
    let parts = image_chunks(x, k * k * ci * oh * ow)
        .map(|(start, n)| {
            let x = x.narrow(0, start, n)?;
            if rows {
                matmul(&patch_rows(&x, k, p)?, &wm)?
                    .reshape((n, oh * ow, co))
                    .and_then(|y| swap_last2(&y))
            } else {
                wm.matmul(&im2col(&x, k, p)?)?
                    .reshape((co, n, oh * ow))?
                    .transpose(0, 1)?
                    .contiguous()
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let y = if parts.len() == 1 {
        parts.into_iter().next().expect("one part")
    } else {
        Tensor::cat(&parts, 0)?
    };
    y.reshape((b, co, oh, ow))
}

/// The weight gradient of [`conv2d`] for the output gradient `dy` `[B, C_out, H', W']`: one matrix product,
/// rowsᵀ · dy channels last `[B·H'·W', C_out]` in the position-major layout, else dy `[C_out, B·H'·W']` ·
/// colsᵀ.
pub fn conv2d_weight_grad(x: &Tensor, dy: &Tensor, k: usize, p: usize) -> Result<Tensor> {
    let (b, co, oh, ow) = dy.dims4()?;
    let ci = x.dim(1)?;
    let rows = position_major(x, co);
    let dy = dy.reshape((b, co, oh * ow))?;
    // Σ over chunks of images: position-major rowsᵀ · dy `[n·H'·W', C_out]` (`[k·k·C, C_out]`, in the rows'
    // order), channel-major dy `[C_out, n·H'·W']` · colsᵀ (`[C_out, C·k·k]`).
    let mut sum: Option<Tensor> = None;
    for (start, n) in image_chunks(x, k * k * ci * oh * ow) {
        let (x, dy) = (x.narrow(0, start, n)?, dy.narrow(0, start, n)?);
        let g = if rows {
            let dyt = swap_last2(&dy)?.reshape((n * oh * ow, co))?;
            matmul(&patch_rows(&x, k, p)?.t()?, &dyt)?
        } else {
            let dy = dy
                .transpose(0, 1)?
                .contiguous()?
                .reshape((co, n * oh * ow))?;
            dy.matmul(&im2col(&x, k, p)?.t()?)?
        };
        sum = Some(match sum {
            Some(s) => (s + g)?,
            None => g,
        });
    }
    let g = sum.expect("at least one image");
    if rows {
        g.reshape((k, k, ci, co))?
            .permute((3, 2, 0, 1))?
            .contiguous()
    } else {
        g.reshape((co, ci, k, k))
    }
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

    /// The batched transposition equals candle's strided copy, in both loop orders (R ≤ C/8 and above), with
    /// partial tiles on both axes.
    #[test]
    fn swap_last2_matches_candles_transpose() {
        let dev = Device::Cpu;
        let mut rng = NoiseRng::new(9);
        for &(b, r, c) in &[
            (2usize, 5usize, 100usize),
            (3, 37, 21),
            (1, 17, 136),
            (2, 1, 1),
            (1, 16, 16),
        ] {
            let x = rng.randn(&[b, r, c], &dev).unwrap();
            let want = x.transpose(1, 2).unwrap().contiguous().unwrap();
            let got = swap_last2(&x).unwrap();
            assert_eq!(got.dims(), &[b, c, r]);
            let (want, got) = (
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert_eq!(want, got, "{b}×{r}×{c}");
        }
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
            // More channels and positions than one 16×16 transposition tile, in both directions.
            (2, 20, 18, 18, 17, 3, 1),
            (1, 40, 3, 5, 7, 1, 0),
            // At or above POSITION_MAJOR_BELOW output channels: the channel-major layout on the CPU.
            (2, 3, 130, 5, 4, 3, 1),
            // Patch matrices over PATCH_BUDGET: chunks of 2 + 1 images in f32, 1 + 1 + 1 in f64, in both layouts.
            (3, 128, 4, 48, 48, 3, 1),
            (3, 128, 128, 48, 48, 3, 1),
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
