//! GluonTS's on-disk data set layout (`metadata/metadata.json`, `train/train.json`, `test/test.json`, one JSON
//! object per line) and the multivariate grouping that TimeGrad-style models apply to the `*_nips` sets, as
//! GluonTS's `MultivariateGrouper` does: the training lines become one `D × T` matrix, and the test lines, read
//! in blocks of D, become `len(test) / len(train)` rolling windows, each the whole series up to the window's end.
//!
//! Unlike the grouper, which pads misaligned series, this loader insists that the series share start date and
//! length and reports the first line that does not.

use super::freq::{parse_timestamp, Freq};
use super::series::{open_text, Dataset, SeriesMatrix, TestSplit};
use crate::error::{DataError, Result};
use chrono::NaiveDateTime;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::io::BufRead;
use std::path::Path;

/// What `metadata/metadata.json` says. Old files (the `*_nips` archives) carry only `time_granularity`; newer
/// ones carry `freq`, `prediction_length` and `feat_static_cat[].cardinality`.
#[derive(Debug, Clone, PartialEq)]
pub struct GluonTsMetadata {
    /// Sampling frequency (`freq`, or `time_granularity` in old files).
    pub freq: Freq,
    /// Prediction length, when recorded.
    pub prediction_length: Option<usize>,
    /// Cardinality of the first static categorical feature (the number of series in the `*_nips` sets).
    pub cardinality: Option<usize>,
}

/// Reads and validates `metadata.json`.
pub fn read_metadata(path: &Path) -> Result<GluonTsMetadata> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| DataError::parse(path, e.line(), "(json)", e.to_string()))?;
    let (key, freq_str) = match (v.get("freq"), v.get("time_granularity")) {
        (Some(f), _) => ("freq", f),
        (None, Some(f)) => ("time_granularity", f),
        (None, None) => {
            return Err(DataError::file(
                path,
                "neither `freq` nor `time_granularity` is present",
            ))
        }
    };
    let line_of = |k: &str| {
        text.lines()
            .position(|l| l.contains(&format!("\"{k}\"")))
            .map_or(1, |i| i + 1)
    };
    let freq_s = freq_str
        .as_str()
        .ok_or_else(|| DataError::parse(path, line_of(key), key, "not a string"))?;
    let freq = Freq::parse(freq_s).ok_or_else(|| {
        DataError::parse(
            path,
            line_of(key),
            key,
            format!("unsupported frequency `{freq_s}`"),
        )
    })?;
    let prediction_length = match v.get("prediction_length") {
        None | Some(serde_json::Value::Null) => None,
        Some(p) => Some(as_usize(p).filter(|&p| p > 0).ok_or_else(|| {
            DataError::parse(
                path,
                line_of("prediction_length"),
                "prediction_length",
                format!("{p} is not a positive integer"),
            )
        })?),
    };
    let cardinality = match v
        .get("feat_static_cat")
        .and_then(|f| f.get(0))
        .and_then(|f| f.get("cardinality"))
    {
        None => None,
        Some(c) => Some(as_usize(c).ok_or_else(|| {
            DataError::parse(
                path,
                line_of("cardinality"),
                "feat_static_cat.cardinality",
                "not an integer",
            )
        })?),
    };
    Ok(GluonTsMetadata {
        freq,
        prediction_length,
        cardinality,
    })
}

fn as_usize(v: &serde_json::Value) -> Option<usize> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().map(|n| n as usize),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// One line of a GluonTS JSON-lines file.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonSeries {
    /// 1-based line number in its file.
    pub line: usize,
    /// Timestamp of the first observation.
    pub start: NaiveDateTime,
    /// Observations (NaN is rejected while reading).
    pub target: Vec<f32>,
}

/// A target cell: a number, or NaN written as a string or null.
struct Cell(f64);

