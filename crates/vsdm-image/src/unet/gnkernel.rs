//! Group normalisation (+ SiLU) and its analytic backward on this crate's own kernels (`gn.cu`), for
//! `--norm kernel` on CUDA with f32 or bf16 activations (f32 scale, shift, statistics and sums).
//!
//! [`super::fastnorm`]'s analytic backward runs as chains of candle's element-wise kernels, which on an H200 took
//! 28–38% of a paper-scale training step (docs/benchmarks/image.md); `gn.cu` computes the same formulas in 3
//! passes over the activation for the value and 5 for the backward, leaving candle only the sums of small
//! per-thread partials. First run on an H100 on 2026-12-05 (within 3.4e-6 of candle_nn in f32), the default
//! since. The kernels are also tested without a GPU: `gn_emu.c` compiles the same source for the host
//! ([`Backend::Emulated`], every block and thread in turn), and the tests below run this module's whole orchestration on it against [`super::fastnorm`] (itself tested against candle_nn's `GroupNorm`).
//! `vsdm-image --cuda --norm kernel check-device` compares the CUDA run with the CPU.

use candle_core::{DType, Device, Result, Tensor};

/// Where the kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The PTX of `gn.cu` on the tensors' CUDA device (a `cuda` build).
    Cuda,
    /// The host build of the same source (`gn_emu.c`) on CPU tensors, one thread at a time: for tests.
    Emulated,
}

/// Threads per block for rows of `len` values: a power of two from 32 (one warp) to 256, about `len`/8, so that
/// each thread of a reduction adds about 8 values before writing its partial sum (the partials' traffic is then
/// ≈ 1/8 of the input's, where a fixed 256 threads wrote one partial per value on the 16×16 rows and four on the
/// 8×8 ones) and the element-wise kernels leave few threads idle on short rows.
fn threads(len: usize) -> usize {
    (len / 8).next_power_of_two().clamp(32, 256)
}

extern "C" {
    fn vsdm_gn_emu(
        kernel: *const std::ffi::c_char,
        grid: u32,
        block: u32,
        inputs: *const *const std::ffi::c_void,
        outputs: *const *mut std::ffi::c_void,
        scalars: *const u32,
        flag: i32,
    ) -> i32;
}

/// Blocks for `rows` rows (one each, at most 2³⁰, which then stride).
fn grid(rows: usize) -> u32 {
    rows.clamp(1, 1 << 30) as u32
}

/// Runs `kernel` (the base name: the activations' type picks `_f32` or `_bf16`) over `rows` rows, `threads` per
/// block: the inputs (contiguous, on the backend's device: the activations in `act`, f32 or bf16, everything
/// else f32), outputs of the given lengths and types, the unsigned scalars and the flag, pushed in that order —
/// the parameter order of every kernel in `gn.cu`.
#[allow(clippy::too_many_arguments)]
pub(super) fn launch(
    backend: Backend,
    kernel: &str,
    act: DType,
    (rows, threads): (usize, usize),
    inputs: &[&Tensor],
    outs: &[(usize, DType)],
    scalars: &[usize],
    flag: bool,
) -> Result<Vec<Tensor>> {
    let kernel = match act {
        DType::F32 => format!("{kernel}_f32"),
        DType::BF16 => format!("{kernel}_bf16"),
        other => candle_core::bail!("{kernel}: f32 or bf16 activations, got {other:?}"),
    };
    let scalars: Vec<u32> = scalars
        .iter()
        .map(|&v| {
            u32::try_from(v).map_err(|_| {
                candle_core::Error::Msg(format!("{kernel}: {v} does not fit the kernel's 32 bits"))
            })
        })
        .collect::<Result<_>>()?;
    let inputs: Vec<Tensor> = inputs
        .iter()
        .map(|t| {
            if t.dtype() != DType::F32 && t.dtype() != act {
                candle_core::bail!(
                    "{kernel}: a {:?} input among {act:?} activations",
                    t.dtype()
                );
            }
            t.contiguous()
        })
        .collect::<Result<_>>()?;
    let l = Launch {
        kernel: &kernel,
        rows,
        threads,
        inputs: &inputs,
        outs,
        scalars: &scalars,
        flag,
    };
    match backend {
        Backend::Emulated => emulate(&l),
        Backend::Cuda => cuda_launch(&l),
    }
}

/// One kernel launch as [`launch`] checked it: the full kernel name, rows, threads per block, the contiguous
/// inputs, the outputs' lengths and types, the 32-bit scalars and the flag.
#[derive(Clone, Copy)]
struct Launch<'a> {
    kernel: &'a str,
    rows: usize,
    threads: usize,
    inputs: &'a [Tensor],
    outs: &'a [(usize, DType)],
    scalars: &'a [u32],
    flag: bool,
}

