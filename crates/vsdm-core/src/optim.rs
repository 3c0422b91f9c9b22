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

    /// Global L2 norm of the gradients of the variables.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut total = 0f64;
        for var in self.vars.values() {
            if let Some(g) = grads.get(var.as_tensor()) {
                total += g
                    .sqr()?
                    .sum_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_scalar::<f64>()?;
            }
        }
        Ok(total.sqrt())
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