impl<'de> Deserialize<'de> for Cell {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Cell;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number, \"NaN\" or null")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Cell, E> {
                Ok(Cell(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Cell, E> {
                Ok(Cell(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Cell, E> {
                Ok(Cell(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Cell, E> {
                match v.trim() {
                    "NaN" | "nan" | "NAN" => Ok(Cell(f64::NAN)),
                    other => other
                        .parse()
                        .map(Cell)
                        .map_err(|_| E::custom(format!("`{v}` is not a number"))),
                }
            }
            fn visit_unit<E: de::Error>(self) -> std::result::Result<Cell, E> {
                Ok(Cell(f64::NAN))
            }
        }
        d.deserialize_any(V)
    }
}

/// A target array parsed without an intermediate `Vec<Value>`.
struct Target(Vec<f32>);

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Target;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of numbers")
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Target, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(1024));
                while let Some(Cell(v)) = seq.next_element()? {
                    out.push(v as f32);
                }
                Ok(Target(out))
            }
        }
        d.deserialize_seq(V)
    }
}

#[derive(Deserialize)]
struct RawLine {
    start: Option<serde_json::Value>,
    target: Option<Target>,
}

/// Reads a GluonTS JSON-lines file. Each line needs a `start` aligned to `freq` and a `target` free of NaN;
/// errors name the file, line and field.
pub fn read_json_lines(path: &Path, freq: Freq) -> Result<Vec<JsonSeries>> {
    let reader = open_text(path)?;
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|e| DataError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let raw: RawLine = serde_json::from_str(&line).map_err(|e| {
            let field = if e.to_string().contains("number") {
                "target"
            } else {
                "(json)"
            };
            DataError::parse(path, line_no, field, e.to_string())
        })?;
        let start_s = match raw.start {
            Some(serde_json::Value::String(s)) => s,
            Some(_) => return Err(DataError::parse(path, line_no, "start", "not a string")),
            None => return Err(DataError::parse(path, line_no, "start", "missing")),
        };
        let start = parse_timestamp(&start_s).ok_or_else(|| {
            DataError::parse(
                path,
                line_no,
                "start",
                format!("unparsable date `{start_s}`"),
            )
        })?;
        if let Some(why) = freq.misalignment(start) {
            return Err(DataError::parse(
                path,
                line_no,
                "start",
                format!("wrong frequency for `{freq}`: {why}"),
            ));
        }
        let target = raw
            .target
            .ok_or_else(|| DataError::parse(path, line_no, "target", "missing"))?
            .0;
        if target.is_empty() {
            return Err(DataError::parse(path, line_no, "target", "empty"));
        }
        if let Some(j) = target.iter().position(|v| !v.is_finite()) {
            return Err(DataError::parse(
                path,
                line_no,
                "target",
                format!(
                    "value {j} is {} (missing values are not supported)",
                    target[j]
                ),
            ));
        }
        out.push(JsonSeries {
            line: line_no,
            start,
            target,
        });
    }
    if out.is_empty() {
        return Err(DataError::file(path, "no series in file"));
    }
    Ok(out)
}

/// Stacks equally long, equally started series into a matrix; names the first line that differs.
fn group(path: &Path, lines: &[JsonSeries], freq: Freq) -> Result<SeriesMatrix> {
    let first = &lines[0];
    let len = first.target.len();
    let mut values = Vec::with_capacity(lines.len() * len);
    for s in lines {
        if s.start != first.start {
            return Err(DataError::parse(
                path,
                s.line,
                "start",
                format!(
                    "inconsistent start date {} (line {} starts at {})",
                    s.start, first.line, first.start
                ),
            ));
        }
        if s.target.len() != len {
            return Err(DataError::parse(
                path,
                s.line,
                "target",
                format!(
                    "ragged lengths: {} values, line {} has {len}",
                    s.target.len(),
                    first.line
                ),
            ));
        }
        values.extend_from_slice(&s.target);
    }
    SeriesMatrix::new(first.start, freq, lines.len(), len, values)
}

