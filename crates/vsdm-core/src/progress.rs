//! Progress of long work that shows where the program's output goes.
//!
//! On a terminal, an `indicatif` bar on stderr. Elsewhere — a log file, a batch job's output, CI — indicatif
//! draws nothing (and drops the lines printed "above" its bar), so a two-day training run would say nothing
//! between its first line and its last. There [`Progress`] writes a plain line to stderr instead, at the first
//! update, then at most every [`LINE_EVERY`] and at the end:
//!
//! ```text
//! training: 400/800 steps · loss 0.0712 · 52.3 img/s · 7m 41s elapsed, ~7m 40s left
//! ```

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// The shortest interval between two progress lines when stderr is not a terminal.
pub const LINE_EVERY: Duration = Duration::from_secs(30);

/// A progress bar on a terminal, throttled plain lines elsewhere (the module's doc).
pub struct Progress {
    bar: ProgressBar,
    lines: Option<Mutex<Lines>>,
}

/// The state of the plain-line fallback.
struct Lines {
    what: String,
    unit: String,
    total: u64,
    /// Where this run started ([`Progress::start_at`]): a resumed run's time left is estimated from the
    /// units done since.
    first: u64,
    pos: u64,
    msg: String,
    start: Instant,
    last: Option<Instant>,
    /// A time limit from the start, which ends the work sooner than its total when it comes first.
    deadline: Option<Duration>,
}

impl Lines {
    fn new(what: &str, total: u64, unit: &str) -> Self {
        Self {
            what: what.to_string(),
            unit: unit.to_string(),
            total,
            first: 0,
            pos: 0,
            msg: String::new(),
            start: Instant::now(),
            last: None,
            deadline: None,
        }
    }

    /// The line to print for position `pos` at `now`, if one is due: the first update, the last position,
    /// or [`LINE_EVERY`] after the previous line.
    fn due(&mut self, pos: u64, now: Instant) -> Option<String> {
        self.pos = pos;
        let due = match self.last {
            None => true,
            Some(t) => pos >= self.total || now.duration_since(t) >= LINE_EVERY,
        };
        if !due {
            return None;
        }
        self.last = Some(now);
        Some(self.line(now))
    }

    fn line(&self, now: Instant) -> String {
        let elapsed = now.duration_since(self.start);
        let mut s = format!("{}: {}/{} {}", self.what, self.pos, self.total, self.unit);
        if !self.msg.is_empty() {
            s += &format!(" · {}", self.msg);
        }
        s += &format!(" · {} elapsed", clock(elapsed));
        if self.pos > self.first && self.pos < self.total {
            let done = (self.pos - self.first) as f64;
            let left = elapsed.mul_f64((self.total - self.pos) as f64 / done);
            match self.deadline.map(|d| d.saturating_sub(elapsed)) {
                Some(rest) if rest < left => s += &format!(", ~{} left (time limit)", clock(rest)),
                _ => s += &format!(", ~{} left", clock(left)),
            }
        }
        s
    }
}

/// `1h 02m 03s`, `7m 41s`, `12s`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s:02}s"),
        (h, m, s) => format!("{h}h {m:02}m {s:02}s"),
    }
}

impl Progress {
    /// `total` units of `what` (e.g. "training", 800, "steps"), starting at position 0.
    pub fn new(what: &str, total: u64, unit: &str) -> Self {
        let bar = ProgressBar::new(total);
        let hidden = bar.is_hidden();
        Self::with_target(bar, hidden, what, total, unit)
    }

    /// Shows nothing at all (no bar, no lines, no [`Progress::println`]).
    pub fn hidden() -> Self {
        Self {
            bar: ProgressBar::hidden(),
            lines: None,
        }
    }

    fn with_target(bar: ProgressBar, lines: bool, what: &str, total: u64, unit: &str) -> Self {
        let template = format!(
            "{what} {{bar:30}} {{pos}}/{{len}} {unit} {{msg}} [{{elapsed_precise}}<{{eta_precise}}]"
        );
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        let lines = lines.then(|| Mutex::new(Lines::new(what, total, unit)));
        Self { bar, lines }
    }

    /// A time limit (from now) that stops the work before its total when it comes first: the lines' time
    /// left is then the lesser of the two.
    pub fn set_deadline(&self, limit: Duration) {
        if let Some(l) = &self.lines {
            let mut l = l.lock().expect("progress lines");
            // A limit too far away to be an Instant offset is no limit.
            l.deadline = l.start.elapsed().checked_add(limit);
        }
    }

    /// Starts at `pos` (a resumed run's step) without printing a line: the time left is then estimated from
    /// the units done after it.
    pub fn start_at(&self, pos: u64) {
        self.bar.set_position(pos);
        if let Some(l) = &self.lines {
            let mut l = l.lock().expect("progress lines");
            (l.first, l.pos) = (pos, pos);
        }
    }

