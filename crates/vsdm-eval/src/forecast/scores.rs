//! The multivariate energy score (Gneiting & Raftery 2007), a proper score for the joint forecast.

use super::{check, ForecastError, SampleValue, Window};

/// ‖a − b‖, summed in 8 independent lanes so that the compiler vectorises the loop.
fn dist(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(p, q)| (p - q) * (p - q))
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            let d = x[k] - y[k];
            acc[k] += d * d;
        }
    }
    (acc.iter().sum::<f64>() + tail).sqrt()
}

/// The energy score of each window's forecast as one vector of its T·D values, averaged over windows:
/// ES = (1/S) Σ_i ‖x_i − y‖ − 1/(2S²) Σ_{i,j} ‖x_i − x_j‖ (the V-statistic, `scoringrules.es_ensemble`'s
/// default `"nrg"` estimator). Missing (NaN or infinite) truth entries are dropped from both sides; a window with none observed is
/// left out of the average (NaN if no window has any).
/// O(S² T D) per window, so it is kept out of [`super::evaluate`].
pub fn energy_score<X: SampleValue>(windows: &[Window<X>]) -> Result<f64, ForecastError> {
    check(windows)?;
    let (mut total, mut scored) = (0.0, 0usize);
    let mut x: Vec<f64> = Vec::new();
    let mut y: Vec<f64> = Vec::new();
    for win in windows {
        let (s, n) = (win.num_samples, win.steps * win.series);
        // The observed coordinates, compacted once so the pair loop runs over contiguous slices.
        y.clear();
        y.extend(win.truth.iter().copied().filter(|v| v.is_finite()));
        let m = y.len();
        if m == 0 {
            continue;
        }
        scored += 1;
        x.clear();
        for i in 0..s {
            let row = &win.samples[i * n..(i + 1) * n];
            x.extend(
                row.iter()
                    .zip(win.truth)
                    .filter(|(_, t)| t.is_finite())
                    .map(|(v, _)| v.to_f64()),
            );
        }
        let rows: Vec<&[f64]> = x.chunks_exact(m).collect();
        let to_truth: f64 = rows.iter().map(|r| dist(r, &y)).sum::<f64>() / s as f64;
        let mut pairs = 0.0;
        for i in 0..s {
            for j in (i + 1)..s {
                pairs += dist(rows[i], rows[j]);
            }
        }
        total += to_truth - pairs / (s * s) as f64;
    }
    Ok(total / scored as f64)
}
