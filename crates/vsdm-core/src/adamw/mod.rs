//! [`crate::optim::AdamW`]'s step on f32 parameters as two in-place element-wise ops per parameter tensor, on
//! the CPU (a loop) and on CUDA (`adamw.cu`).
//!
//! The chain of candle ops it replaces ran about 17 kernels per parameter tensor (each a pass over the tensor
//! and, on CUDA, a launch): several thousand per step of the paper-scale U-Net's ≈ 300 tensors. Here the two
//! moments of a tensor of n values share one buffer `mv` of 2n (m, then v) and a step is `Moments` (the
//! gradient into the moments) then `Apply` (the moments into the parameters). Both compute the chain's f32
//! operations in its order, each rounded on its own, with the factors rounded to f32 as candle's affine rounds
//! them ([`Factors`]): the result is the chain's to the last bit (`optim.rs`'s tests), and the CUDA source,
//! compiled for the host by `adamw_emu.c`, gives the same bits as the loop here ([`Backend::Emulated`]).
//!
//! [`ema`] does the same for the trainer's moving average of the parameters (one op where the chain took four).

use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor};

use crate::optim::AdamConfig;

/// Where the ops run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The tensors' own device: the Rust loop below on the CPU, `adamw.cu` on CUDA.
    Native,
    /// CPU tensors through the host build of `adamw.cu` (every block and thread in turn): for tests.
    Emulated,
}

/// The f32 factors of one step: every f64 the chain passed to candle's affine, rounded as it rounds them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Factors {
    scale: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    lr: f32,
    decay: f32,
    decayed: bool,
    inv_bc1: f32,
    inv_bc2: f32,
    eps: f32,
}

impl Factors {
    /// The factors of the step numbered `step` (1-based, as in the bias corrections) at rate `lr`, with the
    /// gradients multiplied by `grad_scale`.
    pub fn new(cfg: &AdamConfig, lr: f64, step: usize, grad_scale: f64) -> Self {
        let bc1 = 1.0 - cfg.beta1.powi(step as i32);
        let bc2 = 1.0 - cfg.beta2.powi(step as i32);
        Self {
            scale: grad_scale as f32,
            beta1: cfg.beta1 as f32,
            one_minus_beta1: (1.0 - cfg.beta1) as f32,
            beta2: cfg.beta2 as f32,
            one_minus_beta2: (1.0 - cfg.beta2) as f32,
            lr: lr as f32,
            decay: (1.0 - lr * cfg.weight_decay) as f32,
            decayed: cfg.weight_decay > 0.0,
            inv_bc1: (1.0 / bc1) as f32,
            inv_bc2: (1.0 / bc2) as f32,
            eps: cfg.eps as f32,
        }
    }
}

/// One step on `theta` (a contiguous f32 tensor, updated in place) and its moments `mv` (contiguous f32, 2n
/// values for theta's n, updated in place) from the gradient `grad` (theta's shape, f32).
pub fn step(
    theta: &Tensor,
    mv: &Tensor,
    grad: &Tensor,
    f: Factors,
    backend: Backend,
) -> Result<()> {
    let n = theta.elem_count();
    if grad.dims() != theta.dims() || mv.elem_count() != 2 * n {
        candle_core::bail!(
            "adamw: parameter {:?}, gradient {:?}, moments of {} values (expected {})",
            theta.dims(),
            grad.dims(),
            mv.elem_count(),
            2 * n
        );
    }
    // Checked before the first in-place op, so a refused call leaves the moments as they were.
    if !theta.is_contiguous() || !mv.is_contiguous() {
        let kind = |t: &Tensor| {
            if t.is_contiguous() {
                "contiguous"
            } else {
                "strided"
            }
        };
        candle_core::bail!(
            "adamw: parameter and moments must be contiguous (parameter {}, moments {})",
            kind(theta),
            kind(mv)
        );
    }
    let grad = grad.contiguous()?;
    mv.inplace_op2(&grad, &Moments { f, backend })?;
    theta.inplace_op2(mv, &Apply { f, backend })
}

