//! Group normalisation whose backward is the analytic formula instead of candle's chain of elementary ops.
//!
//! candle_nn's `GroupNorm` is written with differentiable tensor ops (mean, subtract, square, mean, add, sqrt,
//! divide, multiply, add), so training records every intermediate in the graph (several activation-sized tensors
//! per normalisation, kept until the backward pass) and differentiates each op separately. Per group of
//! n = (C/G)·H·W values, with x̂ = (x − μ)·r, r = 1/√(σ² + ε), y = γ_c·x̂ + β_c and g = γ_c·∂L/∂y,
//!
//!   ∂L/∂x = r·(g − mean(g) − x̂·mean(g·x̂)),   ∂L/∂γ_c = Σ ∂L/∂y·x̂,   ∂L/∂β_c = Σ ∂L/∂y
//!
//! (means over the group, sums over the batch and the positions of channel c). [`group_norm`] computes the value
//! without recording a graph and hands it to a custom op on (x, γ, β) whose forward returns that value and whose
//! backward evaluates these formulas, recomputing μ and r from x. The graph then keeps only x, γ, β and the
//! output. On CUDA (and on the CPU in f64) the value and the backward are chains of candle's own kernels; on the
//! CPU in f32 they are direct loops over each (image, group) row ([`super::gncpu`]: 3 and 4 passes over the
//! activation where the chains make about 10 and 20).
//!
//! Most normalisations of the U-Net feed a SiLU; [`group_norm`] with `silu` folds it into the same op, u = SiLU(y), so
//! the graph keeps one activation-sized tensor where candle_nn's chain and a separate SiLU keep the norm's output
//! too. Its backward first turns ∂L/∂u into ∂L/∂y = ∂L/∂u·σ(y)·(1 + y·(1 − σ(y))), y recomputed from x.
//!
//! The choice is per thread ([`set_norm_backward`]); [`NormBackward::Candle`] restores candle_nn's op chain and a
//! separate SiLU, for comparisons (`vsdm-image --norm candle`).

use candle_core::{DType, Result, Tensor};

use super::{gncpu, gnkernel};
use vsdm_core::carried;

/// How group normalisations are differentiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormBackward {
    /// candle_nn's `GroupNorm`: a chain of differentiable elementary ops.
    Candle,
    /// The analytic backward of this module.
    Fused,
    /// The same formulas on this crate's own CUDA kernels ([`super::gnkernel`], `gn.cu`) for CUDA tensors with
    /// f32 or bf16 activations ([`kernel_applies`]); other tensors take [`NormBackward::Fused`]. The default:
    /// on an H100 (2026-12-05) within 3.4e-6 of candle_nn on the CPU in f32 (`check-device`'s norm table), and
    /// with `--conv patch` 1.87× / 2.79× the f32 / bf16 training rate of the candle-chain defaults before it.
    Kernel,
}

backward_choice!(
    NormBackward { "candle" => Candle, "fused" => Fused, "kernel" => Kernel },
    default Kernel,
    set_norm_backward,
    norm_backward,
    "group-norm"
);

/// x̂ `[B, G, n]` and r `[B, G, 1]` of `x` `[B, C, …]` (no graph is recorded: callers pass detached tensors).
fn normalise(x: &Tensor, groups: usize, eps: f64) -> Result<(Tensor, Tensor)> {
    let b = x.dim(0)?;
    let n = x.elem_count() / (b * groups);
    let xr = x.reshape((b, groups, n))?;
    let xc = xr.broadcast_sub(&xr.mean_keepdim(2)?)?;
    let r = (xc.sqr()?.mean_keepdim(2)? + eps)?.sqrt()?.recip()?;
    Ok((xc.broadcast_mul(&r)?, r))
}

/// `[C]` → `[1, C, 1, …]` for broadcasting against `x`.
fn per_channel(v: &Tensor, x: &Tensor) -> Result<Tensor> {
    let mut dims = vec![1; x.rank()];
    dims[1] = v.elem_count();
    v.reshape(dims)
}

