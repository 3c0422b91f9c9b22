//! EDM's single-head self-attention together with its output projection and residual, recorded as one op.
//!
//! With q, k, v `[B, C, N]` taken from the qkv convolution (EDM's layout `[B, C, 3, N]`), S = qᵀk/√C, P the
//! row softmax of S, a = v Pᵀ, the block's attention tail is y = (x + proj(a))·s (s = √½). candle's graph of
//! that chain keeps about ten tensors of N² or C·N elements (the transposed copies, the scores, the softmax's
//! three intermediates, a, the projection's output and the sum). Here the value is computed on detached inputs
//! and handed to a custom op on (qkv, [W | b] of the projection, x) ([`vsdm_core::carried`]), whose backward
//! recomputes P and a from q and k (one extra N×N product) and applies, with dy' = s·dy,
//!
//!   d[W | b] from a and dy' (the 1×1 convolution's gradients),  da = Wᵀ dy',  dx = dy',
//!   dv = da P,  dP = daᵀ v,  dS = P ⊙ (dP − rowsum(dP ⊙ P)),  dq = k dSᵀ/√C,  dk = q dS/√C,
//!
//! so the graph keeps only qkv and the output. The softmax and its gradient run in f32 (f64 for f64
//! activations) whatever the activations' precision (`layers::softmax_wide`). Under [`ConvBackward::Candle`]
//! (`--conv candle`) the chain is candle's own, the reference.

use candle_core::{Result, Tensor};

use super::fastconv::{self, conv_backward, ConvBackward};
use super::layers::softmax_wide;
use vsdm_core::carried;
use vsdm_core::fastmath::{matmul as mm, scaled};

/// q, k, v `[B, C, N]` (contiguous) out of qkv `[B, C, 3, N]`.
fn split(qkv: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let part = |i| qkv.narrow(2, i, 1)?.squeeze(2)?.contiguous();
    Ok((part(0)?, part(1)?, part(2)?))
}

/// The attention's parts, computed with candle's ops from qkv (differentiable when qkv is tracked: the
/// reference's graph; plain values for the fused op's value and its backward's recomputation).
struct Attended {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// P = softmax(qᵀk/√C) `[B, N_q, N_k]` in the softmax's precision (`layers::softmax_wide`).
    p: Tensor,
    /// P in the activations' precision.
    p_act: Tensor,
    /// a = v Pᵀ `[B, C, N_q]`.
    a: Tensor,
}

/// Whether [`attend`] and the backward run their products as this crate's CPU products on strided views
/// (`vsdm_core::fastmath::matmul`, f32 on the CPU, nothing recorded): q, k and v read in place out of qkv and
/// the transposes read in place, where candle's `matmul` gets contiguous copies of each (≈ 3.5% of the tiny
/// network's CPU step went to those copies).
fn views_on_cpu(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && !t.track_op()
}

/// `x` transposed in its last two axes: a view where [`views_on_cpu`] holds (the CPU products read it in
/// place), else a contiguous copy (for candle's `matmul`).
fn transposed(x: &Tensor, views: bool) -> Result<Tensor> {
    let t = x.transpose(1, 2)?;
    if views {
        Ok(t)
    } else {
        t.contiguous()
    }
}

/// Softmax of the given multiple of each row along the last axis of a contiguous CPU f32 tensor, in place
/// ([`vsdm_core::fastmath::softmax_rows`], the time-series attention's kernel): the CPU attention's
/// probabilities, where candle's softmax makes four passes and calls the C library's scalar `expf`.
struct SoftmaxRows(f32);

impl candle_core::InplaceOp1 for SoftmaxRows {
    fn name(&self) -> &'static str {
        "softmax-rows"
    }

    fn cpu_fwd(&self, s: &mut candle_core::CpuStorage, l: &candle_core::Layout) -> Result<()> {
        let n = l.dims().last().copied().unwrap_or(0);
        let (candle_core::CpuStorage::F32(v), Some((start, end))) = (s, l.contiguous_offsets())
        else {
            candle_core::bail!("softmax-rows: a contiguous f32 tensor only");
        };
        if let Some(rows) = (end - start).checked_div(n) {
            let avx2 = vsdm_core::fastmath::avx2();
            vsdm_core::fastmath::par_rows_mut(
                (&mut v[start..end], n),
                (&mut [] as &mut [u8], 0),
                rows,
                |_, r, _| vsdm_core::fastmath::softmax_rows(avx2, r, n, self.0),
            );
        }
        Ok(())
    }
}

