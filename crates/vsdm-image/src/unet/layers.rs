//! The U-Net's building blocks, written only with operations that have a backward pass in candle 0.11.1
//! (no fused softmax, layer norm or bilinear upsampling; see `CUDA.md`).
//!
//! Initialisation follows EDM's DDPM++ (`training/networks.py`): Xavier-uniform weights scaled by an
//! `init_weight` factor, zero biases.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::init::Init;
use candle_nn::{Linear, VarBuilder};

/// Xavier-uniform bound √(6 / (fan_in + fan_out)), scaled by `gain` (EDM's `init_weight`).
fn xavier(fan_in: usize, fan_out: usize, gain: f64) -> Init {
    let b = gain * (6.0 / (fan_in + fan_out) as f64).sqrt();
    Init::Uniform { lo: -b, up: b }
}

/// A `k×k` convolution with "same" padding, stride 1 (`weight` `[out, in, k, k]`, `bias` `[out]`), whose
/// backward runs on convolution forward kernels ([`super::fastconv`]).
pub use super::fastconv::{Conv, DropMask};

/// A convolution layer with EDM's initialisation.
pub fn conv(cin: usize, cout: usize, k: usize, gain: f64, vb: VarBuilder) -> Result<Conv> {
    let w = vb.get_with_hints(
        (cout, cin, k, k),
        "weight",
        xavier(cin * k * k, cout * k * k, gain),
    )?;
    let b = vb.get_with_hints(cout, "bias", Init::Const(0.0))?;
    Ok(Conv::new(w, b, k / 2))
}

/// A dense layer (`weight` `[out, in]`, `bias` `[out]`).
pub fn linear(cin: usize, cout: usize, gain: f64, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get_with_hints((cout, cin), "weight", xavier(cin, cout, gain))?;
    let b = vb.get_with_hints(cout, "bias", Init::Const(0.0))?;
    Ok(Linear::new(w, Some(b)))
}

/// Group normalisation computed in the parameters' precision (f32) whatever the activations' precision, as
/// PyTorch's autocast does: a bf16 input is widened, normalised with the f32 scale and shift, and narrowed back
/// (under `--norm kernel` on CUDA the kernels do the widening and narrowing as they read and write, without
/// cast passes). Differentiated analytically ([`super::fastnorm`]) or, for comparisons, by candle_nn's
/// `GroupNorm`.
#[derive(Debug, Clone)]
pub struct Norm {
    reference: candle_nn::GroupNorm,
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl Norm {
    /// The normalisation, followed by SiLU when `silu`, in the parameters' precision (see the type's
    /// documentation).
    fn apply(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        use super::fastnorm::{group_norm_autocast, norm_backward, NormBackward};
        if norm_backward() != NormBackward::Candle {
            return group_norm_autocast(x, &self.weight, &self.bias, self.groups, self.eps, silu);
        }
        let y = self.reference.forward(&x.to_dtype(self.weight.dtype())?)?;
        let y = if silu { candle_nn::ops::silu(&y)? } else { y };
        y.to_dtype(x.dtype())
    }

    /// SiLU(norm(x)) (EDM's `silu(norm(x))`), one op under the analytic backward.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, true)
    }
}

impl Module for Norm {
    /// Both casts are no-ops when the activations are already in the parameters' precision.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, false)
    }
}

/// EDM's group normalisation: min(32, C/4) groups; parameters `weight` (γ, ones) and `bias` (β, zeros).
pub fn group_norm(channels: usize, eps: f64, vb: VarBuilder) -> Result<Norm> {
    let groups = 32.min(channels / 4).max(1);
    let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
    let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
    Ok(Norm {
        reference: candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?,
        weight,
        bias,
        groups,
        eps,
    })
}

/// Nearest-neighbour ×2 upsampling (EDM's `[1, 1]` resample filter through a transposed convolution is exactly
/// this). For f32 on the CPU one kernel writes each output row once, in parallel, and the gradient (each 2×2
/// block's sum) is its own op (`Resample2`); elsewhere a broadcast, whose backward sums correctly (candle's
/// `upsample_nearest2d` backward overwrites rather than accumulates).
pub fn upsample2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return Resample2::Up.apply(x, 1.0);
    }
    x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .reshape((b, c, 2 * h, 2 * w))
}

/// 2×2 average pooling with stride 2 (EDM's `[1, 1]` resample filter downsampling). For f32 on the CPU with
/// even sides one kernel (`Resample2`; its gradient, a quarter of each value spread over its 2×2 block, too),
/// where candle's chain of two sums over middle axes and a scaling ran single-threaded.
pub fn downsample2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if x.device().is_cpu() && x.dtype() == DType::F32 && h % 2 == 0 && w % 2 == 0 {
        return Resample2::Down.apply(x, 0.25);
    }
    x.reshape((b, c, h / 2, 2, w / 2, 2))?
        .sum(5)?
        .sum(3)?
        .affine(0.25, 0.0)
}

