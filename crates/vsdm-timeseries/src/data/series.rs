//! In-memory multivariate series: a `D × T` matrix with a start date and frequency, and the train/test split
//! of a forecasting data set.

use super::freq::Freq;
use super::time_features::time_feature_matrix;
use crate::error::{DataError, Result};
use chrono::NaiveDateTime;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

/// `num_series` aligned series of `len` regular observations, stored row-major (series × time).
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesMatrix {
    /// Timestamp of column 0.
    pub start: NaiveDateTime,
    /// Sampling frequency.
    pub freq: Freq,
    /// Number of series D (rows).
    pub num_series: usize,
    /// Number of time steps T (columns).
    pub len: usize,
    /// Row-major values, `values[d * len + t]`.
    pub values: Vec<f32>,
}

impl SeriesMatrix {
    /// Builds a matrix, checking that `values.len() == num_series * len`.
    pub fn new(
        start: NaiveDateTime,
        freq: Freq,
        num_series: usize,
        len: usize,
        values: Vec<f32>,
    ) -> Result<Self> {
        if values.len() != num_series * len {
            return Err(DataError::Invalid(format!(
                "series matrix of {num_series} × {len} needs {} values, got {}",
                num_series * len,
                values.len()
            )));
        }
        Ok(Self {
            start,
            freq,
            num_series,
            len,
            values,
        })
    }

    /// Series `d` as a slice of length `len`.
    pub fn row(&self, d: usize) -> &[f32] {
        &self.values[d * self.len..(d + 1) * self.len]
    }

    /// Value of series `d` at time index `t`.
    pub fn at(&self, d: usize, t: usize) -> f32 {
        self.values[d * self.len + t]
    }

    /// The first `len` columns (same start and frequency).
    pub fn prefix(&self, len: usize) -> Result<SeriesMatrix> {
        if len > self.len {
            return Err(DataError::Invalid(format!(
                "prefix of {len} steps asked from a series of {} steps",
                self.len
            )));
        }
        let mut values = Vec::with_capacity(self.num_series * len);
        for d in 0..self.num_series {
            values.extend_from_slice(&self.row(d)[..len]);
        }
        SeriesMatrix::new(self.start, self.freq, self.num_series, len, values)
    }

    /// Timestamp of column `t`.
    pub fn timestamp(&self, t: usize) -> NaiveDateTime {
        let mut ts = self.start;
        for _ in 0..t {
            ts = self.freq.next(ts);
        }
        ts
    }

    /// GluonTS time features of every column: row-major `[len, F]`.
    pub fn time_features(&self) -> Vec<f32> {
        time_feature_matrix(self.start, self.freq, self.len)
    }
}

/// The evaluation split: the full series and the end (exclusive) of each rolling test window. Window `k`
/// forecasts columns `window_ends[k] − prediction_length .. window_ends[k]` from what precedes them.
#[derive(Debug, Clone, PartialEq)]
pub struct TestSplit {
    /// The series up to the last window's end.
    pub series: SeriesMatrix,
    /// Exclusive end column of each window, increasing.
    pub window_ends: Vec<usize>,
}

/// A forecasting data set: training matrix, rolling test windows and the protocol's prediction length.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Registry or file name.
    pub name: String,
    /// Horizon H of every forecast.
    pub prediction_length: usize,
    /// The training matrix (D × T_train).
    pub train: SeriesMatrix,
    /// The test windows.
    pub test: TestSplit,
    /// A name per series (a CSV's column headers; `series0`, `series1`, … where the file has none), for the
    /// forecast CSV and the fan charts.
    pub series_names: Vec<String>,
}

/// `series0`, `series1`, …: the names of series whose file does not name them.
pub fn numbered_series(d: usize) -> Vec<String> {
    (0..d).map(|j| format!("series{j}")).collect()
}

impl Dataset {
    /// Number of series D.
    pub fn num_series(&self) -> usize {
        self.train.num_series
    }

    /// The same data set with its series named (one name per series): a blank name becomes `series<j>`, a
    /// repeated one gets `_2`, `_3`, … so that every CSV column is told apart.
    pub fn with_series_names(mut self, names: Vec<String>) -> Result<Self> {
        if names.len() != self.num_series() {
            return Err(DataError::Invalid(format!(
                "{} series names for {} series",
                names.len(),
                self.num_series()
            )));
        }
        let mut used = std::collections::HashSet::new();
        self.series_names = names
            .into_iter()
            .enumerate()
            .map(|(j, n)| {
                let base = if n.trim().is_empty() {
                    format!("series{j}")
                } else {
                    n.trim().to_string()
                };
                let mut name = base.clone();
                let mut k = 2;
                while !used.insert(name.clone()) {
                    name = format!("{base}_{k}");
                    k += 1;
                }
                name
            })
            .collect();
        Ok(self)
    }

