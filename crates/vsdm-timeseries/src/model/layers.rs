//! Transformer pieces with a backward pass in candle 0.11 (its fused `softmax_last_dim`, `layer_norm` and
//! `rms_norm` have none): written from primitive tensor operations, or, for the attention, one op whose
//! backward is its own ([`attention`]).

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};

/// A linear layer applied to the last dimension of a tensor of any rank as ONE matrix product: the leading
/// dimensions are flattened first. (`candle_nn::Linear` on a rank-3 or rank-4 input broadcasts its weight over
/// the leading dimensions and runs one small matrix product per leading index, forward and backward. Measured
/// with the `net_speed` example, the change was within the machine's noise at exchange-rate sizes and ~20% at
/// electricity's, also within noise: it is kept as the simpler computation, not for a proven speed-up.)
/// Same parameters and names as `candle_nn::linear` (`weight`, `bias`), so weight files are unchanged.
pub struct Dense(Linear);

/// A [`Dense`] layer `inp → out` with `candle_nn::linear`'s initialisation.
pub fn dense(inp: usize, out: usize, vb: VarBuilder) -> Result<Dense> {
    Ok(Dense(candle_nn::linear(inp, out, vb)?))
}

impl Module for Dense {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() <= 2 {
            return self.0.forward(x);
        }
        let last = dims[dims.len() - 1];
        let rows = x.elem_count() / last.max(1);
        let y = self.0.forward(&x.reshape((rows, last))?)?;
        let mut out = dims.to_vec();
        let n = out.len();
        out[n - 1] = y.dim(1)?;
        y.reshape(out)
    }
}

/// Softmax over the last dimension as exp / sum, shifted by the (detached) row maximum for range safety.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// σ(x) = 1 / (1 + e^(−x)): candle's fused op, which has a backward pass (σ' = σ(1 − σ)); one pass over x
/// (written as ½ (1 + tanh(x/2)) before, four passes and glibc's slower `tanhf`).
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::sigmoid(x)
}

/// Layer normalisation over the last dimension (Ba et al. 2016) with learned gain and bias.
pub struct LayerNorm {
    gain: Tensor,
    bias: Tensor,
    eps: f64,
    /// Use candle's fused kernel (no backward pass): for inference only.
    fused: bool,
}

impl LayerNorm {
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            gain: vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", Init::Const(0.0))?,
            eps: 1e-5,
            fused: false,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.fused {
            return candle_nn::ops::layer_norm(x, &self.gain, &self.bias, self.eps as f32);
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        xn.broadcast_mul(&self.gain)?.broadcast_add(&self.bias)
    }
}

/// softmax(q kᵀ/√d) v for q, k, v `[…, S, d]` (any leading axes), candle's op chain with [`softmax_last`]: the
/// reference of [`attention`], and what it computed before.
pub fn attention_chain(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let d = q.dim(D::Minus1)?;
    let att = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
    softmax_last(&att)?.matmul(v)
}

/// The backward of [`attention`]'s op on (q, k, v), from the probabilities P its forward kept.
struct AttentionBackward {
    p: Tensor,
    scale: f64,
}

impl vsdm_core::carried::Backward for AttentionBackward {
    const NAME: &'static str = "attention-backward";

    fn backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let p = &self.p;
        // The gradient arriving through a transpose can be a strided view.
        let dy = &dy.contiguous()?;
        let dv = p.t()?.matmul(dy)?;
        let dp = dy.matmul(&v.t()?)?;
        let row = (&dp * p)?.sum_keepdim(D::Minus1)?;
        let ds = (dp.broadcast_sub(&row)? * p)?;
        let dq = (ds.matmul(k)? * self.scale)?;
        let dk = (ds.t()?.matmul(q)? * self.scale)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// softmax(q kᵀ/√d) v for q, k, v `[…, S, d]` (any leading axes), recorded as one op.
///
/// At electricity's 370 series the series attention's scores are the largest tensors of a training step
/// (`[B·tokens, heads, 370, 370]`, 70 MB at batch 4), and [`attention_chain`] makes five of them in the forward
/// pass (the scores, their scaling, the shifted scores, the exponentials, the probabilities), all kept for the
/// backward pass, and about as many again there. Here the value is computed on detached inputs (the scale
/// applied to q, candle's fused `softmax_last_dim`), only the probabilities P are kept, and the backward is
/// the analytic one, with dy the output's gradient:
///
///   dv = Pᵀ dy,  dP = dy vᵀ,  dS = P ⊙ (dP − rowsum(dP ⊙ P)),  dq = dS k/√d,  dk = dSᵀ q/√d.
///
/// Without a tracked input (sampling) it records nothing and keeps nothing.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
    let probabilities = |q: &Tensor, k: &Tensor| -> Result<Tensor> {
        candle_nn::ops::softmax_last_dim(&(q * scale)?.matmul(&k.t()?)?)
    };
    if !(q.track_op() || k.track_op() || v.track_op()) {
        return probabilities(q, k)?.matmul(v);
    }
    let (qd, kd, vd) = (q.detach(), k.detach(), v.detach());
    let p = probabilities(&qd, &kd)?;
    let y = p.matmul(&vd)?;
    vsdm_core::carried::apply(y, q, k, v, AttentionBackward { p, scale })
}

