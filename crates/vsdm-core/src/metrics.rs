//! A run's training metrics as a CSV file, one row per network update: what a loss curve is plotted from.
//!
//! `step,loss,grad_norm,stage_before,stage_after,seconds` — the update's number, its denoising loss, the
//! gradient norm before clipping, the variational objective before and after the stage that followed the update
//! (empty when none ran) and the training time of the run so far in seconds (summed over resumed sessions).
//! Each row is written as its update finishes, so a run that stops keeps every row up to its last update. A
//! resumed run continues from its checkpoint: [`MetricsLog::open`] first drops the rows of later updates (made
//! by the stopped session after that checkpoint), which the resumed run makes again.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::trainer::StepReport;

/// The columns of the file.
pub const HEADER: [&str; 6] = [
    "step",
    "loss",
    "grad_norm",
    "stage_before",
    "stage_after",
    "seconds",
];

/// An open metrics file (the module's doc).
pub struct MetricsLog {
    path: PathBuf,
    out: csv::Writer<File>,
    /// Training seconds of the sessions before this one (the last kept row's `seconds`).
    before: f64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.display().to_string(),
        reason: format!("not a metrics log: {reason}"),
    }
}

impl MetricsLog {
    /// The file's name in a run's folder.
    pub const FILE: &'static str = "metrics.csv";

    /// Opens `path` for a run whose next update is `step + 1`: an existing file keeps its rows up to `step`
    /// (rewritten through a temporary file and a rename), a missing one starts with the header. A file that is
    /// not such a log is an error naming it and the row.
    pub fn open(path: &Path, step: usize) -> Result<Self> {
        let mut kept: Vec<csv::StringRecord> = Vec::new();
        let mut before = 0.0;
        if path.exists() {
            let mut r = csv::Reader::from_path(path).map_err(|e| bad(path, e))?;
            let header = r.headers().map_err(|e| bad(path, e))?.clone();
            if header.iter().ne(HEADER) {
                return Err(bad(
                    path,
                    format!(
                        "columns {:?}, expected {}",
                        header.iter().collect::<Vec<_>>(),
                        HEADER.join(",")
                    ),
                ));
            }
            for (i, rec) in r.records().enumerate() {
                let rec = rec.map_err(|e| bad(path, e))?;
                let num = |c: usize| -> Result<f64> {
                    rec.get(c)
                        .and_then(|v| v.parse::<f64>().ok())
                        .ok_or_else(|| bad(path, format!("row {}: bad {}", i + 2, HEADER[c])))
                };
                if num(0)? as usize > step {
                    break;
                }
                before = num(5)?;
                kept.push(rec);
            }
        }
        let tmp = path.with_extension("csv.tmp");
        {
            let mut w = csv::Writer::from_path(&tmp).map_err(|e| bad(&tmp, e))?;
            w.write_record(HEADER).map_err(|e| bad(&tmp, e))?;
            for rec in &kept {
                w.write_record(rec).map_err(|e| bad(&tmp, e))?;
            }
            w.flush().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, path).map_err(io(path))?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            out: csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(file),
            before,
        })
    }

    /// Appends the row of one update; `seconds` is the training time from this log's opening to the update's
    /// end (the file adds the time of the rows it kept).
    pub fn record(&mut self, r: &StepReport, seconds: f64) -> Result<()> {
        let (a, b) = match r.stage {
            Some((a, b)) => (a.to_string(), b.to_string()),
            None => (String::new(), String::new()),
        };
        let row = [
            r.step.to_string(),
            r.loss.to_string(),
            r.grad_norm.to_string(),
            a,
            b,
            format!("{:.3}", self.before + seconds),
        ];
        self.out
            .write_record(&row)
            .map_err(|e| bad(&self.path, e))?;
        self.out.flush().map_err(io(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(step: usize, stage: bool) -> StepReport {
        StepReport {
            step,
            loss: 1.0 / step as f64,
            grad_norm: 2.0,
            stage: stage.then_some((0.5, 0.25)),
        }
    }

    fn rows(path: &Path) -> Vec<Vec<String>> {
        let mut r = csv::Reader::from_path(path).unwrap();
        assert_eq!(r.headers().unwrap().iter().collect::<Vec<_>>(), HEADER);
        r.records()
            .map(|x| x.unwrap().iter().map(String::from).collect())
            .collect()
    }

    /// A run of 5 updates, stopped after its checkpoint at 3, resumed from it: the rows of updates 4 and 5 the
    /// stopped session wrote are replaced by the resumed run's, and the time goes on from update 3's.
    #[test]
    fn a_resumed_run_replaces_the_rows_after_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MetricsLog::FILE);
        let mut log = MetricsLog::open(&path, 0).unwrap();
        for s in 1..=5 {
            log.record(&report(s, s == 2), s as f64).unwrap();
        }
        drop(log);
        let first = rows(&path);
        assert_eq!(first.len(), 5);
        assert_eq!(first[1], ["2", "0.5", "2", "0.5", "0.25", "2.000"]);
        assert_eq!(first[2][3..5], ["", ""]);

        let mut log = MetricsLog::open(&path, 3).unwrap();
        assert_eq!(rows(&path).len(), 3, "rows after the checkpoint dropped");
        log.record(&report(4, false), 10.0).unwrap();
        let again = rows(&path);
        assert_eq!(again.len(), 4);
        assert_eq!(again[..3], first[..3]);
        assert_eq!(again[3][0], "4");
        assert_eq!(
            again[3][5], "13.000",
            "update 3's 3 s plus this session's 10 s"
        );
    }

    /// A file that is not a metrics log is named, with the row at fault.
    #[test]
    fn a_foreign_or_damaged_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MetricsLog::FILE);
        std::fs::write(&path, "a,b\n1,2\n").unwrap();
        let e = MetricsLog::open(&path, 1).err().unwrap().to_string();
        assert!(e.contains("metrics.csv") && e.contains("columns"), "{e}");
        std::fs::write(
            &path,
            format!("{}\n1,0.5,1,,,1.0\nx,0.5,1,,,2.0\n", HEADER.join(",")),
        )
        .unwrap();
        let e = MetricsLog::open(&path, 5).err().unwrap().to_string();
        assert!(e.contains("row 3: bad step"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().lines().count(),
            3,
            "left as it was"
        );
    }
}