/// Loads a GluonTS data set folder (`<dir>/metadata/metadata.json`, `<dir>/train/train.json`,
/// `<dir>/test/test.json`) and groups it multivariately. `prediction_length` overrides the metadata's (the old
/// `*_nips` metadata has none); one of the two must be given.
pub fn load_gluonts_dir(
    dir: &Path,
    name: &str,
    prediction_length: Option<usize>,
) -> Result<Dataset> {
    let meta_path = dir.join("metadata").join("metadata.json");
    let meta = read_metadata(&meta_path)?;
    let h = match (prediction_length, meta.prediction_length) {
        (Some(p), _) | (None, Some(p)) => p,
        (None, None) => {
            return Err(DataError::file(
                &meta_path,
                "no `prediction_length` in the metadata: give one (`--prediction-length N` on the command line)",
            ))
        }
    };
    let train_path = dir.join("train").join("train.json");
    let test_path = dir.join("test").join("test.json");
    let train_lines = read_json_lines(&train_path, meta.freq)?;
    let train = group(&train_path, &train_lines, meta.freq)?;
    let d = train.num_series;
    if let Some(card) = meta.cardinality {
        if card != d {
            return Err(DataError::file(
                &meta_path,
                format!(
                    "feat_static_cat cardinality {card} but {} has {d} series",
                    train_path.display()
                ),
            ));
        }
    }
    drop(train_lines);
    let test_lines = read_json_lines(&test_path, meta.freq)?;
    if test_lines.len() % d != 0 {
        return Err(DataError::file(
            &test_path,
            format!(
                "{} series is not a multiple of the {d} training series",
                test_lines.len()
            ),
        ));
    }
    let num_windows = test_lines.len() / d;
    let last = group(&test_path, &test_lines[(num_windows - 1) * d..], meta.freq)?;
    if last.start != train.start {
        return Err(DataError::parse(
            &test_path,
            test_lines[0].line,
            "start",
            format!(
                "test series start at {}, training series at {}",
                last.start, train.start
            ),
        ));
    }
    let mut window_ends = Vec::with_capacity(num_windows);
    for k in 0..num_windows {
        let block = &test_lines[k * d..(k + 1) * d];
        let end = block[0].target.len();
        if end > last.len {
            // Checked before the prefix comparison below, which would slice past the last window's end.
            return Err(DataError::parse(
                &test_path,
                block[0].line,
                "target",
                format!(
                    "test window {k} ends at {end}, after the last window's {}: windows must grow",
                    last.len
                ),
            ));
        }
        for (j, s) in block.iter().enumerate() {
            if s.start != last.start {
                return Err(DataError::parse(
                    &test_path,
                    s.line,
                    "start",
                    format!("inconsistent start date {}", s.start),
                ));
            }
            if s.target.len() != end {
                return Err(DataError::parse(
                    &test_path,
                    s.line,
                    "target",
                    format!(
                        "ragged lengths in test window {k}: {} values, line {} has {end}",
                        s.target.len(),
                        block[0].line
                    ),
                ));
            }
            if s.target[..] != last.row(j)[..end] {
                return Err(DataError::parse(
                    &test_path,
                    s.line,
                    "target",
                    format!(
                        "test window {k} of series {j} is not a prefix of the last window's series"
                    ),
                ));
            }
        }
        if end < h + 1 || window_ends.last().is_some_and(|&e| e >= end) {
            return Err(DataError::parse(
                &test_path,
                block[0].line,
                "target",
                format!("test window {k} ends at {end}: windows must be longer than the prediction length {h} and grow"),
            ));
        }
        if end - h < train.len {
            return Err(DataError::parse(
                &test_path,
                block[0].line,
                "target",
                format!(
                    "test window {k} forecasts columns {}–{} (prediction length {h}), inside the training series \
                     of {} ({} columns): the test split would score forecasts of training data",
                    end - h,
                    end - 1,
                    train_path.display(),
                    train.len
                ),
            ));
        }
        window_ends.push(end);
    }
    tracing::info!(
        name,
        series = d,
        train_len = train.len,
        windows = num_windows,
        freq = %meta.freq,
        "loaded GluonTS data set"
    );
    Ok(Dataset {
        name: name.to_string(),
        prediction_length: h,
        series_names: super::series::numbered_series(train.num_series),
        train,
        test: TestSplit {
            series: last,
            window_ends,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GluonTS folder in `dir` from its three files' text.
    fn folder(dir: &Path, meta: &str, train: &str, test: &str) {
        for (sub, file, text) in [
            ("metadata", "metadata.json", meta),
            ("train", "train.json", train),
            ("test", "test.json", test),
        ] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
            std::fs::write(dir.join(sub).join(file), text).unwrap();
        }
    }

    /// JSON lines of two series starting 2020-01-01, of the given lengths (series j holds 100·j + t).
    fn lines(lens: &[usize]) -> String {
        lens.iter()
            .flat_map(|&n| (0..2).map(move |j| (j, n)))
            .map(|(j, n)| {
                let target: Vec<String> = (0..n).map(|t| (100 * j + t).to_string()).collect();
                format!(
                    "{{\"start\": \"2020-01-01 00:00:00\", \"target\": [{}]}}\n",
                    target.join(", ")
                )
            })
            .collect()
    }

    const META: &str = "{\"freq\": \"H\", \"prediction_length\": 3}";

    /// Training lines become the matrix; test lines, two at a time, rolling windows ending where they end.
    #[test]
    fn a_small_folder_loads_into_a_matrix_and_rolling_windows() {
        let dir = tempfile::tempdir().unwrap();
        folder(dir.path(), META, &lines(&[1]), &lines(&[4, 6]));
        let ds = load_gluonts_dir(dir.path(), "tiny", None).unwrap();
        assert_eq!(
            (ds.prediction_length, ds.train.len, ds.num_series()),
            (3, 1, 2)
        );
        // A window one step longer than the horizon is the shortest allowed.
        assert_eq!(ds.test.window_ends, [4, 6]);
        assert_eq!(
            ds.test.series.row(1),
            [100.0, 101.0, 102.0, 103.0, 104.0, 105.0]
        );
        assert_eq!(ds.train.freq, Freq::Hours(1));
    }

    /// Metadata errors name the line of the field at fault.
    #[test]
    fn bad_metadata_is_named_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.json");
        for (text, want) in [
            (
                "{\n  \"a\": 1,\n  \"freq\": \"Q\"\n}",
                "metadata.json:3: field `freq`: unsupported frequency `Q`",
            ),
            (
                "{\n\"freq\": 7}",
                "metadata.json:2: field `freq`: not a string",
            ),
            (
                "{\"time_granularity\": \"H\",\n\n \"prediction_length\": 0}",
                "metadata.json:3: field `prediction_length`: 0 is not a positive integer",
            ),
            (
                "{\"freq\": \"H\",\n \"feat_static_cat\": [{\"cardinality\": \"many\"}]}",
                "metadata.json:2: field `feat_static_cat.cardinality`: not an integer",
            ),
            (
                "{\"prediction_length\": 3}",
                "neither `freq` nor `time_granularity`",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = read_metadata(&path).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        std::fs::write(
            &path,
            "{\"time_granularity\": \"D\", \"prediction_length\": \"7\"}",
        )
        .unwrap();
        let m = read_metadata(&path).unwrap();
        assert_eq!(
            (m.freq, m.prediction_length, m.cardinality),
            (Freq::Days(1), Some(7), None)
        );
    }

    /// Lines of a JSON-lines file are named by their number; a target that is not an array of numbers says so.
    #[test]
    fn bad_lines_are_named_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.json");
        let good = "{\"start\": \"2020-01-01\", \"target\": [1, 2]}\n";
        for (bad, want) in [
            (
                "{\"start\": \"2020-01-01\", \"target\": \"1 2\"}",
                "field `target`",
            ),
            (
                "{\"start\": \"2020-01-01\", \"target\": \"1 2\"}",
                "an array of numbers",
            ),
            (
                "{\"start\": \"2020-01-01\", \"target\": [1, {}]}",
                "a number, \"NaN\" or null",
            ),
            (
                "{\"start\": \"2020-01-01\", \"target\": [1, null]}",
                "value 1 is NaN",
            ),
            (
                "{\"start\": \"2020-01-01 00:30\", \"target\": [1]}",
                "field `start`",
            ),
        ] {
            std::fs::write(&path, format!("{good}\n{bad}\n{good}")).unwrap();
            let e = read_json_lines(&path, Freq::Days(1))
                .unwrap_err()
                .to_string();
            assert!(e.contains("train.json:3") && e.contains(want), "{bad}: {e}");
        }
    }

    /// Test windows shorter than the horizon plus one, or not growing, are refused by name.
    #[test]
    fn test_windows_must_outgrow_the_horizon_and_each_other() {
        let dir = tempfile::tempdir().unwrap();
        for (test, want) in [
            (lines(&[3, 6]), "test window 0 ends at 3"),
            (lines(&[2, 6]), "test window 0 ends at 2"),
            (lines(&[6, 6]), "test window 1 ends at 6"),
            (
                lines(&[6, 5]),
                "test window 0 ends at 6, after the last window's 5",
            ),
            (lines(&[5, 4, 6]), "test window 1 ends at 4"),
        ] {
            folder(dir.path(), META, &lines(&[1]), &test);
            let e = load_gluonts_dir(dir.path(), "tiny", None)
                .unwrap_err()
                .to_string();
            assert!(e.contains("test.json") && e.contains(want), "{want}: {e}");
        }
        folder(dir.path(), META, &lines(&[4]), &lines(&[6]));
        let e = load_gluonts_dir(dir.path(), "tiny", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("inside the training series"), "{e}");
    }
}