/// Multi-head self-attention over the middle axis of `[N, S, C]`.
pub struct SelfAttention {
    qkv: Dense,
    out: Dense,
    heads: usize,
}

impl SelfAttention {
    pub fn new(dim: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        if heads == 0 || dim % heads != 0 {
            candle_core::bail!("attention width {dim} is not divisible by {heads} heads");
        }
        Ok(Self {
            qkv: dense(dim, 3 * dim, vb.pp("qkv"))?,
            out: dense(dim, dim, vb.pp("out"))?,
            heads,
        })
    }
}

impl Module for SelfAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("attention").entered();
        let (n, s, c) = x.dims3()?;
        let dh = c / self.heads;
        // [N, S, 3, h, dh] → [3, N, h, S, dh]
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((n, s, 3, self.heads, dh))?
            .permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let y = attention(&q, &k, &v)?; // [N, h, S, dh]
        let y = y.transpose(1, 2)?.reshape((n, s, c))?;
        self.out.forward(&y)
    }
}

/// A pre-norm transformer encoder layer: x + MHA(LN x), then + FFN(LN ·) with a SiLU feed-forward.
pub struct EncoderLayer {
    ln1: LayerNorm,
    attn: SelfAttention,
    ln2: LayerNorm,
    ff1: Dense,
    ff2: Dense,
}

impl EncoderLayer {
    pub fn new(dim: usize, heads: usize, ff: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            ln1: LayerNorm::new(dim, vb.pp("ln1"))?,
            attn: SelfAttention::new(dim, heads, vb.pp("attn"))?,
            ln2: LayerNorm::new(dim, vb.pp("ln2"))?,
            ff1: dense(dim, ff, vb.pp("ff1"))?,
            ff2: dense(ff, dim, vb.pp("ff2"))?,
        })
    }
}

impl EncoderLayer {
    /// Switches to candle's fused layer norm, which is faster but has no backward pass: for sampling only
    /// ([`attention`] is fused in both modes).
    pub fn set_inference(&mut self, on: bool) {
        self.ln1.fused = on;
        self.ln2.fused = on;
    }
}

impl Module for EncoderLayer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = (x + self.attn.forward(&self.ln1.forward(x)?)?)?;
        let f = self
            .ff2
            .forward(&self.ff1.forward(&self.ln2.forward(&h)?)?.silu()?)?;
        h + f
    }
}

