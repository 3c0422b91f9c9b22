//! The TimeGrad protocol's windows: a context of `context` steps (3 × the prediction length by default) followed
//! by a horizon of `horizon` steps, scaled per series and window from the context alone.
//!
//! Tensors handed to the network (batch first):
//! * the data element x_0 is the scaled horizon, `[B, 1, D, H]` (one channel, so VSMD's (x, v) state is
//!   `[B, 2, D, H]`);
//! * the conditioning is `[B, 1 + F, D, C + H]`: channel 0 holds the scaled context and zeros over the horizon,
//!   channels 1..=F the GluonTS time features of every column (the same for every series).

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use vsdm_core::{trainer::DataSource, NoiseRng};

use crate::data::SeriesMatrix;
use crate::error::{DataError, Result};

/// How a window is normalised from its context, per series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Scaling {
    /// TimeGrad's `MeanScaler`: x = y / mean|context| (location 0).
    Mean,
    /// pytorch-ts' `scaling='std'` (the VSMD scripts): x = (y − mean(context)) / std(context).
    Std,
    /// Anchored at the last observation: x = (y − y_C) / std(context), where y_C is the context's last value.
    /// The network then generates the horizon's departure from the last observed value, so the zero output is
    /// the persistence forecast; for near-random-walk series (exchange rates) this removes the level the
    /// network would otherwise have to carry from the context to every horizon step. Not part of TimeGrad's
    /// protocol (which offers `mean` and `std`): an option of this implementation, measured in
    /// docs/results/timeseries.md.
    Last,
}

impl Scaling {
    /// (location, scale) of one series' context.
    pub fn fit(&self, context: &[f32]) -> (f32, f32) {
        let n = context.len().max(1) as f64;
        let mean_abs = context.iter().map(|v| v.abs() as f64).sum::<f64>() / n;
        match self {
            Scaling::Mean => (0.0, if mean_abs > 0.0 { mean_abs as f32 } else { 1.0 }),
            Scaling::Std | Scaling::Last => {
                let mean = context.iter().map(|&v| v as f64).sum::<f64>() / n;
                let var = context
                    .iter()
                    .map(|&v| (v as f64 - mean).powi(2))
                    .sum::<f64>()
                    / n;
                // A constant context would divide by zero: floor the scale relative to the level.
                let floor = 1e-4 * mean_abs.max(1.0);
                let scale = var.sqrt().max(floor) as f32;
                match (self, context.last()) {
                    (Scaling::Last, Some(&last)) => (last, scale),
                    _ => (mean as f32, scale),
                }
            }
        }
    }
}

/// Window geometry and normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowConfig {
    /// Context length C.
    pub context: usize,
    /// Horizon (prediction length) H.
    pub horizon: usize,
    pub scaling: Scaling,
}

impl WindowConfig {
    /// The TimeGrad protocol: context = 3 × prediction length.
    pub fn timegrad(prediction_length: usize, scaling: Scaling) -> Self {
        Self {
            context: 3 * prediction_length,
            horizon: prediction_length,
            scaling,
        }
    }

    /// Columns of the grid, C + H.
    pub fn len(&self) -> usize {
        self.context + self.horizon
    }

    /// Whether the window is empty (never for a valid config).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A batch of windows on the host, ready to become tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowBatch {
    pub batch: usize,
    pub num_series: usize,
    pub features: usize,
    /// Scaled horizon `[B, D, H]` (zeros where the window runs past the series: forecasting).
    pub x0: Vec<f32>,
    /// Conditioning `[B, 1 + F, D, C + H]`.
    pub cond: Vec<f32>,
    /// Per (window, series) location and scale, `[B, D]`.
    pub loc: Vec<f32>,
    pub scale: Vec<f32>,
}

