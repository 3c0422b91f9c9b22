//! Probabilistic forecast metrics exactly as GluonTS's `MultivariateEvaluator` reports them in the
//! diffusion-forecasting papers (TimeGrad, CSDI, VSMD), plus the proper sample-based scores.
//!
//! GluonTS's definitions (gluonts 0.17, `evaluation/_base.py`, `evaluation/metrics.py`, `model/forecast.py`):
//! - one *item* per (test window, series); NaN targets are masked and skipped by every sum and mean;
//! - the q-quantile of S samples is the sorted sample at index round((S − 1) q), rounding half to even (NumPy);
//! - per item: MSE = mean (y − sample mean)², abs_error = Σ |y − median|, abs_target_sum = Σ |y|,
//!   abs_target_mean = mean |y|, QuantileLoss[q] = 2 Σ |(ŷ_q − y)(1{y ≤ ŷ_q} − q)|;
//! - over items (skipping NaN): MSE and abs_target_mean are averaged, the others summed; then RMSE = √MSE,
//!   NRMSE = RMSE / abs_target_mean, ND = abs_error / abs_target_sum, wQuantileLoss[q] = QuantileLoss[q] /
//!   abs_target_sum, and **CRPS** = mean_wQuantileLoss = the mean over q ∈ {0.05, …, 0.95};
//! - **CRPS-sum** is the same on the sum over series (`target_agg_funcs={'sum': np.sum}`): the target is summed
//!   over the non-missing series (pandas' NaN-skipping sum), the samples over all series.
//!
//! Tests compare against fixtures produced by GluonTS itself (`scripts/gluonts_fixtures.py`).

use std::fmt;

/// The quantile levels of the papers' evaluator: 0.05, 0.10, …, 0.95 (as NumPy's `(arange(20)/20)[1:]`).
pub fn paper_quantiles() -> Vec<f64> {
    (1..20).map(|k| k as f64 / 20.0).collect()
}

/// One forecast window: `samples` is S × T × D row-major, `truth` T × D row-major with NaN for missing values.
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    pub samples: &'a [f32],
    pub truth: &'a [f64],
    pub num_samples: usize,
    pub steps: usize,
    pub series: usize,
}

/// Bad forecast input.
#[derive(Debug, Clone, PartialEq)]
pub enum ForecastError {
    /// A buffer whose length does not match the declared shape.
    Shape {
        window: usize,
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// Windows with different numbers of series.
    Series {
        window: usize,
        expected: usize,
        got: usize,
    },
    /// A NaN or infinite forecast sample (GluonTS refuses those too).
    NonFiniteSample { window: usize, index: usize },
    /// No window, or no sample.
    Empty,
}

impl fmt::Display for ForecastError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Shape {
                window,
                what,
                expected,
                got,
            } => {
                write!(
                    f,
                    "forecast window {window}: {what} has {got} values, expected {expected}"
                )
            }
            Self::Series {
                window,
                expected,
                got,
            } => {
                write!(
                    f,
                    "forecast window {window}: {got} series, the first window has {expected}"
                )
            }
            Self::NonFiniteSample { window, index } => {
                write!(
                    f,
                    "forecast window {window}: sample value {index} is NaN or infinite"
                )
            }
            Self::Empty => write!(f, "no forecast windows or no samples to evaluate"),
        }
    }
}

impl std::error::Error for ForecastError {}

/// The aggregate metrics of a set of forecasts.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Metrics {
    /// mean_wQuantileLoss: the CRPS the papers report.
    pub crps: f64,
    pub nd: f64,
    pub nrmse: f64,
    pub mse: f64,
    pub rmse: f64,
    pub abs_error: f64,
    pub abs_target_sum: f64,
}

