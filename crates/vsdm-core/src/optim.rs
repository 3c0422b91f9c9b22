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
///
/// f32 variables on the CPU, or on CUDA in a `cuda` build, step through [`crate::adamw`]'s two in-place ops
/// per tensor (the moments, then the parameters), which compute the chain of candle ops below ([`Self::
/// set_fused`]`(false)`, and every other variable) to the last bit in two passes instead of about seventeen.
pub struct AdamW {
    cfg: AdamConfig,
    vars: BTreeMap<String, Var>,
    /// Per variable of n values, its moments as one flat tensor of 2n: m, then v.
    mv: BTreeMap<String, Tensor>,
    step: usize,
    fused: bool,
}

impl AdamW {
    pub fn new(vars: BTreeMap<String, Var>, cfg: AdamConfig) -> Result<Self> {
        let mut mv = BTreeMap::new();
        for (k, var) in &vars {
            let t = var.as_tensor();
            mv.insert(
                k.clone(),
                Tensor::zeros(2 * t.elem_count(), t.dtype(), t.device())?,
            );
        }
        Ok(Self {
            cfg,
            vars,
            mv,
            step: 0,
            fused: true,
        })
    }

    /// Whether eligible variables step through the fused ops (the default) or every variable through the
    /// chain of candle ops (for comparisons).
    pub fn set_fused(&mut self, fused: bool) {
        self.fused = fused;
    }

    /// The moments m and v of variable `k` (views of its buffer, in the variable's shape).
    fn moments(&self, k: &str) -> Result<(Tensor, Tensor)> {
        let t = self.vars[k].as_tensor();
        let n = t.elem_count();
        let mv = &self.mv[k];
        Ok((
            mv.narrow(0, 0, n)?.reshape(t.shape())?,
            mv.narrow(0, n, n)?.reshape(t.shape())?,
        ))
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
        let factors = crate::adamw::Factors::new(&c, lr, self.step, grad_scale);
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for (k, var) in &self.vars {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let theta = var.as_tensor();
            if self.fused && crate::adamw::applies(theta) && g.dtype() == theta.dtype() {
                crate::adamw::step(
                    theta,
                    &self.mv[k],
                    &g.detach(),
                    factors,
                    crate::adamw::Backend::Native,
                )?;
                continue;
            }
            let (m, v) = self.moments(k)?;
            // Detached: gradients may carry graph history, which the moments must not accumulate.
            let g = (g.detach() * grad_scale)?;
            let m = ((m * c.beta1)? + (&g * (1.0 - c.beta1))?)?.detach();
            let v = ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?.detach();
            let theta = if c.weight_decay > 0.0 {
                (theta * (1.0 - lr * c.weight_decay))?
            } else {
                theta.clone()
            };
            let upd = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            var.set(&(theta - (upd * lr)?)?)?;
            let mv = Tensor::cat(&[m.flatten_all()?, v.flatten_all()?], 0)?;
            self.mv.insert(k.clone(), mv);
        }
        Ok(())
    }

