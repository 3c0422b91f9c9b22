//! VSMD's momentum forward process (ALGORITHM.md §E), per data element:
//! dx = ½β v dt,  dv = ½β [−(1 − 2γa) x − γ(1 − 2c) v] dt + √(γβ) dw,
//! with the variational coefficients (a, c) of the forward score f(z) = a x + c v acting on v.
//!
//! With the critical-damping transform (§E.2) only c is free and a = a(c; γ, κ). With a = c = 0 this is CLD.
//! The initial velocity is v_0 ~ N(0, σ_{v0}² I) (VSMD uses σ_{v0} = 1). Unlike the official code, which
//! conditions the denoising target on the sampled v_0, the kernel here marginalises v_0 analytically
//! (Σ_{t|x_0} = Σ_{t|z_0} + σ_{v0}² Φ e_v e_vᵀ Φᵀ): the same marginals, a lower-variance target, and the prior
//! N(0, Σ_{T|x_0}) is exactly the law the forward process reaches from x_0 = 0.

use candle_core::{Device, Tensor};

use super::{check_shape, check_times, grid_tensor, ForwardProcess, Marginals};
use crate::error::{ensure_finite, Error, Result};
use crate::kernel::momentum::{self, Oscillator};
use crate::schedule::BetaSchedule;

/// How a is obtained from c.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VsmdParams {
    /// Noise scale and nominal friction γ (2 = critical CLD).
    pub gamma: f64,
    /// Damping ratio κ of the critical-damping transform (1 = critical, < 1 under-damped). `None` leaves a
    /// free (then a is given explicitly, e.g. CLD with a = c = 0).
    pub kappa: Option<f64>,
    /// Variance of the initial velocity v_0.
    pub v0_var: f64,
}

impl Default for VsmdParams {
    fn default() -> Self {
        Self {
            gamma: 2.0,
            kappa: Some(1.0),
            v0_var: 1.0,
        }
    }
}

/// The VSMD forward process.
#[derive(Debug, Clone)]
pub struct Vsmd {
    schedule: BetaSchedule,
    shape: Vec<usize>,
    params: VsmdParams,
    a: Vec<f64>,
    c: Vec<f64>,
    /// Stiffness k and friction Γ per element, as f32 tensors of the data shape.
    k_t: Tensor,
    fr_t: Tensor,
}

impl Vsmd {
    /// VSMD with the critical-damping transform: a = a(c; γ, κ) (`params.kappa` must be set).
    pub fn critical(
        schedule: BetaSchedule,
        shape: &[usize],
        c: Vec<f64>,
        params: VsmdParams,
        device: &Device,
    ) -> Result<Self> {
        let kappa = params.kappa.ok_or_else(|| {
            Error::invalid("kappa", "None", "the critical-damping transform needs κ")
        })?;
        if !(kappa.is_finite() && kappa > 0.0) {
            return Err(Error::invalid("kappa", kappa, "κ must be finite and > 0"));
        }
        ensure_finite("c", &c)?;
        let a = c
            .iter()
            .map(|&ci| momentum::critical_a(ci, params.gamma, kappa))
            .collect();
        Self::with_ac(schedule, shape, a, c, params, device)
    }

    /// CLD (Dockhorn et al. 2022) with mass 1 and friction γ: VSMD with a = c = 0.
    pub fn cld(
        schedule: BetaSchedule,
        shape: &[usize],
        params: VsmdParams,
        device: &Device,
    ) -> Result<Self> {
        let n: usize = shape.iter().product();
        let p = VsmdParams {
            kappa: None,
            ..params
        };
        Self::with_ac(schedule, shape, vec![0.0; n], vec![0.0; n], p, device)
    }

    /// VSMD with explicit a and c per element.
    pub fn with_ac(
        schedule: BetaSchedule,
        shape: &[usize],
        a: Vec<f64>,
        c: Vec<f64>,
        params: VsmdParams,
        device: &Device,
    ) -> Result<Self> {
        schedule.validate()?;
        super::check_data_shape(shape)?;
        if !(params.gamma.is_finite() && params.gamma > 0.0) {
            return Err(Error::invalid(
                "gamma",
                params.gamma,
                "γ must be finite and > 0",
            ));
        }
        if !(params.v0_var.is_finite() && params.v0_var >= 0.0) {
            return Err(Error::invalid(
                "v0_var",
                params.v0_var,
                "the initial velocity variance must be ≥ 0",
            ));
        }
        let n: usize = shape.iter().product();
        for (name, v) in [("a", &a), ("c", &c)] {
            if v.len() != n {
                return Err(Error::Shape {
                    what: format!("VSMD coefficient {name}"),
                    expected: format!("{n} values (data shape {shape:?})"),
                    got: format!("{} values", v.len()),
                });
            }
            ensure_finite(name, v)?;
        }
        let osc: Vec<Oscillator> = a
            .iter()
            .zip(&c)
            .map(|(&ai, &ci)| Oscillator::from_ac(ai, ci, params.gamma))
            .collect();
        let k: Vec<f32> = osc.iter().map(|o| o.k as f32).collect();
        let fr: Vec<f32> = osc.iter().map(|o| o.friction as f32).collect();
        Ok(Self {
            schedule,
            shape: shape.to_vec(),
            params,
            k_t: Tensor::from_vec(k, shape, device)?,
            fr_t: Tensor::from_vec(fr, shape, device)?,
            a,
            c,
        })
    }

