//! Forecasts of the rolling test windows: by a trained diffusion model (the horizon sampled jointly from the
//! reverse process, conditioned on the context) and by the reference that needs no training, a Gaussian random
//! walk with drift fitted on each series' context. Evaluation uses `vsdm_eval::forecast` (GluonTS's metrics).

use candle_core::{Device, Tensor};
use rand_distr::{Distribution, StandardNormal};
use vsdm_core::process::{ForwardProcess, Process};
use vsdm_core::sampler::sample_model;
use vsdm_core::{NoiseRng, SamplerConfig};
use vsdm_eval::forecast::{evaluate, paper_quantiles, Report, Window};

use crate::data::series::TestSplit;
use crate::model::ForecastNet;
use crate::window::{WindowBatch, WindowConfig};

/// The forecast of one test window.
#[derive(Debug, Clone)]
pub struct WindowForecast {
    /// Exclusive end column of the window in the test series.
    pub end: usize,
    pub num_samples: usize,
    pub horizon: usize,
    pub num_series: usize,
    /// Samples `S × H × D` row-major, in the data's units.
    pub samples: Vec<f32>,
    /// Observed horizon `H × D`.
    pub truth: Vec<f64>,
    /// Context `C × D` (for plots).
    pub context: Vec<f64>,
}

impl WindowForecast {
    /// The view `vsdm_eval` evaluates.
    pub fn as_window(&self) -> Window<'_> {
        Window {
            samples: &self.samples,
            truth: &self.truth,
            num_samples: self.num_samples,
            steps: self.horizon,
            series: self.num_series,
        }
    }
}

/// The test windows to forecast: all of them, or `max` of them evenly spaced (always including the last).
pub fn select_windows(test: &TestSplit, max: Option<usize>) -> Vec<usize> {
    let ends = &test.window_ends;
    match max {
        Some(m) if m > 0 && m < ends.len() => (0..m)
            .map(|k| ends[(ends.len() - 1) - (m - 1 - k) * (ends.len() - 1) / (m - 1).max(1)])
            .collect(),
        _ => ends.clone(),
    }
}

fn observed(test: &TestSplit, end: usize, cfg: &WindowConfig) -> (Vec<f64>, Vec<f64>) {
    let s = &test.series;
    let d = s.num_series;
    let start = end - cfg.len();
    let mut context = vec![0.0; cfg.context * d];
    let mut truth = vec![0.0; cfg.horizon * d];
    for j in 0..d {
        let row = &s.row(j)[start..end];
        for t in 0..cfg.context {
            context[t * d + j] = row[t] as f64;
        }
        for t in 0..cfg.horizon {
            truth[t * d + j] = row[cfg.context + t] as f64;
        }
    }
    (context, truth)
}

/// Checks that every window of `ends` fits `cfg` in the test split: what a run that trains before it
/// forecasts calls first, so that a data set whose test windows are too short fails before the training.
pub fn check_windows(test: &TestSplit, ends: &[usize], cfg: &WindowConfig) -> anyhow::Result<()> {
    ends.iter().try_for_each(|&end| check_end(test, end, cfg))
}

fn check_end(test: &TestSplit, end: usize, cfg: &WindowConfig) -> anyhow::Result<()> {
    if end < cfg.len() || end > test.series.len {
        anyhow::bail!(
            "test window ending at column {end} does not leave room for context {} + horizon {} in a test \
             series of {} columns",
            cfg.context,
            cfg.horizon,
            test.series.len
        );
    }
    Ok(())
}

/// The reference forecast: per series, y_{C+k} = y_C + Σ_{j≤k} (μ + σ ξ_j) with μ and σ the mean and standard
/// deviation of the context's one-step increments.
pub fn random_walk(
    test: &TestSplit,
    ends: &[usize],
    cfg: &WindowConfig,
    num_samples: usize,
    seed: u64,
) -> anyhow::Result<Vec<WindowForecast>> {
    let mut rng = NoiseRng::new(seed);
    let d = test.series.num_series;
    let h = cfg.horizon;
    ends.iter()
        .map(|&end| {
            check_end(test, end, cfg)?;
            let (context, truth) = observed(test, end, cfg);
            let mut samples = vec![0f32; num_samples * h * d];
            for j in 0..d {
                let col: Vec<f64> = (0..cfg.context).map(|t| context[t * d + j]).collect();
                let inc: Vec<f64> = col.windows(2).map(|w| w[1] - w[0]).collect();
                let n = inc.len().max(1) as f64;
                let mu = inc.iter().sum::<f64>() / n;
                let sd = (inc.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / n).sqrt();
                let last = col.last().copied().unwrap_or(0.0);
                for s in 0..num_samples {
                    let mut y = last;
                    for t in 0..h {
                        let xi: f64 = StandardNormal.sample(rng.inner());
                        y += mu + sd * xi;
                        samples[(s * h + t) * d + j] = y as f32;
                    }
                }
            }
            Ok(WindowForecast {
                end,
                num_samples,
                horizon: h,
                num_series: d,
                samples,
                truth,
                context,
            })
        })
        .collect()
}