    /// The moments, named `m.<var>` and `v.<var>`, for a checkpoint (copies: the fused steps update the
    /// optimiser's buffers in place).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut ms = Vec::new();
        let mut vs = Vec::new();
        for k in self.vars.keys() {
            // The narrowed views of a buffer the optimiser owns cannot fail to build.
            let (m, v) = self.moments(k).expect("moments of a known variable");
            ms.push((format!("m.{k}"), m.copy().expect("copy of a moment")));
            vs.push((format!("v.{k}"), v.copy().expect("copy of a moment")));
        }
        ms.extend(vs);
        ms
    }

    /// Restores moments and the step count.
    pub fn load_state(
        &mut self,
        step: usize,
        get: &dyn Fn(&str) -> Option<Tensor>,
    ) -> std::result::Result<(), String> {
        let mut loaded = BTreeMap::new();
        for (k, var) in &self.vars {
            let want = var.as_tensor();
            let mut parts = Vec::with_capacity(2);
            for prefix in ["m", "v"] {
                let name = format!("{prefix}.{k}");
                let t = get(&name).ok_or_else(|| format!("missing optimiser tensor {name}"))?;
                if t.dims() != want.dims() {
                    return Err(format!(
                        "optimiser tensor {name} has shape {:?}, expected {:?}",
                        t.dims(),
                        want.dims()
                    ));
                }
                let t = t
                    .to_device(want.device())
                    .and_then(|t| t.to_dtype(want.dtype()))
                    .and_then(|t| t.flatten_all())
                    .map_err(|e| format!("optimiser tensor {name}: {e}"))?;
                parts.push(t);
            }
            let mv =
                Tensor::cat(&parts, 0).map_err(|e| format!("optimiser moments of {k}: {e}"))?;
            loaded.insert(k.clone(), mv);
        }
        self.mv = loaded;
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
    ///
    /// # Panics
    /// If `theta` or `grad` do not hold as many values as the optimiser was made for.
    pub fn step(&mut self, theta: &mut [f64], grad: &[f64]) {
        assert!(
            theta.len() == self.m.len() && grad.len() == self.m.len(),
            "AdamF64::step: {} parameters and {} gradients for an optimiser of {}",
            theta.len(),
            grad.len(),
            self.m.len()
        );
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

    /// Variables of several shapes (one without a gradient), weight decay and a clipping scale.
    fn problem(dev: &Device) -> (BTreeMap<String, Var>, AdamConfig) {
        let mut rng = crate::NoiseRng::new(7);
        let mut vars = BTreeMap::new();
        for (name, dims) in [
            ("a", vec![3, 5, 2]),
            ("b", vec![7]),
            ("c", vec![1]),
            ("idle", vec![4]),
        ] {
            let t = rng.randn(&dims, dev).unwrap();
            vars.insert(name.to_string(), Var::from_tensor(&t).unwrap());
        }
        let cfg = AdamConfig {
            weight_decay: 0.01,
            lr_step: 3,
            lr_gamma: 0.5,
            ..AdamConfig::new(0.02)
        };
        (vars, cfg)
    }

    /// A loss whose gradients differ per element and change as the variables move: Σ sin(w)·w² over all but
    /// the idle variable.
    fn grads(vars: &BTreeMap<String, Var>) -> GradStore {
        scaled_grads(vars, 1.0)
    }

    /// The gradients of `scale` times [`grads`]'s loss.
    fn scaled_grads(vars: &BTreeMap<String, Var>, scale: f64) -> GradStore {
        let mut loss: Option<Tensor> = None;
        for (k, v) in vars {
            if k == "idle" {
                continue;
            }
            let w = v.as_tensor();
            let l = (w.sin().unwrap() * w.sqr().unwrap())
                .unwrap()
                .sum_all()
                .unwrap();
            loss = Some(match loss {
                None => l,
                Some(t) => (t + l).unwrap(),
            });
        }
        (loss.unwrap() * scale).unwrap().backward().unwrap()
    }

    fn values(vars: &BTreeMap<String, Var>) -> Vec<Vec<f32>> {
        vars.values()
            .map(|v| {
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect()
    }

    fn fresh(vars: &BTreeMap<String, Var>) -> BTreeMap<String, Var> {
        vars.iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap(),
                )
            })
            .collect()
    }

    /// The fused step gives the chain of candle ops' parameters and moments to the last bit, step after step
    /// (weight decay, a gradient scale, a rate that halves, a variable without a gradient).
    #[test]
    fn fused_steps_equal_the_candle_chain_bit_for_bit() {
        let dev = Device::Cpu;
        let (vars, cfg) = problem(&dev);
        let (va, vb) = (fresh(&vars), fresh(&vars));
        let mut fused = AdamW::new(va.clone(), cfg).unwrap();
        let mut chain = AdamW::new(vb.clone(), cfg).unwrap();
        chain.set_fused(false);
        for k in 0..8 {
            let scale = if k % 2 == 0 { 1.0 } else { 0.37 };
            fused.step(&grads(&va), scale).unwrap();
            chain.step(&grads(&vb), scale).unwrap();
            assert_eq!(values(&va), values(&vb), "parameters after step {k}");
        }
        let bits = |o: &AdamW| -> Vec<(String, Vec<f32>)> {
            o.state_tensors()
                .into_iter()
                .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1().unwrap()))
                .collect()
        };
        assert_eq!(bits(&fused), bits(&chain));
        assert_ne!(values(&va), values(&vars), "the variables moved");
        assert_eq!(
            va["idle"].as_tensor().to_vec1::<f32>().unwrap(),
            vars["idle"].as_tensor().to_vec1::<f32>().unwrap()
        );
    }

    /// The CUDA source (`adamw.cu`), compiled for the host and run block by block, computes the same bits as
    /// the CPU loop, on tensors longer than one launch's threads (the grid-stride loop and the m/v halves).
    #[test]
    fn the_cuda_source_on_the_host_equals_the_cpu_loop() {
        use crate::adamw::{step, Backend, Factors};
        let dev = Device::Cpu;
        let mut rng = crate::NoiseRng::new(3);
        let cfg = AdamConfig {
            weight_decay: 0.05,
            ..AdamConfig::new(3e-3)
        };
        for n in [1usize, 255, 4096 * 256 + 3] {
            let theta0 = rng.randn(&[n], &dev).unwrap();
            let mv0 = rng.randn(&[2 * n], &dev).unwrap().abs().unwrap();
            let out = |backend: Backend| -> (Vec<f32>, Vec<f32>) {
                let (theta, mv) = (theta0.copy().unwrap(), mv0.copy().unwrap());
                for k in 1..=3 {
                    let g = rng_grad(n, k);
                    step(&theta, &mv, &g, Factors::new(&cfg, 3e-3, k, 0.8), backend).unwrap();
                }
                (theta.to_vec1().unwrap(), mv.to_vec1().unwrap())
            };
            assert_eq!(out(Backend::Native), out(Backend::Emulated), "n = {n}");
        }
    }

    fn rng_grad(n: usize, k: usize) -> Tensor {
        crate::NoiseRng::new(100 + k as u64)
            .randn(&[n], &Device::Cpu)
            .unwrap()
    }

    /// The fused EMA update gives candle's chain (two products, a sum) to the last bit, and the CUDA source on
    /// the host gives the loop's bits, over several updates of a moving parameter.
    #[test]
    fn fused_ema_equals_the_chain_and_the_cuda_source() {
        use crate::adamw::{ema, Backend};
        let dev = Device::Cpu;
        let mut rng = crate::NoiseRng::new(11);
        let n = 4096 * 256 + 5;
        let start = rng.randn(&[n], &dev).unwrap();
        let (a, b) = (start.copy().unwrap(), start.copy().unwrap());
        let mut chain = start.copy().unwrap();
        for (k, d) in [0.9999f64, 0.5, 0.1].into_iter().enumerate() {
            let theta = rng_grad(n, k);
            ema(&a, &theta, d, Backend::Native).unwrap();
            ema(&b, &theta, d, Backend::Emulated).unwrap();
            chain = ((&chain * d).unwrap() + (&theta * (1.0 - d)).unwrap()).unwrap();
        }
        let bits = |t: &Tensor| t.to_vec1::<f32>().unwrap();
        assert_eq!(bits(&a), bits(&chain));
        assert_eq!(bits(&b), bits(&chain));
    }

    /// Saving the moments and restoring them into a fresh optimiser continues the run exactly.
    #[test]
    fn restored_moments_continue_the_run_exactly() {
        let dev = Device::Cpu;
        let (vars, cfg) = problem(&dev);
        let (va, vb) = (fresh(&vars), fresh(&vars));
        let mut a = AdamW::new(va.clone(), cfg).unwrap();
        let mut b = AdamW::new(vb.clone(), cfg).unwrap();
        for _ in 0..4 {
            a.step(&grads(&va), 1.0).unwrap();
            b.step(&grads(&vb), 1.0).unwrap();
        }
        let saved: std::collections::HashMap<String, Tensor> =
            b.state_tensors().into_iter().collect();
        // The saved copies do not follow later steps.
        let before = saved["m.a"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        b.step(&grads(&vb), 1.0).unwrap();
        assert_eq!(
            saved["m.a"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            before
        );
        let vc = fresh(&vb);
        let mut c = AdamW::new(vc.clone(), cfg).unwrap();
        let saved: std::collections::HashMap<String, Tensor> =
            b.state_tensors().into_iter().collect();
        c.load_state(5, &|k| saved.get(k).cloned()).unwrap();
        a.step(&grads(&va), 1.0).unwrap();
        for _ in 0..3 {
            a.step(&grads(&va), 1.0).unwrap();
            b.step(&grads(&vb), 1.0).unwrap();
            c.step(&grads(&vc), 1.0).unwrap();
        }
        assert_eq!(values(&va), values(&vb));
        assert_eq!(values(&vb), values(&vc));
        let e = c
            .load_state(5, &|k| (k != "v.b").then(|| saved[k].clone()))
            .unwrap_err();
        assert!(e.contains("v.b"), "{e}");
    }

    /// Every optimiser here takes the steps of candle_nn's AdamW (PyTorch's algorithm, written independently of
    /// this file): [`AdamW`] on f64 variables (the chain of candle ops) and [`AdamF64`] on host copies fed the
    /// analytic gradient d/dw sin(w)·w² = w²·cos w + 2w·sin w, both to 1e-12; [`AdamW`]'s fused f32 step to 1e-6
    /// (f32 rounding: 5e-8 seen over the 8 steps). Through weight decay, a rate halved every third step
    /// (candle_nn is set to [`AdamW::current_lr`] before each step), a clipping scale (candle_nn gets the
    /// gradients of the scaled loss) and a variable without a gradient.
    #[test]
    fn every_optimiser_takes_candle_nns_adamw_steps() {
        use candle_nn::Optimizer;
        let dev = Device::Cpu;
        for (dtype, tol) in [
            (candle_core::DType::F64, 1e-12),
            (candle_core::DType::F32, 1e-6),
        ] {
            let (start, cfg) = problem(&dev);
            let start: BTreeMap<String, Var> = start
                .iter()
                .map(|(k, v)| {
                    let t = v.as_tensor().to_dtype(dtype).unwrap();
                    (k.clone(), Var::from_tensor(&t).unwrap())
                })
                .collect();
            let (ours, theirs) = (fresh(&start), fresh(&start));
            let mut opt = AdamW::new(ours.clone(), cfg).unwrap();
            let params = candle_nn::ParamsAdamW {
                lr: cfg.lr,
                beta1: cfg.beta1,
                beta2: cfg.beta2,
                eps: cfg.eps,
                weight_decay: cfg.weight_decay,
            };
            let mut reference =
                candle_nn::AdamW::new(theirs.values().cloned().collect(), params).unwrap();
            let as_f64 = |v: &Var| -> Vec<f64> {
                let t = v.as_tensor().flatten_all().unwrap();
                t.to_dtype(candle_core::DType::F64)
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            };
            let mut host: BTreeMap<String, (Vec<f64>, AdamF64)> = start
                .iter()
                .filter(|(k, _)| *k != "idle")
                .map(|(k, v)| {
                    let w = as_f64(v);
                    let n = w.len();
                    (k.clone(), (w, AdamF64::new(n, cfg)))
                })
                .collect();
            for step in 0..8 {
                let scale = if step % 2 == 0 { 1.0 } else { 0.37 };
                assert_eq!(opt.step_count(), step);
                assert_eq!(opt.current_lr(), cfg.lr_at(step));
                reference.set_learning_rate(opt.current_lr());
                opt.step(&grads(&ours), scale).unwrap();
                reference.step(&scaled_grads(&theirs, scale)).unwrap();
                for (w, adam) in host.values_mut() {
                    let g: Vec<f64> = w
                        .iter()
                        .map(|&x| scale * (x * x * x.cos() + 2.0 * x * x.sin()))
                        .collect();
                    adam.step(w, &g);
                }
                let off = |a: &[f64], b: &[f64]| {
                    a.iter()
                        .zip(b)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0.0, f64::max)
                };
                for (k, v) in &ours {
                    let b = as_f64(&theirs[k]);
                    let worst = off(&as_f64(v), &b);
                    assert!(
                        worst <= tol,
                        "{dtype:?} {k} after step {step}: off by {worst}"
                    );
                    if let (candle_core::DType::F64, Some((w, _))) = (dtype, host.get(k)) {
                        let worst = off(w, &b);
                        assert!(
                            worst <= tol,
                            "AdamF64 {k} after step {step}: off by {worst}"
                        );
                    }
                }
            }
            assert_eq!(as_f64(&ours["idle"]), as_f64(&start["idle"]));
            assert_ne!(
                as_f64(&ours["a"]),
                as_f64(&start["a"]),
                "the variables moved"
            );
        }
    }

    /// The fused step is taken by f32 variables on the CPU and by no other dtype (those keep the chain).
    #[test]
    fn the_fused_step_applies_to_f32_only() {
        use crate::adamw::applies;
        let dev = Device::Cpu;
        for (dtype, want) in [
            (candle_core::DType::F32, true),
            (candle_core::DType::F64, false),
            (candle_core::DType::BF16, false),
            (candle_core::DType::F16, false),
        ] {
            let t = Tensor::zeros(4, dtype, &dev).unwrap();
            assert_eq!(applies(&t), want, "{dtype:?}");
        }
    }

    /// The fused step on views that start inside their buffers (a parameter and moments cut out of larger
    /// tensors) updates exactly the viewed values, as on standalone tensors; wrong shapes, moments of the
    /// wrong length and strided tensors are refused by name and leave the moments as they were.
    #[test]
    fn the_fused_step_on_views_and_its_refusals() {
        use crate::adamw::{ema, step, Backend, Factors};
        let dev = Device::Cpu;
        let n = 6;
        let mut rng = crate::NoiseRng::new(5);
        let theta0 = rng.randn(&[n], &dev).unwrap();
        let mv0 = rng.randn(&[2 * n], &dev).unwrap().abs().unwrap();
        let g = rng.randn(&[n], &dev).unwrap();
        let f = Factors::new(&AdamConfig::new(0.1), 0.1, 1, 1.0);
        let (theta, mv) = (theta0.copy().unwrap(), mv0.copy().unwrap());
        step(&theta, &mv, &g, f, Backend::Native).unwrap();
        let pad = |t: &Tensor, before: usize| {
            let z = |k: usize| Tensor::full(7f32, k, &dev).unwrap();
            Tensor::cat(&[z(before), t.clone(), z(2)], 0).unwrap()
        };
        let (big_theta, big_mv) = (pad(&theta0, 3), pad(&mv0, 5));
        let (vt, vm) = (
            big_theta.narrow(0, 3, n).unwrap(),
            big_mv.narrow(0, 5, 2 * n).unwrap(),
        );
        step(&vt, &vm, &g, f, Backend::Native).unwrap();
        let v = |t: &Tensor| t.to_vec1::<f32>().unwrap();
        assert_eq!(v(&big_theta), v(&pad(&theta, 3)));
        assert_eq!(v(&big_mv), v(&pad(&mv, 5)));

        let refused = |theta: &Tensor, mv: &Tensor, g: &Tensor, what: &str| {
            let before = v(&mv.flatten_all().unwrap());
            let e = step(theta, mv, g, f, Backend::Native)
                .unwrap_err()
                .to_string();
            assert!(e.contains("adamw") && e.contains(what), "{e}");
            assert_eq!(v(&mv.flatten_all().unwrap()), before, "{e}");
        };
        let m = mv0.copy().unwrap();
        refused(&theta0, &m, &g.narrow(0, 0, n - 1).unwrap(), "[5]");
        refused(&theta0, &m.narrow(0, 0, 2 * n - 1).unwrap(), &g, "11");
        let square = rng.randn(&[3, 3], &dev).unwrap();
        let moments = rng.randn(&[18], &dev).unwrap();
        let g9 = rng.randn(&[3, 3], &dev).unwrap();
        refused(&square.t().unwrap(), &moments, &g9, "parameter strided");
        let strided = rng.randn(&[2, 9], &dev).unwrap().t().unwrap();
        refused(&square, &strided, &g9, "moments strided");

        let avg = rng.randn(&[3, 3], &dev).unwrap();
        let e = ema(&avg.t().unwrap(), &square, 0.9, Backend::Native).unwrap_err();
        assert!(e.to_string().contains("ema-update"), "{e}");
        let e = ema(&avg, &theta0, 0.9, Backend::Native).unwrap_err();
        assert!(
            e.to_string().contains("[3, 3]") && e.to_string().contains("[6]"),
            "{e}"
        );
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
