//! Sampling frequencies in pandas/GluonTS notation ("H", "B", "15min", ...) and calendar stepping.

use chrono::{Datelike, Duration, Months, NaiveDateTime, Timelike, Weekday};

/// A regular sampling frequency, as GluonTS metadata names it (`freq` or `time_granularity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freq {
    /// `n` minutes (`"T"`, `"min"`, `"15min"`).
    Minutes(u32),
    /// `n` hours (`"H"`, `"1H"`, `"h"`).
    Hours(u32),
    /// `n` calendar days (`"D"`).
    Days(u32),
    /// Business days, Monday to Friday (`"B"`).
    BusinessDays,
    /// Weeks (`"W"`).
    Weeks,
    /// Calendar months (`"M"`, `"MS"`, `"ME"`): a step keeps the day of the month, except that the last day of
    /// a month steps to the last day of the next (pandas' month-end series: 01-31, 02-29, 03-31), and a day the
    /// next month lacks becomes its last.
    Months,
}

impl Freq {
    /// Parses a pandas offset alias as used in GluonTS metadata. Returns `None` for unsupported aliases.
    pub fn parse(s: &str) -> Option<Freq> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u32 = if num.is_empty() { 1 } else { num.parse().ok()? };
        if n == 0 {
            return None;
        }
        match unit {
            "T" | "min" => Some(Freq::Minutes(n)),
            "H" | "h" => Some(Freq::Hours(n)),
            "D" => Some(Freq::Days(n)),
            "B" if n == 1 => Some(Freq::BusinessDays),
            "W" | "W-SUN" if n == 1 => Some(Freq::Weeks),
            "M" | "MS" | "ME" if n == 1 => Some(Freq::Months),
            _ => None,
        }
    }

    /// The pandas alias of this frequency.
    pub fn alias(&self) -> String {
        match self {
            Freq::Minutes(n) => format!("{n}min"),
            Freq::Hours(1) => "H".into(),
            Freq::Hours(n) => format!("{n}H"),
            Freq::Days(1) => "D".into(),
            Freq::Days(n) => format!("{n}D"),
            Freq::BusinessDays => "B".into(),
            Freq::Weeks => "W".into(),
            Freq::Months => "M".into(),
        }
    }

    /// The timestamp one period after `t`.
    pub fn next(&self, t: NaiveDateTime) -> NaiveDateTime {
        match *self {
            Freq::Minutes(n) => t + Duration::minutes(n as i64),
            Freq::Hours(n) => t + Duration::hours(n as i64),
            Freq::Days(n) => t + Duration::days(n as i64),
            Freq::BusinessDays => {
                let mut u = t + Duration::days(1);
                while matches!(u.weekday(), Weekday::Sat | Weekday::Sun) {
                    u += Duration::days(1);
                }
                u
            }
            Freq::Weeks => t + Duration::weeks(1),
            Freq::Months => {
                let month_end = |t: NaiveDateTime| t.date().succ_opt().is_none_or(|d| d.day() == 1);
                let next = t.checked_add_months(Months::new(1)).unwrap_or(t);
                if month_end(t) {
                    // The last day of the next month: step forward a day at a time from the clamped date.
                    let mut u = next;
                    while !month_end(u) {
                        u += Duration::days(1);
                    }
                    u
                } else {
                    next
                }
            }
        }
    }

    /// The `len` timestamps starting at `start`, one period apart.
    pub fn range(&self, start: NaiveDateTime, len: usize) -> Vec<NaiveDateTime> {
        let mut out = Vec::with_capacity(len);
        let mut t = start;
        for _ in 0..len {
            out.push(t);
            t = self.next(t);
        }
        out
    }

    /// Why `t` is not a valid timestamp of this frequency (e.g. an hourly start with minutes, a business day on
    /// a Saturday), or `None` if it is.
    pub fn misalignment(&self, t: NaiveDateTime) -> Option<String> {
        let midnight = t.hour() == 0 && t.minute() == 0 && t.second() == 0;
        match *self {
            Freq::Minutes(n) => (t.second() != 0 || !t.minute().is_multiple_of(n))
                .then(|| format!("{t} is not on a {n}-minute boundary")),
            Freq::Hours(_) => {
                (t.minute() != 0 || t.second() != 0).then(|| format!("{t} is not on the hour"))
            }
            Freq::Days(_) | Freq::Weeks | Freq::Months => (!midnight)
                .then(|| format!("{t} is not at midnight, as a daily or coarser series must be")),
            Freq::BusinessDays => {
                if !midnight {
                    Some(format!(
                        "{t} is not at midnight, as a business-day series must be"
                    ))
                } else if matches!(t.weekday(), Weekday::Sat | Weekday::Sun) {
                    Some(format!("{t} is a {:?}, not a business day", t.weekday()))
                } else {
                    None
                }
            }
        }
    }

    /// Number of periods in one day, used as the stride of "rolling daily" test windows (1 for daily and
    /// coarser frequencies).
    pub fn periods_per_day(&self) -> usize {
        match *self {
            Freq::Minutes(n) => (1440 / n.max(1)).max(1) as usize,
            Freq::Hours(n) => (24 / n.max(1)).max(1) as usize,
            _ => 1,
        }
    }
}

