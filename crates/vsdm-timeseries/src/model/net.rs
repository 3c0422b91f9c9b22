//! A conditional transformer in the spirit of CSDI (Tashiro et al., NeurIPS 2021, `diff_models.py`): residual
//! blocks that attend along time (for every series) and along series (for every time step) over the
//! `D × (C + H)` grid, with side information (time-feature, position and series embeddings), the diffusion time
//! embedded sinusoidally, and the observed context as an input channel. The whole horizon is generated jointly.
//!
//! To keep the cost of attention along time affordable on a CPU, consecutive time steps are grouped into
//! patches of `patch` steps (as PatchTST does): a token is one series over one patch, so the grid attended over is
//! `D × (C + H)/patch`.
//!
//! Input x_t: `[B, k, D, H]` with k = 1 (VP, VSDM) or 2 (VSMD: position and velocity); conditioning
//! `[B, 1 + F, D, C + H]` as built by [`crate::window::WindowBatch`]. Output: the noise ε̂ `[B, 1, D, H]`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};
use vsdm_core::ScoreModel;

use super::elementwise::{gate, silu};
use super::layers::{add_broadcast, dense, sinusoidal, Dense, EncoderLayer};

/// Width of the sinusoidal position features of a column.
const POS_DIM: usize = 16;
/// Width of the sinusoidal diffusion-time features.
const TIME_DIM: usize = 64;

/// Shape and size of the network (stored with the weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// Number of series D (each gets a learned embedding).
    pub num_series: usize,
    /// Context length C.
    pub context: usize,
    /// Horizon H.
    pub horizon: usize,
    /// Number of time features F.
    pub time_features: usize,
    /// Channels of the diffusion state: 1, or 2 for VSMD.
    pub state_channels: usize,
    /// Residual channels.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// Residual blocks.
    pub layers: usize,
    /// Feed-forward width of the attention layers.
    pub ff: usize,
    /// Time steps per token; must divide both C and H.
    pub patch: usize,
}

impl NetConfig {
    /// Samples per network batch, at most `max`, for which the largest attention map of a forward pass (the f32
    /// scores of the attention along series, `[tokens, heads, D, D]` per sample, or along time,
    /// `[D, heads, tokens, tokens]`) stays within `budget` bytes; at least 1. With 512 MiB and at most 100: 100 on
    /// the exchange rate, 30 at electricity's 370 series (a batch of 100 there held 1.75 GB of scores per map and
    /// was slower as well as four times larger: docs/results/timeseries.md). Since the forward without a graph
    /// keeps no attention map (one block of scores per task), the budget only bounds the batch's activations:
    /// the time per sample is flat in the batch (about 14 ms at electricity's width for batches of 4 to 30 on
    /// 2 cores, docs/benchmarks/timeseries.md, "A forecast's side information once per window").
    pub fn sample_batch_within(&self, budget: usize, max: usize) -> usize {
        let tokens = (self.context + self.horizon) / self.patch.max(1);
        let d = self.num_series;
        let per_sample = 4 * self.heads * (tokens * d * d).max(d * tokens * tokens);
        (budget / per_sample.max(1)).clamp(1, max.max(1))
    }

    /// The default size: 32 channels, 2 heads, 2 blocks, feed-forward 64, patches of 6 steps (1 when 6 does not
    /// divide both lengths).
    pub fn small(
        num_series: usize,
        context: usize,
        horizon: usize,
        time_features: usize,
        state_channels: usize,
    ) -> Self {
        Self {
            num_series,
            context,
            horizon,
            time_features,
            state_channels,
            hidden: 32,
            heads: 2,
            layers: 2,
            ff: 64,
            patch: if context.is_multiple_of(6) && horizon.is_multiple_of(6) {
                6
            } else {
                1
            },
        }
    }
}

/// One residual block: time attention, series attention, gated activation with the side information.
struct Block {
    time_in: Dense,
    time_attn: EncoderLayer,
    series_attn: Option<EncoderLayer>,
    mid: Dense,
    side: Dense,
    out: Dense,
}

/// The network.
pub struct ForecastNet {
    cfg: NetConfig,
    input: Dense,
    series_emb: Tensor,
    side_proj: Dense,
    t1: Dense,
    t2: Dense,
    blocks: Vec<Block>,
    out1: Dense,
    out2: Dense,
}

