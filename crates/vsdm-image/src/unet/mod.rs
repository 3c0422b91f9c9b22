//! The DDPM++ U-Net of EDM's `SongUNet` (Karras et al. 2022, after Song et al. 2021), the network of the VSDM
//! CIFAR-10 code (ALGORITHM.md §F.2), in candle.
//!
//! Weights are named like the module tree of EDM's PyTorch model: `map_layer0.weight`,
//! `enc.32x32_conv.weight`, `enc.16x16_down.conv0.weight`, `enc.16x16_block0.qkv.weight`,
//! `dec.32x32_aux_conv.weight`, …, so a safetensors file reads like the network.

/// A per-thread choice of backward (`enum` with variants `Candle` and this crate's own, parsed from the
/// lower-case names), with its setter and getter: thread-local, so that concurrent tests cannot switch each
/// other's.
macro_rules! backward_choice {
    ($ty:ident { $($name:literal => $var:ident),+ }, default $def:ident, $set:ident, $get:ident, $what:literal) => {
        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                match s {
                    $($name => Ok(Self::$var),)+
                    _ => Err(format!(concat!($what, " backward {:?}: expected ", $($name, " ",)+ "(default ", stringify!($def), ")"), s)),
                }
            }
        }

        thread_local! {
            static MODE: std::cell::Cell<$ty> = const { std::cell::Cell::new($ty::$def) };
        }

        #[doc = concat!("Selects the ", $what, " backward for the networks run on this thread afterwards.")]
        pub fn $set(mode: $ty) {
            MODE.with(|m| m.set(mode));
        }

        #[doc = concat!("The current ", $what, " backward of this thread.")]
        pub fn $get() -> $ty {
            MODE.with(|m| m.get())
        }
    };
}

mod block;
#[cfg(feature = "cudnn")]
pub mod cudnnconv;
pub mod dropout;
pub mod fastattn;
pub mod fastconv;
pub mod fastnorm;
pub mod gncpu;
pub mod gnkernel;
pub mod im2col;
mod layers;

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

pub use block::{BlockSpec, Resample, UNetBlock};
pub use layers::{downsample2, positional_embedding, upsample2};

use layers::{conv, group_norm, linear, silu, Conv};

/// The architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    /// Image side (power of two, divisible by 2^(levels − 1)).
    pub resolution: usize,
    /// Input channels (3 for VSDM/VP; 6 for VSMD: position and velocity).
    pub in_channels: usize,
    /// Output channels (3).
    pub out_channels: usize,
    /// Base channel count.
    pub model_channels: usize,
    /// Channel multiplier per resolution level.
    pub channel_mult: Vec<usize>,
    /// Multiplier of the embedding width (EDM: 4).
    pub channel_mult_emb: usize,
    /// Residual blocks per resolution.
    pub num_blocks: usize,
    /// Resolutions with self-attention.
    pub attn_resolutions: Vec<usize>,
    /// Dropout probability in the residual blocks.
    pub dropout: f64,
    /// Classes of one-hot conditioning (0: unconditional).
    pub label_dim: usize,
    /// The network sees t·time_scale in its sinusoidal embedding (EDM/VSMD: 999·t).
    pub time_scale: f64,
}

impl UNetConfig {
    /// EDM's DDPM++ CIFAR-10 network as the VSDM image code runs it (`--arch=ddpmpp`): 128 channels,
    /// multipliers (2, 2, 2), 4 blocks per resolution, attention at 16×16, dropout 0.13.
    pub fn ddpmpp_cifar10() -> Self {
        Self {
            resolution: 32,
            in_channels: 3,
            out_channels: 3,
            model_channels: 128,
            channel_mult: vec![2, 2, 2],
            channel_mult_emb: 4,
            num_blocks: 4,
            attn_resolutions: vec![16],
            dropout: 0.13,
            label_dim: 0,
            time_scale: 999.0,
        }
    }

    /// A small network for tests and CPU runs: 32 channels, multipliers (1, 2), 1 block, attention at 16×16, no
    /// dropout.
    pub fn tiny() -> Self {
        Self {
            model_channels: 32,
            channel_mult: vec![1, 2],
            num_blocks: 1,
            dropout: 0.0,
            ..Self::ddpmpp_cifar10()
        }
    }