fn attend(qkv: &Tensor) -> Result<Attended> {
    if views_on_cpu(qkv) {
        let part = |i| qkv.narrow(2, i, 1)?.squeeze(2);
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let c = q.dim(1)?;
        // qᵀk [B, N_q, N_k], then softmax(qᵀk/√C) in place on the new scores (one pass per row, vectorised
        // exp, the 1/√C inside it: scaling k first was a single-threaded pass over a strided view).
        let scores = mm(&q.transpose(1, 2)?, &k)?;
        scores.inplace_op1(&SoftmaxRows(1.0 / (c as f32).sqrt()))?;
        let p = scores;
        let p_act = p.clone();
        let a = mm(&v, &p_act.transpose(1, 2)?)?; // [B, C, N_q]
        return Ok(Attended {
            q,
            k,
            v,
            p,
            p_act,
            a,
        });
    }
    let (q, k, v) = split(qkv)?;
    let c = q.dim(1)?;
    let scores = q
        .transpose(1, 2)?
        .contiguous()?
        .matmul(&(&k / (c as f64).sqrt())?.contiguous()?)?; // [B, N_q, N_k]
    let p = softmax_wide(&scores)?;
    let p_act = p.to_dtype(q.dtype())?;
    let a = v.matmul(&p_act.transpose(1, 2)?.contiguous()?)?; // [B, C, N_q]
    Ok(Attended {
        q,
        k,
        v,
        p,
        p_act,
        a,
    })
}

/// The backward of [`attention_residual`]'s op on (qkv, [W | b], x).
struct AttentionBackward {
    w_dims: (usize, usize, usize, usize),
    scale: f64,
    cudnn: bool,
}

impl carried::Backward for AttentionBackward {
    const NAME: &'static str = "attention-residual-backward";

    fn backward(
        &self,
        qkv: &Tensor,
        wb: &Tensor,
        x: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dt = qkv.dtype();
        let (b, c, _, n) = qkv.dims4()?;
        let dy = scaled(dy, self.scale)?;
        // Recomputed from qkv's value (nothing of it recorded).
        let qkv = qkv.detach();
        let views = views_on_cpu(&qkv);
        let Attended {
            q,
            k,
            v,
            p,
            p_act,
            a,
        } = attend(&qkv)?;
        let root = (c as f64).sqrt();
        // The projection (1×1 convolution) and its bias.
        let w = fastconv::unpack_weight(wb, self.w_dims)?;
        let (da, dw) = fastconv::gradients(&a.reshape(x.shape())?, &w, &dy, 0, self.cudnn)?;
        let dwb = fastconv::packed_gradient(&dw, &dy)?;
        let da = da.reshape((b, c, n))?;
        // The attention.
        let dv = mm(&da, &p_act)?;
        let dp = mm(&transposed(&da, views)?, &v)?.to_dtype(p.dtype())?;
        let row = (&dp * &p)?.sum_keepdim(2)?;
        let ds = (p * dp.broadcast_sub(&row)?)?.to_dtype(dt)?;
        let dq = scaled(&mm(&k, &transposed(&ds, views)?)?, 1.0 / root)?;
        let dk = scaled(&mm(&q, &ds)?, 1.0 / root)?;
        let dqkv = Tensor::stack(&[dq, dk, dv], 2)?;
        Ok((Some(dqkv), Some(dwb), Some(dy)))
    }
}