/// A host buffer of one launch argument.
enum Host {
    F32(Vec<f32>),
    Bf16(Vec<half::bf16>),
}

impl Host {
    fn of(t: &Tensor) -> Result<Self> {
        let t = t.flatten_all()?;
        Ok(match t.dtype() {
            DType::BF16 => Self::Bf16(t.to_vec1()?),
            _ => Self::F32(t.to_vec1()?),
        })
    }

    fn zeros(n: usize, dtype: DType) -> Self {
        match dtype {
            DType::BF16 => Self::Bf16(vec![half::bf16::ZERO; n]),
            _ => Self::F32(vec![0.0; n]),
        }
    }

    fn ptr(&mut self) -> *mut std::ffi::c_void {
        match self {
            Self::F32(v) => v.as_mut_ptr().cast(),
            Self::Bf16(v) => v.as_mut_ptr().cast(),
        }
    }

    fn into_tensor(self) -> Result<Tensor> {
        match self {
            Self::F32(v) => {
                let n = v.len();
                Tensor::from_vec(v, n, &Device::Cpu)
            }
            Self::Bf16(v) => {
                let n = v.len();
                Tensor::from_vec(v, n, &Device::Cpu)
            }
        }
    }
}

/// The launch on the host build of the kernels (CPU tensors).
fn emulate(l: &Launch) -> Result<Vec<Tensor>> {
    let mut host: Vec<Host> = l.inputs.iter().map(Host::of).collect::<Result<_>>()?;
    let mut out: Vec<Host> = l.outs.iter().map(|&(n, dt)| Host::zeros(n, dt)).collect();
    let in_ptrs: Vec<*const std::ffi::c_void> =
        host.iter_mut().map(|h| h.ptr().cast_const()).collect();
    let out_ptrs: Vec<*mut std::ffi::c_void> = out.iter_mut().map(Host::ptr).collect();
    let name = std::ffi::CString::new(l.kernel).expect("kernel names have no NUL");
    // SAFETY: the pointers stay valid for the call; each kernel reads and writes within the lengths its scalars
    // describe, which the callers below derive from these tensors' shapes, in the types its suffix names.
    let rc = unsafe {
        vsdm_gn_emu(
            name.as_ptr(),
            grid(l.rows),
            l.threads as u32,
            in_ptrs.as_ptr(),
            out_ptrs.as_ptr(),
            l.scalars.as_ptr(),
            i32::from(l.flag),
        )
    };
    if rc != 0 {
        candle_core::bail!("{}: unknown to the host build of gn.cu", l.kernel);
    }
    out.into_iter().map(Host::into_tensor).collect()
}

#[cfg(feature = "cuda")]
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/gn.ptx"));