    /// The same network for the momentum process: twice the input channels (x and v), output the velocity noise.
    pub fn for_momentum(mut self) -> Self {
        self.in_channels = 2 * self.out_channels;
        self
    }

    /// A preset by name: `tiny` or `ddpmpp`.
    pub fn preset(name: &str) -> crate::Result<Self> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "ddpmpp" | "paper" => Ok(Self::ddpmpp_cifar10()),
            _ => Err(crate::Error::invalid(
                "arch",
                name,
                "expected `tiny` or `ddpmpp`",
            )),
        }
    }

    /// The preset this network's structure follows (levels, blocks per level, attention resolutions; channel
    /// counts, dropout and the input channels may differ): "tiny", "ddpmpp" or "custom".
    pub fn arch_name(&self) -> &'static str {
        let same = |p: &Self| {
            p.channel_mult == self.channel_mult
                && p.num_blocks == self.num_blocks
                && p.attn_resolutions == self.attn_resolutions
        };
        if same(&Self::tiny()) {
            "tiny"
        } else if same(&Self::ddpmpp_cifar10()) {
            "ddpmpp"
        } else {
            "custom"
        }
    }

    /// Checks the values, naming the first bad one.
    pub fn validate(&self) -> crate::Result<()> {
        let levels = self.channel_mult.len();
        if levels == 0 {
            return Err(crate::Error::invalid(
                "channel_mult",
                "[]",
                "needs at least one level",
            ));
        }
        if self.resolution == 0 || !self.resolution.is_multiple_of(1 << (levels - 1)) {
            return Err(crate::Error::invalid(
                "resolution",
                self.resolution,
                format!("must be divisible by 2^{}", levels - 1),
            ));
        }
        for (name, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("model_channels", self.model_channels),
            ("channel_mult_emb", self.channel_mult_emb),
        ] {
            if v == 0 {
                return Err(crate::Error::invalid(name, v, "must be at least 1"));
            }
        }
        if !self.model_channels.is_multiple_of(4) || self.model_channels < 4 {
            return Err(crate::Error::invalid(
                "model_channels",
                self.model_channels,
                "must be a positive multiple of 4 (group normalisation)",
            ));
        }
        if let Some(m) = self.channel_mult.iter().find(|&&m| m == 0) {
            return Err(crate::Error::invalid(
                "channel_mult",
                format!("{:?}", self.channel_mult),
                format!("every multiplier must be at least 1 (found {m})"),
            ));
        }
        if self.num_blocks == 0 {
            return Err(crate::Error::invalid("num_blocks", 0, "must be at least 1"));
        }
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return Err(crate::Error::invalid(
                "time_scale",
                self.time_scale,
                "must be a positive number",
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(crate::Error::invalid(
                "dropout",
                self.dropout,
                "must lie in [0, 1)",
            ));
        }
        Ok(())
    }
}

enum Enc {
    Conv(Conv),
    Block(Box<UNetBlock>),
}

/// The DDPM++ U-Net, a [`vsdm_core::ScoreModel`] predicting ε.
pub struct UNet {
    cfg: UNetConfig,
    map_label: Option<Linear>,
    map_layer0: Linear,
    map_layer1: Linear,
    enc: Vec<Enc>,
    dec: Vec<UNetBlock>,
    aux_norm: layers::Norm,
    aux_conv: Conv,
    train: bool,
    /// The dropout seed set by [`vsdm_core::ScoreModel::set_noise_seed`] and the training forward passes run
    /// since: each such pass derives its blocks' mask seeds from the two (random masks while none is set).
    noise: std::sync::Mutex<Option<(u64, u64)>>,
    /// Precision of the activations (`F32`, or `BF16` for mixed-precision training); see
    /// [`UNet::set_compute_dtype`].
    compute: candle_core::DType,
    span: tracing::Span,
}