/// The CPU f32 resampling kernels of a contiguous `[B, C, H, W]` tensor, scaled by a factor: `Up` repeats each
/// value over a 2×2 block, `Down` sums each 2×2 block (even sides). Each is the other's gradient (up to the
/// factor), so both ops record themselves with the other as their backward.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Resample2 {
    Up,
    Down,
}

/// [`Resample2`] as an op with a factor.
struct Resample2Op(Resample2, f32);

impl Resample2 {
    /// `self`'s kernel times `scale` on x, recorded (when x is tracked) as one op whose backward is the other
    /// kernel with the same factor.
    fn apply(self, x: &Tensor, scale: f32) -> Result<Tensor> {
        let y = x
            .contiguous()?
            .apply_op1_no_bwd(&Resample2Op(self, scale))?;
        if !x.track_op() {
            return Ok(y);
        }
        // The op's other two inputs are placeholders (no gradient).
        vsdm_core::carried::apply(y, x, x, x, Resample2Backward(self, scale))
    }
}

/// The backward of [`Resample2::apply`]: the other kernel, same factor.
struct Resample2Backward(Resample2, f32);

impl vsdm_core::carried::Backward for Resample2Backward {
    const NAME: &'static str = "resample2-backward";

    fn backward(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let other = match self.0 {
            Resample2::Up => Resample2::Down,
            Resample2::Down => Resample2::Up,
        };
        let dx = dy
            .contiguous()?
            .apply_op1_no_bwd(&Resample2Op(other, self.1))?;
        Ok((Some(dx), None, None))
    }
}

impl candle_core::CustomOp1 for Resample2Op {
    fn name(&self) -> &'static str {
        match self.0 {
            Resample2::Up => "upsample2",
            Resample2::Down => "downsample2",
        }
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let x = vsdm_core::fastmath::f32_slice(s, l, self.name())?;
        let scale = self.1;
        let (rows, shape) = match self.0 {
            Resample2::Up => (b * c * 2 * h, (b, c, 2 * h, 2 * w)),
            Resample2::Down => {
                if h % 2 != 0 || w % 2 != 0 {
                    candle_core::bail!("downsample2: sides {h}×{w} are not even");
                }
                (b * c * h / 2, (b, c, h / 2, w / 2))
            }
        };
        let wo = shape.3;
        // SAFETY: every output row is written whole: from input row r / 2 of its plane (up), or from input
        // rows 2r and 2r + 1 (down).
        let y = unsafe {
            vsdm_core::fastmath::par_fill(rows, wo, |r0, out| {
                for (i, row) in out.chunks_mut(wo).enumerate() {
                    let r = r0 + i;
                    match self.0 {
                        Resample2::Up => {
                            for (pair, v) in row.chunks_mut(2).zip(&x[r / 2 * w..][..w]) {
                                pair[0].write(v * scale);
                                pair[1].write(v * scale);
                            }
                        }
                        Resample2::Down => {
                            let (top, bottom) = (&x[2 * r * w..][..w], &x[(2 * r + 1) * w..][..w]);
                            // Each pair along the row first, then the two rows: the order of the chain of
                            // sums it replaces.
                            for ((o, t), u) in
                                row.iter_mut().zip(top.chunks(2)).zip(bottom.chunks(2))
                            {
                                o.write(((t[0] + t[1]) + (u[0] + u[1])) * scale);
                            }
                        }
                    }
                }
            })
        };
        Ok((
            candle_core::CpuStorage::F32(y),
            candle_core::Shape::from(shape),
        ))
    }
}

/// The sinusoidal embedding of EDM's `PositionalEmbedding` (endpoint = true, max_positions = 10⁴), in the order
/// `[sin, cos]` that SongUNet uses after its flip: frequencies (1/10⁴)^(j/(C/2 − 1)), j = 0 … C/2 − 1.
pub fn positional_embedding(t: &Tensor, channels: usize) -> Result<Tensor> {
    let half = channels / 2;
    let denom = (half.max(2) - 1) as f64;
    let freqs: Vec<f32> = (0..half)
        .map(|j| (1e-4f64).powf(j as f64 / denom) as f32)
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t
        .to_dtype(candle_core::DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    Tensor::cat(&[args.sin()?, args.cos()?], 1)
}

/// Softmax over the last axis from exp and sum (candle's fused `softmax_last_dim` has no backward), computed and
/// returned in f32 for a bf16 or f16 input (in f64 for an f64 one); callers cast back where they need to.
pub fn softmax_wide(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::F32 | DType::F64 => candle_nn::ops::softmax(x, D::Minus1),
        _ => candle_nn::ops::softmax(&x.to_dtype(DType::F32)?, D::Minus1),
    }
}

/// A dropout mask with drop probability `p` and the given seed (a fresh random one without); None when `p` is 0.
pub fn dropout_mask(p: f64, seed: Option<u64>) -> Option<DropMask> {
    DropMask::draw(p, seed)
}

/// SiLU, x·σ(x).
pub fn silu(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::silu(x)
}
