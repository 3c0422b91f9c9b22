//! The grid of the Heun sampler against the VSMD code's (ALGORITHM.md §D.3), measured on a Gaussian target
//! with the exact score (docs/CORE.md, "Samplers"): `cargo test --release -p vsdm-core --test sampler_grid
//! -- --ignored --nocapture`. Printed, not asserted: a measurement of a documented difference.
//!
//! This crate's grid: `steps` equal steps from T to t_eps, Heun on all but the last, Euler on the last (full
//! width), ending at t_eps. The VSMD code's: `steps − 1` equal Heun steps from T to δ = t_eps, then one Euler
//! step of width δ to 0. Both cost 2·steps − 1 network evaluations.

use candle_core::{Device, Tensor};
use vsdm_core::kernel::momentum;
use vsdm_core::sampler::{integrate, SamplerConfig, SamplerKind};
use vsdm_core::{BetaSchedule, NoiseRng, Vsmd, VsmdParams};

/// The VSMD code's grid for `steps`: T, …, δ in `steps − 1` equal steps, then 0.
fn official_grid(steps: usize, t_max: f64, delta: f64) -> Vec<f64> {
    let h = (t_max - delta) / (steps - 1) as f64;
    let mut g: Vec<f64> = (0..steps - 1).map(|i| t_max - h * i as f64).collect();
    g.push(delta);
    g.push(0.0);
    g
}

#[test]
#[ignore]
fn heun_grids_on_a_gaussian() {
    let dev = Device::Cpu;
    let n = 20_000;
    for beta in [3.0, 10.0] {
        for var in [0.0025f64, 0.05, 1.0] {
            let sched = BetaSchedule::constant(beta, 1.0).unwrap();
            let params = VsmdParams::default();
            let p = Vsmd::critical(sched, &[1], vec![0.0], params, &dev).unwrap();
            // The marginal of (x, v) at t for data N(0, var): [Σxx, Σxv, Σvv].
            let cov = |t: f64| {
                let k = momentum::kernel(&p.oscillator(0), sched.integral(t), params.v0_var);
                let (px, pv) = (k.phi[(0, 0)], k.phi[(1, 0)]);
                [
                    px * px * var + k.cov[(0, 0)],
                    px * pv * var + k.cov[(0, 1)],
                    pv * pv * var + k.cov[(1, 1)],
                ]
            };
            // The exact time-T marginal, the same draws for both grids.
            let c = cov(1.0);
            let (l11, l21) = (c[0].sqrt(), c[1] / c[0].sqrt());
            let l22 = (c[2] - l21 * l21).sqrt();
            let e = NoiseRng::new(3).randn(&[n, 2], &dev).unwrap();
            let (e0, e1) = (e.narrow(1, 0, 1).unwrap(), e.narrow(1, 1, 1).unwrap());
            let x = (&e0 * l11).unwrap();
            let v = ((&e0 * l21).unwrap() + (&e1 * l22).unwrap()).unwrap();
            let z_t = Tensor::cat(&[x, v], 1).unwrap();
            for steps in [10usize, 25, 50, 100] {
                let cfg = SamplerConfig::new(SamplerKind::Heun, steps);
                let mut out = Vec::new();
                for times in [cfg.grid(1.0).unwrap(), official_grid(steps, 1.0, cfg.t_eps)] {
                    let (z, _) = integrate(
                        &p,
                        &cfg,
                        &times,
                        z_t.clone(),
                        |z, t, _| {
                            // The velocity score −(Σ⁻¹ z)_v.
                            let c = cov(t);
                            let det = c[0] * c[2] - c[1] * c[1];
                            let (wx, wv) = (c[1] / det, -c[0] / det);
                            Ok(((z.narrow(1, 0, 1)? * wx)? + (z.narrow(1, 1, 1)? * wv)?)?)
                        },
                        &mut NoiseRng::new(0),
                        |_, _, _| Ok(()),
                    )
                    .unwrap();
                    let x: Vec<f32> = z
                        .narrow(1, 0, 1)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    out.push(
                        x.iter().map(|&a| (a as f64).powi(2)).sum::<f64>() / n as f64 / var - 1.0,
                    );
                }
                eprintln!(
                    "β {beta}, data variance {var}, {steps} steps (NFE {}): variance error, this grid {:+.2}%, \
                     the VSMD code's {:+.2}%",
                    cfg.nfe(),
                    100.0 * out[0],
                    100.0 * out[1]
                );
            }
        }
    }
}