impl UNet {
    /// Builds the network for inference (no dropout).
    pub fn new(vb: VarBuilder, cfg: &UNetConfig) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::wrap)?;
        let noise_ch = cfg.model_channels;
        let emb_ch = cfg.model_channels * cfg.channel_mult_emb;
        let map_label = if cfg.label_dim > 0 {
            Some(linear(cfg.label_dim, noise_ch, 1.0, vb.pp("map_label"))?)
        } else {
            None
        };
        let map_layer0 = linear(noise_ch, emb_ch, 1.0, vb.pp("map_layer0"))?;
        let map_layer1 = linear(emb_ch, emb_ch, 1.0, vb.pp("map_layer1"))?;
        let spec = |cin, cout, resample, attention| BlockSpec {
            cin,
            cout,
            emb: emb_ch,
            resample,
            attention,
            dropout: cfg.dropout,
        };

        let venc = vb.pp("enc");
        let mut enc = Vec::new();
        let mut skips = Vec::new();
        let mut cout = cfg.in_channels;
        for (level, &mult) in cfg.channel_mult.iter().enumerate() {
            let res = cfg.resolution >> level;
            if level == 0 {
                let c = conv(
                    cout,
                    cfg.model_channels,
                    3,
                    1.0,
                    venc.pp(format!("{res}x{res}_conv")),
                )?;
                cout = cfg.model_channels;
                enc.push(Enc::Conv(c));
            } else {
                let b = UNetBlock::new(
                    spec(cout, cout, Resample::Down, false),
                    venc.pp(format!("{res}x{res}_down")),
                )?;
                enc.push(Enc::Block(Box::new(b)));
            }
            skips.push(cout);
            for idx in 0..cfg.num_blocks {
                let cin = cout;
                cout = cfg.model_channels * mult;
                let attn = cfg.attn_resolutions.contains(&res);
                let b = UNetBlock::new(
                    spec(cin, cout, Resample::Keep, attn),
                    venc.pp(format!("{res}x{res}_block{idx}")),
                )?;
                enc.push(Enc::Block(Box::new(b)));
                skips.push(cout);
            }
        }

        let vdec = vb.pp("dec");
        let mut dec = Vec::new();
        let levels = cfg.channel_mult.len();
        for (level, &mult) in cfg.channel_mult.iter().enumerate().rev() {
            let res = cfg.resolution >> level;
            let name = |s: &str| format!("{res}x{res}_{s}");
            if level == levels - 1 {
                dec.push(UNetBlock::new(
                    spec(cout, cout, Resample::Keep, true),
                    vdec.pp(name("in0")),
                )?);
                dec.push(UNetBlock::new(
                    spec(cout, cout, Resample::Keep, false),
                    vdec.pp(name("in1")),
                )?);
            } else {
                dec.push(UNetBlock::new(
                    spec(cout, cout, Resample::Up, false),
                    vdec.pp(name("up")),
                )?);
            }
            for idx in 0..=cfg.num_blocks {
                let skip = skips
                    .pop()
                    .ok_or_else(|| candle_core::Error::Msg("skip stack".into()))?;
                let cin = cout + skip;
                cout = cfg.model_channels * mult;
                let attn = idx == cfg.num_blocks && cfg.attn_resolutions.contains(&res);
                dec.push(UNetBlock::new(
                    spec(cin, cout, Resample::Keep, attn),
                    vdec.pp(name(&format!("block{idx}"))),
                )?);
            }
        }
        let res = cfg.resolution;
        let aux_norm = group_norm(cout, 1e-6, vdec.pp(format!("{res}x{res}_aux_norm")))?;
        let aux_conv = conv(
            cout,
            cfg.out_channels,
            3,
            1e-5,
            vdec.pp(format!("{res}x{res}_aux_conv")),
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            map_label,
            map_layer0,
            map_layer1,
            enc,
            dec,
            aux_norm,
            aux_conv,
            train: false,
            noise: std::sync::Mutex::new(None),
            compute: candle_core::DType::F32,
            span: tracing::span!(tracing::Level::TRACE, "unet"),
        })
    }

    /// Builds the network for training: dropout active.
    pub fn new_train(vb: VarBuilder, cfg: &UNetConfig) -> Result<Self> {
        let mut net = Self::new(vb, cfg)?;
        net.train = true;
        Ok(net)
    }

    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    /// Runs the activations in `dtype` while the parameters stay in the precision they were created in (f32
    /// master weights): every convolution casts its weight to the activations' precision, so the gradients
    /// reach the f32 variables through the casts' backward and the optimizer updates f32 values. The noise
    /// embedding, the group normalisations and the attention softmax stay in f32 (as PyTorch's autocast keeps
    /// them); the input is cast on entry and the output returned in the input's precision. `F32` (the default) changes nothing.
    pub fn set_compute_dtype(&mut self, dtype: candle_core::DType) -> Result<()> {
        use candle_core::DType;
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16 | DType::F64) {
            candle_core::bail!("U-Net compute precision {dtype:?}: expected f32, bf16, f16 or f64");
        }
        self.compute = dtype;
        Ok(())
    }

    /// The activations' precision.
    pub fn compute_dtype(&self) -> candle_core::DType {
        self.compute
    }

    /// The noise embedding: sinusoids of t·time_scale (+ the label map), then two SiLU dense layers.
    fn embedding(&self, t: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        let t = (t.to_dtype(candle_core::DType::F32)? * self.cfg.time_scale)?;
        let mut emb = positional_embedding(&t, self.cfg.model_channels)?;
        if let Some(ml) = &self.map_label {
            let c = cond.ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "the network is class-conditional ({} classes) but no labels were given",
                    self.cfg.label_dim
                ))
            })?;
            let c = (c.to_dtype(candle_core::DType::F32)? * (self.cfg.label_dim as f64).sqrt())?;
            emb = (emb + ml.forward(&c)?)?;
        }
        let emb = silu(&self.map_layer0.forward(&emb)?)?;
        silu(&self.map_layer1.forward(&emb)?)
    }
}

