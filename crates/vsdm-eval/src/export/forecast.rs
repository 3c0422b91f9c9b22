//! Forecast export: a CSV of sample quantiles per (window, series, step) and a PNG fan chart per series.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::ExportError;
use crate::forecast::{quantile_index, SampleValue, Window};

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The quantile levels written to CSV: 0.05, 0.1, 0.25, 0.5 (the median), 0.75, 0.9, 0.95.
pub const CSV_QUANTILES: [f64; 7] = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95];

/// Writes `window,series,step,truth,mean,q0.05,…,q0.95` for every window, series and step, atomically
/// (a temporary file, then a rename). Quantiles are read from the sorted samples as GluonTS reads them
/// ([`quantile_index`]), so a CSV row's q0.5 is the median GluonTS scores. A missing truth is an empty field;
/// `series_names[d]` names series d (its index when absent).
pub fn write_forecast_csv<X: SampleValue>(
    path: &Path,
    windows: &[Window<X>],
    series_names: &[String],
) -> Result<(), ExportError> {
    let tmp = path.with_extension("csv.tmp");
    let file = std::fs::File::create(&tmp).map_err(io_error(&tmp))?;
    let mut out = csv::Writer::from_writer(std::io::BufWriter::new(file));
    let csv_err = |e: csv::Error| ExportError::Io {
        path: tmp.display().to_string(),
        source: std::io::Error::other(e),
    };
    let mut header = vec!["window".to_string(), "series".into(), "step".into()];
    header.extend(["truth".to_string(), "mean".into()]);
    header.extend(CSV_QUANTILES.iter().map(|q| format!("q{q}")));
    out.write_record(&header).map_err(csv_err)?;
    let mut v: Vec<f64> = Vec::new();
    let mut record: Vec<String> = Vec::with_capacity(header.len());
    for (w, win) in windows.iter().enumerate() {
        let (s, t, d) = (win.num_samples, win.steps, win.series);
        if s == 0 || win.samples.len() != s * t * d || win.truth.len() != t * d {
            return Err(ExportError::Input {
                what: format!("forecast window {w}"),
                reason: format!(
                    "{} samples and {} truth values do not match {s} samples × {t} steps × {d} series",
                    win.samples.len(),
                    win.truth.len()
                ),
            });
        }
        let index: Vec<usize> = CSV_QUANTILES
            .iter()
            .map(|&q| quantile_index(s, q))
            .collect();
        for series in 0..d {
            let name = series_names
                .get(series)
                .cloned()
                .unwrap_or_else(|| series.to_string());
            for step in 0..t {
                v.clear();
                v.extend((0..s).map(|i| win.sample(i, step, series)));
                v.sort_unstable_by(f64::total_cmp);
                let y = win.truth[step * d + series];
                record.clear();
                record.extend([w.to_string(), name.clone(), step.to_string()]);
                record.push(if y.is_finite() {
                    y.to_string()
                } else {
                    String::new()
                });
                // `+ 0.0` writes −0 as 0.
                record.push((v.iter().sum::<f64>() / s as f64 + 0.0).to_string());
                record.extend(index.iter().map(|&k| (v[k] + 0.0).to_string()));
                out.write_record(&record).map_err(csv_err)?;
            }
        }
    }
    out.flush().map_err(io_error(&tmp))?;
    drop(out);
    std::fs::rename(&tmp, path).map_err(io_error(path))
}

/// The q-quantile (GluonTS's convention) of `samples[·][t]` for every step t.
fn band(samples: &[Vec<f64>], q: f64) -> Vec<f64> {
    let h = samples[0].len();
    let mut v = vec![0.0; samples.len()];
    (0..h)
        .map(|t| {
            for (x, s) in v.iter_mut().zip(samples) {
                *x = s[t];
            }
            let k = quantile_index(v.len(), q);
            *v.select_nth_unstable_by(k, f64::total_cmp).1
        })
        .collect()
}