    /// Splits one full series by the protocol used here for ETTh1 and LSTNet files: the last `test_fraction` of
    /// the columns is the test period, covered by rolling windows of `prediction_length` whose ends advance by
    /// `stride` (a day for hourly data); everything before it is the training matrix.
    pub fn from_full_series(
        name: impl Into<String>,
        full: SeriesMatrix,
        prediction_length: usize,
        test_fraction: f64,
        stride: usize,
    ) -> Result<Dataset> {
        if !(0.0..1.0).contains(&test_fraction) || stride == 0 || prediction_length == 0 {
            return Err(DataError::Invalid(format!(
                "bad split: test fraction {test_fraction}, stride {stride}, prediction length {prediction_length}"
            )));
        }
        let test_len = (full.len as f64 * test_fraction).floor() as usize;
        let train_len = full.len - test_len;
        let window_ends: Vec<usize> = (1..)
            .map(|k| train_len + prediction_length + (k - 1) * stride)
            .take_while(|&e| e <= full.len)
            .collect();
        if window_ends.is_empty() || train_len == 0 {
            return Err(DataError::Invalid(format!(
                "a series of {} steps has no room for a test window of {prediction_length} steps in its last \
                 {test_fraction} fraction",
                full.len
            )));
        }
        Ok(Dataset {
            name: name.into(),
            prediction_length,
            train: full.prefix(train_len)?,
            series_names: numbered_series(full.num_series),
            test: TestSplit {
                series: full,
                window_ends,
            },
        })
    }

    /// A validation data set for model selection without the test windows: the last `windows` rolling windows
    /// of the *training* matrix (their ends advance by the test split's stride) become the evaluation split,
    /// and the training matrix loses those columns. Nothing of the test period is in it. Named `<name>-val`,
    /// so its runs and weights do not mix with the test protocol's.
    pub fn validation(&self, windows: usize) -> Result<Dataset> {
        let h = self.prediction_length;
        let stride = match self.test.window_ends.as_slice() {
            [a, b, ..] => b - a,
            _ => h,
        };
        let held_out = windows
            .checked_sub(1)
            .and_then(|k| k.checked_mul(stride))
            .and_then(|k| k.checked_add(h))
            .filter(|&n| n < self.train.len);
        let Some(held_out) = held_out else {
            return Err(DataError::Invalid(format!(
                "{windows} validation windows of {h} steps (stride {stride}) do not fit in the {} training \
                 steps of {} with any left to train on",
                self.train.len, self.name
            )));
        };
        let train_len = self.train.len - held_out;
        Ok(Dataset {
            name: format!("{}-val", self.name),
            prediction_length: h,
            train: self.train.prefix(train_len)?,
            series_names: self.series_names.clone(),
            test: TestSplit {
                series: self.train.clone(),
                window_ends: (0..windows).map(|k| train_len + h + k * stride).collect(),
            },
        })
    }
}

/// Opens a text file for line reading, decompressing it when the name ends in `.gz`.
pub fn open_text(path: &Path) -> Result<Box<dyn BufRead>> {
    let f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 20, reader)))
}

/// Parses one number cell; `NaN`, `nan` and empty cells become NaN, which callers reject where not allowed.
pub fn parse_number(s: &str) -> Option<f32> {
    let s = s.trim();
    match s {
        "" | "NaN" | "nan" | "NA" | "null" => Some(f32::NAN),
        _ => s.parse::<f32>().ok(),
    }
}

