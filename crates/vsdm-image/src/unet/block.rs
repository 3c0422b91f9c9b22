//! EDM's `UNetBlock` (DDPM++ flavour): GroupNorm → SiLU → conv (with optional ×2 up/down resampling), the
//! noise embedding added as a per-channel shift, GroupNorm → SiLU → dropout → conv, a 1×1 skip projection when
//! the shape changes, the sum scaled by √½, then optional single-head self-attention.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::fastattn::attention_residual;
use super::layers::{conv, downsample2, dropout_mask, group_norm, linear, upsample2, Conv, Norm};

/// EDM's `init_weight` of the last convolution of each branch (`init_zero`).
const INIT_ZERO: f64 = 1e-5;
/// EDM's `init_weight` of the attention's qkv projection (`init_attn`).
const INIT_ATTN: f64 = 0.447_213_595_499_958; // √0.2
const EPS: f64 = 1e-6;

/// How a block changes the resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    Keep,
    Up,
    Down,
}

impl Resample {
    fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Resample::Keep => Ok(x.clone()),
            Resample::Up => upsample2(x),
            Resample::Down => downsample2(x),
        }
    }
}

struct Attention {
    norm2: Norm,
    qkv: Conv,
    proj: Conv,
}

impl Attention {
    fn new(ch: usize, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            norm2: group_norm(ch, EPS, vb.pp("norm2"))?,
            qkv: conv(ch, 3 * ch, 1, INIT_ATTN, vb.pp("qkv"))?,
            proj: conv(ch, ch, 1, INIT_ZERO, vb.pp("proj"))?,
        })
    }

    /// (x + proj(softmax(qᵀk/√C) v)) · `scale`, one head, as EDM's `AttentionOp` followed by the block's
    /// rescaling ([`attention_residual`]).
    fn forward(&self, x: &Tensor, scale: f64) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let qkv = self
            .qkv
            .forward(&self.norm2.forward(x)?)?
            .reshape((b, c, 3, h * w))?;
        let (pw, pb) = self.proj.params(x.dtype())?;
        attention_residual(&qkv, &pw, &pb, x, scale)
    }
}

/// One residual block.
pub struct UNetBlock {
    norm0: Norm,
    conv0: Conv,
    affine: Linear,
    norm1: Norm,
    conv1: Conv,
    skip: Option<Conv>,
    attn: Option<Attention>,
    resample: Resample,
    dropout: f64,
    cin: usize,
    cout: usize,
    span: tracing::Span,
}

/// How to build a [`UNetBlock`].
#[derive(Debug, Clone, Copy)]
pub struct BlockSpec {
    pub cin: usize,
    pub cout: usize,
    pub emb: usize,
    pub resample: Resample,
    pub attention: bool,
    pub dropout: f64,
}

impl UNetBlock {
    pub fn new(spec: BlockSpec, vb: VarBuilder) -> Result<Self> {
        let BlockSpec {
            cin,
            cout,
            emb,
            resample,
            attention,
            dropout,
        } = spec;
        let skip = if cin != cout || resample != Resample::Keep {
            Some(conv(cin, cout, 1, 1.0, vb.pp("skip"))?)
        } else {
            None
        };
        Ok(Self {
            norm0: group_norm(cin, EPS, vb.pp("norm0"))?,
            conv0: conv(cin, cout, 3, 1.0, vb.pp("conv0"))?,
            affine: linear(emb, cout, 1.0, vb.pp("affine"))?,
            norm1: group_norm(cout, EPS, vb.pp("norm1"))?,
            conv1: conv(cout, cout, 3, INIT_ZERO, vb.pp("conv1"))?,
            skip,
            attn: if attention {
                Some(Attention::new(cout, &vb)?)
            } else {
                None
            },
            resample,
            dropout,
            cin,
            cout,
            span: tracing::span!(tracing::Level::TRACE, "unet-block"),
        })
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        self.cin
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.cout
    }

    /// `x` `[B, cin, H, W]`, `emb` `[B, emb]`; dropout only when `train`, with the mask of `seed` (a fresh
    /// random one without).
    pub fn forward(
        &self,
        x: &Tensor,
        emb: &Tensor,
        train: bool,
        seed: Option<u64>,
    ) -> Result<Tensor> {
        let _e = self.span.enter();
        let h = self.resample.apply(&self.norm0.forward_silu(x)?)?;
        // The embedding's per-channel shift joins conv0's bias (one op; cast to the activations' precision).
        let h = self.conv0.forward_shifted(&h, &self.affine.forward(emb)?)?;
        let h = self.norm1.forward_silu(&h)?;
        let drop = if train {
            dropout_mask(self.dropout, seed)
        } else {
            None
        };
        let skip = match &self.skip {
            Some(s) => s.forward(&self.resample.apply(x)?)?,
            None => x.clone(),
        };
        // (conv1(dropout(h)) + skip) · √½ as one op (dropout, convolution, sum and rescaling).
        let s = std::f64::consts::FRAC_1_SQRT_2;
        let h = self.conv1.forward_residual(&h, &skip, drop.as_ref(), s)?;
        match &self.attn {
            Some(a) => a.forward(&h, s),
            None => Ok(h),
        }
    }
}