impl vsdm_core::ScoreModel for UNet {
    fn forward(&self, x: &Tensor, t: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        let _e = self.span.enter();
        let (b, c, h, w) = x.dims4()?;
        let r = self.cfg.resolution;
        if c != self.cfg.in_channels || h != r || w != r {
            candle_core::bail!(
                "U-Net input has shape {:?}, expected [B, {}, {r}, {r}]",
                x.dims(),
                self.cfg.in_channels
            );
        }
        if t.dims() != [b] {
            candle_core::bail!("time input has shape {:?}, expected [{b}]", t.dims());
        }
        let emb = self.embedding(t, cond)?;
        // This pass's dropout seed (training only): derived from the set seed and the passes run since.
        let pass_seed = if self.train {
            let mut noise = self
                .noise
                .lock()
                .map_err(|e| candle_core::Error::Msg(format!("U-Net noise seed: {e}")))?;
            noise.as_mut().map(|(seed, passes)| {
                *passes += 1;
                vsdm_core::rng::derive_seed(*seed, *passes - 1)
            })
        } else {
            None
        };
        let mut block = 0u64;
        let mut block_seed = || {
            block += 1;
            pass_seed.map(|s| vsdm_core::rng::derive_seed(s, block - 1))
        };
        let mut skips = Vec::with_capacity(self.enc.len());
        let in_dtype = x.dtype();
        let mut x = x.to_dtype(self.compute)?;
        for e in &self.enc {
            x = match e {
                Enc::Conv(c) => c.forward(&x)?,
                Enc::Block(bl) => bl.forward(&x, &emb, self.train, block_seed())?,
            };
            skips.push(x.clone());
        }
        for bl in &self.dec {
            if x.dim(1)? != bl.in_channels() {
                let s = skips
                    .pop()
                    .ok_or_else(|| candle_core::Error::Msg("skip stack underflow".into()))?;
                x = Tensor::cat(&[&x, &s], 1)?;
            }
            x = bl.forward(&x, &emb, self.train, block_seed())?;
        }
        self.aux_conv
            .forward(&self.aux_norm.forward_silu(&x)?)?
            .to_dtype(in_dtype)
    }

    fn set_noise_seed(&self, seed: u64) {
        // A poisoned lock (a panic during a pass) leaves the masks random; training reports that panic itself.
        if let Ok(mut noise) = self.noise.lock() {
            *noise = Some((seed, 0));
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