/// What is wrong with a cell that [`parse_number`] read as NaN or infinite, quoting it.
pub fn non_finite_cell(cell: &str) -> String {
    let c = cell.trim();
    if c.is_empty() {
        "empty cell (a missing value; the series must be complete)".into()
    } else if c.parse::<f64>().is_ok_and(f64::is_finite) {
        format!("`{c}` is beyond the range of f32 (±3.4e38)")
    } else {
        format!("`{c}` is NaN or infinite (a missing value; the series must be complete)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::freq::parse_timestamp;

    /// Two hourly series of 1,000 steps from 2016-07-01, valued 0..999 and 1000..1999.
    fn two_hourly_series() -> SeriesMatrix {
        let start = parse_timestamp("2016-07-01").unwrap();
        SeriesMatrix::new(
            start,
            Freq::Hours(1),
            2,
            1000,
            (0..2000).map(|v| v as f32).collect(),
        )
        .unwrap()
    }

    /// Header names kept where they can be: a blank one numbered, a repeated one suffixed, the count checked.
    #[test]
    fn series_names_keep_what_they_can() {
        let ds = Dataset::from_full_series("x", two_hourly_series(), 24, 0.2, 24).unwrap();
        assert_eq!(ds.series_names, ["series0", "series1"]);
        let named = |v: [&str; 2]| {
            ds.clone()
                .with_series_names(v.iter().map(|s| s.to_string()).collect())
                .unwrap()
                .series_names
        };
        assert_eq!(named(["HUFL", "OT"]), ["HUFL", "OT"]);
        assert_eq!(named(["HUFL", "HUFL"]), ["HUFL", "HUFL_2"]);
        assert_eq!(named(["", "OT"]), ["series0", "OT"]);
        assert!(ds.clone().with_series_names(vec!["a".into()]).is_err());
        // Three alike count on, past a suffixed name the file already holds.
        let full = SeriesMatrix::new(ds.train.start, Freq::Hours(1), 5, 1, vec![0.0; 5]).unwrap();
        let five = Dataset {
            train: full.clone(),
            test: TestSplit {
                series: full,
                window_ends: vec![1],
            },
            ..ds.clone()
        };
        let names = |v: [&str; 5]| {
            five.clone()
                .with_series_names(v.iter().map(|s| s.to_string()).collect())
                .unwrap()
                .series_names
        };
        assert_eq!(
            names(["a", "a", "a", " ", "a"]),
            ["a", "a_2", "a_3", "series3", "a_4"]
        );
        assert_eq!(
            names(["a", "a_2", "a", "b ", "b"]),
            ["a", "a_2", "a_3", "b", "b_2"]
        );
    }

    /// Values by (series, step), the first columns, and the prefix refused past the end.
    #[test]
    fn values_and_prefixes() {
        let m = two_hourly_series();
        assert_eq!((m.at(0, 0), m.at(0, 999), m.at(1, 3)), (0.0, 999.0, 1003.0));
        assert_eq!(m.prefix(1000).unwrap(), m);
        let p = m.prefix(4).unwrap();
        assert_eq!(
            p.values,
            [0.0, 1.0, 2.0, 3.0, 1000.0, 1001.0, 1002.0, 1003.0]
        );
        let e = m.prefix(1001).unwrap_err().to_string();
        assert!(e.contains("1001") && e.contains("1000"), "{e}");
    }

    /// Each bad split parameter alone is refused, naming its value.
    #[test]
    fn bad_splits_are_named() {
        let split = |frac: f64, stride: usize, h: usize| {
            Dataset::from_full_series("x", two_hourly_series(), h, frac, stride)
        };
        assert!(split(0.2, 24, 24).is_ok());
        for (frac, stride, h, named) in [
            (1.0, 24, 24, "test fraction 1"),
            (-0.1, 24, 24, "test fraction -0.1"),
            (f64::NAN, 24, 24, "test fraction NaN"),
            (0.2, 0, 24, "stride 0"),
            (0.2, 24, 0, "prediction length 0"),
            (0.01, 24, 24, "no room"),
        ] {
            let e = split(frac, stride, h).unwrap_err().to_string();
            assert!(e.contains(named), "{frac} {stride} {h}: {e}");
        }
    }

    #[test]
    fn rolling_daily_split() {
        let full = two_hourly_series();
        let ds = Dataset::from_full_series("x", full, 24, 0.2, 24).unwrap();
        // 200 test steps → windows ending at 824, 848, ..., 992 (8 windows).
        assert_eq!(ds.train.len, 800);
        assert_eq!(ds.test.window_ends.first(), Some(&824));
        assert_eq!(ds.test.window_ends.len(), 8);
        assert_eq!(ds.train.row(1)[0], 1000.0);
        assert_eq!(
            ds.test.series.timestamp(24),
            parse_timestamp("2016-07-02").unwrap()
        );
    }

    #[test]
    fn validation_windows_come_from_the_training_part_only() {
        let full = two_hourly_series();
        let ds = Dataset::from_full_series("x", full, 24, 0.2, 24).unwrap();
        let val = ds.validation(3).unwrap();
        // The last three daily windows of the 800 training steps: ends 752, 776, 800.
        assert_eq!(val.test.window_ends, vec![752, 776, 800]);
        assert_eq!(val.train.len, 728);
        assert_eq!(val.name, "x-val");
        // The evaluation series is the training matrix: no value of the test period (columns ≥ 800).
        assert_eq!(val.test.series, ds.train);
        assert!(val.test.series.row(0).iter().all(|&v| v < 800.0));
        assert_eq!(val.train.row(1)[727], 1727.0);
        // Too many windows, or none, is an error naming the count.
        for bad in [0, 34, 1000] {
            let e = ds.validation(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad} validation windows")), "{e}");
        }
        assert!(ds.validation(33).is_ok());
        // Windows that would hold out exactly every training step leave nothing to train on.
        let ds = Dataset::from_full_series("x", two_hourly_series(), 32, 0.2, 32).unwrap();
        assert_eq!(ds.train.len, 800);
        assert_eq!(ds.validation(24).unwrap().train.len, 32);
        let e = ds.validation(25).unwrap_err().to_string();
        assert!(e.contains("25 validation windows"), "{e}");
        // The windows advance by the test split's stride, here half a horizon.
        let ds = Dataset::from_full_series("x", two_hourly_series(), 24, 0.2, 12).unwrap();
        let val = ds.validation(3).unwrap();
        assert_eq!(
            (val.train.len, val.test.window_ends),
            (752, vec![776, 788, 800])
        );
    }
}
