//! Sample export. Forecasts: a CSV of sample quantiles and a PNG fan chart per series.

use std::io::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::forecast::{quantile_index, Window};

pub mod npz;

/// Export failures, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: drawing failed: {reason}")]
    Draw { path: String, reason: String },
    #[error("{what}: {reason}")]
    Input { what: String, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The quantile levels written to CSV: 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95.
pub const CSV_QUANTILES: [f64; 7] = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95];

/// Writes `window,series,step,truth,mean,q0.05,…,q0.95` for every window, series and step (quantiles as
/// GluonTS reads them from sorted samples), atomically (temporary file, then rename).
pub fn write_forecast_csv(
    path: &Path,
    windows: &[Window],
    series_names: &[String],
) -> Result<(), ExportError> {
    let mut out = String::from("window,series,step,truth,mean");
    for q in CSV_QUANTILES {
        out += &format!(",q{q}");
    }
    out.push('\n');
    for (w, win) in windows.iter().enumerate() {
        if win.samples.len() != win.num_samples * win.steps * win.series
            || win.truth.len() != win.steps * win.series
        {
            return Err(ExportError::Input {
                what: format!("forecast window {w}"),
                reason: "buffer sizes do not match its shape".into(),
            });
        }
        let mut v = Vec::with_capacity(win.num_samples);
        for d in 0..win.series {
            let name = series_names
                .get(d)
                .cloned()
                .unwrap_or_else(|| d.to_string());
            for t in 0..win.steps {
                v.clear();
                v.extend(
                    (0..win.num_samples)
                        .map(|i| win.samples[(i * win.steps + t) * win.series + d] as f64),
                );
                v.sort_unstable_by(f64::total_cmp);
                let mean = v.iter().sum::<f64>() / v.len() as f64;
                let y = win.truth[t * win.series + d];
                out += &format!(
                    "{w},{name},{t},{},{mean}",
                    if y.is_nan() {
                        String::new()
                    } else {
                        y.to_string()
                    }
                );
                for q in CSV_QUANTILES {
                    out += &format!(",{}", v[quantile_index(v.len(), q)]);
                }
                out.push('\n');
            }
        }
    }
    let tmp = path.with_extension("csv.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(out.as_bytes()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// A fan chart of one series: the context (black), the truth over the horizon (black), the median (blue) and the
/// 50% and 90% sample bands (shaded). `samples[i][t]` is sample i at horizon step t. No text is drawn, so no font
/// is needed; the caller names the file.
pub fn fan_chart(
    path: &Path,
    context: &[f64],
    truth: &[f64],
    samples: &[Vec<f64>],
) -> Result<(), ExportError> {
    let h = samples.first().map_or(0, |s| s.len());
    if samples.is_empty() || h == 0 || samples.iter().any(|s| s.len() != h) {
        return Err(ExportError::Input {
            what: path.display().to_string(),
            reason: "fan chart needs samples of equal, non-zero length".into(),
        });
    }
    let n = samples.len();
    let band = |q: f64| -> Vec<f64> {
        (0..h)
            .map(|t| {
                let mut v: Vec<f64> = samples.iter().map(|s| s[t]).collect();
                v.sort_unstable_by(f64::total_cmp);
                v[quantile_index(n, q)]
            })
            .collect()
    };
    let (q05, q25, q50, q75, q95) = (band(0.05), band(0.25), band(0.5), band(0.75), band(0.95));
    let c = context.len();
    let all = context
        .iter()
        .chain(truth)
        .chain(&q05)
        .chain(&q95)
        .filter(|x| x.is_finite());
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
        (a.min(x), b.max(x))
    });
    let pad = ((hi - lo) * 0.05).max(1e-9);
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(path, (800, 360)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .build_cartesian_2d(0f64..(c + h) as f64, (lo - pad)..(hi + pad))?;
        let x = |t: usize| (c + t) as f64;
        for (a, b, alpha) in [(&q05, &q95, 0.2), (&q25, &q75, 0.35)] {
            let poly: Vec<(f64, f64)> = (0..h)
                .map(|t| (x(t), a[t]))
                .chain((0..h).rev().map(|t| (x(t), b[t])))
                .collect();
            chart.draw_series(std::iter::once(Polygon::new(
                poly,
                BLUE.mix(alpha).filled(),
            )))?;
        }
        chart.draw_series(LineSeries::new(
            (0..h).map(|t| (x(t), q50[t])),
            BLUE.stroke_width(2),
        ))?;
        chart.draw_series(LineSeries::new(
            context
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(t, &v)| (t as f64, v)),
            BLACK,
        ))?;
        chart.draw_series(LineSeries::new(
            truth
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(t, &v)| (x(t), v)),
            BLACK.stroke_width(2),
        ))?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| ExportError::Draw {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quantiles_and_fan_chart() {
        let dir = tempfile::tempdir().unwrap();
        // 5 samples of 2 steps × 1 series: values 0..4 at step 0, 10..14 at step 1.
        let samples: Vec<f32> = (0..5).flat_map(|i| [i as f32, 10.0 + i as f32]).collect();
        let truth = [2.5, f64::NAN];
        let w = Window {
            samples: &samples,
            truth: &truth,
            num_samples: 5,
            steps: 2,
            series: 1,
        };
        let p = dir.path().join("f.csv");
        write_forecast_csv(&p, &[w], &["a".to_string()]).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "window,series,step,truth,mean,q0.05,q0.1,q0.25,q0.5,q0.75,q0.9,q0.95"
        );
        // round(4·0.05) = 0, round(4·0.25) = 1, round(4·0.5) = 2, round(4·0.95) = 4.
        assert_eq!(lines[1], "0,a,0,2.5,2,0,0,1,2,3,4,4");
        assert!(lines[2].starts_with("0,a,1,,12,"));
        let png = dir.path().join("fan.png");
        let s: Vec<Vec<f64>> = (0..20)
            .map(|i| vec![i as f64, i as f64 + 1.0, i as f64 + 2.0])
            .collect();
        fan_chart(&png, &[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0], &s).unwrap();
        assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
        assert!(fan_chart(&png, &[], &[], &[]).is_err());
        let bad = Window {
            samples: &samples[..3],
            truth: &truth,
            num_samples: 5,
            steps: 2,
            series: 1,
        };
        assert!(write_forecast_csv(&p, &[bad], &[])
            .unwrap_err()
            .to_string()
            .contains("window 0"));
    }
}