/// Whether [`step`] takes these tensors: f32 parameters on the CPU, or on CUDA in a `cuda` build (others keep
/// the chain).
pub fn applies(theta: &Tensor) -> bool {
    theta.dtype() == candle_core::DType::F32
        && (theta.device().is_cpu() || (cfg!(feature = "cuda") && theta.device().is_cuda()))
}

/// candle's affine x·mul + add in f32, each operation rounded.
#[inline(always)]
fn affine(x: f32, mul: f32, add: f32) -> f32 {
    x * mul + add
}

/// The contiguous f32 values of a CPU operand, from its layout's offset on, or an error naming the op.
fn contiguous_f32<'a>(op: &str, s: &'a CpuStorage, l: &Layout, n: usize) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) if b - a == n => Ok(&v[a..b]),
        _ => candle_core::bail!("{op}: expects contiguous f32 tensors of {n} values"),
    }
}

fn contiguous_f32_mut<'a>(
    op: &str,
    s: &'a mut CpuStorage,
    l: &Layout,
    n: usize,
) -> Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) if b - a == n => Ok(&mut v[a..b]),
        _ => candle_core::bail!("{op}: expects contiguous f32 tensors of {n} values"),
    }
}

extern "C" {
    fn vsdm_adamw_moments_emu(
        grid: u32,
        block: u32,
        grad: *const f32,
        mv: *mut f32,
        n: u32,
        scale: f32,
        beta1: f32,
        one_minus_beta1: f32,
        beta2: f32,
        one_minus_beta2: f32,
    );
    #[allow(clippy::too_many_arguments)]
    fn vsdm_adamw_apply_emu(
        grid: u32,
        block: u32,
        mv: *const f32,
        theta: *mut f32,
        n: u32,
        lr: f32,
        decay: f32,
        decayed: i32,
        inv_bc1: f32,
        inv_bc2: f32,
        eps: f32,
    );
}

/// One EMA update in place, `ema` ← ema·decay + theta·(1 − decay) (contiguous f32 tensors of one shape), with
/// the chain's f32 roundings.
pub fn ema(ema: &Tensor, theta: &Tensor, decay: f64, backend: Backend) -> Result<()> {
    if ema.dims() != theta.dims() {
        candle_core::bail!(
            "ema: average {:?}, parameter {:?}",
            ema.dims(),
            theta.dims()
        );
    }
    let op = Ema {
        decay: decay as f32,
        one_minus_decay: (1.0 - decay) as f32,
        backend,
    };
    ema.inplace_op2(&theta.contiguous()?, &op)
}

/// The moving average: dst the average, source the parameter (n values each).
struct Ema {
    decay: f32,
    one_minus_decay: f32,
    backend: Backend,
}

extern "C" {
    fn vsdm_ema_update_emu(
        grid: u32,
        block: u32,
        theta: *const f32,
        ema: *mut f32,
        n: u32,
        decay: f32,
        one_minus_decay: f32,
    );
}

impl InplaceOp2 for Ema {
    fn name(&self) -> &'static str {
        "ema-update"
    }

    fn cpu_fwd(&self, e: &mut CpuStorage, el: &Layout, t: &CpuStorage, tl: &Layout) -> Result<()> {
        let n = tl.shape().elem_count();
        let t = contiguous_f32(self.name(), t, tl, n)?;
        let e = contiguous_f32_mut(self.name(), e, el, n)?;
        if self.backend == Backend::Emulated {
            let (grid, block) = launch_dims(n);
            // SAFETY: theta and the average hold n values each, the lengths the kernel touches for count n.
            unsafe {
                vsdm_ema_update_emu(
                    grid,
                    block,
                    t.as_ptr(),
                    e.as_mut_ptr(),
                    count(self.name(), n)?,
                    self.decay,
                    self.one_minus_decay,
                )
            };
            return Ok(());
        }
        for (e, t) in e.iter_mut().zip(t) {
            *e = affine(*e, self.decay, 0.0) + affine(*t, self.one_minus_decay, 0.0);
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        e: &mut candle_core::CudaStorage,
        el: &Layout,
        t: &candle_core::CudaStorage,
        tl: &Layout,
    ) -> Result<()> {
        let n = tl.shape().elem_count();
        let scalars = [Scalar::F32(self.decay), Scalar::F32(self.one_minus_decay)];
        cuda_launch(
            self.name(),
            "ema_update",
            (t, tl, n),
            (e, el, n),
            n,
            &scalars,
        )
    }
}

