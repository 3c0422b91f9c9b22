//! GluonTS's evaluator, re-implemented (gluonts 0.17: `evaluation/_base.py`, `evaluation/metrics.py`,
//! `model/forecast.py`), as the papers call it: `MultivariateEvaluator(quantiles=(np.arange(20)/20)[1:],
//! target_agg_funcs={'sum': np.sum})` with one forecast per test window.
//!
//! - one *item* per (window, series); a NaN or infinite target is masked (`np.ma.masked_invalid`) and skipped
//!   by every sum and mean;
//! - the q-quantile of S samples is the sorted sample at index round((S − 1) q), NumPy rounding half to even
//!   (`SampleForecast.quantile`; no interpolation); the median is the 0.5-quantile, the mean the sample mean;
//! - per item: MSE = mean (y − mean)², abs_error = Σ |y − median|, abs_target_sum = Σ |y|,
//!   abs_target_mean = mean |y|, QuantileLoss[q] = 2 Σ |(ŷ_q − y)(1{y ≤ ŷ_q} − q)|;
//! - over items: MSE and abs_target_mean are averaged (items with no observed value skipped, as pandas skips
//!   NaN), the others summed; then RMSE = √MSE, NRMSE = RMSE / abs_target_mean, ND = abs_error /
//!   abs_target_sum, wQuantileLoss[q] = QuantileLoss[q] / abs_target_sum and **CRPS** = mean_wQuantileLoss,
//!   the mean of wQuantileLoss over the levels;
//! - **CRPS-sum** is the same on the sum over series: the target row is summed by pandas (NaN skipped; an
//!   infinite sum is then masked), the samples over all series (`copy_aggregate(np.sum)`). With D = 1 the sum
//!   is the series itself.

use super::{check, ForecastError, SampleValue, Window};

/// The quantile levels of the papers' evaluator: 0.05, 0.10, …, 0.95 (NumPy's `(arange(20)/20)[1:]`).
pub fn paper_quantiles() -> Vec<f64> {
    (1..20).map(|k| k as f64 / 20.0).collect()
}

/// The sorted-sample index GluonTS reads the q-quantile of `num_samples` samples from: round((S − 1) q),
/// half to even as `np.round`.
pub fn quantile_index(num_samples: usize, q: f64) -> usize {
    ((num_samples.saturating_sub(1) as f64) * q).round_ties_even() as usize
}

/// GluonTS's aggregate metrics over a set of items (its key names in brackets).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Metrics {
    /// `mean_wQuantileLoss`: the CRPS the papers report (CRPS-sum on [`Report::sum`]).
    pub crps: f64,
    /// `wQuantileLoss[q]` for each requested level, in order.
    pub weighted_quantile_loss: Vec<f64>,
    /// `ND` = abs_error / abs_target_sum.
    pub nd: f64,
    /// `NRMSE` = RMSE / abs_target_mean.
    pub nrmse: f64,
    /// `MSE`, the mean over items of each item's mean squared error of the sample mean.
    pub mse: f64,
    /// `RMSE` = √MSE.
    pub rmse: f64,
    /// `abs_error`: Σ |y − median| over all observed values.
    pub abs_error: f64,
    /// `abs_target_sum`: Σ |y| over all observed values.
    pub abs_target_sum: f64,
    /// `abs_target_mean`: the mean over items of mean |y|.
    pub abs_target_mean: f64,
    /// The exact CRPS of the empirical sample distribution, E|X − y| − ½E|X − X'| (V-statistic, as
    /// `scoringrules.crps_ensemble(estimator="nrg")`), summed over observed values and divided by
    /// abs_target_sum: the quantity `crps` approximates with 19 quantile levels.
    pub crps_sample: f64,
    /// The number of items (window, series pairs; one per window for the sum).
    pub items: usize,
    /// `num_masked_target_values`: NaN or infinite targets skipped.
    pub masked_values: usize,
}