/// Sinusoidal features of a scalar per row: `[N] → [N, dim]` (sin of the first half, cos of the second), with
/// frequencies 10000^(−k/(dim/2)) as in the transformer's positional encoding.
pub fn sinusoidal(x: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|k| (-(10_000f32.ln()) * k as f32 / half as f32).exp())
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), x.device())?;
    let args = x.unsqueeze(1)?.broadcast_mul(&freqs)?;
    Tensor::cat(&[args.sin()?, args.cos()?], 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;
    use vsdm_core::NoiseRng;

    /// ‖a − b‖∞ / ‖b‖∞ (‖a − b‖∞ where b = 0: one key makes the softmax constant, the gradients of q and k
    /// zero).
    fn rel(a: &Tensor, b: &Tensor) -> f64 {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        let n = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        let f = |t: Tensor| t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
        let n = f(n);
        f(d) / if n > 0.0 { n } else { 1.0 }
    }

    /// The fused op equals candle's chain in value and in the gradients of q, k and v (f32 ≤ 1e-5, f64 ≤ 1e-12
    /// relative), for 3-D and 4-D inputs, one and several keys, and scores large enough that the softmax
    /// saturates; the gradients are of ⟨y, probe⟩ for a random probe, with the output reached through a
    /// transpose (a strided gradient) as in [`SelfAttention`]; without tracked inputs it records nothing.
    #[test]
    fn attention_matches_candles_chain_and_its_gradients() {
        let dev = Device::Cpu;
        let mut rng = NoiseRng::new(3);
        for (shape, gain) in [
            (vec![2usize, 3, 5, 4], 1.0f64),
            (vec![3, 7, 6], 1.0),
            (vec![2, 2, 1, 3], 1.0),
            (vec![1, 2, 9, 4], 8.0),
        ] {
            for (dt, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
                let draw = |rng: &mut NoiseRng| {
                    let t = (rng.randn(&shape, &dev).unwrap() * gain).unwrap();
                    Var::from_tensor(&t.to_dtype(dt).unwrap()).unwrap()
                };
                let (q, k, v) = (draw(&mut rng), draw(&mut rng), draw(&mut rng));
                let r = shape.len();
                let probe = rng
                    .randn(&shape, &dev)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap()
                    .transpose(r - 3, r - 2)
                    .unwrap()
                    .contiguous()
                    .unwrap();
                let case = format!("{shape:?} ×{gain} {dt:?}");
                let run = |f: fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>| {
                    let y = f(q.as_tensor(), k.as_tensor(), v.as_tensor()).unwrap();
                    let loss = (y.transpose(r - 3, r - 2).unwrap() * &probe)
                        .unwrap()
                        .sum_all()
                        .unwrap();
                    let g = loss.backward().unwrap();
                    let grads: Vec<Tensor> = [&q, &k, &v]
                        .iter()
                        .map(|x| g.get(x.as_tensor()).unwrap().clone())
                        .collect();
                    (y, grads)
                };
                let (y0, g0) = run(attention_chain);
                let (y1, g1) = run(attention);
                assert!(rel(&y1, &y0) < tol, "{case}: value {}", rel(&y1, &y0));
                for (name, (a, b)) in ["q", "k", "v"].iter().zip(g1.iter().zip(&g0)) {
                    assert!(rel(a, b) < tol, "{case}: gradient of {name} {}", rel(a, b));
                }
                let plain = attention(
                    &q.as_tensor().detach(),
                    &k.as_tensor().detach(),
                    &v.as_tensor().detach(),
                )
                .unwrap();
                assert!(
                    !plain.track_op() && rel(&plain, &y0) < tol,
                    "{case}: detached"
                );
            }
        }
    }

    #[test]
    fn softmax_and_layer_norm_match_closed_forms_and_have_gradients() {
        let dev = Device::Cpu;
        let x = Var::from_vec(vec![1f32, 2.0, 3.0, 1000.0, 1000.0, 1000.0], (2, 3), &dev).unwrap();
        let p = softmax_last(x.as_tensor())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        // softmax(1,2,3) = e^k / (e + e² + e³); a huge constant row is uniform.
        let z: f32 = (1..=3).map(|k| (k as f32).exp()).sum();
        for (k, (a, b)) in p[0].iter().zip(&p[1]).enumerate() {
            assert!((a - ((k + 1) as f32).exp() / z).abs() < 1e-6);
            assert!((b - 1.0 / 3.0).abs() < 1e-6);
        }
        // d softmax_0 / d x_0 = p0 (1 − p0).
        let g = softmax_last(x.as_tensor())
            .unwrap()
            .narrow(1, 0, 1)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gx = g.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert!((gx[0][0] - p[0][0] * (1.0 - p[0][0])).abs() < 1e-6);

        let vm = VarMap::new();
        let ln = LayerNorm::new(4, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
        let y = ln
            .forward(&Tensor::new(&[[1f32, 2.0, 3.0, 4.0]], &dev).unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        // (x − 2.5) / sqrt(1.25 + 1e-5)
        for (k, v) in y[0].iter().enumerate() {
            let want = (k as f32 + 1.0 - 2.5) / (1.25f32 + 1e-5).sqrt();
            assert!((v - want).abs() < 1e-5, "{v} vs {want}");
        }
        let s = sigmoid(&Tensor::new(&[0f32, 2.0, -200.0], &dev).unwrap())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!((s[0] - 0.5).abs() < 1e-7 && (s[1] - 1.0 / (1.0 + (-2f32).exp())).abs() < 1e-6);
        assert!(s[2] >= 0.0 && s[2] < 1e-30);
    }
}
