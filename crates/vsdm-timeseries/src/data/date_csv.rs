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
/// exactly one period of `freq` apart (with `freq = None` the period is inferred from the whole column, see
/// [`infer_freq`], and must be a supported frequency). Errors name the line and column of an unparsable date or
/// number, a NaN, a ragged row, or a date that breaks the frequency.
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
    // The dates, kept to infer the frequency from when none is given.
    let mut dates: Vec<(usize, NaiveDateTime)> = Vec::new();
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
            (_, None) => dates.push((line_no, t)),
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
    let start = match start {
        Some(t) if freq.is_some() || dates.len() >= 2 => t,
        _ => {
            return Err(DataError::file(
                path,
                "fewer than two data rows: no frequency",
            ))
        }
    };
    let freq = match freq {
        Some(f) => f,
        None => infer_freq(&dates)
            .map_err(|(line, why)| DataError::parse(path, line, &header[0], why))?,
    };
    let len = cols[0].len();
    let values = cols.into_iter().flatten().collect();
    Ok(DateCsv {
        columns,
        series: SeriesMatrix::new(start, freq, width, len, values)?,
    })
}

/// The frequency of a date column of at least two `(line, date)` rows, read from the whole column as pandas'
/// `infer_freq` reads it: the candidates are the supported frequencies one step of which takes the first date to
/// the second — calendar months and weeks before a count of days, and days before business days (a Monday to
/// Friday run without a weekend is daily) — and the first of them that every later step fits, with a first date
/// it aligns with, is the frequency. Inferring from the first step alone took a month-start series for 31 days
/// (then broke in February) and a business-day series starting Monday for daily (then broke at its first
/// weekend).
///
/// Otherwise `(line, why)`: where the candidate that fits longest breaks, or the second row when no supported
/// frequency takes the first step.
pub fn infer_freq(dates: &[(usize, NaiveDateTime)]) -> std::result::Result<Freq, (usize, String)> {
    let [(_, a), (line_b, b), ..] = dates else {
        return Err((
            dates.first().map_or(1, |d| d.0),
            "fewer than two dates".into(),
        ));
    };
    let (a, b) = (*a, *b);
    let minutes = (b - a).num_minutes();
    let candidates = if minutes <= 0 {
        vec![]
    } else if minutes < 60 {
        vec![Freq::Minutes(minutes as u32)]
    } else if minutes < 1440 && minutes % 60 == 0 {
        vec![Freq::Hours((minutes / 60) as u32)]
    } else if minutes % 1440 == 0 {
        vec![
            Freq::Months,
            Freq::Weeks,
            Freq::Days((minutes / 1440) as u32),
            Freq::BusinessDays,
        ]
    } else {
        vec![]
    };
    // The candidate that fits the most steps before breaking: (steps that fit, (line, why it broke)).
    let mut longest: Option<(usize, (usize, String))> = None;
    for f in candidates.into_iter().filter(|f| f.next(a) == b) {
        let broke = match f.misalignment(a) {
            Some(why) => Some((0, (dates[0].0, format!("`{f}` does not fit the first date: {why}")))),
            None => dates.windows(2).enumerate().find_map(|(k, w)| {
                let ((_, p), (line, t)) = (w[0], w[1]);
                let expect = f.next(p);
                (t != expect).then(|| {
                    let steps = if k == 1 { "step" } else { "steps" };
                    let why = format!(
                        "{t} follows {p}: no supported frequency fits every step (`{f}`, which fits the first \
                         {k} {steps}, expects {expect})"
                    );
                    (k, (line, why))
                })
            }),
        };
        match broke {
            None => return Ok(f),
            Some((fits, why)) => {
                if longest.as_ref().is_none_or(|l| fits > l.0) {
                    longest = Some((fits, why));
                }
            }
        }
    }
    Err(match longest {
        Some((_, why)) => why,
        None => (
            *line_b,
            format!("cannot infer a frequency from {a} → {b} (one step of none of the supported frequencies)"),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(dates: &[&str]) -> Vec<(usize, NaiveDateTime)> {
        dates
            .iter()
            .enumerate()
            .map(|(i, d)| (i + 2, parse_timestamp(d).unwrap()))
            .collect()
    }

    /// The frequencies pandas' `infer_freq` gives these columns (its month-start and month-end aliases both
    /// being our `M`), read from every step, not only the first.
    #[test]
    fn frequencies_are_inferred_from_the_whole_column() {
        for (dates, want) in [
            (
                &["2016-07-01 00:00", "2016-07-01 00:15", "2016-07-01 00:30"][..],
                Freq::Minutes(15),
            ),
            (
                &["2016-07-01 22:00", "2016-07-01 23:00", "2016-07-02 00:00"],
                Freq::Hours(1),
            ),
            (
                &["2016-07-01 20:00", "2016-07-01 22:00", "2016-07-02 00:00"],
                Freq::Hours(2),
            ),
            (&["2020-02-28", "2020-02-29", "2020-03-01"], Freq::Days(1)),
            (&["2020-02-27", "2020-03-01", "2020-03-04"], Freq::Days(3)),
            // Thursday, Friday, Monday, Tuesday: one day, then three.
            (
                &["2024-01-04", "2024-01-05", "2024-01-08", "2024-01-09"],
                Freq::BusinessDays,
            ),
            // Monday to Friday with no weekend in between reads as daily.
            (
                &[
                    "2024-01-08",
                    "2024-01-09",
                    "2024-01-10",
                    "2024-01-11",
                    "2024-01-12",
                ],
                Freq::Days(1),
            ),
            (&["2024-01-07", "2024-01-14", "2024-01-21"], Freq::Weeks),
            (
                &["2020-01-01", "2020-02-01", "2020-03-01", "2020-04-01"],
                Freq::Months,
            ),
            (
                &["2020-01-31", "2020-02-29", "2020-03-31", "2020-04-30"],
                Freq::Months,
            ),
            (
                &["2019-11-30", "2019-12-31", "2020-01-31", "2020-02-29"],
                Freq::Months,
            ),
        ] {
            assert_eq!(infer_freq(&rows(dates)), Ok(want), "{dates:?}");
        }
    }

    /// Columns no supported frequency fits fail at the line where the longest-fitting candidate breaks.
    #[test]
    fn unfit_columns_name_the_line() {
        let err = |dates: &[&str]| infer_freq(&rows(dates)).unwrap_err();
        // 90 minutes is not a supported step; neither is a step back or none.
        for dates in [
            &["2016-07-01 00:00", "2016-07-01 01:30"][..],
            &["2016-07-02", "2016-07-01"],
            &["2016-07-01", "2016-07-01"],
            &["2016-07-01 00:00", "2016-07-02 12:00"],
        ] {
            let (line, why) = err(dates);
            assert_eq!(line, 3, "{why}");
            assert!(why.contains("cannot infer a frequency"), "{why}");
        }
        // Daily, then a day missing (a Sunday: business days break there too, no later).
        let (line, why) = err(&["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-05"]);
        assert_eq!(line, 5, "{why}");
        assert!(
            why.contains("`D`, which fits the first 2 steps, expects 2020-01-04"),
            "{why}"
        );
        // Business days, then a weekend day.
        let (line, why) = err(&[
            "2024-01-04",
            "2024-01-05",
            "2024-01-08",
            "2024-01-09",
            "2024-01-13",
        ]);
        assert_eq!(line, 6, "{why}");
        assert!(why.contains("`B`, which fits the first 3 steps"), "{why}");
        // Hourly steps from half past: no hourly series starts there.
        let (line, why) = err(&["2016-07-01 00:30", "2016-07-01 01:30"]);
        assert_eq!(line, 2, "{why}");
        assert!(why.contains("not on the hour"), "{why}");
        assert_eq!(infer_freq(&rows(&["2020-01-01"])).unwrap_err().0, 2);
    }

    /// The loader infers from the file and reports the line and date column of a break.
    #[test]
    fn the_loader_infers_month_ends_and_names_breaks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("monthly.csv");
        let body = "when,x,y\n2020-01-31,1,10\n2020-02-29,2,20\n2020-03-31,3,30\n2020-04-30,4,40\n";
        std::fs::write(&path, body).unwrap();
        let csv = load_date_csv(&path, None).unwrap();
        assert_eq!((csv.series.freq, csv.series.len), (Freq::Months, 4));
        assert_eq!(csv.series.row(1), [10.0, 20.0, 30.0, 40.0]);
        assert_eq!(
            csv.series.timestamp(3),
            parse_timestamp("2020-04-30").unwrap()
        );
        std::fs::write(&path, "when,x\n2020-01-01,1\n2020-01-02,2\n2020-01-04,3\n").unwrap();
        let e = load_date_csv(&path, None).unwrap_err().to_string();
        assert!(
            e.contains("monthly.csv:4: field `when`") && e.contains("first 1 step,"),
            "{e}"
        );
        std::fs::write(&path, "when,x\n2020-01-01,1\n").unwrap();
        let e = load_date_csv(&path, None).unwrap_err().to_string();
        assert!(e.contains("fewer than two data rows"), "{e}");
        let one = load_date_csv(&path, Some(Freq::Days(1))).unwrap();
        assert_eq!(one.series.len, 1);
    }
}