/// A fan chart of one series: the context (thin black line), the truth over the horizon (thick black), the
/// median (blue) and the 50% and 90% sample bands (shaded, 0.25–0.75 and 0.05–0.95). `samples[i][t]` is
/// sample i at horizon step t; non-finite context or truth values are left out. No text is drawn, so no font is
/// needed.
pub fn fan_chart(
    path: &Path,
    context: &[f64],
    truth: &[f64],
    samples: &[Vec<f64>],
) -> Result<(), ExportError> {
    let h = samples.first().map_or(0, |s| s.len());
    let input = |reason: String| ExportError::Input {
        what: path.display().to_string(),
        reason,
    };
    if h == 0 || samples.iter().any(|s| s.len() != h) {
        return Err(input(
            "fan chart needs samples of equal, non-zero length".into(),
        ));
    }
    if !truth.is_empty() && truth.len() != h {
        return Err(input(format!(
            "{} truth values for a horizon of {h} steps",
            truth.len()
        )));
    }
    if samples.iter().flatten().any(|x| !x.is_finite()) {
        return Err(input("a sample is NaN or infinite".into()));
    }
    let [q05, q25, q50, q75, q95] = [0.05, 0.25, 0.5, 0.75, 0.95].map(|q| band(samples, q));
    let c = context.len();
    let (lo, hi) = context
        .iter()
        .chain(truth)
        .chain(&q05)
        .chain(&q95)
        .filter(|x| x.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let pad = ((hi - lo) * 0.05).max(1e-9);
    let x = |t: usize| (c + t) as f64;
    let finite = |off: usize, ys: &[f64]| -> Vec<(f64, f64)> {
        ys.iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(t, &v)| ((off + t) as f64, v))
            .collect()
    };
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(path, (800, 360)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .build_cartesian_2d(0f64..(c + h).max(2) as f64 - 1.0, (lo - pad)..(hi + pad))?;
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
        chart.draw_series(LineSeries::new(finite(0, context), BLACK))?;
        chart.draw_series(LineSeries::new(finite(c, truth), BLACK.stroke_width(2)))?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| ExportError::Draw {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// The file-name parts of the first `n` series' charts: the name with every character but ASCII letters,
/// digits, `-` and `_` replaced by `_`, cut to 60 characters; the series' index where there is no name or
/// nothing of it is left; `_<index>` appended where the result would repeat an earlier one (also when the two
/// differ only in case, for case-insensitive file systems).
fn chart_names(series_names: &[String], n: usize) -> Vec<String> {
    let mut used = std::collections::HashSet::new();
    (0..n)
        .map(|j| {
            let safe: String = series_names
                .get(j)
                .map(|name| {
                    name.chars()
                        .map(|ch| {
                            if ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' {
                                ch
                            } else {
                                '_'
                            }
                        })
                        .take(60)
                        .collect()
                })
                .filter(|s: &String| s.chars().any(|c| c != '_'))
                .unwrap_or_else(|| j.to_string());
            let mut out = safe.clone();
            while !used.insert(out.to_ascii_lowercase()) {
                out = format!("{out}_{j}");
            }
            out
        })
        .collect()
}

/// Fan charts of the first `max_series` series of one window, `<dir>/fan_<name>.png` (`name` made safe and
/// distinct by `chart_names`), with a progress bar. `context` is C × D row-major (the observed history
/// before the window; may be empty). Returns the files written.
pub fn fan_charts<X: SampleValue>(
    dir: &Path,
    window: &Window<X>,
    context: &[f64],
    series_names: &[String],
    max_series: usize,
) -> Result<Vec<PathBuf>, ExportError> {
    let (s, t, d) = (window.num_samples, window.steps, window.series);
    if s == 0 || d == 0 || window.samples.len() != s * t * d || window.truth.len() != t * d {
        return Err(ExportError::Input {
            what: "fan charts".into(),
            reason: format!(
                "{} samples and {} truth values do not match {s} samples × {t} steps × {d} series",
                window.samples.len(),
                window.truth.len()
            ),
        });
    }
    if !context.len().is_multiple_of(d) {
        return Err(ExportError::Input {
            what: "fan chart context".into(),
            reason: format!("{} values are not a multiple of {d} series", context.len()),
        });
    }
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let c = context.len() / d;
    let n = d.min(max_series);
    let bar = indicatif::ProgressBar::new(n as u64).with_message("fan charts");
    let mut written = Vec::with_capacity(n);
    let names = chart_names(series_names, n);
    for (j, safe) in names.iter().enumerate() {
        let ctx: Vec<f64> = (0..c).map(|k| context[k * d + j]).collect();
        let truth: Vec<f64> = (0..t).map(|k| window.truth[k * d + j]).collect();
        let samples: Vec<Vec<f64>> = (0..s)
            .map(|i| (0..t).map(|k| window.sample(i, k, j)).collect())
            .collect();
        let path = dir.join(format!("fan_{safe}.png"));
        fan_chart(&path, &ctx, &truth, &samples)?;
        written.push(path);
        bar.inc(1);
    }
    bar.finish_and_clear();
    tracing::info!(charts = written.len(), dir = %dir.display(), "fan charts written");
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::chart_names;

    fn names(v: &[&str]) -> Vec<String> {
        chart_names(
            &v.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            v.len(),
        )
    }

    /// Names that sanitise alike, differ only in case, have nothing safe left or are too long still give
    /// distinct, short file names; unnamed series take their index.
    #[test]
    fn chart_file_names_are_safe_and_distinct() {
        assert_eq!(names(&["OT", "HUFL"]), ["OT", "HUFL"]);
        // ASCII letters, digits, `-` and `_` are kept as they are.
        assert_eq!(names(&["MT-001_b", "x-y"]), ["MT-001_b", "x-y"]);
        assert_eq!(names(&["a/b", "a_b", "a?b"]), ["a_b", "a_b_1", "a_b_2"]);
        assert_eq!(names(&["A", "a"]), ["A", "a_1"]);
        assert_eq!(names(&["Ä ö", "日本"]), ["0", "1"]);
        let long = "x".repeat(300);
        let got = names(&[&long, &long]);
        assert!(
            got[0].len() == 60 && got[1] == format!("{}_1", got[0]),
            "{got:?}"
        );
        let short = vec!["only".to_string()];
        assert_eq!(chart_names(&short, 2), ["only", "1"]);
    }
}