#[cfg(feature = "cuda")]
fn cuda_launch(l: &Launch) -> Result<Vec<Tensor>> {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::WrapErr;
    use candle_core::op::BackpropOp;
    use candle_core::{CudaStorage, Storage};

    enum View<'a> {
        F32(CudaView<'a, f32>),
        Bf16(CudaView<'a, half::bf16>),
    }
    enum Out {
        F32(CudaSlice<f32>),
        Bf16(CudaSlice<half::bf16>),
    }
    let dev = match l.inputs.first().map(|t| t.device()) {
        Some(Device::Cuda(d)) => d.clone(),
        _ => candle_core::bail!("{}: the CUDA kernels take CUDA tensors", l.kernel),
    };
    let guards: Vec<_> = l.inputs.iter().map(|t| t.storage_and_layout()).collect();
    let mut views = Vec::with_capacity(guards.len());
    for (storage, layout) in &guards {
        let o = layout.start_offset();
        views.push(match &**storage {
            Storage::Cuda(cs) if cs.dtype() == DType::BF16 => {
                View::Bf16(cs.as_cuda_slice::<half::bf16>()?.slice(o..))
            }
            Storage::Cuda(cs) => View::F32(cs.as_cuda_slice::<f32>()?.slice(o..)),
            _ => candle_core::bail!("{}: the CUDA kernels take CUDA tensors", l.kernel),
        });
    }
    let mut out = Vec::with_capacity(l.outs.len());
    for &(n, dt) in l.outs {
        // Zeroed: every kernel writes all of its outputs, but a zero is a safer start than garbage.
        out.push(match dt {
            DType::BF16 => Out::Bf16(dev.alloc_zeros::<half::bf16>(n)?),
            _ => Out::F32(dev.alloc_zeros::<f32>(n)?),
        });
    }
    let func = dev.get_or_load_custom_func(l.kernel, "vsdm_image_gn", PTX)?;
    let cfg = LaunchConfig {
        grid_dim: (grid(l.rows), 1, 1),
        block_dim: (l.threads as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let flag = i32::from(l.flag);
    let mut builder = func.builder();
    for v in &views {
        match v {
            View::F32(v) => builder.arg(v),
            View::Bf16(v) => builder.arg(v),
        };
    }
    for o in &out {
        match o {
            Out::F32(o) => builder.arg(o),
            Out::Bf16(o) => builder.arg(o),
        };
    }
    for s in l.scalars {
        builder.arg(s);
    }
    builder.arg(&flag);
    // SAFETY: the arguments follow the kernels' parameter order (inputs, outputs, u32 scalars, int flag), in the
    // types the kernel's suffix names (checked by `launch`).
    unsafe { builder.launch(cfg) }.w()?;
    drop(builder);
    drop(views);
    drop(guards);
    Ok(out
        .into_iter()
        .zip(l.outs)
        .map(|(o, &(n, _))| {
            let slice = match o {
                Out::F32(o) => CudaStorage::wrap_cuda_slice(o, dev.clone()),
                Out::Bf16(o) => CudaStorage::wrap_cuda_slice(o, dev.clone()),
            };
            Tensor::from_storage(Storage::Cuda(slice), n, BackpropOp::none(), false)
        })
        .collect())
}

#[cfg(not(feature = "cuda"))]
fn cuda_launch(l: &Launch) -> Result<Vec<Tensor>> {
    candle_core::bail!(
        "{}: this binary was built without the `cuda` feature",
        l.kernel
    )
}

/// What is computed: `groups` groups, ε, and whether SiLU follows the normalisation.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub groups: usize,
    pub eps: f64,
    pub silu: bool,
}

/// Shapes of a normalisation of `x` `[B, C, …]` over `groups` groups.
struct Dims {
    b: usize,
    c: usize,
    g: usize,
    /// Positions per channel.
    s: usize,
    /// Values per group.
    n: usize,
}

impl Dims {
    fn of(x: &Tensor, groups: usize) -> Result<Self> {
        let (b, c) = (x.dim(0)?, x.dim(1)?);
        if b == 0 || c == 0 || groups == 0 || c % groups != 0 || x.elem_count() == 0 {
            candle_core::bail!(
                "group norm kernel: input {:?} with {groups} groups",
                x.dims()
            );
        }
        let s = x.elem_count() / (b * c);
        Ok(Self {
            b,
            c,
            g: groups,
            s,
            n: c / groups * s,
        })
    }
}

/// The mean and 1/√(σ² + ε) of every group `[B·G]` (two passes: the mean, then the centred squares).
fn stats(backend: Backend, x: &Tensor, d: &Dims, eps: f64) -> Result<(Tensor, Tensor)> {
    let rows = d.b * d.g;
    let t = threads(d.n);
    let sum = |shift: &Tensor, square: bool| -> Result<Tensor> {
        let part = launch(
            backend,
            "gn_sums",
            x.dtype(),
            (rows, t),
            &[x, shift],
            &[(rows * t, DType::F32)],
            &[rows, d.n],
            square,
        )?;
        part[0].reshape((rows, t))?.sum(1)? / d.n as f64
    };
    let mean = sum(&Tensor::zeros(rows, DType::F32, x.device())?, false)?;
    let var = sum(&mean, true)?;
    let rstd = (var + eps)?.sqrt()?.recip()?;
    Ok((mean, rstd))
}

/// SiLU(group norm of `x` with scale `gamma` and shift `beta`) in `x`'s type (f32 or bf16; computed in f32),
/// no graph recorded.
pub fn value(
    backend: Backend,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    spec: Spec,
) -> Result<Tensor> {
    let d = Dims::of(x, spec.groups)?;
    let (mean, rstd) = stats(backend, x, &d, spec.eps)?;
    let (gamma32, beta32) = (gamma.to_dtype(DType::F32)?, beta.to_dtype(DType::F32)?);
    let out = launch(
        backend,
        "gn_apply",
        x.dtype(),
        (d.b * d.c, threads(d.s)),
        &[x, &mean, &rstd, &gamma32, &beta32],
        &[(x.elem_count(), x.dtype())],
        &[d.b * d.c, d.c, d.g, d.s],
        spec.silu,
    )?;
    out[0].reshape(x.shape())
}

/// The gradients (x, γ, β) of [`value`] for the output gradient `dy` (in `x`'s type; each gradient in its
/// tensor's type).
pub fn gradients(
    backend: Backend,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    dy: &Tensor,
    spec: Spec,
) -> Result<(Tensor, Tensor, Tensor)> {
    let d = Dims::of(x, spec.groups)?;
    let (mean, rstd) = stats(backend, x, &d, spec.eps)?;
    let rows = d.b * d.c;
    let scalars = [rows, d.c, d.g, d.s];
    let t = threads(d.s);
    if dy.dtype() != x.dtype() {
        candle_core::bail!(
            "group norm kernel: {:?} gradient of a {:?} input",
            dy.dtype(),
            x.dtype()
        );
    }
    let (gamma32, beta32) = (gamma.to_dtype(DType::F32)?, beta.to_dtype(DType::F32)?);
    let parts = launch(
        backend,
        "gn_grad_sums",
        x.dtype(),
        (rows, t),
        &[x, dy, &mean, &rstd, &gamma32, &beta32],
        &[(rows * t, DType::F32), (rows * t, DType::F32)],
        &scalars,
        spec.silu,
    )?;
    // Per image and channel: Σ dL/dy and Σ dL/dy·x̂.
    let s1 = parts[0].reshape((d.b, d.c, t))?.sum(2)?;
    let s2 = parts[1].reshape((d.b, d.c, t))?.sum(2)?;
    let dbeta = s1.sum(0)?;
    let dgamma = s2.sum(0)?;
    // Group means of γ·dL/dy and γ·dL/dy·x̂, [B·G].
    let group_mean = |t: &Tensor| -> Result<Tensor> {
        t.broadcast_mul(&gamma32.unsqueeze(0)?)?
            .reshape((d.b * d.g, d.c / d.g))?
            .sum(1)?
            / d.n as f64
    };
    let (m1, m2) = (group_mean(&s1)?, group_mean(&s2)?);
    let dx = launch(
        backend,
        "gn_grad_input",
        x.dtype(),
        (rows, t),
        &[x, dy, &mean, &rstd, &gamma32, &beta32, &m1, &m2],
        &[(x.elem_count(), x.dtype())],
        &scalars,
        spec.silu,
    )?;
    Ok((
        dx[0].reshape(x.shape())?,
        dgamma.to_dtype(gamma.dtype())?,
        dbeta.to_dtype(beta.dtype())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unet::fastnorm::group_norm;
    use crate::unet::testutil::{probe_gradients, rel};
    use candle_core::Var;
    use vsdm_core::NoiseRng;

    /// The host build of the kernels, through this module's orchestration, against [`group_norm`] (the
    /// analytic backward on candle's ops, tested against candle_nn) and its gradients: value and the three
    /// gradients within 1e-5 (relative max norm), with and without SiLU, one group and several, inputs with a
    /// mean far from 0, positions not a multiple of the block, 3-D and 4-D inputs.
    #[test]
    fn emulated_kernels_match_the_analytic_group_norm() {
        let dev = Device::Cpu;
        let mut rng = NoiseRng::new(11);
        for (shape, groups, silu) in [
            (vec![2usize, 8, 5, 5], 4usize, true),
            (vec![2, 8, 5, 5], 4, false),
            (vec![3, 6, 4, 7], 1, true),
            (vec![1, 12, 3, 3], 12, false),
            (vec![2, 4, 300], 2, true),
            (vec![2, 16, 17, 17], 8, true),
            // 1,600 positions per channel: 256 threads, each adding 6–7 values of a row.
            (vec![2, 4, 40, 40], 2, true),
        ] {
            let c = shape[1];
            let x = Var::from_tensor(
                &((rng.randn(&shape, &dev).unwrap() * 3.0).unwrap() + 1.5).unwrap(),
            )
            .unwrap();
            let gamma = Var::from_tensor(&(rng.randn(&[c], &dev).unwrap() + 1.0).unwrap()).unwrap();
            let beta = Var::from_tensor(&rng.randn(&[c], &dev).unwrap()).unwrap();
            let probe = rng.randn(&shape, &dev).unwrap();
            let y0 = group_norm(&x, &gamma, &beta, groups, 1e-6, silu).unwrap();
            let want = probe_gradients(&y0, &probe, &[&x, &gamma, &beta]);
            let (xt, gt, bt) = (x.as_tensor(), gamma.as_tensor(), beta.as_tensor());
            let case = format!("{shape:?} groups {groups} silu {silu}");
            let spec = Spec {
                groups,
                eps: 1e-6,
                silu,
            };
            let y1 = value(Backend::Emulated, xt, gt, bt, spec).unwrap();
            assert!(rel(&y0, &y1) < 1e-5, "{case}: value {}", rel(&y0, &y1));
            let got = gradients(Backend::Emulated, xt, gt, bt, &probe, spec).unwrap();
            for (name, w, g) in [
                ("x", &want[0], &got.0),
                ("gamma", &want[1], &got.1),
                ("beta", &want[2], &got.2),
            ] {
                assert_eq!(w.dims(), g.dims(), "{case}: {name}");
                assert!(rel(w, g) < 1e-5, "{case}: d{name} {}", rel(w, g));
            }
        }
    }

    /// bf16 activations: the kernels read them exactly and round only the value and dx, so against the f32
    /// analytic group norm on the same (bf16-representable) inputs and output gradient, the value and dx agree
    /// within bf16 rounding (unit roundoff 2⁻⁸) but not to f32's, and dγ, dβ (f32 sums of exactly read values)
    /// within 1e-5.
    #[test]
    fn emulated_bf16_kernels_round_only_their_outputs() {
        let dev = Device::Cpu;
        let mut rng = NoiseRng::new(13);
        for (shape, groups, silu) in [
            (vec![2usize, 8, 6, 6], 4usize, true),
            (vec![2, 4, 40, 40], 2, false),
            (vec![3, 6, 5, 5], 3, true),
        ] {
            let c = shape[1];
            let bf = |t: Tensor| t.to_dtype(DType::BF16).unwrap();
            let x16 = bf(((rng.randn(&shape, &dev).unwrap() * 3.0).unwrap() + 1.5).unwrap());
            let dy16 = bf(rng.randn(&shape, &dev).unwrap());
            let x = Var::from_tensor(&x16.to_dtype(DType::F32).unwrap()).unwrap();
            let gamma = Var::from_tensor(&(rng.randn(&[c], &dev).unwrap() + 1.0).unwrap()).unwrap();
            let beta = Var::from_tensor(&rng.randn(&[c], &dev).unwrap()).unwrap();
            let dy = dy16.to_dtype(DType::F32).unwrap();
            let y0 = group_norm(&x, &gamma, &beta, groups, 1e-6, silu).unwrap();
            let want = probe_gradients(&y0, &dy, &[&x, &gamma, &beta]);
            let spec = Spec {
                groups,
                eps: 1e-6,
                silu,
            };
            let case = format!("{shape:?} groups {groups} silu {silu}");
            let (gt, bt) = (gamma.as_tensor(), beta.as_tensor());
            let y1 = value(Backend::Emulated, &x16, gt, bt, spec).unwrap();
            assert_eq!(y1.dtype(), DType::BF16, "{case}");
            let e = rel(&y0, &y1.to_dtype(DType::F32).unwrap());
            assert!(e < 5e-3 && e > 1e-5, "{case}: value {e}");
            let (dx, dgamma, dbeta) =
                gradients(Backend::Emulated, &x16, gt, bt, &dy16, spec).unwrap();
            assert_eq!(
                [dx.dtype(), dgamma.dtype(), dbeta.dtype()],
                [DType::BF16, DType::F32, DType::F32],
                "{case}"
            );
            let e = rel(&want[0], &dx.to_dtype(DType::F32).unwrap());
            assert!(e < 5e-3 && e > 1e-5, "{case}: dx {e}");
            assert!(
                rel(&want[1], &dgamma) < 1e-5,
                "{case}: dgamma {}",
                rel(&want[1], &dgamma)
            );
            assert!(
                rel(&want[2], &dbeta) < 1e-5,
                "{case}: dbeta {}",
                rel(&want[2], &dbeta)
            );
        }
    }

    /// The check can fail: a wrong ε or the SiLU switched off shows up as a value error above the tolerance.
    #[test]
    fn emulated_kernels_see_eps_and_silu() {
        let dev = Device::Cpu;
        let mut rng = NoiseRng::new(12);
        let x = (rng.randn(&[2, 4, 3, 3], &dev).unwrap() * 1e-3).unwrap();
        let gamma = Tensor::ones(4, DType::F32, &dev).unwrap();
        let beta = Tensor::zeros(4, DType::F32, &dev).unwrap();
        let want = group_norm(&x, &gamma, &beta, 2, 1e-6, true).unwrap();
        let spec = |groups, eps, silu| Spec { groups, eps, silu };
        let run = |s| value(Backend::Emulated, &x, &gamma, &beta, s);
        assert!(rel(&want, &run(spec(2, 1e-6, true)).unwrap()) < 1e-5);
        assert!(rel(&want, &run(spec(2, 1e-2, true)).unwrap()) > 1e-2);
        assert!(rel(&want, &run(spec(2, 1e-6, false)).unwrap()) > 1e-2);
        assert!(run(spec(3, 1e-6, true)).is_err());
    }
}