/// Everything [`evaluate`] computes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    /// The quantile levels used.
    pub quantiles: Vec<f64>,
    /// Over all (window, series) items: `marginal.crps` is CRPS.
    pub marginal: Metrics,
    /// On the sum over series (GluonTS's `m_sum_*` keys): `sum.crps` is CRPS-sum.
    pub sum: Metrics,
}

/// Running sums of one item (one series of one window).
#[derive(Clone, Copy, Default)]
struct Item {
    squared_error: f64,
    observed: usize,
    abs_target: f64,
}

/// Running sums over items.
struct Acc {
    quantile_loss: Vec<f64>,
    mse_sum: f64,
    atm_sum: f64,
    mean_items: usize,
    abs_error: f64,
    abs_target_sum: f64,
    crps_sample: f64,
    items: usize,
    masked: usize,
}

/// An integer whose order is f64's total order: the sign-magnitude bits turned into two's complement.
#[inline]
fn order_key(x: f64) -> i64 {
    let b = x.to_bits() as i64;
    b ^ ((((b >> 63) as u64) >> 1) as i64)
}

/// The inverse of [`order_key`] (the map is an involution).
#[inline]
fn from_order_key(k: i64) -> f64 {
    f64::from_bits((k ^ ((((k >> 63) as u64) >> 1) as i64)) as u64)
}

/// Where one window's quantiles sit in its sorted samples.
struct Plan<'q> {
    quantiles: &'q [f64],
    index: Vec<usize>,
    median: usize,
}

impl Acc {
    fn new(nq: usize) -> Self {
        Self {
            quantile_loss: vec![0.0; nq],
            mse_sum: 0.0,
            atm_sum: 0.0,
            mean_items: 0,
            abs_error: 0.0,
            abs_target_sum: 0.0,
            crps_sample: 0.0,
            items: 0,
            masked: 0,
        }
    }

    /// One observed target `y` against its samples, given as [`order_key`]s (sorted here, in place).
    #[inline]
    fn step(&mut self, keys: &mut [i64], y: f64, item: &mut Item, plan: &Plan) {
        if !y.is_finite() {
            self.masked += 1;
            return;
        }
        // S ≈ 100 values, 20 order statistics and the sorted-sample CRPS identity: one sort beats 20 selections,
        // and sorting integer keys beats sorting floats by `total_cmp`.
        keys.sort_unstable();
        let v = |k: usize| from_order_key(keys[k]);
        let s = keys.len() as f64;
        let (mut sum, mut abs_dev, mut spread) = (0.0, 0.0, 0.0);
        // Σ_{i,j} |x_i − x_j| = 2 Σ_i (2i − S + 1) x_(i) for sorted x (0-based i).
        let mut w = 1.0 - s;
        for &k in keys.iter() {
            let x = from_order_key(k);
            sum += x;
            abs_dev += (x - y).abs();
            spread += w * x;
            w += 2.0;
        }
        item.squared_error += (y - sum / s).powi(2);
        item.observed += 1;
        item.abs_target += y.abs();
        self.abs_error += (y - v(plan.median)).abs();
        self.abs_target_sum += y.abs();
        for ((ql, &qi), &q) in self
            .quantile_loss
            .iter_mut()
            .zip(&plan.index)
            .zip(plan.quantiles)
        {
            let f = v(qi);
            let below = if y <= f { 1.0 } else { 0.0 };
            *ql += 2.0 * ((f - y) * (below - q)).abs();
        }
        self.crps_sample += abs_dev / s - spread / (s * s);
    }

    fn close_item(&mut self, item: Item) {
        self.items += 1;
        if item.observed > 0 {
            let n = item.observed as f64;
            self.mse_sum += item.squared_error / n;
            self.atm_sum += item.abs_target / n;
            self.mean_items += 1;
        }
    }