/// (x + proj(v softmax(qᵀk/√C)ᵀ))·`scale`: qkv `[B, C, 3, N]` (EDM's layout of the qkv convolution's output),
/// the projection's weight `[C, C, 1, 1]` and bias `[C]`, x `[B, C, H, W]` with H·W = N. One op under this
/// crate's backwards (see the module documentation), candle's chain under [`ConvBackward::Candle`].
pub fn attention_residual(
    qkv: &Tensor,
    w: &Tensor,
    b: &Tensor,
    x: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let (bs, c, three, n) = qkv.dims4()?;
    let (xb, xc, h, wd) = x.dims4()?;
    if three != 3 || (xb, xc, h * wd) != (bs, c, n) {
        candle_core::bail!(
            "attention: qkv {:?} and residual {:?} do not match ([B, C, 3, H·W] and [B, C, H, W])",
            qkv.dims(),
            x.dims()
        );
    }
    let mode = conv_backward();
    // candle's ops on the inputs given: the reference's graph, or the fused op's value on detached inputs.
    let chain = |qkv: &Tensor, w: &Tensor, b: &Tensor, x: &Tensor| -> Result<Tensor> {
        let a = attend(qkv)?.a.reshape(x.shape())?;
        fastconv::residual(&a, w, b, x, None, scale, 0)
    };
    let tracked = qkv.track_op() || w.track_op() || b.track_op() || x.track_op();
    if mode == ConvBackward::Candle || !tracked {
        return chain(qkv, w, b, x);
    }
    let value = chain(&qkv.detach(), &w.detach(), &b.detach(), &x.detach())?;
    let wb = fastconv::pack(w, b)?;
    carried::apply(
        value,
        qkv,
        &wb,
        x,
        AttentionBackward {
            w_dims: w.dims4()?,
            scale,
            cudnn: mode == ConvBackward::Cudnn && x.device().is_cuda(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use vsdm_core::NoiseRng;

    use crate::unet::fastconv::set_conv_backward;
    use crate::unet::testutil::{probe_gradients, rel};

    /// The op equals candle's chain (transposed copies, scaled scores, composed softmax, products, 1×1
    /// projection, residual sum, rescaling) in value and in the gradients of qkv, W, b and x (f32, ≤ 1e-5
    /// relative), with scores large enough for a peaked softmax; detached inputs record nothing.
    #[test]
    fn matches_candles_chain() {
        let dev = Device::Cpu;
        let mut rng = NoiseRng::new(11);
        for &(b, c, h, spread) in &[(2usize, 8usize, 4usize, 1.0f64), (1, 4, 6, 4.0)] {
            let n = h * h;
            let qkv =
                Var::from_tensor(&(rng.randn(&[b, c, 3, n], &dev).unwrap() * spread).unwrap())
                    .unwrap();
            let w = Var::from_tensor(&rng.randn(&[c, c, 1, 1], &dev).unwrap()).unwrap();
            let bias = Var::from_tensor(&rng.randn(&[c], &dev).unwrap()).unwrap();
            let x = Var::from_tensor(&rng.randn(&[b, c, h, h], &dev).unwrap()).unwrap();
            let probe = rng.randn(&[b, c, h, h], &dev).unwrap();
            let s = std::f64::consts::FRAC_1_SQRT_2;
            let run = |mode| {
                set_conv_backward(mode);
                let y = attention_residual(
                    qkv.as_tensor(),
                    w.as_tensor(),
                    bias.as_tensor(),
                    x.as_tensor(),
                    s,
                )
                .unwrap();
                let grads = probe_gradients(&y, &probe, &[&qkv, &w, &bias, &x]);
                (y, grads)
            };
            let (y0, g0) = run(ConvBackward::Candle);
            let (y1, g1) = run(ConvBackward::Gemm);
            let case = format!("b{b} c{c} h{h} spread{spread}");
            assert!(rel(&y0, &y1) < 1e-6, "{case}: value {}", rel(&y0, &y1));
            for (name, (a, c)) in ["qkv", "W", "b", "x"].iter().zip(g0.iter().zip(&g1)) {
                assert!(rel(a, c) < 1e-5, "{case}: gradient of {name} {}", rel(a, c));
            }
            let y2 = attention_residual(
                &qkv.as_tensor().detach(),
                &w.as_tensor().detach(),
                &bias.as_tensor().detach(),
                &x.as_tensor().detach(),
                s,
            )
            .unwrap();
            assert!(rel(&y0, &y2) < 1e-6 && !y2.track_op(), "{case}: detached");
        }
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let dev = Device::Cpu;
        let z = |d: &[usize]| Tensor::zeros(d, DType::F32, &dev).unwrap();
        let e = attention_residual(
            &z(&[1, 4, 3, 9]),
            &z(&[4, 4, 1, 1]),
            &z(&[4]),
            &z(&[1, 4, 4, 4]),
            1.0,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("[1, 4, 3, 9]") && e.contains("[1, 4, 4, 4]"),
            "{e}"
        );
    }

    /// The in-place softmax on a view of rows inside a larger tensor (its storage starts past the first
    /// row): the view's rows become softmax(s·x) as candle computes it, the rows around it keep their values;
    /// another type is an error.
    #[test]
    fn in_place_softmax_on_a_view_of_rows() {
        let dev = Device::Cpu;
        let t = NoiseRng::new(3).randn(&[5, 9], &dev).unwrap();
        let before = t.copy().unwrap();
        let view = t.narrow(0, 1, 3).unwrap();
        view.inplace_op1(&SoftmaxRows(0.5)).unwrap();
        let want =
            candle_nn::ops::softmax_last_dim(&(before.narrow(0, 1, 3).unwrap() * 0.5).unwrap())
                .unwrap();
        let d = vsdm_core::compare::max_abs_diff(&t.narrow(0, 1, 3).unwrap(), &want).unwrap();
        assert!(d < 1e-6, "{d}");
        for r in [0, 4] {
            let same =
                vsdm_core::compare::max_abs_diff(&t.get(r).unwrap(), &before.get(r).unwrap())
                    .unwrap();
            assert_eq!(same, 0.0, "row {r}");
        }
        let f64s = Tensor::zeros((2, 3), DType::F64, &dev).unwrap();
        assert!(f64s.inplace_op1(&SoftmaxRows(1.0)).is_err());
    }
}
