//! A generator of GluonTS archives with the shape of `electricity_nips` (370 hourly series, prediction length
//! 24, rolling test windows), for tests and for exercising the electricity path end to end where the real file
//! cannot be downloaded. The values are synthetic load curves (per-series level, daily and weekly cycles,
//! multiplicative noise), not real data.

use super::freq::{parse_timestamp, Freq};
use crate::error::{DataError, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal, Normal};
use std::fmt::Write as _;
use std::path::Path;

/// Shape of the generated archive.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticArchive {
    /// Folder name inside the archive (and the archive's stem).
    pub name: String,
    /// Number of series D.
    pub num_series: usize,
    /// Length of the training series.
    pub train_len: usize,
    /// Number of rolling test windows; window k ends at `train_len + (k + 1) · prediction_length`.
    pub num_test_windows: usize,
    /// Forecast horizon, written to the metadata.
    pub prediction_length: usize,
    /// First timestamp (`YYYY-MM-DD HH:MM:SS`), hourly.
    pub start: String,
    /// RNG seed.
    pub seed: u64,
}

impl Default for SyntheticArchive {
    /// electricity_nips's shape: 370 series, 5833 training hours from 2014-03-19, 7 windows of 24 hours.
    fn default() -> Self {
        Self {
            name: "electricity_nips".into(),
            num_series: 370,
            train_len: 5833,
            num_test_windows: 7,
            prediction_length: 24,
            start: "2014-03-19 00:00:00".into(),
            seed: 0,
        }
    }
}

impl SyntheticArchive {
    /// The full generated matrix, row-major `[num_series, train_len + num_test_windows · prediction_length]`.
    pub fn values(&self) -> Result<Vec<f32>> {
        let start = parse_timestamp(&self.start).ok_or_else(|| {
            DataError::Invalid(format!("bad synthetic start date `{}`", self.start))
        })?;
        let len = self.train_len + self.num_test_windows * self.prediction_length;
        let stamps = Freq::Hours(1).range(start, len);
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let level = LogNormal::new(5.0, 1.0).map_err(|e| DataError::Invalid(e.to_string()))?;
        let noise = Normal::new(0.0f64, 0.05).map_err(|e| DataError::Invalid(e.to_string()))?;
        let mut out = Vec::with_capacity(self.num_series * len);
        for _ in 0..self.num_series {
            let l = level.sample(&mut rng);
            let phase = rng.random_range(0.0..24.0);
            let amp = rng.random_range(0.1..0.6);
            let weekend = rng.random_range(0.6..1.0);
            for t in &stamps {
                use chrono::{Datelike, Timelike};
                let h = t.hour() as f64;
                let daily = 1.0 + amp * (2.0 * std::f64::consts::PI * (h - phase) / 24.0).sin();
                let week = if t.weekday().number_from_monday() >= 6 {
                    weekend
                } else {
                    1.0
                };
                let v = l * daily * week * (1.0 + noise.sample(&mut rng));
                out.push((v.max(0.0) * 10.0).round() as f32 / 10.0);
            }
        }
        Ok(out)
    }

    /// Writes the archive as `.tar.gz` at `path`, in GluonTS's layout with modern metadata (`freq`,
    /// `prediction_length`, `feat_static_cat` cardinality).
    pub fn write(&self, path: &Path) -> Result<()> {
        let values = self.values()?;
        let len = self.train_len + self.num_test_windows * self.prediction_length;
        let line = |d: usize, end: usize| {
            let mut s = format!("{{\"start\": \"{}\", \"target\": [", self.start);
            for (i, v) in values[d * len..d * len + end].iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                let _ = write!(s, "{v}");
            }
            let _ = writeln!(s, "], \"feat_static_cat\": [{d}]}}");
            s
        };
        let mut train = String::new();
        for d in 0..self.num_series {
            train.push_str(&line(d, self.train_len));
        }
        let mut test = String::new();
        for k in 0..self.num_test_windows {
            for d in 0..self.num_series {
                test.push_str(&line(d, self.train_len + (k + 1) * self.prediction_length));
            }
        }
        let meta = serde_json::json!({
            "freq": "H",
            "prediction_length": self.prediction_length,
            "feat_static_cat": [{"name": "feat_static_cat", "cardinality": self.num_series.to_string()}],
        })
        .to_string();
        write_tar_gz(
            path,
            &[
                (
                    format!("{}/metadata/metadata.json", self.name),
                    meta.into_bytes(),
                ),
                (
                    format!("{}/train/train.json", self.name),
                    train.into_bytes(),
                ),
                (format!("{}/test/test.json", self.name), test.into_bytes()),
            ],
        )
    }
}

