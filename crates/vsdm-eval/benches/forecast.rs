//! Forecast metrics on electricity's test shape, 100 samples × 24 steps × 370 series × 7 windows, on the same
//! data as `scripts/gluonts_timing.py` (which times GluonTS's evaluator):
//!
//! ```text
//! cargo bench -p vsdm-eval --bench forecast
//! ```
//!
//! It first prints the metrics, to be compared with the Python script's line. See docs/benchmarks/eval-forecast.md.

use criterion::{criterion_group, criterion_main, Criterion};
use vsdm_eval::forecast::{energy_score, evaluate, paper_quantiles, Window};

const S: usize = 100;
const T: usize = 24;
const D: usize = 370;
const W: usize = 7;

/// splitmix64 of counter k, top 24 bits as a float in [0, 1): `uniform` in `scripts/gluonts_timing.py`.
fn uniform(k: u64) -> f32 {
    let mut z = (k + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32
}

/// Per window: samples (S·T·D values), then truth (T·D values), the counter running on across windows.
fn bench_data() -> Vec<(Vec<f32>, Vec<f64>)> {
    let mut k = 0u64;
    let mut next = |n: usize| -> Vec<f32> {
        let v = (k..k + n as u64).map(uniform).collect();
        k += n as u64;
        v
    };
    (0..W)
        .map(|_| {
            let samples = next(S * T * D);
            let truth = next(T * D).into_iter().map(f64::from).collect();
            (samples, truth)
        })
        .collect()
}

fn forecast(c: &mut Criterion) {
    let data = bench_data();
    let windows: Vec<Window> = data
        .iter()
        .map(|(s, y)| Window::new(s, y, S, T, D))
        .collect();
    let q = paper_quantiles();
    let r = evaluate(&windows, &q).expect("bench data is well formed");
    println!(
        "vsdm-eval, {S}x{T}x{D}x{W}: CRPS {:.10} CRPS-sum {:.10} ND {:.10} NRMSE {:.10} MSE {:.10}",
        r.marginal.crps, r.sum.crps, r.marginal.nd, r.marginal.nrmse, r.marginal.mse
    );
    let mut g = c.benchmark_group("forecast");
    g.sample_size(20);
    g.bench_function("evaluate_100x24x370x7", |b| {
        b.iter(|| evaluate(std::hint::black_box(&windows), &q).expect("evaluates"))
    });
    g.bench_function("energy_score_100x24x370x7", |b| {
        b.iter(|| energy_score(std::hint::black_box(&windows)).expect("scores"))
    });
    g.finish();
}

criterion_group!(benches, forecast);
criterion_main!(benches);