/// Everything [`evaluate`] computes.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Report {
    /// Over all (window, series) items.
    pub marginal: Metrics,
    /// On the sum over series: `sum.crps` is CRPS-sum.
    pub sum: Metrics,
    /// The exact sample CRPS, E|X − y| − ½E|X − X'|, summed over items and steps and divided by Σ|y|
    /// (the same normalisation as `crps`, which approximates it by 19 quantile levels).
    pub crps_energy: f64,
    /// The same on the sum over series.
    pub crps_sum_energy: f64,
}

/// Running sums of GluonTS's per-item metrics.
#[derive(Default)]
struct Acc {
    ql: Vec<f64>,
    mse_sum: f64,
    mse_items: usize,
    abs_error: f64,
    abs_target_sum: f64,
    atm_sum: f64,
    atm_items: usize,
    crps_energy: f64,
}

impl Acc {
    fn new(nq: usize) -> Self {
        Self {
            ql: vec![0.0; nq],
            ..Default::default()
        }
    }

    /// One item: `values[t]` holds the S samples of step t (sorted in place), `y[t]` the target (NaN = missing).
    fn item(
        &mut self,
        values: &mut [Vec<f64>],
        y: &[f64],
        quantile_idx: &[usize],
        quantiles: &[f64],
        median_idx: usize,
    ) {
        let (mut se, mut n, mut ae, mut ats, mut crps) = (0.0, 0usize, 0.0, 0.0, 0.0);
        for (v, &yt) in values.iter_mut().zip(y) {
            if yt.is_nan() {
                continue;
            }
            v.sort_unstable_by(f64::total_cmp);
            let s = v.len() as f64;
            let mean = v.iter().sum::<f64>() / s;
            se += (yt - mean).powi(2);
            n += 1;
            ae += (yt - v[median_idx]).abs();
            ats += yt.abs();
            for ((ql, &qi), &q) in self.ql.iter_mut().zip(quantile_idx).zip(quantiles) {
                let f = v[qi];
                let ind = if yt <= f { 1.0 } else { 0.0 };
                *ql += 2.0 * ((f - yt) * (ind - q)).abs();
            }
            // E|X − y| − ½ E|X − X'| with the sorted-sample identity Σ_{i,j}|x_i − x_j| = 2 Σ_i (2i − S + 1) x_(i).
            let e1 = v.iter().map(|x| (x - yt).abs()).sum::<f64>() / s;
            let pair: f64 = v
                .iter()
                .enumerate()
                .map(|(i, x)| (2.0 * i as f64 - s + 1.0) * x)
                .sum::<f64>()
                * 2.0;
            crps += e1 - 0.5 * pair / (s * s);
        }
        if n > 0 {
            self.mse_sum += se / n as f64;
            self.mse_items += 1;
            self.atm_sum += ats / n as f64;
            self.atm_items += 1;
        }
        self.abs_error += ae;
        self.abs_target_sum += ats;
        self.crps_energy += crps;
    }

    fn finish(&self) -> (Metrics, f64) {
        let mse = self.mse_sum / self.mse_items as f64;
        let atm = self.atm_sum / self.atm_items as f64;
        let rmse = mse.sqrt();
        let crps =
            self.ql.iter().map(|q| q / self.abs_target_sum).sum::<f64>() / self.ql.len() as f64;
        (
            Metrics {
                crps,
                nd: self.abs_error / self.abs_target_sum,
                nrmse: rmse / atm,
                mse,
                rmse,
                abs_error: self.abs_error,
                abs_target_sum: self.abs_target_sum,
            },
            self.crps_energy / self.abs_target_sum,
        )
    }
}

/// The sorted-sample index GluonTS reads the q-quantile from: round((S − 1) q), half to even.
pub fn quantile_index(num_samples: usize, q: f64) -> usize {
    (((num_samples - 1) as f64) * q).round_ties_even() as usize
}