impl std::fmt::Display for Freq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.alias())
    }
}

/// Parses a timestamp as written in GluonTS JSON (`"1990-01-01 00:00:00"`), ISO-8601 (`"2012-01-01T00:00:00"`),
/// without seconds, or a bare date (`"2016-07-01"`, taken as midnight).
pub fn parse_timestamp(s: &str) -> Option<NaiveDateTime> {
    let s = s.trim();
    for fmt in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y/%m/%d %H:%M",
        "%Y/%m/%d %H:%M:%S",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t);
        }
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> NaiveDateTime {
        parse_timestamp(s).unwrap()
    }

    #[test]
    fn parses_pandas_aliases() {
        assert_eq!(Freq::parse("H"), Some(Freq::Hours(1)));
        assert_eq!(Freq::parse("1H"), Some(Freq::Hours(1)));
        assert_eq!(Freq::parse("B"), Some(Freq::BusinessDays));
        assert_eq!(Freq::parse("10min"), Some(Freq::Minutes(10)));
        assert_eq!(Freq::parse("Q"), None);
        assert_eq!(Freq::parse("0H"), None);
    }

    #[test]
    fn business_days_skip_weekends() {
        // 1990-01-05 was a Friday; the next business day is Monday 1990-01-08.
        assert_eq!(Freq::BusinessDays.next(ts("1990-01-05")), ts("1990-01-08"));
        assert!(Freq::BusinessDays.misalignment(ts("1990-01-06")).is_some());
        // Five business days after Monday 1990-01-01 is Monday 1990-01-08.
        assert_eq!(
            Freq::BusinessDays.range(ts("1990-01-01"), 6)[5],
            ts("1990-01-08")
        );
    }

    #[test]
    fn hourly_alignment_and_parsing() {
        assert_eq!(ts("2016-07-01 23:00:00"), ts("2016-07-01T23:00:00"));
        assert_eq!(
            Freq::Hours(1).next(ts("2016-07-01 23:00")),
            ts("2016-07-02")
        );
        assert!(Freq::Hours(1)
            .misalignment(ts("2016-07-01 23:30"))
            .is_some());
        assert!(parse_timestamp("2016-13-01").is_none());
    }

    /// Every alias GluonTS metadata uses, parsed, and each frequency printed back as the alias that parses to it.
    #[test]
    fn aliases_parse_and_print_as_pandas_names_them() {
        for (alias, want) in [
            ("T", Some(Freq::Minutes(1))),
            ("min", Some(Freq::Minutes(1))),
            ("15min", Some(Freq::Minutes(15))),
            ("10T", Some(Freq::Minutes(10))),
            ("h", Some(Freq::Hours(1))),
            (" 2H ", Some(Freq::Hours(2))),
            ("D", Some(Freq::Days(1))),
            ("3D", Some(Freq::Days(3))),
            ("1B", Some(Freq::BusinessDays)),
            ("2B", None),
            ("W", Some(Freq::Weeks)),
            ("W-SUN", Some(Freq::Weeks)),
            ("2W", None),
            ("M", Some(Freq::Months)),
            ("MS", Some(Freq::Months)),
            ("ME", Some(Freq::Months)),
            ("3M", None),
            ("", None),
            ("H2", None),
            ("99999999999H", None),
        ] {
            assert_eq!(Freq::parse(alias), want, "{alias:?}");
        }
        for (f, alias) in [
            (Freq::Minutes(15), "15min"),
            (Freq::Hours(1), "H"),
            (Freq::Hours(6), "6H"),
            (Freq::Days(1), "D"),
            (Freq::Days(2), "2D"),
            (Freq::BusinessDays, "B"),
            (Freq::Weeks, "W"),
            (Freq::Months, "M"),
        ] {
            assert_eq!(
                (f.alias(), f.to_string()),
                (alias.to_string(), alias.to_string())
            );
            assert_eq!(Freq::parse(alias), Some(f));
        }
    }

    /// One step of each frequency, as `pandas.date_range(start, periods=2, freq=…)` takes it, across day, month
    /// and year ends and leap days.
    #[test]
    fn steps_follow_the_calendar() {
        for (f, from, to) in [
            (Freq::Minutes(15), "2019-12-31 23:50", "2020-01-01 00:05"),
            (Freq::Hours(6), "2020-02-28 21:00", "2020-02-29 03:00"),
            (Freq::Days(3), "2020-02-27", "2020-03-01"),
            (Freq::Days(1), "2021-02-28", "2021-03-01"),
            (Freq::Weeks, "2020-12-27", "2021-01-03"),
            (Freq::BusinessDays, "2024-01-06", "2024-01-08"),
            (Freq::Months, "2020-01-15", "2020-02-15"),
            (Freq::Months, "2020-12-01", "2021-01-01"),
            (Freq::Months, "2020-01-31", "2020-02-29"),
            (Freq::Months, "2020-02-29", "2020-03-31"),
            (Freq::Months, "2021-01-30", "2021-02-28"),
            (Freq::Months, "2021-04-30", "2021-05-31"),
        ] {
            assert_eq!(f.next(ts(from)), ts(to), "{f} from {from}");
        }
    }

    /// Which first timestamps a frequency accepts, and what the refusal says.
    #[test]
    fn misalignment_names_what_is_off() {
        for (f, t, why) in [
            (Freq::Minutes(15), "2020-01-01 10:45", None),
            (
                Freq::Minutes(15),
                "2020-01-01 10:20",
                Some("15-minute boundary"),
            ),
            (
                Freq::Minutes(15),
                "2020-01-01 10:15:30",
                Some("15-minute boundary"),
            ),
            (Freq::Hours(1), "2020-01-01 10:00", None),
            (Freq::Hours(2), "2020-01-01 10:30", Some("on the hour")),
            (Freq::Hours(1), "2020-01-01 10:00:05", Some("on the hour")),
            (Freq::Days(1), "2020-01-01", None),
            (Freq::Weeks, "2020-01-01 01:00", Some("midnight")),
            (Freq::Months, "2020-01-01 00:01", Some("midnight")),
            (Freq::Days(2), "2020-01-01 00:00:01", Some("midnight")),
            (Freq::BusinessDays, "2024-01-08", None),
            (
                Freq::BusinessDays,
                "2024-01-06",
                Some("Sat, not a business day"),
            ),
            (
                Freq::BusinessDays,
                "2024-01-07",
                Some("Sun, not a business day"),
            ),
            (
                Freq::BusinessDays,
                "2024-01-08 09:00",
                Some("business-day series"),
            ),
        ] {
            let got = Freq::misalignment(&f, ts(t));
            match why {
                None => assert_eq!(got, None, "{f} at {t}"),
                Some(w) => {
                    let got = got.unwrap_or_default();
                    assert!(got.contains(w), "{f} at {t}: {got:?}");
                }
            }
        }
    }

    /// The rolling daily stride of the test windows: periods in a day, at least 1.
    #[test]
    fn periods_per_day_count_a_day() {
        for (f, n) in [
            (Freq::Minutes(15), 96),
            (Freq::Minutes(10), 144),
            (Freq::Hours(1), 24),
            (Freq::Hours(2), 12),
            (Freq::Hours(5), 4),
            (Freq::Hours(48), 1),
            (Freq::Days(1), 1),
            (Freq::BusinessDays, 1),
            (Freq::Months, 1),
        ] {
            assert_eq!(f.periods_per_day(), n, "{f}");
        }
    }
}
