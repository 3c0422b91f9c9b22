//! Calendar covariates in GluonTS's definition (`gluonts.time_feature`): each feature is scaled to
//! [−0.5, 0.5], and the set depends on the frequency as in `time_features_from_frequency_str`.

use super::freq::Freq;
use chrono::{Datelike, NaiveDateTime, Timelike};

/// One calendar feature, scaled to [−0.5, 0.5] as GluonTS does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeFeature {
    /// minute / 59 − 0.5
    MinuteOfHour,
    /// hour / 23 − 0.5
    HourOfDay,
    /// weekday (Monday = 0) / 6 − 0.5
    DayOfWeek,
    /// (day − 1) / 30 − 0.5
    DayOfMonth,
    /// (ordinal day − 1) / 365 − 0.5
    DayOfYear,
    /// (ISO week − 1) / 52 − 0.5
    WeekOfYear,
    /// (month − 1) / 11 − 0.5
    MonthOfYear,
}

impl TimeFeature {
    /// The feature's value at `t`.
    pub fn value(&self, t: NaiveDateTime) -> f32 {
        let (x, denom) = match self {
            TimeFeature::MinuteOfHour => (t.minute() as f32, 59.0),
            TimeFeature::HourOfDay => (t.hour() as f32, 23.0),
            TimeFeature::DayOfWeek => (t.weekday().num_days_from_monday() as f32, 6.0),
            TimeFeature::DayOfMonth => ((t.day() - 1) as f32, 30.0),
            TimeFeature::DayOfYear => ((t.ordinal() - 1) as f32, 365.0),
            TimeFeature::WeekOfYear => ((t.iso_week().week() - 1) as f32, 52.0),
            TimeFeature::MonthOfYear => ((t.month() - 1) as f32, 11.0),
        };
        x / denom - 0.5
    }
}

/// The features GluonTS uses for a frequency: minutes → minute, hour, weekday, day of month, day of year;
/// hours → hour, weekday, day of month, day of year; days and business days → weekday, day of month, day of
/// year; weeks → day of month, week of year; months → month of year.
pub fn features_for(freq: Freq) -> Vec<TimeFeature> {
    use TimeFeature::*;
    match freq {
        Freq::Minutes(_) => vec![MinuteOfHour, HourOfDay, DayOfWeek, DayOfMonth, DayOfYear],
        Freq::Hours(_) => vec![HourOfDay, DayOfWeek, DayOfMonth, DayOfYear],
        Freq::Days(_) | Freq::BusinessDays => vec![DayOfWeek, DayOfMonth, DayOfYear],
        Freq::Weeks => vec![DayOfMonth, WeekOfYear],
        Freq::Months => vec![MonthOfYear],
    }
}

/// Time features of `len` consecutive periods from `start`: a row-major `[len, F]` matrix, F =
/// `features_for(freq).len()`.
pub fn time_feature_matrix(start: NaiveDateTime, freq: Freq, len: usize) -> Vec<f32> {
    let feats = features_for(freq);
    let mut out = Vec::with_capacity(len * feats.len());
    for t in freq.range(start, len) {
        out.extend(feats.iter().map(|f| f.value(t)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::freq::parse_timestamp;

    #[test]
    fn known_calendar_values() {
        // 2016-07-01 was a Friday, day 183 of the leap year 2016.
        let t = parse_timestamp("2016-07-01 23:00:00").unwrap();
        assert_eq!(TimeFeature::HourOfDay.value(t), 0.5);
        assert!((TimeFeature::DayOfWeek.value(t) - (4.0 / 6.0 - 0.5)).abs() < 1e-6);
        assert_eq!(TimeFeature::DayOfMonth.value(t), -0.5);
        assert!((TimeFeature::DayOfYear.value(t) - (182.0 / 365.0 - 0.5)).abs() < 1e-6);
        // 1990-01-01 was a Monday at midnight.
        let m = parse_timestamp("1990-01-01").unwrap();
        assert_eq!(TimeFeature::DayOfWeek.value(m), -0.5);
        assert_eq!(TimeFeature::HourOfDay.value(m), -0.5);
        assert_eq!(
            TimeFeature::MonthOfYear.value(parse_timestamp("1990-12-05").unwrap()),
            0.5
        );
    }

    #[test]
    fn matrix_layout_and_range() {
        let start = parse_timestamp("2016-07-01 00:00:00").unwrap();
        let m = time_feature_matrix(start, Freq::Hours(1), 48);
        assert_eq!(m.len(), 48 * 4);
        assert!(m.iter().all(|v| (-0.5..=0.5).contains(v)));
        // Row 25 is Saturday 2016-07-02 01:00: hour 1, weekday 5, day 2.
        let row = &m[25 * 4..26 * 4];
        assert!((row[0] - (1.0 / 23.0 - 0.5)).abs() < 1e-6);
        assert!((row[1] - (5.0 / 6.0 - 0.5)).abs() < 1e-6);
        assert!((row[2] - (1.0 / 30.0 - 0.5)).abs() < 1e-6);
        assert_eq!(features_for(Freq::BusinessDays).len(), 3);
    }

    /// GluonTS's week and minute features: ISO week − 1 over 52 (2020 has 53 ISO weeks; 2021-01-03 still
    /// belongs to week 53 of 2020), minute over 59.
    #[test]
    fn week_and_minute_of_the_calendar() {
        let week = |s: &str| TimeFeature::WeekOfYear.value(parse_timestamp(s).unwrap());
        assert_eq!(week("2020-01-01"), -0.5);
        assert!((week("2020-01-08") - (1.0 / 52.0 - 0.5)).abs() < 1e-6);
        assert_eq!(week("2020-12-31"), 0.5);
        assert_eq!(week("2021-01-03"), 0.5);
        assert_eq!(week("2021-01-04"), -0.5);
        let minute = |s: &str| TimeFeature::MinuteOfHour.value(parse_timestamp(s).unwrap());
        assert_eq!(minute("2020-01-01 10:59"), 0.5);
        assert!((minute("2020-01-01 10:15") - (15.0 / 59.0 - 0.5)).abs() < 1e-6);
    }
}