/// y = γ_c·x̂ + β_c from x̂ in `x`'s shape, γ already broadcastable ([`per_channel`]) and β `[C]`.
fn scale_shift(xhat: &Tensor, gamma: &Tensor, beta: &Tensor) -> Result<Tensor> {
    xhat.broadcast_mul(gamma)?
        .broadcast_add(&per_channel(beta, xhat)?)
}

/// The backward of [`group_norm`]'s op on (x, γ, β).
struct GroupNormBackward {
    /// Groups, ε, and whether the op's output is SiLU of the normalisation.
    spec: gnkernel::Spec,
    /// Through [`super::gnkernel`] on CUDA (chosen with the forward value).
    kernel: bool,
}

impl carried::Backward for GroupNormBackward {
    const NAME: &'static str = "group-norm-analytic-backward";

    fn backward(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gnkernel::Spec { groups, eps, silu } = self.spec;
        if self.kernel {
            let (dx, dgamma, dbeta) = gnkernel::gradients(
                gnkernel::Backend::Cuda,
                &x.detach(),
                &gamma.detach(),
                &beta.detach(),
                dy,
                self.spec,
            )?;
            return Ok((Some(dx), Some(dgamma), Some(dbeta)));
        }
        if gncpu::applies(x, gamma, beta) {
            let (dx, dgamma, dbeta) =
                gncpu::gradients(&x.detach(), &gamma.detach(), &beta.detach(), dy, self.spec)?;
            return Ok((Some(dx), Some(dgamma), Some(dbeta)));
        }
        let (b, c) = (x.dim(0)?, x.dim(1)?);
        let (xhat, r) = normalise(&x.detach(), groups, eps)?;
        let n = xhat.dim(2)?;
        let xhat_x = xhat.reshape(x.shape())?;
        let gamma_x = per_channel(&gamma.detach(), x)?;
        let dy = &if silu {
            let y = scale_shift(&xhat_x, &gamma_x, &beta.detach())?;
            let s = candle_nn::ops::sigmoid(&y)?;
            // σ(y)·(1 + y·(1 − σ(y))) = σ(y) + y·σ(y) − y·σ(y)².
            let ys = (&y * &s)?;
            (dy * ((&s + &ys)? - (&ys * &s)?)?)?
        } else {
            dy.clone()
        };
        let g = dy.broadcast_mul(&gamma_x)?.reshape((b, groups, n))?;
        let m1 = g.mean_keepdim(2)?;
        let m2 = (&g * &xhat)?.mean_keepdim(2)?;
        let dx = g
            .broadcast_sub(&m1)?
            .sub(&xhat.broadcast_mul(&m2)?)?
            .broadcast_mul(&r)?
            .reshape(x.shape())?;
        let per_c = |t: &Tensor| -> Result<Tensor> { t.reshape((b, c, ()))?.sum(2)?.sum(0) };
        let dgamma = per_c(&(dy * &xhat_x)?)?;
        let dbeta = per_c(dy)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// Whether [`group_norm`] runs on [`super::gnkernel`]'s CUDA kernels for these tensors: under
/// [`NormBackward::Kernel`], CUDA tensors with f32 scale and shift and f32 or bf16 activations (bf16 ones are
/// then normalised without casts: the caller may pass them as they are).
pub fn kernel_applies(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> bool {
    norm_backward() == NormBackward::Kernel
        && x.device().is_cuda()
        && matches!(x.dtype(), DType::F32 | DType::BF16)
        && [gamma.dtype(), beta.dtype()] == [DType::F32; 2]
}

/// [`group_norm`] in the scale's and shift's precision whatever `x`'s, as PyTorch's autocast does: `x` is widened,
/// normalised and the result narrowed back to `x`'s type, except where [`kernel_applies`] (the CUDA kernels read
/// and write bf16 activations themselves, without cast passes). The U-Net's norm layer and `check-device` both
/// normalise through this.
pub fn group_norm_autocast(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    if kernel_applies(x, gamma, beta) {
        return group_norm(x, gamma, beta, groups, eps, silu);
    }
    group_norm(&x.to_dtype(gamma.dtype())?, gamma, beta, groups, eps, silu)?.to_dtype(x.dtype())
}

/// Group normalisation of `x` `[B, C, …]` over `groups` groups of channels, scale `gamma` `[C]`, shift `beta`
/// `[C]`, followed by SiLU when `silu` (in the same op, see the module documentation): the same value as
/// candle_nn's `GroupNorm` (and candle's SiLU), differentiated analytically whenever one of the inputs is
/// tracked. (The per-thread switch [`norm_backward`] is read by the U-Net's norm layer, which calls candle_nn's
/// `GroupNorm` and a separate SiLU instead for [`NormBackward::Candle`]; here it picks [`super::gnkernel`]'s CUDA
/// kernels where [`kernel_applies`], for the value and, fixed at this call, the backward; the output is in
/// `x`'s type.)
pub fn group_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let c = x.dim(1)?;
    if x.rank() < 3 || c % groups != 0 || gamma.dims() != [c] || beta.dims() != [c] {
        candle_core::bail!(
            "group norm: input {:?}, scale {:?}, shift {:?}, {groups} groups",
            x.dims(),
            gamma.dims(),
            beta.dims()
        );
    }
    let kernel = kernel_applies(x, gamma, beta);
    let spec = gnkernel::Spec { groups, eps, silu };
    let value = |x: &Tensor, gamma: &Tensor, beta: &Tensor| -> Result<Tensor> {
        if kernel {
            return gnkernel::value(gnkernel::Backend::Cuda, x, gamma, beta, spec);
        }
        if gncpu::applies(x, gamma, beta) {
            return gncpu::value(x, gamma, beta, spec);
        }
        let (xhat, _) = normalise(x, groups, eps)?;
        let y = scale_shift(&xhat.reshape(x.shape())?, &per_channel(gamma, x)?, beta)?;
        if silu {
            candle_nn::ops::silu(&y)
        } else {
            Ok(y)
        }
    };
    if !(x.track_op() || gamma.track_op() || beta.track_op()) {
        return value(x, gamma, beta);
    }
    let v = value(&x.detach(), &gamma.detach(), &beta.detach())?;
    carried::apply(v, x, gamma, beta, GroupNormBackward { spec, kernel })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Module, Var};
    use candle_nn::VarBuilder;
    use vsdm_core::NoiseRng;

    use crate::unet::testutil::rel;

    /// The value and the three gradients equal candle_nn's `GroupNorm` (followed by candle's SiLU for the fused
    /// op) and their op-by-op backward (≤ 1e-5 relative), on inputs with non-zero means and unequal scales,
    /// one group and several, 3-D and 4-D inputs: in f32 (the CPU loops of [`super::gncpu`]) and in f64 (the
    /// chain of candle ops that CUDA runs under `--norm fused`). Inputs of spread 3, and of spread 2e-3, whose
    /// groups' variances (≈ 4e-6) are of the order of ε = 1e-6, so that ε's place in 1/√(var + ε) shows.
    #[test]
    fn matches_candle_nn_group_norm_and_its_gradients() {
        let dev = Device::Cpu;
        let mut rng = NoiseRng::new(5);
        for (shape, groups, silu, dtype, spread) in [
            (vec![2usize, 8, 5, 5], 4usize, false, DType::F32, 3.0),
            (vec![3, 6, 4, 7], 1, false, DType::F32, 3.0),
            (vec![1, 12, 3, 3], 12, false, DType::F32, 3.0),
            (vec![2, 4, 9], 2, false, DType::F32, 3.0),
            (vec![2, 8, 5, 5], 4, true, DType::F32, 3.0),
            (vec![3, 6, 4, 7], 1, true, DType::F32, 3.0),
            (vec![2, 4, 9], 2, true, DType::F32, 3.0),
            (vec![2, 8, 5, 5], 4, false, DType::F32, 2e-3),
            (vec![2, 8, 5, 5], 4, false, DType::F64, 3.0),
            (vec![3, 6, 4, 7], 1, true, DType::F64, 3.0),
            (vec![2, 4, 9], 2, true, DType::F64, 3.0),
            (vec![2, 8, 5, 5], 4, true, DType::F64, 2e-3),
        ] {
            let c = shape[1];
            let randn = |rng: &mut NoiseRng, dims: &[usize]| {
                rng.randn(dims, &dev).unwrap().to_dtype(dtype).unwrap()
            };
            let x = (randn(&mut rng, &shape) * spread).unwrap();
            let x = Var::from_tensor(&(x + 0.5 * spread).unwrap()).unwrap();
            let gamma = Var::from_tensor(&(randn(&mut rng, &[c]) + 1.0).unwrap()).unwrap();
            let beta = Var::from_tensor(&randn(&mut rng, &[c])).unwrap();
            let probe = randn(&mut rng, &shape);
            let vm = candle_nn::VarMap::new();
            let reference =
                candle_nn::group_norm(groups, c, 1e-6, VarBuilder::from_varmap(&vm, dtype, &dev))
                    .unwrap();
            // Point candle_nn's parameters at the same values through its var map.
            for (name, v) in vm.data().lock().unwrap().iter() {
                let src = if name.ends_with("weight") {
                    &gamma
                } else {
                    &beta
                };
                v.set(src.as_tensor()).unwrap();
            }
            let ref_vars: Vec<Var> = {
                let d = vm.data().lock().unwrap();
                vec![d["weight"].clone(), d["bias"].clone()]
            };
            let mut y0 = reference.forward(x.as_tensor()).unwrap();
            if silu {
                y0 = candle_nn::ops::silu(&y0).unwrap();
            }
            let g0 = (&y0 * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let y1 = group_norm(
                x.as_tensor(),
                gamma.as_tensor(),
                beta.as_tensor(),
                groups,
                1e-6,
                silu,
            )
            .unwrap();
            let g1 = (&y1 * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let case =
                format!("{shape:?} / {groups} groups / SiLU {silu} / {dtype:?} / spread {spread}");
            assert!(rel(&y0, &y1) < 1e-6, "{case}: value {}", rel(&y0, &y1));
            for (what, a, b) in [
                ("x", g0.get(x.as_tensor()), g1.get(x.as_tensor())),
                (
                    "γ",
                    g0.get(ref_vars[0].as_tensor()),
                    g1.get(gamma.as_tensor()),
                ),
                (
                    "β",
                    g0.get(ref_vars[1].as_tensor()),
                    g1.get(beta.as_tensor()),
                ),
            ] {
                let (a, b) = (a.unwrap(), b.unwrap());
                assert!(rel(a, b) < 1e-5, "{case}: gradient of {what} {}", rel(a, b));
            }
        }
    }

    /// Without anything to differentiate no op is recorded, and bad shapes are errors.
    #[test]
    fn untracked_inputs_and_bad_shapes() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 24., &dev)
            .unwrap()
            .reshape((1, 4, 6))
            .unwrap();
        let (g, b) = (
            Tensor::ones(4, DType::F32, &dev).unwrap(),
            Tensor::zeros(4, DType::F32, &dev).unwrap(),
        );
        let y = group_norm(&x, &g, &b, 2, 1e-5, false).unwrap();
        assert!(!y.track_op());
        // Each group of 12 consecutive values is standardised.
        let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mean: f32 = v[..12].iter().sum::<f32>() / 12.0;
        let var: f32 = v[..12].iter().map(|a| (a - mean).powi(2)).sum::<f32>() / 12.0;
        assert!(
            mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3,
            "{mean} {var}"
        );
        assert!(group_norm(&x, &g, &b, 3, 1e-5, true).is_err());
        assert!(group_norm(&x, &g.narrow(0, 0, 3).unwrap(), &b, 2, 1e-5, false).is_err());
        // The shift alone of the wrong length; an input without positions ([B, C]).
        let e = group_norm(&x, &g, &b.narrow(0, 0, 3).unwrap(), 2, 1e-5, false).unwrap_err();
        assert!(e.to_string().contains("scale [4], shift [3]"), "{e}");
        let flat = x.reshape((4, 6)).unwrap();
        let g6 = Tensor::ones(6, DType::F32, &dev).unwrap();
        let e = group_norm(&flat, &g6, &g6, 2, 1e-5, false).unwrap_err();
        assert!(e.to_string().contains("input [4, 6]"), "{e}");
    }
}