    fn finish(&self) -> Metrics {
        let mse = self.mse_sum / self.mean_items as f64;
        let abs_target_mean = self.atm_sum / self.mean_items as f64;
        let rmse = mse.sqrt();
        let weighted_quantile_loss: Vec<f64> = self
            .quantile_loss
            .iter()
            .map(|q| q / self.abs_target_sum)
            .collect();
        let crps = weighted_quantile_loss.iter().sum::<f64>() / weighted_quantile_loss.len() as f64;
        Metrics {
            crps,
            weighted_quantile_loss,
            nd: self.abs_error / self.abs_target_sum,
            nrmse: rmse / abs_target_mean,
            mse,
            rmse,
            abs_error: self.abs_error,
            abs_target_sum: self.abs_target_sum,
            abs_target_mean,
            crps_sample: self.crps_sample / self.abs_target_sum,
            items: self.items,
            masked_values: self.masked,
        }
    }
}

/// Evaluates forecast windows at the given quantile levels (use [`paper_quantiles`] for the papers' numbers).
///
/// One pass per step: each sample row (D contiguous values) is scattered into per-series columns of S values,
/// each column sorted once (as integer order keys) for all its order statistics; no allocation inside the loops.
/// O(W·T·D·S log S).
pub fn evaluate<X: SampleValue>(
    windows: &[Window<X>],
    quantiles: &[f64],
) -> Result<Report, ForecastError> {
    check(windows)?;
    if let Some(&q) = quantiles.iter().find(|q| !(**q > 0.0 && **q < 1.0)) {
        return Err(ForecastError::Quantile(q));
    }
    let _span = tracing::debug_span!("forecast_metrics", windows = windows.len()).entered();
    let d = windows[0].series;
    let mut marg = Acc::new(quantiles.len());
    let mut sum = Acc::new(quantiles.len());
    let mut items = vec![Item::default(); d];
    let mut columns: Vec<i64> = Vec::new();
    let mut totals: Vec<i64> = Vec::new();
    for win in windows {
        let (s, t) = (win.num_samples, win.steps);
        let plan = Plan {
            quantiles,
            index: quantiles.iter().map(|&q| quantile_index(s, q)).collect(),
            median: quantile_index(s, 0.5),
        };
        columns.resize(d * s, 0);
        totals.resize(s, 0);
        items.iter_mut().for_each(|it| *it = Item::default());
        let mut sum_item = Item::default();
        for step in 0..t {
            for i in 0..s {
                let row = &win.samples[(i * t + step) * d..(i * t + step + 1) * d];
                let mut total = 0.0;
                for (k, &x) in row.iter().enumerate() {
                    let x = x.to_f64();
                    columns[k * s + i] = order_key(x);
                    total += x;
                }
                totals[i] = order_key(total);
            }
            let truth = &win.truth[step * d..(step + 1) * d];
            for ((col, &y), item) in columns.chunks_exact_mut(s).zip(truth).zip(&mut items) {
                marg.step(col, y, item, &plan);
            }
            // pandas' NaN-skipping row sum; an infinite sum is then masked like any invalid target.
            let y_sum: f64 = truth.iter().filter(|y| !y.is_nan()).sum();
            sum.step(&mut totals, y_sum, &mut sum_item, &plan);
        }
        for item in &items {
            marg.close_item(*item);
        }
        sum.close_item(sum_item);
    }
    Ok(Report {
        quantiles: quantiles.to_vec(),
        marginal: marg.finish(),
        sum: sum.finish(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_keys_sort_like_total_cmp_and_round_trip() {
        let mut xs = vec![
            3.5,
            -0.0,
            0.0,
            -1e-300,
            1e-300,
            -7.25,
            f64::MAX,
            f64::MIN,
            2.0,
            -2.0,
        ];
        let mut keys: Vec<i64> = xs.iter().map(|&x| order_key(x)).collect();
        keys.sort_unstable();
        xs.sort_by(f64::total_cmp);
        let back: Vec<u64> = keys.iter().map(|&k| from_order_key(k).to_bits()).collect();
        assert_eq!(back, xs.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    }
}