/// Writes `(path inside archive, bytes)` entries as a gzip-compressed tar file.
pub fn write_tar_gz(path: &Path, entries: &[(String, Vec<u8>)]) -> Result<()> {
    let f = std::fs::File::create(path).map_err(|e| DataError::io(path, e))?;
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for (name, bytes) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, name, bytes.as_slice())
            .map_err(|e| DataError::io(path, e))?;
    }
    let gz = builder.into_inner().map_err(|e| DataError::io(path, e))?;
    gz.finish().map_err(|e| DataError::io(path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, Timelike};

    /// The generated curves have the documented shape, measured on 64 series of 8 weeks: a log-normal level
    /// (log mean 5, sd 1), one sinusoidal daily cycle of relative amplitude 0.1–0.6 (the first harmonic of the
    /// weekday hour profile leaves only noise), weekends at 0.6–1 of weekdays, 5 % multiplicative noise, and
    /// non-negative values rounded to 0.1.
    #[test]
    fn curves_have_a_level_a_daily_cycle_weekends_and_noise() {
        let a = SyntheticArchive {
            num_series: 64,
            train_len: 24 * 7 * 8,
            num_test_windows: 1,
            prediction_length: 24,
            start: "2021-03-01 00:00:00".into(),
            seed: 3,
            ..SyntheticArchive::default()
        };
        let len = 24 * 7 * 8 + 24;
        let values = a.values().unwrap();
        assert_eq!(values.len(), 64 * len);
        assert!(values
            .iter()
            .all(|&v| v >= 0.0 && (v * 10.0 - (v * 10.0).round()).abs() < 1e-3));
        let stamps = Freq::Hours(1).range(parse_timestamp(&a.start).unwrap(), len);
        let weekend = |k: usize| stamps[k].weekday().number_from_monday() >= 6;
        let mut log_levels = Vec::new();
        let mut noise = Vec::new();
        for row in values.chunks(len) {
            let mut profile = [0f64; 24];
            let mut count = [0f64; 24];
            let (mut we, mut wd) = ((0.0, 0.0), (0.0, 0.0));
            for (k, &v) in row.iter().enumerate() {
                let slot = if weekend(k) { &mut we } else { &mut wd };
                *slot = (slot.0 + v as f64, slot.1 + 1.0);
                if !weekend(k) {
                    profile[stamps[k].hour() as usize] += v as f64;
                    count[stamps[k].hour() as usize] += 1.0;
                }
            }
            let p: Vec<f64> = profile.iter().zip(count).map(|(s, n)| s / n).collect();
            let m = p.iter().sum::<f64>() / 24.0;
            let w = |h: usize| 2.0 * std::f64::consts::PI * h as f64 / 24.0;
            // The first harmonic's cosine and sine coefficients.
            let harmonic = |f: fn(f64) -> f64| {
                p.iter().enumerate().map(|(h, v)| v * f(w(h))).sum::<f64>() / 12.0
            };
            let (c, s) = (harmonic(f64::cos), harmonic(f64::sin));
            let amp = c.hypot(s) / m;
            assert!((0.08..0.62).contains(&amp), "daily amplitude {amp}");
            let fit = |h: usize| m + c * w(h).cos() + s * w(h).sin();
            let rms = ((0..24).map(|h| (p[h] - fit(h)).powi(2)).sum::<f64>() / 24.0).sqrt() / m;
            assert!(
                rms < 0.025,
                "the hour profile is not one sinusoid: residual {rms}"
            );
            let ratio = (we.0 / we.1) / (wd.0 / wd.1);
            assert!((0.57..1.03).contains(&ratio), "weekend / weekday {ratio}");
            log_levels.push(m.ln());
            for (k, &v) in row.iter().enumerate() {
                if !weekend(k) {
                    noise.push(v as f64 / fit(stamps[k].hour() as usize) - 1.0);
                }
            }
        }
        let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
        let sd = |x: &[f64]| {
            let m = mean(x);
            (x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
        };
        assert!(
            (mean(&log_levels) - 5.0).abs() < 0.5,
            "log level {}",
            mean(&log_levels)
        );
        assert!(
            (0.6..1.4).contains(&sd(&log_levels)),
            "log level sd {}",
            sd(&log_levels)
        );
        assert!((0.04..0.06).contains(&sd(&noise)), "noise {}", sd(&noise));
    }

    /// The written archive, unpacked and loaded, holds exactly the generated values: the training lines their
    /// first `train_len` columns, test window k the first `train_len + (k + 1)·H`.
    #[test]
    fn the_archive_holds_the_generated_values() {
        let a = SyntheticArchive {
            name: "tiny_nips".into(),
            num_series: 3,
            train_len: 50,
            num_test_windows: 3,
            prediction_length: 4,
            seed: 8,
            ..SyntheticArchive::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("tiny_nips.tar.gz");
        a.write(&tar).unwrap();
        super::super::download::unpack_tar_gz(&tar, dir.path()).unwrap();
        let ds =
            super::super::gluonts::load_gluonts_dir(&dir.path().join("tiny_nips"), "tiny", None)
                .unwrap();
        let values = a.values().unwrap();
        assert_eq!(ds.test.window_ends, [54, 58, 62]);
        assert_eq!(ds.test.series.values, values);
        let train: Vec<f32> = values.chunks(62).flat_map(|r| r[..50].to_vec()).collect();
        assert_eq!(ds.train.values, train);
    }
}
