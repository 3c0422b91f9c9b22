//! Criterion benchmarks of the core's hot paths, each beside a baseline measured in the same run:
//! - a closed-form VSDM draw x_t = m ⊙ x_0 + σ ⊙ ε for a CIFAR batch (128×3×32×32, per-pixel A, random grid
//!   indices) against the plain scalar-VP expression x·m + σ·ε with the same tensors;
//! - caching the full-A closed form (d = 370, the electricity series count) on a 100-point grid, against one
//!   matrix exponential of the same size;
//! - one variational SA iteration (1000 trajectories × 100 grid times summarised) for diagonal A on CIFAR's 3072
//!   dimensions, against simply reading the statistics once;
//! - the attention softmax on 64 rows of 370 (electricity's series), in place, against candle's
//!   `softmax_last_dim` on the same rows.
//!
//! Run: `cargo bench -p vsdm-core --bench core`.

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use nalgebra::DMatrix;
use vsdm_core::process::Marginals;
use vsdm_core::sampler::{sample_with_score, SamplerConfig, SamplerKind};
use vsdm_core::variational::{TrajectoryStats, VarParams};
use vsdm_core::{BetaSchedule, ForwardProcess, LinearDrift, NoiseRng, Vsdm};

fn draw(c: &mut Criterion) {
    let dev = Device::Cpu;
    let shape = [3, 32, 32];
    let mut rng = NoiseRng::new(0);
    let a: Vec<f64> = (0..3072).map(|i| 0.3 * ((i as f64) * 0.37).sin()).collect();
    let p = Vsdm::new(
        BetaSchedule::vsdm_default(),
        &shape,
        LinearDrift::Diagonal(a),
        &dev,
    )
    .unwrap();
    let times = vsdm_core::schedule::linspace(1e-3, 1.0, 100);
    let marg = p.marginals(&times, &dev).unwrap();
    let x0 = rng.randn(&[128, 3, 32, 32], &dev).unwrap();
    let eps = rng.randn(&[128, 3, 32, 32], &dev).unwrap();
    let idx = rng.indices(128, 100, &dev).unwrap();
    let m = rng.randn(&[128, 1, 1, 1], &dev).unwrap();
    let s = rng.randn(&[128, 1, 1, 1], &dev).unwrap();
    let mut g = c.benchmark_group("closed-form draw 128x3x32x32");
    g.bench_function("baseline: scalar x*m + s*eps", |b| {
        b.iter(|| (x0.broadcast_mul(&m).unwrap() + eps.broadcast_mul(&s).unwrap()).unwrap())
    });
    g.bench_function("VSDM per-pixel A (gather + fma)", |b| {
        b.iter(|| marg.perturb(&x0, &idx, &eps).unwrap())
    });
    g.finish();
}

fn full_cache(c: &mut Criterion) {
    let dev = Device::Cpu;
    let d = 370;
    let mut rng = NoiseRng::new(1);
    let r: Vec<f64> = (0..d * d).map(|_| rng.uniform() - 0.5).collect();
    let r = DMatrix::from_row_slice(d, d, &r);
    // A symmetric, moderate A: 0.2·(R + Rᵀ)/√d.
    let a = (&r + r.transpose()) * (0.2 / (d as f64).sqrt());
    let p = Vsdm::new(
        BetaSchedule::vsdm_default(),
        &[d],
        LinearDrift::Full(a.clone()),
        &dev,
    )
    .unwrap();
    let times = vsdm_core::schedule::linspace(1e-3, 1.0, 100);
    let mut g = c.benchmark_group("full A d=370");
    g.sample_size(10);
    g.bench_function("baseline: one 370x370 matrix exponential", |b| {
        b.iter(|| (a.clone() * 0.5).exp())
    });
    g.bench_function("closed form cached on a 100-point grid", |b| {
        b.iter(|| p.marginals(&times, &dev).unwrap())
    });
    g.finish();
}

fn sa_step(c: &mut Criterion) {
    let dev = Device::Cpu;
    let shape = [3, 32, 32];
    let params = VarParams::Diagonal(vec![0.0; 3072]);
    let sched = BetaSchedule::vsdm_default();
    let p = params.process(sched, &shape, &dev).unwrap();
    let mut rng = NoiseRng::new(2);
    let z0 = rng.randn(&[1000, 3, 32, 32], &dev).unwrap();
    let cfg = SamplerConfig::new(SamplerKind::EulerMaruyama, 100);
    let run = sample_with_score(&p, &cfg, z0, |z, _, _| Ok((z * -1.0)?), &mut rng, true).unwrap();
    let stats = TrajectoryStats::from_run(&run, &params, &sched, 1.0).unwrap();
    let batch: Vec<usize> = (0..500).collect();
    let theta = VarParams::Diagonal(vec![0.01; 3072]);
    let mut g = c.benchmark_group("SA iteration, diagonal A, 3072 dims, 500 of 1000 trajectories");
    g.bench_function("baseline: the same over 1 trajectory", |b| {
        b.iter(|| stats.loss_and_grad(&params, 0.0, &batch[..1]))
    });
    g.bench_function("loss and closed-form gradient", |b| {
        b.iter(|| stats.loss_and_grad(&theta, 0.75, &batch))
    });
    g.finish();
    let _ = Tensor::zeros(1, candle_core::DType::F32, &dev);
}

fn softmax(c: &mut Criterion) {
    let dev = Device::Cpu;
    let x = NoiseRng::new(3).randn(&[64, 370], &dev).unwrap();
    let mut rows = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let fast = vsdm_core::fastmath::avx2();
    let mut g = c.benchmark_group("softmax 64x370");
    g.bench_function("baseline: candle softmax_last_dim", |b| {
        b.iter(|| candle_nn::ops::softmax_last_dim(&x).unwrap())
    });
    // In place, again and again: the cost does not depend on the values (no branches).
    g.bench_function("fastmath::softmax_rows in place", |b| {
        b.iter(|| vsdm_core::fastmath::softmax_rows(fast, &mut rows, 370, 0.25))
    });
    // Unnormalised, with each row's inverse sum (the time-series attention when its probabilities are not
    // kept).
    let mut inv = vec![0f32; 64];
    g.bench_function("fastmath::exp_rows in place", |b| {
        b.iter(|| vsdm_core::fastmath::exp_rows(fast, &mut rows, 370, 0.25, &mut inv))
    });
    g.finish();
}

criterion_group!(benches, draw, full_cache, sa_step, softmax);
criterion_main!(benches);
