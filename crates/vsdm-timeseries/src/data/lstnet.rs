//! LSTNet's plain-text format (the `multivariate-time-series-data` repository): comma-separated numbers, one
//! row per time step, one column per series, no header and no dates. Optionally gzip-compressed.

use super::freq::Freq;
use super::series::{open_text, parse_number, SeriesMatrix};
use crate::error::{DataError, Result};
use chrono::NaiveDateTime;
use std::io::BufRead;
use std::path::Path;

/// Reads an LSTNet text file into a `D × T` matrix. The file has no dates, so the caller supplies the start
/// and frequency. Errors name the line and column of an unparsable number, a NaN, or a row whose number of
/// columns differs from the first row's.
pub fn load_lstnet(path: &Path, start: NaiveDateTime, freq: Freq) -> Result<SeriesMatrix> {
    let reader = open_text(path)?;
    let mut rows: Vec<Vec<f32>> = Vec::new();
    let mut width = 0usize;
    for (i, line) in reader.lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|e| DataError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut row = Vec::with_capacity(width.max(8));
        for (j, cell) in line.split(',').enumerate() {
            let v = parse_number(cell).ok_or_else(|| {
                DataError::parse(
                    path,
                    line_no,
                    format!("column {}", j + 1),
                    format!("`{cell}` is not a number"),
                )
            })?;
            if !v.is_finite() {
                return Err(DataError::parse(
                    path,
                    line_no,
                    format!("column {}", j + 1),
                    super::series::non_finite_cell(cell),
                ));
            }
            row.push(v);
        }
        if rows.is_empty() {
            width = row.len();
        } else if row.len() != width {
            return Err(DataError::parse(
                path,
                line_no,
                format!("column {}", row.len().min(width) + 1),
                format!(
                    "ragged row: {} columns, the first row has {width}",
                    row.len()
                ),
            ));
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(DataError::file(path, "no rows"));
    }
    let t_len = rows.len();
    let mut values = vec![0f32; width * t_len];
    for (t, row) in rows.iter().enumerate() {
        for (d, &v) in row.iter().enumerate() {
            values[d * t_len + t] = v;
        }
    }
    SeriesMatrix::new(start, freq, width, t_len, values)
}