/// Threads per block and blocks of a launch over n values: 256 threads, at most 4096 blocks (the loop strides).
fn launch_dims(n: usize) -> (u32, u32) {
    let block = 256u32;
    let grid = n.div_ceil(block as usize).clamp(1, 4096) as u32;
    (grid, block)
}

/// n as the kernels' 32-bit count.
fn count(op: &str, n: usize) -> Result<u32> {
    u32::try_from(n)
        .map_err(|_| candle_core::Error::Msg(format!("{op}: {n} values exceed 32 bits")))
}

/// The gradient into the moments: dst `mv` (2n), source the gradient (n).
struct Moments {
    f: Factors,
    backend: Backend,
}

impl InplaceOp2 for Moments {
    fn name(&self) -> &'static str {
        "adamw-moments"
    }

    fn cpu_fwd(&self, mv: &mut CpuStorage, ml: &Layout, g: &CpuStorage, gl: &Layout) -> Result<()> {
        let n = gl.shape().elem_count();
        let g = contiguous_f32(self.name(), g, gl, n)?;
        let mv = contiguous_f32_mut(self.name(), mv, ml, 2 * n)?;
        let f = self.f;
        if self.backend == Backend::Emulated {
            let (grid, block) = launch_dims(n);
            // SAFETY: g holds n values and mv 2n, the lengths the kernel reads and writes for count n.
            unsafe {
                vsdm_adamw_moments_emu(
                    grid,
                    block,
                    g.as_ptr(),
                    mv.as_mut_ptr(),
                    count(self.name(), n)?,
                    f.scale,
                    f.beta1,
                    f.one_minus_beta1,
                    f.beta2,
                    f.one_minus_beta2,
                )
            };
            return Ok(());
        }
        let (m, v) = mv.split_at_mut(n);
        for ((g, m), v) in g.iter().zip(m).zip(v) {
            let g = affine(*g, f.scale, 0.0);
            *m = affine(*m, f.beta1, 0.0) + affine(g, f.one_minus_beta1, 0.0);
            *v = affine(*v, f.beta2, 0.0) + affine(g * g, f.one_minus_beta2, 0.0);
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        mv: &mut candle_core::CudaStorage,
        ml: &Layout,
        g: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<()> {
        let n = gl.shape().elem_count();
        let f = self.f;
        let scalars = [
            Scalar::F32(f.scale),
            Scalar::F32(f.beta1),
            Scalar::F32(f.one_minus_beta1),
            Scalar::F32(f.beta2),
            Scalar::F32(f.one_minus_beta2),
        ];
        cuda_launch(
            self.name(),
            "adamw_moments",
            (g, gl, n),
            (mv, ml, 2 * n),
            n,
            &scalars,
        )
    }
}

/// The moments into the parameters: dst theta (n), source `mv` (2n).
struct Apply {
    f: Factors,
    backend: Backend,
}

impl InplaceOp2 for Apply {
    fn name(&self) -> &'static str {
        "adamw-apply"
    }

    fn cpu_fwd(
        &self,
        th: &mut CpuStorage,
        tl: &Layout,
        mv: &CpuStorage,
        ml: &Layout,
    ) -> Result<()> {
        let n = tl.shape().elem_count();
        let mv = contiguous_f32(self.name(), mv, ml, 2 * n)?;
        let th = contiguous_f32_mut(self.name(), th, tl, n)?;
        let f = self.f;
        if self.backend == Backend::Emulated {
            let (grid, block) = launch_dims(n);
            // SAFETY: mv holds 2n values and theta n, the lengths the kernel reads and writes for count n.
            unsafe {
                vsdm_adamw_apply_emu(
                    grid,
                    block,
                    mv.as_ptr(),
                    th.as_mut_ptr(),
                    count(self.name(), n)?,
                    f.lr,
                    f.decay,
                    i32::from(f.decayed),
                    f.inv_bc1,
                    f.inv_bc2,
                    f.eps,
                )
            };
            return Ok(());
        }
        let (m, v) = mv.split_at(n);
        for ((p, m), v) in th.iter_mut().zip(m).zip(v) {
            let theta = if f.decayed {
                affine(*p, f.decay, 0.0)
            } else {
                *p
            };
            let m_hat = affine(*m, f.inv_bc1, 0.0);
            let den = affine(affine(*v, f.inv_bc2, 0.0).sqrt(), 1.0, f.eps);
            *p = theta - affine(m_hat / den, f.lr, 0.0);
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        th: &mut candle_core::CudaStorage,
        tl: &Layout,
        mv: &candle_core::CudaStorage,
        ml: &Layout,
    ) -> Result<()> {
        let n = tl.shape().elem_count();
        let f = self.f;
        let scalars = [
            Scalar::F32(f.lr),
            Scalar::F32(f.decay),
            Scalar::I32(i32::from(f.decayed)),
            Scalar::F32(f.inv_bc1),
            Scalar::F32(f.inv_bc2),
            Scalar::F32(f.eps),
        ];
        cuda_launch(
            self.name(),
            "adamw_apply",
            (mv, ml, 2 * n),
            (th, tl, n),
            n,
            &scalars,
        )
    }
}

#[cfg(feature = "cuda")]
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/adamw.ptx"));

/// A scalar argument of the kernels in `adamw.cu`.
#[cfg(feature = "cuda")]
enum Scalar {
    F32(f32),
    I32(i32),
}

/// Launches `kernel` of `adamw.cu` over `n` values: every kernel there takes its source, its destination
/// (updated in place), the count n and then its scalars, in that order. `src` and `dst` must be contiguous f32
/// runs of the given lengths.
#[cfg(feature = "cuda")]
fn cuda_launch(
    op: &str,
    kernel: &str,
    (src, sl, src_len): (&candle_core::CudaStorage, &Layout, usize),
    (dst, dl, dst_len): (&mut candle_core::CudaStorage, &Layout, usize),
    n: usize,
    scalars: &[Scalar],
) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    let offset = |l: &Layout, len: usize| match l.contiguous_offsets() {
        Some((a, b)) if b - a == len => Ok(a),
        _ => candle_core::bail!("{op}: expects contiguous f32 tensors"),
    };
    let (so, d_o) = (offset(sl, src_len)?, offset(dl, dst_len)?);
    let dev = candle_core::backend::BackendStorage::device(src).clone();
    let src = src.as_cuda_slice::<f32>()?.slice(so..so + src_len);
    let mut dst = dst
        .as_cuda_slice_mut::<f32>()?
        .slice_mut(d_o..d_o + dst_len);
    let func = dev.get_or_load_custom_func(kernel, "vsdm_core_adamw", PTX)?;
    let count = count(op, n)?;
    let mut b = func.builder();
    b.arg(&src);
    b.arg(&mut dst);
    b.arg(&count);
    for s in scalars {
        match s {
            Scalar::F32(v) => b.arg(v),
            Scalar::I32(v) => b.arg(v),
        };
    }
    let (grid, block) = launch_dims(n);
    let cfg = LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the arguments follow the kernel's parameters (source, destination, count, the scalars in the
    // kernel's order and types, which each caller lists), and the two runs hold the lengths the kernel
    // touches for count n.
    unsafe { b.launch(cfg) }.map_err(candle_core::Error::wrap)?;
    Ok(())
}