/// Everything a trained model needs to forecast.
pub struct ModelForecaster<'a> {
    pub net: &'a ForecastNet,
    pub process: &'a Process,
    pub window: WindowConfig,
    pub sampler: SamplerConfig,
    /// Samples drawn per network batch (memory bound for wide data sets).
    pub sample_batch: usize,
    pub device: &'a Device,
}

impl ModelForecaster<'_> {
    /// Forecasts each window with `num_samples` joint samples of the horizon.
    pub fn forecast(
        &self,
        test: &TestSplit,
        ends: &[usize],
        num_samples: usize,
        seed: u64,
    ) -> anyhow::Result<Vec<WindowForecast>> {
        let mut rng = NoiseRng::new(seed);
        let tf = test.series.time_features();
        let cfg = &self.window;
        let (d, h) = (test.series.num_series, cfg.horizon);
        let pb = vsdm_core::progress::Progress::new(
            "forecast",
            (ends.len() * num_samples) as u64,
            "samples",
        );
        let mut out = Vec::with_capacity(ends.len());
        for &end in ends {
            check_end(test, end, cfg)?;
            let (context, truth) = observed(test, end, cfg);
            let w = WindowBatch::cut(&test.series, &tf, &[end], cfg)?;
            let (_, cond1) = w.tensors(cfg, self.device)?;
            let mut samples = Vec::with_capacity(num_samples * h * d);
            let mut done = 0;
            while done < num_samples {
                let b = self.sample_batch.max(1).min(num_samples - done);
                let cond = repeat_batch(&cond1, b)?;
                let run = sample_model(
                    self.process,
                    self.net,
                    Some(&cond),
                    &self.sampler,
                    b,
                    &mut rng,
                    self.device,
                )?;
                let x = self.process.data_part(&run.state)?; // [b, 1, D, H]
                                                             // → [b, H, D] row-major, back in the data's units.
                let x = x.squeeze(1)?.transpose(1, 2)?.contiguous()?;
                let v = x.flatten_all()?.to_vec1::<f32>()?;
                for s in 0..b {
                    for t in 0..h {
                        for j in 0..d {
                            samples.push(w.unscale(0, j, v[(s * h + t) * d + j]));
                        }
                    }
                }
                done += b;
                pb.inc(b as u64);
            }
            out.push(WindowForecast {
                end,
                num_samples,
                horizon: h,
                num_series: d,
                samples,
                truth,
                context,
            });
        }
        pb.finish();
        Ok(out)
    }
}

/// GluonTS's metrics of a set of window forecasts (quantiles 0.05…0.95).
pub fn score(forecasts: &[WindowForecast]) -> anyhow::Result<Report> {
    let windows: Vec<Window> = forecasts.iter().map(|f| f.as_window()).collect();
    Ok(evaluate(&windows, &paper_quantiles())?)
}

/// Writes `forecasts.csv` (every window's quantiles, columns named by `series_names`) and fan charts of the
/// last window's first `max_charts` series (`fan_<name>.png`) into `dir`; returns the files written.
pub fn export(
    dir: &std::path::Path,
    forecasts: &[WindowForecast],
    series_names: &[String],
    max_charts: usize,
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let windows: Vec<Window> = forecasts.iter().map(|f| f.as_window()).collect();
    let csv = dir.join("forecasts.csv");
    vsdm_eval::export::write_forecast_csv(&csv, &windows, series_names)?;
    let mut written = vec![csv];
    if let (Some(last), Some(f)) = (windows.last(), forecasts.last()) {
        if max_charts > 0 {
            written.extend(vsdm_eval::export::fan_charts(
                dir,
                last,
                &f.context,
                series_names,
                max_charts,
            )?);
        }
    }
    Ok(written)
}

