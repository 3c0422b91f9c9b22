//! Seeded network initialisation. candle's CPU device cannot be seeded, so a `VarBuilder` over a `VarMap`
//! draws different weights in every run. [`seeded_var_builder`] creates the variables of a `VarMap` from the
//! initialisers the layers ask for (constant, normal, uniform, Kaiming: the same distributions candle uses),
//! drawn from a [`NoiseRng`] in the order the network requests them, so a seed fixes the initial weights.

use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::{Init, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};

use crate::rng::NoiseRng;

struct Seeded {
    map: VarMap,
    rng: Mutex<NoiseRng>,
}

fn draw(init: &Init, shape: &Shape, rng: &mut NoiseRng) -> Vec<f64> {
    let n = shape.elem_count();
    let uniform = |rng: &mut NoiseRng, lo: f64, up: f64| {
        (0..n).map(|_| lo + (up - lo) * rng.uniform()).collect()
    };
    let normal = |rng: &mut NoiseRng, mean: f64, std: f64| -> Vec<f64> {
        use rand_distr::Distribution;
        (0..n)
            .map(|_| {
                mean + std * Distribution::<f64>::sample(&rand_distr::StandardNormal, rng.inner())
            })
            .collect()
    };
    match *init {
        Init::Const(c) => vec![c; n],
        Init::Uniform { lo, up } => uniform(rng, lo, up),
        Init::Randn { mean, stdev } => normal(rng, mean, stdev),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => {
                    let b = 3f64.sqrt() * std;
                    uniform(rng, -b, b)
                }
                NormalOrUniform::Normal => normal(rng, 0.0, std),
            }
        }
    }
}

impl SimpleBackend for Seeded {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = self.map.data().lock().expect("var map lock");
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                candle_core::bail!("shape mismatch on {name}: {s:?} <> {:?}", v.shape())
            }
            return Ok(v.as_tensor().clone());
        }
        let values = draw(&h, &s, &mut self.rng.lock().expect("rng lock"));
        let t = Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("variable {name} has no shape hint; a training VarMap needs one")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map
            .data()
            .lock()
            .expect("var map lock")
            .contains_key(name)
    }
}

/// A `VarBuilder` that creates the variables of `map` from the layers' own initialisers, drawn from `rng`.
pub fn seeded_var_builder(
    map: &VarMap,
    rng: NoiseRng,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    VarBuilder::from_backend(
        Box::new(Seeded {
            map: map.clone(),
            rng: Mutex::new(rng),
        }),
        dtype,
        device.clone(),
    )
}

/// A `VarBuilder` over untracked views of `map`'s variables (`Tensor::detach`: the same storage, so in-place
/// updates of the variables reach a network built from it): a network for forward passes only, which records no
/// graph — the trainer's EMA network, and the forward rates of `vsdm-image bench` and `net_speed`.
pub fn untracked_var_builder(map: &VarMap, dtype: DType, device: &Device) -> VarBuilder<'static> {
    let views = map
        .data()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    VarBuilder::from_tensors(views, dtype, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights_and_kaiming_scale() {
        let build = |seed| {
            let map = VarMap::new();
            let vb = seeded_var_builder(&map, NoiseRng::new(seed), DType::F32, &Device::Cpu);
            let l = candle_nn::linear(400, 300, vb.pp("l")).unwrap();
            (l.weight().clone(), l.bias().unwrap().clone())
        };
        let (w1, b1) = build(1);
        let (w2, b2) = build(1);
        let (w3, _) = build(2);
        let diff = |a: &Tensor, b: &Tensor| crate::compare::max_abs_diff(a, b).unwrap();
        assert_eq!(diff(&w1, &w2), 0.0);
        assert_eq!(diff(&b1, &b2), 0.0);
        assert!(diff(&w1, &w3) > 0.0);
        // candle's default linear init: Kaiming normal, ReLU gain √2, fan-in 400 ⇒ std √2/20.
        let std = w1
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        assert!((std - 2f32.sqrt() / 20.0).abs() < 0.002, "std {std}");
    }
}
