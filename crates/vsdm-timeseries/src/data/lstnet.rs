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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::freq::parse_timestamp;

    /// Columns become series in time order; errors name the line and the 1-based column.
    #[test]
    fn columns_become_series_and_bad_cells_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rates.txt");
        let start = parse_timestamp("1990-01-01").unwrap();
        std::fs::write(&path, "1,10,100\n2,20,200\n\n3,30,300\n4,40,400\n").unwrap();
        let m = load_lstnet(&path, start, Freq::BusinessDays).unwrap();
        assert_eq!((m.num_series, m.len), (3, 4));
        assert_eq!(m.row(0), [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m.row(2), [100.0, 200.0, 300.0, 400.0]);
        assert_eq!(m.timestamp(3), parse_timestamp("1990-01-04").unwrap());
        for (text, want) in [
            (
                "1,2\n3,x\n",
                "rates.txt:2: field `column 2`: `x` is not a number",
            ),
            (
                "1,2\n\n3,nan\n",
                "rates.txt:3: field `column 2`: `nan` is NaN or infinite",
            ),
            (
                "1,2\n3,inf\n",
                "rates.txt:2: field `column 2`: `inf` is NaN or infinite",
            ),
            (
                "1,2\n3\n",
                "rates.txt:2: field `column 2`: ragged row: 1 columns, the first row has 2",
            ),
            (
                "1,2\n3,4,5\n",
                "rates.txt:2: field `column 3`: ragged row: 3 columns",
            ),
            ("\n\n", "no rows"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = load_lstnet(&path, start, Freq::Days(1))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