    /// The parameters (γ, κ, σ_{v0}²).
    pub fn params(&self) -> &VsmdParams {
        &self.params
    }

    /// The x-coefficients a.
    pub fn a(&self) -> &[f64] {
        &self.a
    }

    /// The v-coefficients c.
    pub fn c(&self) -> &[f64] {
        &self.c
    }

    /// The oscillator of element `i`.
    ///
    /// # Panics
    /// If `i` is not an element index (at least the number of data elements).
    pub fn oscillator(&self, i: usize) -> Oscillator {
        Oscillator::from_ac(self.a[i], self.c[i], self.params.gamma)
    }

    /// Splits a state into (x, v).
    pub fn split(&self, z: &Tensor) -> Result<(Tensor, Tensor)> {
        check_shape("state", z, &self.shape, 2)?;
        let ch = self.shape[0];
        Ok((z.narrow(1, 0, ch)?, z.narrow(1, ch, ch)?))
    }

    /// The forward policy on v, Z = √(γβ)(a x + c v) (ALGORITHM.md §E.6).
    pub fn forward_policy(&self, z: &Tensor, t: f64) -> Result<Tensor> {
        let (x, v) = self.split(z)?;
        let dev = z.device();
        let a = Tensor::from_vec(
            self.a.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            self.shape.as_slice(),
            dev,
        )?;
        let c = Tensor::from_vec(
            self.c.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            self.shape.as_slice(),
            dev,
        )?;
        let f = (x.broadcast_mul(&a)? + v.broadcast_mul(&c)?)?;
        Ok((f * (self.params.gamma * self.schedule.beta(t)).sqrt())?)
    }

    fn kernel_at(&self, i: usize, t: f64) -> momentum::MomentumKernel {
        momentum::kernel(
            &self.oscillator(i),
            self.schedule.integral(t),
            self.params.v0_var,
        )
    }

    /// Per-element Cholesky entries at time t (deduplicated over identical oscillators).
    fn chol_host(&self, t: f64) -> Vec<momentum::MomentumKernel> {
        let mut memo: std::collections::HashMap<(u64, u64), momentum::MomentumKernel> =
            Default::default();
        (0..self.a.len())
            .map(|i| {
                *memo
                    .entry((self.a[i].to_bits(), self.c[i].to_bits()))
                    .or_insert_with(|| self.kernel_at(i, t))
            })
            .collect()
    }
}

/// Cached Φ and Cholesky entries of VSMD on a grid, each `[N, shape…]`.
#[derive(Debug, Clone)]
pub struct VsmdMarginals {
    times: Vec<f64>,
    /// Φ_xx and Φ_vx: with v_0 marginalised only the first column of Φ multiplies the data.
    phi_xx: Tensor,
    phi_vx: Tensor,
    l_xx: Tensor,
    l_vx: Tensor,
    l_vv: Tensor,
    channels: usize,
}

impl ForwardProcess for Vsmd {
    type Marginals = VsmdMarginals;

    fn schedule(&self) -> &BetaSchedule {
        &self.schedule
    }

    fn data_shape(&self) -> &[usize] {
        &self.shape
    }

    fn state_factor(&self) -> usize {
        2
    }

    fn marginals(&self, times: &[f64], device: &Device) -> Result<VsmdMarginals> {
        check_times(&self.schedule, times)?;
        let n = times.len();
        let mut cols: [Vec<f64>; 5] = Default::default();
        for &t in times {
            for k in self.chol_host(t) {
                cols[0].push(k.phi[(0, 0)]);
                cols[1].push(k.phi[(1, 0)]);
                cols[2].push(k.chol[0]);
                cols[3].push(k.chol[1]);
                cols[4].push(k.chol[2]);
            }
        }
        for (name, col) in ["Φ_xx", "Φ_vx", "l_xx", "l_vx", "l_vv"].iter().zip(&cols) {
            ensure_finite(name, col)?;
        }
        if let Some(i) = cols[4].iter().position(|&l| l <= 0.0) {
            return Err(Error::NotPositiveDefinite {
                t: times[i / self.a.len()],
                detail: "the velocity variance l_vv vanished".into(),
            });
        }
        let [pxx, pvx, lxx, lvx, lvv] = cols;
        Ok(VsmdMarginals {
            times: times.to_vec(),
            phi_xx: grid_tensor(pxx, n, &self.shape, device)?,
            phi_vx: grid_tensor(pvx, n, &self.shape, device)?,
            l_xx: grid_tensor(lxx, n, &self.shape, device)?,
            l_vx: grid_tensor(lvx, n, &self.shape, device)?,
            l_vv: grid_tensor(lvv, n, &self.shape, device)?,
            channels: self.shape[0],
        })
    }

