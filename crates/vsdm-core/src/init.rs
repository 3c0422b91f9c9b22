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

    /// Mean, standard deviation, minimum and maximum of a tensor's values.
    fn moments(t: &Tensor) -> (f64, f64, f64, f64) {
        let v: Vec<f64> = t
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let (lo, hi) = v
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        (mean, std, lo, hi)
    }

    /// Each initialiser draws the distribution candle defines for it (20,000 values, bounds within 4 standard
    /// errors): a constant; U(lo, up) with mean (lo + up)/2 and variance (up − lo)²/12; N(mean, stdev²);
    /// Kaiming uniform U(±gain·√(3/fan_in)), the ReLU gain √2.
    #[test]
    fn initialisers_draw_candles_distributions() {
        let map = VarMap::new();
        let vb = seeded_var_builder(&map, NoiseRng::new(5), DType::F32, &Device::Cpu);
        let get =
            |name: &str, shape: (usize, usize), init| vb.get_with_hints(shape, name, init).unwrap();
        let c = get("c", (3, 4), Init::Const(0.7));
        assert!(c
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .all(|&x| x == 0.7));
        let (mean, std, lo, hi) =
            moments(&get("u", (100, 200), Init::Uniform { lo: -3.0, up: 5.0 }));
        assert!(
            (-3.0..5.0).contains(&lo) && (-3.0..5.0).contains(&hi),
            "{lo}..{hi}"
        );
        assert!(lo < -2.99 && hi > 4.99, "{lo}..{hi}");
        assert!(
            (mean - 1.0).abs() < 0.07 && (std - 8.0 / 12f64.sqrt()).abs() < 0.05,
            "{mean} {std}"
        );
        let (mean, std, ..) = moments(&get(
            "n",
            (100, 200),
            Init::Randn {
                mean: 2.0,
                stdev: 0.5,
            },
        ));
        assert!(
            (mean - 2.0).abs() < 0.015 && (std - 0.5).abs() < 0.01,
            "{mean} {std}"
        );
        let kaiming = Init::Kaiming {
            dist: NormalOrUniform::Uniform,
            fan: candle_nn::init::FanInOut::FanIn,
            non_linearity: candle_nn::init::NonLinearity::ReLU,
        };
        let bound = 2f64.sqrt() * (3.0 / 400.0f64).sqrt();
        let (mean, _, lo, hi) = moments(&get("k", (50, 400), kaiming));
        assert!(
            lo >= -bound - 1e-7 && hi <= bound + 1e-7,
            "{lo}..{hi} against ±{bound}"
        );
        assert!(
            lo < -0.99 * bound && hi > 0.99 * bound,
            "{lo}..{hi} against ±{bound}"
        );
        assert!(mean.abs() < 0.004, "{mean}");
    }

    /// A variable asked for again is the one made first (its shape checked, its name reported as held);
    /// asked for with another shape, an error naming it.
    #[test]
    fn variables_are_made_once_and_their_shape_kept() {
        let map = VarMap::new();
        let vb = seeded_var_builder(&map, NoiseRng::new(6), DType::F32, &Device::Cpu);
        assert!(!vb.contains_tensor("w"));
        let w = vb
            .get_with_hints(
                (2, 3),
                "w",
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )
            .unwrap();
        assert!(vb.contains_tensor("w") && !vb.contains_tensor("v"));
        let again = vb.get_with_hints((2, 3), "w", Init::Const(9.0)).unwrap();
        assert_eq!(crate::compare::max_abs_diff(&w, &again).unwrap(), 0.0);
        let e = vb
            .get_with_hints((3, 2), "w", Init::Const(9.0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("shape mismatch on w"), "{e}");
        assert_eq!(map.all_vars().len(), 1);
    }

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