impl WindowBatch {
    /// Cuts the windows ending (exclusively) at `ends` out of `series`, whose time features `[len, F]` are `tf`.
    /// Each end must satisfy C + H ≤ end ≤ series length.
    pub fn cut(
        series: &SeriesMatrix,
        tf: &[f32],
        ends: &[usize],
        cfg: &WindowConfig,
    ) -> Result<Self> {
        let (d, c, h, l) = (series.num_series, cfg.context, cfg.horizon, cfg.len());
        let f = tf.len() / series.len.max(1);
        if tf.len() != f * series.len {
            return Err(DataError::Invalid(format!(
                "time features hold {} values, not a multiple of the series length {}",
                tf.len(),
                series.len
            )));
        }
        let b = ends.len();
        let mut out = WindowBatch {
            batch: b,
            num_series: d,
            features: f,
            x0: vec![0.0; b * d * h],
            cond: vec![0.0; b * (1 + f) * d * l],
            loc: vec![0.0; b * d],
            scale: vec![1.0; b * d],
        };
        for (i, &end) in ends.iter().enumerate() {
            if end < l || end > series.len {
                return Err(DataError::Invalid(format!(
                    "window ending at column {end} needs {l} columns (context {c} + horizon {h}) inside a series \
                     of {} columns",
                    series.len
                )));
            }
            let start = end - l;
            for s in 0..d {
                let row = &series.row(s)[start..end];
                let (loc, scale) = cfg.scaling.fit(&row[..c]);
                out.loc[i * d + s] = loc;
                out.scale[i * d + s] = scale;
                let base = ((i * (1 + f)) * d + s) * l;
                for (t, &v) in row[..c].iter().enumerate() {
                    out.cond[base + t] = (v - loc) / scale;
                }
                for (t, &v) in row[c..].iter().enumerate() {
                    out.x0[(i * d + s) * h + t] = (v - loc) / scale;
                }
                for k in 0..f {
                    let base = ((i * (1 + f) + 1 + k) * d + s) * l;
                    for t in 0..l {
                        out.cond[base + t] = tf[(start + t) * f + k];
                    }
                }
            }
        }
        Ok(out)
    }

    /// (x_0 `[B, 1, D, H]`, cond `[B, 1 + F, D, C + H]`) on `device`.
    pub fn tensors(&self, cfg: &WindowConfig, device: &Device) -> Result<(Tensor, Tensor)> {
        let (b, d) = (self.batch, self.num_series);
        let x0 = Tensor::from_slice(&self.x0, (b, 1, d, cfg.horizon), device)?;
        let cond = Tensor::from_slice(&self.cond, (b, 1 + self.features, d, cfg.len()), device)?;
        Ok((x0, cond))
    }

    /// Maps scaled values `[B, D, H]` of window `i` back to the data's units.
    pub fn unscale(&self, i: usize, series: usize, v: f32) -> f32 {
        let k = i * self.num_series + series;
        v * self.scale[k] + self.loc[k]
    }
}

/// Training windows drawn uniformly (with replacement) from every position of the training matrix.
pub struct TrainWindows {
    series: SeriesMatrix,
    tf: Vec<f32>,
    cfg: WindowConfig,
}

impl TrainWindows {
    pub fn new(series: SeriesMatrix, cfg: WindowConfig) -> Result<Self> {
        if series.len < cfg.len() {
            return Err(DataError::Invalid(format!(
                "the training series has {} steps; a window needs context {} + horizon {}",
                series.len, cfg.context, cfg.horizon
            )));
        }
        let tf = series.time_features();
        Ok(Self { series, tf, cfg })
    }

    /// Number of time features F.
    pub fn features(&self) -> usize {
        self.tf.len() / self.series.len
    }

    /// Draws the ends of `batch` windows.
    pub fn draw(&self, batch: usize, rng: &mut NoiseRng) -> Result<WindowBatch> {
        let l = self.cfg.len();
        let positions = self.series.len - l + 1;
        let ends: Vec<usize> = (0..batch).map(|_| l + rng.index(positions)).collect();
        WindowBatch::cut(&self.series, &self.tf, &ends, &self.cfg)
    }
}

impl DataSource for TrainWindows {
    fn next_batch(
        &mut self,
        batch: usize,
        rng: &mut NoiseRng,
        device: &Device,
    ) -> vsdm_core::Result<(Tensor, Option<Tensor>)> {
        let w = self
            .draw(batch, rng)
            .map_err(|e| vsdm_core::Error::invalid("training windows", "batch", e.to_string()))?;
        let (x0, cond) = w
            .tensors(&self.cfg, device)
            .map_err(|e| vsdm_core::Error::invalid("training windows", "tensors", e.to_string()))?;
        Ok((x0, Some(cond)))
    }