    /// The message after the position (loss, rate, …); shown from the next update on.
    pub fn set_message(&self, msg: impl Into<String>) {
        let msg = msg.into();
        match &self.lines {
            Some(l) => l.lock().expect("progress lines").msg = msg,
            None => self.bar.set_message(msg),
        }
    }

    /// Moves to `pos` (of the total), printing a line if one is due.
    pub fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
        self.emit(pos);
    }

    /// Advances by `n`.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
        self.emit(self.bar.position());
    }

    fn emit(&self, pos: u64) {
        if let Some(l) = &self.lines {
            let line = l.lock().expect("progress lines").due(pos, Instant::now());
            if let Some(line) = line {
                // A closed stderr (`| tee` gone) is no reason to stop the work: the line is dropped.
                let _ = writeln!(std::io::stderr(), "{line}");
            }
        }
    }

    /// A line above the bar on a terminal, on stderr otherwise (indicatif drops it when it cannot draw).
    pub fn println(&self, line: impl AsRef<str>) {
        if self.lines.is_some() {
            let _ = writeln!(std::io::stderr(), "{}", line.as_ref());
        } else {
            self.bar.println(line.as_ref());
        }
    }

    /// Removes the bar (the last line, if any, stays).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(total: u64) -> Lines {
        Lines::new("training", total, "steps")
    }

    /// The first update prints; later ones only 30 s after the previous line, or at the last position;
    /// the line carries the position, the message, the elapsed time and the time left at the mean rate.
    #[test]
    fn plain_lines_are_throttled_and_say_where_the_work_is() {
        let mut l = lines(800);
        let t0 = l.start;
        let at = |s: u64| t0 + Duration::from_secs(s);
        let first = l.due(1, at(2)).expect("first update prints");
        assert_eq!(first, "training: 1/800 steps · 2s elapsed, ~26m 38s left");
        assert_eq!(l.due(20, at(20)), None);
        assert_eq!(l.due(31, at(31)), None, "29 s after the previous line");
        l.msg = "loss 0.0712 · 52.3 img/s".into();
        let line = l.due(400, at(461)).expect("30 s after the previous line");
        assert_eq!(
            line,
            "training: 400/800 steps · loss 0.0712 · 52.3 img/s · 7m 41s elapsed, ~7m 41s left"
        );
        assert_eq!(l.due(401, at(470)), None);
        let end = l.due(800, at(471)).expect("the last position prints");
        assert_eq!(
            end,
            "training: 800/800 steps · loss 0.0712 · 52.3 img/s · 7m 51s elapsed"
        );
        assert_eq!(clock(Duration::from_secs(3723)), "1h 02m 03s");
    }

    /// Under a time limit that comes before the total, the time left is the limit's.
    #[test]
    fn a_time_limit_shortens_the_time_left() {
        let mut l = lines(2000);
        l.deadline = Some(Duration::from_secs(180));
        let t0 = l.start;
        let line = l.due(100, t0 + Duration::from_secs(30)).unwrap();
        assert_eq!(
            line,
            "training: 100/2000 steps · 30s elapsed, ~2m 30s left (time limit)"
        );
        l.deadline = Some(Duration::from_secs(3600));
        let line = l.due(200, t0 + Duration::from_secs(60)).unwrap();
        assert_eq!(
            line,
            "training: 200/2000 steps · 1m 00s elapsed, ~9m 00s left"
        );
    }

    /// A run resumed at step 600 of 800 estimates the time left from the steps done since.
    #[test]
    fn a_resumed_run_estimates_from_the_steps_done_since() {
        let mut l = lines(800);
        l.first = 600;
        let t0 = l.start;
        let line = l
            .due(700, t0 + Duration::from_secs(50))
            .expect("first update");
        assert_eq!(line, "training: 700/800 steps · 50s elapsed, ~50s left");
    }

    /// With plain lines, updates go through the fallback (and do not panic without a terminal); without
    /// them, through the bar.
    #[test]
    fn lines_mode_is_chosen_by_the_target() {
        let p = Progress::with_target(ProgressBar::hidden(), true, "sampling", 3, "images");
        assert!(p.lines.is_some());
        p.set_message("batch 1");
        p.inc(1);
        p.set_position(3);
        p.println("done");
        p.finish();
        let last = p.lines.as_ref().unwrap().lock().unwrap().last;
        assert!(last.is_some(), "a line was printed");
        let q = Progress::with_target(ProgressBar::new(3), false, "sampling", 3, "images");
        assert!(q.lines.is_none());
        q.inc(2);
        assert_eq!(q.bar.position(), 2);
        // A limit too far away to add to an Instant is no limit (it overflowed before).
        let r = Progress::with_target(ProgressBar::hidden(), true, "training", 3, "steps");
        r.set_deadline(Duration::MAX);
        assert!(r.lines.as_ref().unwrap().lock().unwrap().deadline.is_none());
        r.set_deadline(Duration::from_secs(60));
        assert!(r.lines.as_ref().unwrap().lock().unwrap().deadline.is_some());
    }
}
