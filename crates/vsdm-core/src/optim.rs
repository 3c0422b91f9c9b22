//! Optimisers with state that can be saved and restored exactly (candle_nn's AdamW keeps its moments private,
//! which rules out an exact resume): [`AdamW`] for network variables and [`AdamF64`] for the variational
//! parameters, both with a step-decay learning rate (PyTorch's StepLR).

use std::collections::BTreeMap;

use candle_core::{backprop::GradStore, Tensor, Var};

use crate::error::Result;

/// Adam hyper-parameters, with decoupled weight decay and StepLR decay lr·γ^⌊k/step⌋.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// StepLR period in optimiser steps (0: constant rate).
    pub lr_step: usize,
    /// StepLR factor.
    pub lr_gamma: f64,
}

impl AdamConfig {
    /// Adam with rate `lr`, β = (0.9, 0.999), ε = 1e-8, no decay.
    pub fn new(lr: f64) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            lr_step: 0,
            lr_gamma: 1.0,
        }
    }

    /// The rate at optimiser step `k` (0-based).
    pub fn lr_at(&self, k: usize) -> f64 {
        match k.checked_div(self.lr_step) {
            None => self.lr,
            Some(p) => self.lr * self.lr_gamma.powi(p as i32),
        }
    }
}

/// AdamW over named candle variables (iterated in name order, so runs are reproducible).
pub struct AdamW {
    cfg: AdamConfig,
    vars: BTreeMap<String, Var>,
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
    step: usize,
}

impl AdamW {
    pub fn new(vars: BTreeMap<String, Var>, cfg: AdamConfig) -> Result<Self> {
        let mut m = BTreeMap::new();
        let mut v = BTreeMap::new();
        for (k, var) in &vars {
            m.insert(k.clone(), var.as_tensor().zeros_like()?);
            v.insert(k.clone(), var.as_tensor().zeros_like()?);
        }
        Ok(Self {
            cfg,
            vars,
            m,
            v,
            step: 0,
        })
    }

    /// Steps taken.
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// The rate the next step will use.
    pub fn current_lr(&self) -> f64 {
        self.cfg.lr_at(self.step)
    }