fn check(windows: &[Window]) -> Result<(), ForecastError> {
    let first = windows.first().ok_or(ForecastError::Empty)?;
    for (w, win) in windows.iter().enumerate() {
        if win.num_samples == 0 || win.steps == 0 || win.series == 0 {
            return Err(ForecastError::Empty);
        }
        if win.series != first.series {
            return Err(ForecastError::Series {
                window: w,
                expected: first.series,
                got: win.series,
            });
        }
        let ns = win.num_samples * win.steps * win.series;
        if win.samples.len() != ns {
            return Err(ForecastError::Shape {
                window: w,
                what: "samples",
                expected: ns,
                got: win.samples.len(),
            });
        }
        let nt = win.steps * win.series;
        if win.truth.len() != nt {
            return Err(ForecastError::Shape {
                window: w,
                what: "truth",
                expected: nt,
                got: win.truth.len(),
            });
        }
        if let Some(index) = win.samples.iter().position(|x| !x.is_finite()) {
            return Err(ForecastError::NonFiniteSample { window: w, index });
        }
    }
    Ok(())
}

/// Evaluates forecast windows at the given quantile levels (use [`paper_quantiles`] for the papers' numbers).
pub fn evaluate(windows: &[Window], quantiles: &[f64]) -> Result<Report, ForecastError> {
    check(windows)?;
    let mut marg = Acc::new(quantiles.len());
    let mut sum = Acc::new(quantiles.len());
    for win in windows {
        let (s, t, d) = (win.num_samples, win.steps, win.series);
        let qidx: Vec<usize> = quantiles.iter().map(|&q| quantile_index(s, q)).collect();
        let mid = quantile_index(s, 0.5);
        let mut values: Vec<Vec<f64>> = vec![Vec::with_capacity(s); t];
        let mut y = vec![0.0; t];
        for series in 0..d {
            for (step, v) in values.iter_mut().enumerate() {
                v.clear();
                v.extend((0..s).map(|i| win.samples[(i * t + step) * d + series] as f64));
                y[step] = win.truth[step * d + series];
            }
            marg.item(&mut values, &y, &qidx, quantiles, mid);
        }
        // The sum over series: NaN-skipping target sum, samples summed over all series.
        for (step, v) in values.iter_mut().enumerate() {
            v.clear();
            v.extend((0..s).map(|i| {
                win.samples[(i * t + step) * d..(i * t + step + 1) * d]
                    .iter()
                    .map(|&x| x as f64)
                    .sum::<f64>()
            }));
            y[step] = win.truth[step * d..(step + 1) * d]
                .iter()
                .filter(|x| !x.is_nan())
                .sum();
        }
        sum.item(&mut values, &y, &qidx, quantiles, mid);
    }
    let (marginal, crps_energy) = marg.finish();
    let (sum_m, crps_sum_energy) = sum.finish();
    Ok(Report {
        marginal,
        sum: sum_m,
        crps_energy,
        crps_sum_energy,
    })
}

/// The energy score of each window's forecast as one vector of T·D values (missing truth entries dropped from
/// both sides), E‖X − y‖ − ½ E‖X − X'‖, averaged over windows. O(S² T D) per window.
pub fn energy_score(windows: &[Window]) -> Result<f64, ForecastError> {
    check(windows)?;
    let mut total = 0.0;
    for win in windows {
        let (s, n) = (win.num_samples, win.steps * win.series);
        let keep: Vec<usize> = (0..n).filter(|&k| !win.truth[k].is_nan()).collect();
        let x = |i: usize, k: usize| win.samples[i * n + k] as f64;
        let e1 = (0..s)
            .map(|i| {
                keep.iter()
                    .map(|&k| (x(i, k) - win.truth[k]).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .sum::<f64>()
            / s as f64;
        let mut e2 = 0.0;
        for i in 0..s {
            for j in (i + 1)..s {
                e2 += keep
                    .iter()
                    .map(|&k| (x(i, k) - x(j, k)).powi(2))
                    .sum::<f64>()
                    .sqrt();
            }
        }
        let e2 = 2.0 * e2 / (s * s) as f64;
        total += e1 - 0.5 * e2;
    }
    Ok(total / windows.len() as f64)
}