/// A `[1, …]` tensor repeated `b` times along the batch axis, as a broadcast view (batch stride 0, no copy):
/// the forecasting network recognises a conditioning batch shared this way and computes its side
/// information once ([`crate::model::ForecastNet`]'s forward).
pub fn repeat_batch(t: &Tensor, b: usize) -> candle_core::Result<Tensor> {
    let mut dims = t.dims().to_vec();
    dims[0] = b;
    t.broadcast_as(dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::freq::parse_timestamp;
    use crate::data::{Freq, SeriesMatrix};
    use crate::window::Scaling;

    /// The population variance of `xs`.
    fn variance(xs: &[f64]) -> f64 {
        let m = xs.iter().sum::<f64>() / xs.len() as f64;
        xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64
    }

    fn split(values: Vec<f32>, d: usize, len: usize, ends: Vec<usize>) -> TestSplit {
        let s = SeriesMatrix::new(
            parse_timestamp("2021-03-01").unwrap(),
            Freq::Hours(1),
            d,
            len,
            values,
        )
        .unwrap();
        TestSplit {
            series: s,
            window_ends: ends,
        }
    }

    #[test]
    fn random_walk_matches_its_closed_form_on_a_linear_trend() {
        // A noiseless trend y_t = 2t has increments of mean 2 and deviation 0: every sample continues it.
        let test = split((0..40).map(|t| 2.0 * t as f32).collect(), 1, 40, vec![40]);
        let cfg = WindowConfig::timegrad(5, Scaling::Mean);
        let f = random_walk(&test, &[40], &cfg, 4, 0).unwrap();
        for s in 0..4 {
            for t in 0..5 {
                assert!((f[0].samples[s * 5 + t] - 2.0 * (35 + t) as f32).abs() < 1e-4);
            }
        }
        // A perfect forecast scores CRPS 0 in GluonTS's definition.
        let r = score(&f).unwrap();
        assert!(r.marginal.crps.abs() < 1e-6 && r.sum.crps.abs() < 1e-6);
    }

    /// Three noiseless trends of different slopes and levels, row-major `[series, time]`: each series is
    /// continued with its own slope, and the window's context and truth hold each series' own values in the
    /// `time × series` layout the exporters read.
    #[test]
    fn random_walk_continues_each_series_of_a_window() {
        let (d, len) = (3, 40);
        let line = |j: usize, t: usize| [2.0, -1.0, 0.5][j] * t as f32 + [0.0, 100.0, -7.0][j];
        let values = (0..d)
            .flat_map(|j| (0..len).map(move |t| line(j, t)))
            .collect();
        let test = split(values, d, len, vec![40, 35]);
        let cfg = WindowConfig::timegrad(5, Scaling::Mean);
        let f = random_walk(&test, &[40, 35], &cfg, 2, 0).unwrap();
        for (w, end) in f.iter().zip([40, 35]) {
            let start = end - 20;
            for j in 0..d {
                for t in 0..15 {
                    assert_eq!(w.context[t * d + j], line(j, start + t) as f64);
                }
                for t in 0..5 {
                    assert_eq!(w.truth[t * d + j], line(j, start + 15 + t) as f64);
                    for s in 0..2 {
                        let got = w.samples[(s * 5 + t) * d + j];
                        assert!((got - line(j, start + 15 + t)).abs() < 1e-4, "{got}");
                    }
                }
            }
        }
    }

    /// A window fits when its context and horizon lie inside the test series: ends from `context + horizon`
    /// to the series' length pass; one column short or past the end is an error naming the window, from the
    /// check a training run calls first and from a forecast (not an index panic).
    #[test]
    fn windows_outside_the_test_series_are_named() {
        let test = split(vec![1.0; 40], 1, 40, vec![40]);
        let cfg = WindowConfig::timegrad(5, Scaling::Mean);
        check_windows(&test, &[20, 33, 40], &cfg).unwrap();
        for bad in [19, 41] {
            let e = check_windows(&test, &[40, bad], &cfg)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("ending at column {bad} does not leave room"))
                    && e.contains("context 15 + horizon 5")
                    && e.contains("40 columns"),
                "{e}"
            );
            let e = random_walk(&test, &[bad], &cfg, 2, 0)
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("column {bad}")), "{e}");
        }
    }

    /// A model forecast's draws land on their own series. With a network of zero weights each element of the
    /// reverse process has a law set by its own A alone: the spread of a series whose A is 0 and of one whose A
    /// is 1 are first measured in runs where both series share that A, then a run with one of each must show
    /// each series' own spread (a draw placed on the wrong series would pull the two towards each other), and
    /// no sample may repeat another.
    #[test]
    fn model_samples_land_on_their_own_series() {
        use crate::model::NetConfig;
        use vsdm_core::variational::VarParams;
        use vsdm_core::{BetaSchedule, SamplerKind};
        let (d, len, h) = (2, 40, 5);
        let test = split(vec![1.0; d * len], d, len, vec![len]);
        let cfg = WindowConfig::timegrad(h, Scaling::Mean);
        let dev = Device::Cpu;
        let features = test.series.time_features().len() / len;
        let net_cfg = NetConfig::small(d, cfg.context, h, features, 1);
        let vb = candle_nn::VarBuilder::zeros(candle_core::DType::F32, &dev);
        let net = ForecastNet::new(vb, net_cfg).unwrap();
        let spreads = |a: [f64; 2]| {
            let a: Vec<f64> = (0..d * h).map(|i| a[i / h]).collect();
            let process = VarParams::Diagonal(a)
                .process(BetaSchedule::vsdm_default(), &[1, d, h], &dev)
                .unwrap();
            let fc = ModelForecaster {
                net: &net,
                process: &process,
                window: cfg,
                sampler: SamplerConfig::new(SamplerKind::EulerMaruyama, 10),
                sample_batch: 100,
                device: &dev,
            };
            let f = fc.forecast(&test, &[len], 200, 3).unwrap();
            // Draws of a continuous law: no two samples share a value.
            let mut first: Vec<f32> = (0..200).map(|s| f[0].samples[s * h * d]).collect();
            first.sort_by(f32::total_cmp);
            first.dedup();
            assert_eq!(first.len(), 200, "samples repeated");
            [0, 1].map(|j| {
                let xs: Vec<f64> = (0..200 * h)
                    .map(|k| f[0].samples[k * d + j] as f64)
                    .collect();
                variance(&xs).sqrt()
            })
        };
        let (zero, one, mixed) = (
            spreads([0.0, 0.0]),
            spreads([1.0, 1.0]),
            spreads([0.0, 1.0]),
        );
        // The two laws are far apart (a spread of about 8.6 against 1.1), and each series of the mixed run
        // shows its own to 10 %.
        assert!(zero[0] > 3.0 * one[1], "{zero:?} {one:?}");
        for (j, own) in [(0, zero[0]), (1, one[1])] {
            assert!(
                (mixed[j] / own - 1.0).abs() < 0.1,
                "series {j}: {} against its own {own}",
                mixed[j]
            );
        }
    }

    #[test]
    fn random_walk_spread_grows_like_sqrt_h() {
        // Alternating ±1 increments: μ = 0 (even count), σ = 1; Var(y_{C+k}) = k.
        let vals: Vec<f32> = (0..41).map(|t| (t % 2) as f32).collect();
        let test = split(vals, 1, 41, vec![41]);
        let cfg = WindowConfig {
            context: 31,
            horizon: 10,
            scaling: Scaling::Mean,
        };
        let f = random_walk(&test, &[41], &cfg, 20_000, 1).unwrap();
        for k in [0usize, 3, 9] {
            let xs: Vec<f64> = (0..20_000)
                .map(|s| f[0].samples[s * 10 + k] as f64)
                .collect();
            let v = variance(&xs);
            assert!(
                (v - (k + 1) as f64).abs() < 0.06 * (k + 1) as f64,
                "k {k}: var {v}"
            );
        }
    }

    #[test]
    fn window_selection_is_even_and_keeps_the_last() {
        let test = split(vec![0.0; 100], 1, 100, (10..=100).step_by(10).collect());
        assert_eq!(select_windows(&test, Some(3)), vec![10, 60, 100]);
        assert_eq!(select_windows(&test, None).len(), 10);
        assert_eq!(select_windows(&test, Some(1)), vec![100]);
        // No cap (0, which the CLI refuses), or one at or past the count: every window, once each.
        for max in [0, 10, 11, 40] {
            assert_eq!(select_windows(&test, Some(max)), test.window_ends, "{max}");
        }
    }
}