    fn drift(&self, z: &Tensor, t: f64) -> Result<Tensor> {
        let (x, v) = self.split(z)?;
        let hb = 0.5 * self.schedule.beta(t);
        let fx = (&v * hb)?;
        let fv = ((x.broadcast_mul(&self.k_t)? + v.broadcast_mul(&self.fr_t)?)? * (-hb))?;
        Ok(Tensor::cat(&[fx, fv], 1)?)
    }

    fn diffusion_sq(&self, t: f64) -> f64 {
        self.params.gamma * self.schedule.beta(t)
    }

    fn noise_increment(&self, xi: &Tensor, t: f64, h: f64) -> Result<Tensor> {
        let (_, xv) = self.split(xi)?;
        let nv = (xv * (self.diffusion_sq(t) * h).sqrt())?;
        Ok(Tensor::cat(&[nv.zeros_like()?, nv], 1)?)
    }

    fn initial_state(&self, x0: &Tensor, xi: &Tensor) -> Result<Tensor> {
        check_shape("x0", x0, &self.shape, 1)?;
        check_shape("v0 noise", xi, &self.shape, 1)?;
        Ok(Tensor::cat(
            &[x0.clone(), (xi * self.params.v0_var.sqrt())?],
            1,
        )?)
    }

    fn reverse_drift(
        &self,
        z: &Tensor,
        t: f64,
        score: &Tensor,
        probability_flow: bool,
    ) -> Result<Tensor> {
        let lam = if probability_flow { 0.5 } else { 1.0 };
        let f = self.drift(z, t)?;
        let (fx, fv) = (
            f.narrow(1, 0, self.shape[0])?,
            f.narrow(1, self.shape[0], self.shape[0])?,
        );
        let fv = (fv - (score * (lam * self.diffusion_sq(t)))?)?;
        Ok(Tensor::cat(&[fx, fv], 1)?)
    }

    fn prior_from_noise(&self, xi: &Tensor) -> Result<Tensor> {
        let (ex, ev) = self.split(xi)?;
        let ks = self.chol_host(self.schedule.t_max());
        let to = |f: &dyn Fn(&momentum::MomentumKernel) -> f64| {
            Tensor::from_vec(
                ks.iter().map(|k| f(k) as f32).collect::<Vec<_>>(),
                self.shape.as_slice(),
                xi.device(),
            )
        };
        let (lxx, lvx, lvv) = (
            to(&|k| k.chol[0])?,
            to(&|k| k.chol[1])?,
            to(&|k| k.chol[2])?,
        );
        let x = ex.broadcast_mul(&lxx)?;
        let v = (ex.broadcast_mul(&lvx)? + ev.broadcast_mul(&lvv)?)?;
        Ok(Tensor::cat(&[x, v], 1)?)
    }
}

impl Marginals for VsmdMarginals {
    fn times(&self) -> &[f64] {
        &self.times
    }

    fn perturb(&self, x0: &Tensor, idx: &Tensor, eps: &Tensor) -> Result<(Tensor, Tensor)> {
        let shape = &self.l_vv.dims()[1..];
        check_shape("x0", x0, shape, 1)?;
        check_shape("eps", eps, shape, 2)?;
        let ch = self.channels;
        let (ex, ev) = (eps.narrow(1, 0, ch)?, eps.narrow(1, ch, ch)?);
        let g = |t: &Tensor| t.index_select(idx, 0);
        let x = ((x0 * g(&self.phi_xx)?)? + (&ex * g(&self.l_xx)?)?)?;
        let v = (((x0 * g(&self.phi_vx)?)? + (&ex * g(&self.l_vx)?)?)? + (&ev * g(&self.l_vv)?)?)?;
        Ok((Tensor::cat(&[x, v], 1)?, ev))
    }

    fn score_at(&self, eps_hat: &Tensor, n: usize) -> Result<Tensor> {
        Ok(eps_hat.broadcast_div(&self.l_vv.narrow(0, n, 1)?)?.neg()?)
    }
}