    fn conditional(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::freq::parse_timestamp;
    use crate::data::Freq;

    #[test]
    fn std_scaling_matches_population_moments() {
        // Context 1, 2, 3, 4: mean 2.5, population variance 1.25.
        let (loc, scale) = Scaling::Std.fit(&[1.0, 2.0, 3.0, 4.0]);
        assert!((loc - 2.5).abs() < 1e-6);
        assert!((scale - 1.25f32.sqrt()).abs() < 1e-6);
        let (loc, scale) = Scaling::Mean.fit(&[-1.0, 3.0]);
        assert_eq!((loc, scale), (0.0, 2.0));
        // A constant context gets a positive floor instead of a zero scale.
        // Anchored at the last value, with the same scale as `std`.
        let (loc, scale) = Scaling::Last.fit(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(loc, 4.0);
        assert!((scale - 1.25f32.sqrt()).abs() < 1e-6);
        let (_, s) = Scaling::Std.fit(&[5.0; 10]);
        assert!(s > 0.0);
    }

    #[test]
    fn windows_put_context_and_horizon_in_place() {
        let start = parse_timestamp("2020-01-06").unwrap();
        // Two series: 0, 1, 2, ... and 100, 101, ...
        let vals: Vec<f32> = (0..20)
            .map(|v| v as f32)
            .chain((0..20).map(|v| 100.0 + v as f32))
            .collect();
        let m = SeriesMatrix::new(start, Freq::Days(1), 2, 20, vals).unwrap();
        let tf = m.time_features();
        let cfg = WindowConfig::timegrad(2, Scaling::Mean);
        let w = WindowBatch::cut(&m, &tf, &[8, 20], &cfg).unwrap();
        // Window 1 of series 1 spans columns 12..20: context 112..117 (mean 114.5), horizon 118, 119.
        let k = cfg.len();
        let f = w.features;
        let cond_at =
            |i: usize, ch: usize, s: usize, t: usize| w.cond[((i * (1 + f) + ch) * 2 + s) * k + t];
        assert!((w.scale[3] - 114.5).abs() < 1e-4);
        assert!((cond_at(1, 0, 1, 0) * 114.5 - 112.0).abs() < 1e-3);
        assert_eq!(cond_at(1, 0, 1, 6), 0.0);
        assert!((w.unscale(1, 1, w.x0[3 * 2 + 1]) - 119.0).abs() < 1e-3);
        // Time features follow the window's own columns.
        assert_eq!(cond_at(1, 1, 0, 0), tf[12 * f]);
        assert!(WindowBatch::cut(&m, &tf, &[7], &cfg).is_err());
        assert!(WindowBatch::cut(&m, &tf, &[21], &cfg).is_err());

        // Anchored at the last context value (117): the horizon 118, 119 becomes 1/σ, 2/σ and the context ends
        // at 0; unscaling returns the data.
        let cfg = WindowConfig::timegrad(2, Scaling::Last);
        let w = WindowBatch::cut(&m, &tf, &[8, 20], &cfg).unwrap();
        let sigma = (35.0f32 / 12.0).sqrt(); // population std of six consecutive integers
        assert!((w.loc[3] - 117.0).abs() < 1e-4 && (w.scale[3] - sigma).abs() < 1e-4);
        assert!(w.cond[((1 + f) * 2 + 1) * k + 5].abs() < 1e-6);
        assert!((w.x0[3 * 2] - 1.0 / sigma).abs() < 1e-5);
        assert!((w.unscale(1, 1, w.x0[3 * 2 + 1]) - 119.0).abs() < 1e-3);
    }

    /// The scale's floor, 1e-4 × the context's level (at least 1), keeps constant contexts finite; an all-zero
    /// context under `mean` gets scale 1.
    #[test]
    fn constant_contexts_get_a_floor_relative_to_their_level() {
        for scaling in [Scaling::Std, Scaling::Last] {
            assert_eq!(scaling.fit(&[500.0; 6]), (500.0, 0.05));
            assert_eq!(scaling.fit(&[-0.5; 6]), (-0.5, 1e-4));
        }
        assert_eq!(Scaling::Mean.fit(&[0.0; 6]), (0.0, 1.0));
        assert_eq!(Scaling::Mean.fit(&[]), (0.0, 1.0));
        assert!(WindowConfig::timegrad(0, Scaling::Mean).is_empty());
        assert!(!WindowConfig::timegrad(1, Scaling::Mean).is_empty());
    }

    /// Every value of every channel of a batch of windows, against what the layout promises: channel 0 the
    /// scaled context then zeros, channel 1 + k the k-th GluonTS feature of each column's own timestamp
    /// (computed here from the timestamp, not read from the feature matrix), x_0 the scaled horizon.
    #[test]
    fn every_channel_of_every_window_holds_its_own_columns() {
        use crate::data::time_features::features_for;
        let start = parse_timestamp("2021-02-26 05:00:00").unwrap();
        let (d, len) = (3, 40);
        let value = |s: usize, t: usize| (1000 * s + t + 1) as f32;
        let vals: Vec<f32> = (0..d)
            .flat_map(|s| (0..len).map(move |t| value(s, t)))
            .collect();
        let m = SeriesMatrix::new(start, Freq::Hours(1), d, len, vals).unwrap();
        let tf = m.time_features();
        let features = features_for(Freq::Hours(1));
        let cfg = WindowConfig {
            context: 5,
            horizon: 3,
            scaling: Scaling::Std,
        };
        let (c, h, l) = (5, 3, 8);
        let ends = [8, 40, 23, 8];
        let w = WindowBatch::cut(&m, &tf, &ends, &cfg).unwrap();
        assert_eq!(w.features, features.len());
        let f = w.features;
        for (i, &end) in ends.iter().enumerate() {
            let first = end - l;
            for s in 0..d {
                let (loc, scale) = (w.loc[i * d + s], w.scale[i * d + s]);
                let ctx: Vec<f32> = (first..first + c).map(|t| value(s, t)).collect();
                assert_eq!((loc, scale), cfg.scaling.fit(&ctx));
                for t in 0..l {
                    let at = |ch: usize| w.cond[((i * (1 + f) + ch) * d + s) * l + t];
                    let want = if t < c {
                        (value(s, first + t) - loc) / scale
                    } else {
                        0.0
                    };
                    assert_eq!(at(0), want, "window {i} series {s} column {t}");
                    let stamp = m.timestamp(first + t);
                    for (k, feature) in features.iter().enumerate() {
                        assert_eq!(at(1 + k), feature.value(stamp), "feature {k}, column {t}");
                    }
                }
                for t in 0..h {
                    let x = w.x0[(i * d + s) * h + t];
                    assert_eq!(w.unscale(i, s, x), value(s, first + c + t), "horizon {t}");
                }
            }
        }
        let (x0, cond) = w.tensors(&cfg, &Device::Cpu).unwrap();
        assert_eq!(x0.dims(), [4, 1, d, h]);
        assert_eq!(cond.dims(), [4, 1 + f, d, l]);
        assert_eq!(
            cond.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            w.cond
        );
    }

    /// Training windows are drawn uniformly over every position of the training matrix, the first (ending at
    /// C + H) and the last (ending at its final column) included, and handed to the trainer as conditional
    /// batches of the layout's shapes.
    #[test]
    fn training_windows_cover_every_position_uniformly() {
        let start = parse_timestamp("2020-01-06").unwrap();
        let len = 12;
        let vals: Vec<f32> = (1..=len).map(|t| t as f32).collect();
        let m = SeriesMatrix::new(start, Freq::Days(1), 1, len, vals).unwrap();
        let cfg = WindowConfig {
            context: 6,
            horizon: 2,
            scaling: Scaling::Mean,
        };
        let mut source = TrainWindows::new(m.clone(), cfg).unwrap();
        // GluonTS's features for daily data: day of week, of month, of year.
        assert_eq!(source.features(), 3);
        let mut rng = NoiseRng::new(9);
        let draws = 4000;
        let w = source.draw(draws, &mut rng).unwrap();
        let mut counts = [0usize; 13];
        for i in 0..draws {
            // The last horizon value is column end − 1, valued `end`.
            let end = w.unscale(i, 0, w.x0[i * 2 + 1]).round() as usize;
            counts[end] += 1;
        }
        assert_eq!(counts[..8].iter().sum::<usize>(), 0, "{counts:?}");
        for end in 8..=12 {
            let share = counts[end] as f64 / draws as f64;
            // 5 positions: 0.2 each, standard error 0.0063.
            assert!(
                (share - 0.2).abs() < 0.03,
                "end {end}: {share} ({counts:?})"
            );
        }
        assert!(source.conditional());
        let (x0, cond) = source.next_batch(7, &mut rng, &Device::Cpu).unwrap();
        assert_eq!(x0.dims(), [7, 1, 1, 2]);
        assert_eq!(cond.map(|c| c.dims().to_vec()), Some(vec![7, 4, 1, 8]));
        let short = SeriesMatrix::new(start, Freq::Days(1), 1, 7, vec![1.0; 7]).unwrap();
        assert!(TrainWindows::new(short, cfg).is_err());
    }
}