    /// Global L2 norm of the gradients of the variables. The per-variable sums of squares are stacked on the
    /// device and read back in one copy: a scalar read per variable made the host wait for the device once per
    /// parameter tensor (≈ 300 times a step for the paper-scale U-Net). They are added on the host in the
    /// variables' order, in f64, as the per-variable reads were, so the value is the same to the last bit.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let sums = self
            .vars
            .values()
            .filter_map(|var| grads.get(var.as_tensor()))
            .map(|g| g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64))
            .collect::<candle_core::Result<Vec<_>>>()?;
        if sums.is_empty() {
            return Ok(0.0);
        }
        let host = Tensor::stack(&sums, 0)?.to_vec1::<f64>()?;
        Ok(host.iter().fold(0f64, |total, s| total + s).sqrt())
    }

    /// One AdamW step; gradients are first scaled by `grad_scale` (for clipping). Variables without a gradient
    /// are left alone.
    pub fn step(&mut self, grads: &GradStore, grad_scale: f64) -> Result<()> {
        let c = self.cfg;
        let lr = c.lr_at(self.step);
        self.step += 1;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for (k, var) in &self.vars {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // Detached: gradients may carry graph history, which the moments must not accumulate.
            let g = (g.detach() * grad_scale)?;
            let m = ((&self.m[k] * c.beta1)? + (&g * (1.0 - c.beta1))?)?.detach();
            let v = ((&self.v[k] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?.detach();
            let theta = var.as_tensor();
            let theta = if c.weight_decay > 0.0 {
                (theta * (1.0 - lr * c.weight_decay))?
            } else {
                theta.clone()
            };
            let upd = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            var.set(&(theta - (upd * lr)?)?)?;
            self.m.insert(k.clone(), m);
            self.v.insert(k.clone(), v);
        }
        Ok(())
    }

    /// The moments, named `m.<var>` and `v.<var>`, for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (k, t) in &self.m {
            out.push((format!("m.{k}"), t.clone()));
        }
        for (k, t) in &self.v {
            out.push((format!("v.{k}"), t.clone()));
        }
        out
    }

    /// Restores moments and the step count.
    pub fn load_state(
        &mut self,
        step: usize,
        get: &dyn Fn(&str) -> Option<Tensor>,
    ) -> std::result::Result<(), String> {
        for k in self.vars.keys() {
            for (prefix, map) in [("m", &mut self.m), ("v", &mut self.v)] {
                let name = format!("{prefix}.{k}");
                let t = get(&name).ok_or_else(|| format!("missing optimiser tensor {name}"))?;
                if t.dims() != map[k].dims() {
                    return Err(format!(
                        "optimiser tensor {name} has shape {:?}, expected {:?}",
                        t.dims(),
                        map[k].dims()
                    ));
                }
                map.insert(k.clone(), t);
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Adam on a host vector of f64 (the variational parameters A or c).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamF64 {
    pub cfg: AdamConfig,
    pub m: Vec<f64>,
    pub v: Vec<f64>,
    pub step: usize,
}

impl AdamF64 {
    pub fn new(n: usize, cfg: AdamConfig) -> Self {
        Self {
            cfg,
            m: vec![0.0; n],
            v: vec![0.0; n],
            step: 0,
        }
    }

    /// One step on `theta` with gradient `grad`.
    pub fn step(&mut self, theta: &mut [f64], grad: &[f64]) {
        let c = self.cfg;
        let lr = c.lr_at(self.step);
        self.step += 1;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for i in 0..theta.len() {
            let g = grad[i];
            self.m[i] = c.beta1 * self.m[i] + (1.0 - c.beta1) * g;
            self.v[i] = c.beta2 * self.v[i] + (1.0 - c.beta2) * g * g;
            theta[i] *= 1.0 - lr * c.weight_decay;
            theta[i] -= lr * (self.m[i] / bc1) / ((self.v[i] / bc2).sqrt() + c.eps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Adam on a convex quadratic reaches its minimiser; AdamW and AdamF64 take identical steps.
    #[test]
    fn adam_minimises_a_quadratic_and_both_versions_agree() {
        let target = [1.5f64, -2.0, 0.25];
        let var = Var::from_vec(vec![0f32; 3], 3, &Device::Cpu).unwrap();
        let mut vars = BTreeMap::new();
        vars.insert("w".to_string(), var.clone());
        let cfg = AdamConfig::new(0.05);
        let mut opt = AdamW::new(vars, cfg).unwrap();
        let mut host = vec![0f64; 3];
        let mut opt64 = AdamF64::new(3, cfg);
        let tt =
            Tensor::from_vec(target.iter().map(|&x| x as f32).collect(), 3, &Device::Cpu).unwrap();
        for _ in 0..400 {
            let loss = (var.as_tensor() - &tt)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            let g = loss.backward().unwrap();
            opt.step(&g, 1.0).unwrap();
            let g64: Vec<f64> = host
                .iter()
                .zip(target)
                .map(|(h, t)| 2.0 * (h - t))
                .collect();
            opt64.step(&mut host, &g64);
        }
        let w = var.as_tensor().to_vec1::<f32>().unwrap();
        for i in 0..3 {
            assert!((w[i] as f64 - target[i]).abs() < 1e-2, "{w:?}");
            assert!((host[i] - w[i] as f64).abs() < 1e-3, "{host:?} vs {w:?}");
        }
    }

    /// The norm over several variables of different shapes, one of them without a gradient, against the
    /// analytic gradient (the loss Σ c_i·w_i² has gradient 2·c_i·w_i) squared and summed in f64.
    #[test]
    fn grad_norm_covers_every_variable_with_a_gradient() {
        let dev = Device::Cpu;
        let mut vars = BTreeMap::new();
        let a = Var::from_vec(vec![1f32, -2.0, 3.0, 0.5, 0.25, -1.5], (2, 3), &dev).unwrap();
        let b = Var::from_vec(vec![4f32, -0.125], 2, &dev).unwrap();
        let unused = Var::from_vec(vec![100f32; 4], 4, &dev).unwrap();
        vars.insert("a".to_string(), a.clone());
        vars.insert("b".to_string(), b.clone());
        vars.insert("unused".to_string(), unused);
        let opt = AdamW::new(vars, AdamConfig::new(0.1)).unwrap();
        let loss = ((a.as_tensor().sqr().unwrap() * 3.0)
            .unwrap()
            .sum_all()
            .unwrap()
            + b.as_tensor().sqr().unwrap().sum_all().unwrap())
        .unwrap();
        let grads = loss.backward().unwrap();
        let want = [1f64, -2.0, 3.0, 0.5, 0.25, -1.5]
            .iter()
            .map(|w| (6.0 * w) * (6.0 * w))
            .chain([4f64, -0.125].iter().map(|w| (2.0 * w) * (2.0 * w)))
            .sum::<f64>()
            .sqrt();
        let got = opt.grad_norm(&grads).unwrap();
        assert!((got - want).abs() < 1e-12 * want, "{got} vs {want}");
        let none = AdamW::new(BTreeMap::new(), AdamConfig::new(0.1)).unwrap();
        assert_eq!(none.grad_norm(&grads).unwrap(), 0.0);
    }

    #[test]
    fn step_lr_decays() {
        let c = AdamConfig {
            lr_step: 10,
            lr_gamma: 0.5,
            ..AdamConfig::new(1.0)
        };
        assert_eq!(c.lr_at(9), 1.0);
        assert_eq!(c.lr_at(10), 0.5);
        assert_eq!(c.lr_at(25), 0.25);
    }
}
