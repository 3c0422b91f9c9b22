//! CSV with a header and a leading date column, as in the ETT data sets (`date,HUFL,HULL,...,OT`). Optionally
//! gzip-compressed.

use super::freq::{parse_timestamp, Freq};
use super::series::{open_text, parse_number, SeriesMatrix};
use crate::error::{DataError, Result};
use chrono::NaiveDateTime;
use std::path::Path;

/// A date-indexed CSV: the matrix and the names of its value columns.
#[derive(Debug, Clone, PartialEq)]
pub struct DateCsv {
    /// Column names after the date column.
    pub columns: Vec<String>,
    /// Values, one row of the matrix per column of the file.
    pub series: SeriesMatrix,
}

/// Reads a CSV whose first column is a timestamp and whose other columns are numbers. The timestamps must be
/// exactly one period of `freq` apart (with `freq = None` the period is inferred from the first two rows and
/// must be a supported frequency). Errors name the line and column of an unparsable date or number, a NaN, a
/// ragged row, or a date that breaks the frequency.
pub fn load_date_csv(path: &Path, freq: Option<Freq>) -> Result<DateCsv> {
    let reader = open_text(path)?;
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(reader);
    let header = csv
        .headers()
        .map_err(|e| DataError::parse(path, 1, "(header)", e.to_string()))?
        .clone();
    if header.len() < 2 {
        return Err(DataError::parse(
            path,
            1,
            "(header)",
            "needs a date column and at least one value column",
        ));
    }
    let columns: Vec<String> = header
        .iter()
        .skip(1)
        .map(|s| s.trim().to_string())
        .collect();
    let width = columns.len();
    let mut cols: Vec<Vec<f32>> = vec![Vec::new(); width];
    let mut start: Option<NaiveDateTime> = None;
    let mut prev: Option<NaiveDateTime> = None;
    let mut freq = freq;
    for (i, rec) in csv.records().enumerate() {
        let line_no = i + 2;
        let rec = rec.map_err(|e| DataError::parse(path, line_no, "(row)", e.to_string()))?;
        if rec.len() != width + 1 {
            return Err(DataError::parse(
                path,
                line_no,
                "(row)",
                format!(
                    "ragged row: {} fields, the header has {}",
                    rec.len(),
                    width + 1
                ),
            ));
        }
        let date_s = &rec[0];
        let t = parse_timestamp(date_s).ok_or_else(|| {
            DataError::parse(
                path,
                line_no,
                &header[0],
                format!("unparsable date `{date_s}`"),
            )
        })?;
        match (prev, freq) {
            (None, Some(f)) => {
                if let Some(why) = f.misalignment(t) {
                    return Err(DataError::parse(
                        path,
                        line_no,
                        &header[0],
                        format!("wrong frequency for `{f}`: {why}"),
                    ));
                }
            }
            (Some(p), None) => {
                let f = infer_freq(p, t).ok_or_else(|| {
                    DataError::parse(
                        path,
                        line_no,
                        &header[0],
                        format!("cannot infer a frequency from {p} → {t}"),
                    )
                })?;
                freq = Some(f);
            }
            (Some(p), Some(f)) => {
                let expect = f.next(p);
                if t != expect {
                    return Err(DataError::parse(
                        path,
                        line_no,
                        &header[0],
                        format!("wrong frequency: {t} follows {p}, `{f}` expects {expect}"),
                    ));
                }
            }
            (None, None) => {}
        }
        start.get_or_insert(t);
        prev = Some(t);
        for (j, col) in cols.iter_mut().enumerate() {
            let cell = &rec[j + 1];
            let v = parse_number(cell).ok_or_else(|| {
                DataError::parse(
                    path,
                    line_no,
                    &columns[j],
                    format!("`{cell}` is not a number"),
                )
            })?;
            if !v.is_finite() {
                return Err(DataError::parse(
                    path,
                    line_no,
                    &columns[j],
                    super::series::non_finite_cell(cell),
                ));
            }
            col.push(v);
        }
    }
    let (Some(start), Some(freq)) = (start, freq) else {
        return Err(DataError::file(
            path,
            "fewer than two data rows: no frequency",
        ));
    };
    let len = cols[0].len();
    let values = cols.into_iter().flatten().collect();
    Ok(DateCsv {
        columns,
        series: SeriesMatrix::new(start, freq, width, len, values)?,
    })
}

/// The supported frequency whose one step takes `a` to `b`, if any.
fn infer_freq(a: NaiveDateTime, b: NaiveDateTime) -> Option<Freq> {
    let minutes = (b - a).num_minutes();
    let candidates = if minutes > 0 && minutes % 60 == 0 && minutes < 1440 {
        vec![Freq::Hours((minutes / 60) as u32)]
    } else if minutes > 0 && minutes < 60 {
        vec![Freq::Minutes(minutes as u32)]
    } else {
        vec![
            Freq::Days((minutes / 1440).max(1) as u32),
            Freq::BusinessDays,
            Freq::Weeks,
            Freq::Months,
        ]
    };
    candidates
        .into_iter()
        .find(|f| f.next(a) == b && f.misalignment(a).is_none())
}
