//! Transformer pieces with a backward pass in candle 0.11 (its fused `softmax_last_dim`, `layer_norm` and
//! `rms_norm` have none): written from primitive tensor operations, or, for the attention, one op whose
//! backward is its own ([`attention()`]).

mod attention;
mod dense;
mod norm;
#[cfg(test)]
mod tests;

pub use attention::{attention, attention_chain, attention_heads, attention_packed, softmax_last};
pub use dense::{add_broadcast, dense, dense_op, sum_rows, sum_to, Dense};
pub use norm::{layer_norm, layer_norm_chain, LayerNorm};

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Rows per partial sum of the CPU reductions over rows (a dense layer's dW and db, a layer norm's dγ and dβ):
/// the runs' partial sums are added in order, so the gradients do not depend on the number of threads.
const RUN_ROWS: usize = 1024;

/// Whether `t` is f32 on the CPU: what the attention kernels take.
fn cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32
}

/// Multi-head self-attention over the middle axis of `[N, S, C]`.
pub struct SelfAttention {
    qkv: Dense,
    out: Dense,
    heads: usize,
}

impl SelfAttention {
    pub fn new(dim: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        if heads == 0 || !dim.is_multiple_of(heads) {
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
        self.out.forward(&self.heads_of(x)?)
    }
}

impl SelfAttention {
    /// The heads' outputs before the output projection: `[N, S, 3·C]` → `[N, S, C]`.
    fn heads_of(&self, x: &Tensor) -> Result<Tensor> {
        attention_heads(&self.qkv.forward(x)?, self.heads)
    }

    /// `base` + the attention of `x`: the output projection added onto the residual stream in its product
    /// ([`Dense::forward_onto`]).
    pub fn forward_onto(&self, x: &Tensor, base: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("attention").entered();
        let y = self.heads_of(x)?;
        self.out
            .forward_onto(&y, base, 1.0, (0, self.out.outputs()))
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
    /// Switches the layer norms to recording no op (no backward pass): for sampling only ([`attention()`] and
    /// [`layer_norm`] compute their values with candle's fused kernels in both modes).
    pub fn set_inference(&mut self, on: bool) {
        self.ln1.fused = on;
        self.ln2.fused = on;
    }
}

impl Module for EncoderLayer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // The residual additions inside the output products (`forward_onto`).
        let h = self.attn.forward_onto(&self.ln1.forward(x)?, x)?;
        let f = super::elementwise::silu(&self.ff1.forward(&self.ln2.forward(&h)?)?)?;
        self.ff2.forward_onto(&f, &h, 1.0, (0, self.ff2.outputs()))
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
