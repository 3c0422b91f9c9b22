//! The residual-MLP score network of the official toy code (ALGORITHM.md §B.1): a sinusoidal time embedding
//! (128 features of 100·t, max period 10⁴) through Linear–SiLU–Linear (last layer zero-initialised), an x branch
//! Linear(in → h) followed by three residual blocks of three Linear+SiLU layers combined as (h + block(h))/√2,
//! and an output head Linear–SiLU–Linear applied to x_out + t_out.

use candle_core::{Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};
use vsdm_core::ScoreModel;

/// The toy score network.
pub struct ToyNet {
    t1: Linear,
    t2: Linear,
    x_in: Linear,
    blocks: Vec<[Linear; 3]>,
    o1: Linear,
    o2: Linear,
    emb: usize,
}

impl ToyNet {
    /// `input`: state dimension (2, or 4 for the momentum processes); `output`: 2; `hidden`: 256 officially.
    pub fn new(vb: VarBuilder, input: usize, output: usize, hidden: usize) -> Result<Self> {
        let emb = 128;
        let t2 = Linear::new(
            vb.pp("t2")
                .get_with_hints((hidden, hidden), "weight", candle_nn::init::ZERO)?,
            Some(
                vb.pp("t2")
                    .get_with_hints(hidden, "bias", candle_nn::init::ZERO)?,
            ),
        );
        let blocks = (0..3)
            .map(|b| {
                let v = vb.pp(format!("block{b}"));
                Ok([
                    linear(hidden, hidden, v.pp("0"))?,
                    linear(hidden, hidden, v.pp("1"))?,
                    linear(hidden, hidden, v.pp("2"))?,
                ])
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            t1: linear(emb, hidden, vb.pp("t1"))?,
            t2,
            x_in: linear(input, hidden, vb.pp("x_in"))?,
            blocks,
            o1: linear(hidden, hidden, vb.pp("o1"))?,
            o2: linear(hidden, output, vb.pp("o2"))?,
            emb,
        })
    }

    fn time_embedding(&self, t: &Tensor) -> Result<Tensor> {
        let half = self.emb / 2;
        let freqs: Vec<f32> = (0..half)
            .map(|i| (-(10_000f64.ln()) * i as f64 / half as f64).exp() as f32)
            .collect();
        let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
        let arg = (t.unsqueeze(1)? * 100.0)?.broadcast_mul(&freqs)?;
        Tensor::cat(&[arg.cos()?, arg.sin()?], 1)
    }
}

impl ScoreModel for ToyNet {
    fn forward(&self, x: &Tensor, t: &Tensor, _cond: Option<&Tensor>) -> Result<Tensor> {
        let te = self
            .t2
            .forward(&self.t1.forward(&self.time_embedding(t)?)?.silu()?)?;
        let mut h = self.x_in.forward(x)?;
        for [a, b, c] in &self.blocks {
            let r = c
                .forward(&b.forward(&a.forward(&h)?.silu()?)?.silu()?)?
                .silu()?;
            h = ((h + r)? * std::f64::consts::FRAC_1_SQRT_2)?;
        }
        self.o2.forward(&self.o1.forward(&(h + te)?)?.silu()?)
    }
}