impl ForecastNet {
    /// Builds the network; tensor names mirror the module tree (`blocks.0.time_attn.attn.qkv.weight`, …).
    pub fn new(vb: VarBuilder, cfg: NetConfig) -> Result<Self> {
        let h = cfg.hidden;
        if [
            cfg.state_channels,
            cfg.num_series,
            cfg.context,
            cfg.horizon,
            cfg.hidden,
            cfg.layers,
        ]
        .contains(&0)
        {
            candle_core::bail!(
                "network config needs non-zero series, context, horizon, channels, width and layers: {cfg:?}"
            );
        }
        let p = cfg.patch;
        if p == 0 || !cfg.context.is_multiple_of(p) || !cfg.horizon.is_multiple_of(p) {
            candle_core::bail!(
                "patch length {p} must divide the context {} and the horizon {}",
                cfg.context,
                cfg.horizon
            );
        }
        let blocks = (0..cfg.layers)
            .map(|i| {
                let vb = vb.pp(format!("blocks.{i}"));
                Ok(Block {
                    time_in: dense(h, h, vb.pp("time_in"))?,
                    time_attn: EncoderLayer::new(h, cfg.heads, cfg.ff, vb.pp("time_attn"))?,
                    series_attn: if cfg.num_series > 1 {
                        Some(EncoderLayer::new(
                            h,
                            cfg.heads,
                            cfg.ff,
                            vb.pp("series_attn"),
                        )?)
                    } else {
                        None
                    },
                    mid: dense(h, 2 * h, vb.pp("mid"))?,
                    side: dense(h, 2 * h, vb.pp("side"))?,
                    out: dense(h, 2 * h, vb.pp("out"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            input: dense(p * (1 + cfg.state_channels), h, vb.pp("input"))?,
            series_emb: vb.get_with_hints(
                (cfg.num_series, h),
                "series_emb",
                Init::Randn {
                    mean: 0.0,
                    stdev: 0.5,
                },
            )?,
            side_proj: dense(p * cfg.time_features + POS_DIM, h, vb.pp("side_proj"))?,
            t1: dense(TIME_DIM, h, vb.pp("t1"))?,
            t2: dense(h, h, vb.pp("t2"))?,
            blocks,
            out1: dense(h, h, vb.pp("out1"))?,
            out2: dense(h, p, vb.pp("out2"))?,
            cfg,
        })
    }

    /// Switches the attention layers' layer norms to recording no op (no backward pass; the same values, see
    /// [`EncoderLayer::set_inference`]): for sampling only.
    pub fn set_inference(&mut self, on: bool) {
        for b in &mut self.blocks {
            b.time_attn.set_inference(on);
            if let Some(s) = &mut b.series_attn {
                s.set_inference(on);
            }
        }
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// Side information `[B, D, N, h]` (N = L / patch tokens): the time features of the patch's steps and the
    /// patch position, plus the series embedding.
    fn side_info(&self, cond: &Tensor) -> Result<Tensor> {
        let (b, _, d, l) = cond.dims4()?;
        let (f, p) = (self.cfg.time_features, self.cfg.patch);
        let n = l / p;
        let tf = cond
            .narrow(1, 1, f)?
            .narrow(2, 0, 1)?
            .squeeze(2)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, n, p * f))?; // [B, N, p·F]
        let pos = Tensor::arange(0u32, n as u32, cond.device())?.to_dtype(cond.dtype())?;
        let pos = sinusoidal(&pos, POS_DIM)?
            .unsqueeze(0)?
            .broadcast_as((b, n, POS_DIM))?;
        let feats = Tensor::cat(&[tf, pos.contiguous()?], 2)?;
        let side = self.side_proj.forward(&feats)?.unsqueeze(1)?; // [B, 1, N, h]
        let emb = self.series_emb.reshape((1, d, 1, self.cfg.hidden))?;
        add_broadcast(&side, &emb)
    }
}

impl ScoreModel for ForecastNet {
    fn forward(&self, x_t: &Tensor, t: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        let _span = tracing::trace_span!("forecast_net").entered();
        let cfg = &self.cfg;
        let cond = cond.ok_or_else(|| {
            candle_core::Error::Msg(
                "the forecasting network needs the context as conditioning".into(),
            )
        })?;
        let (b, k, d, hz) = x_t.dims4()?;
        let (cb, cc, cd, l) = cond.dims4()?;
        if k != cfg.state_channels
            || d != cfg.num_series
            || hz != cfg.horizon
            || cb != b
            || cc != 1 + cfg.time_features
            || cd != d
            || l != cfg.context + cfg.horizon
        {
            candle_core::bail!(
                "forecast network built for {} series, {} state channels, context {} + horizon {}, {} time \
                 features got x_t {:?} and conditioning {:?}",
                cfg.num_series,
                cfg.state_channels,
                cfg.context,
                cfg.horizon,
                cfg.time_features,
                x_t.dims(),
                cond.dims()
            );
        }
        let (h, p) = (cfg.hidden, cfg.patch);
        let n = l / p;
        // Input grid: observed context channel and the noisy state placed over the horizon columns, grouped
        // into patches of p steps.
        let obs = cond.narrow(1, 0, 1)?;
        let pad = Tensor::zeros((b, k, d, cfg.context), x_t.dtype(), x_t.device())?;
        let state = Tensor::cat(&[&pad, x_t], 3)?;
        let grid = Tensor::cat(&[&obs, &state], 1)?
            .permute((0, 2, 3, 1))?
            .contiguous()?
            .reshape((b, d, n, p * (1 + k)))?; // [B, D, N, p·(1+k)]

        // The samples of one forecast share their window's context and time features: `repeat_batch` hands
        // them over as one item broadcast along the batch (stride 0), and the side information and each
        // block's projection of it are then computed for that item alone and added to every sample (the same
        // values: each row of those layers depends on its own item only). Otherwise (training batches) the
        // side information is per item, of the activations' shape, and added by candle's addition.
        let shared = b > 1 && cond.stride()[0] == 0;
        let side = if shared {
            self.side_info(&cond.narrow(0, 0, 1)?)? // [1, D, N, h]
        } else {
            self.side_info(cond)? // [B, D, N, h]
        };
        let add_side = |a: &Tensor, s: &Tensor| {
            if shared {
                add_broadcast(a, s)
            } else {
                a + s
            }
        };
        let mut x = add_side(&self.input.forward(&grid)?, &side)?;
        // Diffusion time: sinusoidal features of 1000 t through a two-layer SiLU MLP.
        let temb = sinusoidal(&(t * 1000.0)?, TIME_DIM)?;
        let temb = silu(&self.t2.forward(&silu(&self.t1.forward(&temb)?)?)?)?;
        let temb = temb.reshape((b, 1, 1, h))?;
        let mut skip: Option<Tensor> = None;
        for blk in &self.blocks {
            let y = add_broadcast(&x, &blk.time_in.forward(&temb)?)?;
            let y = blk
                .time_attn
                .forward(&y.reshape((b * d, n, h))?)?
                .reshape((b, d, n, h))?;
            let y = match &blk.series_attn {
                Some(sa) => {
                    let yt = y.transpose(1, 2)?.contiguous()?.reshape((b * n, d, h))?;
                    sa.forward(&yt)?
                        .reshape((b, n, d, h))?
                        .transpose(1, 2)?
                        .contiguous()?
                }
                None => y,
            };
            let y = add_side(&blk.mid.forward(&y)?, &blk.side.forward(&side)?)?;
            let gated = gate(&y)?;
            // The residual and skip halves of the output layer, each contiguous, (x + res) / √2 and the skip
            // sum each added in the half's product (`Dense::forward_onto`).
            x = blk
                .out
                .forward_onto(&gated, &x, 1.0 / std::f64::consts::SQRT_2, (0, h))?;
            skip = Some(match skip {
                Some(acc) => blk.out.forward_onto(&gated, &acc, 1.0, (h, h))?,
                None => blk.out.forward_outputs(&gated, h, h)?,
            });
        }
        let skip = skip.ok_or_else(|| candle_core::Error::Msg("network without blocks".into()))?;
        let skip = (skip / (cfg.layers as f64).sqrt())?;
        let out = self.out2.forward(&silu(&self.out1.forward(&skip)?)?)?; // [B, D, N, p]
        out.reshape((b, 1, d, l))?
            .narrow(3, cfg.context, cfg.horizon)?
            .contiguous()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;
    use vsdm_core::NoiseRng;

    /// The forecasting batch the CLI picks (512 MiB, at most 100) is the documented one at the two shapes the
    /// docs quote, and never 0.
    #[test]
    fn sample_batch_follows_the_attention_size() {
        let exchange = NetConfig::small(8, 90, 30, 3, 1);
        let electricity = NetConfig::small(370, 72, 24, 4, 1);
        assert_eq!(exchange.sample_batch_within(512 << 20, 100), 100);
        assert_eq!(electricity.sample_batch_within(512 << 20, 100), 30);
        assert_eq!(electricity.sample_batch_within(1, 100), 1);
        // Two long series: the map along time bounds it, 4 bytes × 2 heads × 2 series × 400² tokens (2,400
        // steps in patches of 6) = 2.56 MB a sample, 209 of them in 512 MiB.
        let long = NetConfig::small(2, 1800, 600, 4, 1);
        assert_eq!(long.sample_batch_within(512 << 20, 1000), 209);
    }

    /// The default network patches by 6 steps only where 6 divides both the context and the horizon (patches
    /// cover each of them whole); otherwise by single steps.
    #[test]
    fn small_patches_by_six_only_where_six_divides_both_lengths() {
        for (context, horizon, patch) in [
            (90, 30, 6),
            (72, 24, 6),
            (90, 31, 1),
            (91, 30, 1),
            (7, 5, 1),
        ] {
            let cfg = NetConfig::small(3, context, horizon, 2, 1);
            assert_eq!(cfg.patch, patch, "context {context}, horizon {horizon}");
        }
    }

    /// A network of 8 channels over `series` series, context 6, horizon 2, 2 time features, patches of 2.
    fn tiny(series: usize, state_channels: usize) -> NetConfig {
        NetConfig {
            hidden: 8,
            heads: 2,
            layers: 2,
            ff: 16,
            patch: 2,
            ..NetConfig::small(series, 6, 2, 2, state_channels)
        }
    }

    /// Every parameter must receive a non-zero gradient from the denoising loss (the fused candle ops without
    /// a backward pass would leave some at zero or fail).
    #[test]
    fn every_parameter_gets_a_gradient() {
        let dev = Device::Cpu;
        for state_channels in [1, 2] {
            let cfg = tiny(3, state_channels);
            let vm = VarMap::new();
            let net =
                ForecastNet::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), cfg).unwrap();
            let mut rng = NoiseRng::new(3);
            let x = rng.randn(&[4, state_channels, 3, 2], &dev).unwrap();
            let cond = rng.randn(&[4, 3, 3, 8], &dev).unwrap();
            let t = Tensor::new(&[0.1f32, 0.4, 0.7, 1.0], &dev).unwrap();
            let target = rng.randn(&[4, 1, 3, 2], &dev).unwrap();
            let out = net.forward(&x, &t, Some(&cond)).unwrap();
            assert_eq!(out.dims(), &[4, 1, 3, 2]);
            let loss = (out - target).unwrap().sqr().unwrap().mean_all().unwrap();
            let grads = loss.backward().unwrap();
            let vars = vm.data().lock().unwrap();
            assert!(vars.len() > 30, "{} variables", vars.len());
            for (name, v) in vars.iter() {
                let g = grads
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("no gradient for {name}"));
                let norm = g
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(
                    norm > 0.0 && norm.is_finite(),
                    "{name}: gradient norm {norm}"
                );
            }
        }
    }

    /// A conditioning batch broadcast from one window (the forecaster's `repeat_batch`, batch stride 0) gives
    /// the outputs and parameter gradients of its contiguous copy, where the side information runs once; and
    /// with items that differ each item's output is that of the item alone. The two paths add the side
    /// information in another order, so they agree to rounding: 1e-5 of the largest value, outputs and
    /// gradients alike (with weights drawn afresh in every run, candle's unseeded initialisation, the outputs
    /// differed by 0.1–1.1e-6 of it over six runs — too close to the 1e-6 this test once asked; the weights
    /// are seeded now).
    #[test]
    fn shared_conditioning_matches_the_copied_batch() {
        let dev = Device::Cpu;
        let cfg = tiny(5, 1);
        let vm = VarMap::new();
        let vb = vsdm_core::init::seeded_var_builder(&vm, NoiseRng::new(17), DType::F32, &dev);
        let net = ForecastNet::new(vb, cfg).unwrap();
        let mut rng = NoiseRng::new(5);
        let x = rng.randn(&[4, 1, 5, 2], &dev).unwrap();
        let t = Tensor::new(&[0.1f32, 0.4, 0.7, 1.0], &dev).unwrap();
        let one = rng.randn(&[1, 3, 5, 8], &dev).unwrap();
        let shared = crate::forecast::repeat_batch(&one, 4).unwrap();
        assert_eq!(shared.stride()[0], 0);
        let copied = shared.contiguous().unwrap();
        let target = rng.randn(&[4, 1, 5, 2], &dev).unwrap();
        let run = |cond: &Tensor| {
            let out = net.forward(&x, &t, Some(cond)).unwrap();
            let loss = (&out - &target).unwrap().sqr().unwrap().mean_all().unwrap();
            (out, loss.backward().unwrap())
        };
        let (a, ga) = run(&shared);
        let (b, gb) = run(&copied);
        let scale = vsdm_core::compare::max_abs(&b).unwrap();
        let diff = vsdm_core::compare::max_abs_diff(&a, &b).unwrap();
        assert!(diff <= 1e-5 * scale, "output: {diff} (scale {scale})");
        for (name, v) in vm.data().lock().unwrap().iter() {
            let (ga, gb) = (
                ga.get(v.as_tensor()).unwrap(),
                gb.get(v.as_tensor()).unwrap(),
            );
            let scale = vsdm_core::compare::max_abs(gb).unwrap();
            let diff = vsdm_core::compare::max_abs_diff(ga, gb).unwrap();
            assert!(diff <= 1e-5 * scale, "{name}: {diff} (scale {scale})");
        }
        let cond = rng.randn(&[4, 3, 5, 8], &dev).unwrap();
        let all = net.forward(&x, &t, Some(&cond)).unwrap();
        for i in 0..4 {
            let item = |v: &Tensor| v.narrow(0, i, 1).unwrap();
            let alone = net
                .forward(&item(&x), &item(&t), Some(&item(&cond)))
                .unwrap();
            let diff = vsdm_core::compare::max_abs_diff(&item(&all), &alone).unwrap();
            assert!(diff <= 1e-5, "item {i}: {diff}");
        }
    }

    #[test]
    fn horizon_depends_on_context_and_shapes_are_checked() {
        let dev = Device::Cpu;
        let cfg = NetConfig::small(2, 4, 3, 1, 1);
        assert_eq!(cfg.patch, 1);
        let vm = VarMap::new();
        let net = ForecastNet::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), cfg).unwrap();
        let mut rng = NoiseRng::new(1);
        let x = rng.randn(&[1, 1, 2, 3], &dev).unwrap();
        let t = Tensor::new(&[0.5f32], &dev).unwrap();
        let c1 = rng.randn(&[1, 2, 2, 7], &dev).unwrap();
        let c2 = (&c1 * 2.0).unwrap();
        let a = net.forward(&x, &t, Some(&c1)).unwrap();
        let b2 = net.forward(&x, &t, Some(&c2)).unwrap();
        let diff = (a - b2)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff > 1e-4);
        // Each dimension of x_t [B, K, D, H] and of the conditioning [B, 1 + F, D, C + H] off alone.
        for (xd, cd) in [
            ([1, 1, 2, 3], [1, 2, 2, 8]),
            ([1, 2, 2, 3], [1, 2, 2, 7]),
            ([1, 1, 3, 3], [1, 2, 2, 7]),
            ([1, 1, 2, 4], [1, 2, 2, 7]),
            ([1, 1, 2, 3], [2, 2, 2, 7]),
            ([1, 1, 2, 3], [1, 3, 2, 7]),
            ([1, 1, 2, 3], [1, 2, 3, 7]),
        ] {
            let (xb, cb) = (rng.randn(&xd, &dev).unwrap(), rng.randn(&cd, &dev).unwrap());
            let err = net.forward(&xb, &t, Some(&cb)).unwrap_err().to_string();
            assert!(
                err.contains("built for 2 series, 1 state channels, context 4 + horizon 3, 1 time"),
                "{xd:?} {cd:?}: {err}"
            );
        }
        assert!(net.forward(&x, &t, None).is_err());
        // The fused inference kernels compute the same function.
        let mut fused =
            ForecastNet::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), cfg).unwrap();
        fused.set_inference(true);
        let f = fused.forward(&x, &t, Some(&c1)).unwrap();
        let a = net.forward(&x, &t, Some(&c1)).unwrap();
        let diff = vsdm_core::compare::max_abs_diff(&a, &f).unwrap();
        assert!(diff < 1e-4, "{diff}");
        // ... and record no op into the blocks' layer norms (nor below them: detached there), where the
        // training network records every layer; switched back, it records them again.
        let recorded = |y: &Tensor| {
            let g = y.sum_all().unwrap().backward().unwrap();
            let vars = vm.data().lock().unwrap();
            let names: Vec<&String> = vars.keys().filter(|k| k.contains(".ln")).collect();
            assert!(!names.is_empty());
            names
                .into_iter()
                .filter(|k| g.get(vars[*k].as_tensor()).is_some())
                .count()
        };
        let lns = recorded(&a);
        assert!(lns > 0);
        assert_eq!(recorded(&f), 0);
        fused.set_inference(false);
        assert_eq!(recorded(&fused.forward(&x, &t, Some(&c1)).unwrap()), lns);
    }
}
