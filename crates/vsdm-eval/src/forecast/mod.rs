//! Probabilistic forecast metrics exactly as GluonTS's `MultivariateEvaluator` reports them in the
//! diffusion-forecasting papers (TimeGrad, CSDI, VSDM/VSMD; ALGORITHM.md §F.3), plus the proper sample scores.
//!
//! - [`evaluate`]: CRPS (`mean_wQuantileLoss`), CRPS-sum (`m_sum_mean_wQuantileLoss`), ND, NRMSE, MSE and
//!   friends in GluonTS 0.17's definitions, and the exact sample CRPS (energy form) beside them;
//! - [`energy_score`]: the multivariate energy score of each window's forecast.
//!
//! Input is a list of forecast windows, each S samples × T steps × D series and a T × D truth with NaN for a
//! missing value; GluonTS's *items* are the (window, series) pairs. Tests compare against fixtures produced by
//! GluonTS and scoringrules themselves (`scripts/gluonts_fixtures.py`).

mod gluonts;
mod scores;

pub use gluonts::{evaluate, paper_quantiles, quantile_index, Metrics, Report};
pub use scores::energy_score;

/// A forecast sample value: `f32` (what the models produce) or `f64`.
pub trait SampleValue: Copy + Send + Sync + 'static {
    fn to_f64(self) -> f64;
    fn is_finite_value(self) -> bool;
}

impl SampleValue for f32 {
    #[inline]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline]
    fn is_finite_value(self) -> bool {
        self.is_finite()
    }
}

impl SampleValue for f64 {
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline]
    fn is_finite_value(self) -> bool {
        self.is_finite()
    }
}

/// One forecast window: `samples` is S × T × D row-major (sample, step, series), `truth` T × D row-major with
/// NaN (or ±∞, which GluonTS masks too) for a missing value.
#[derive(Debug, Clone, Copy)]
pub struct Window<'a, X: SampleValue = f32> {
    pub samples: &'a [X],
    pub truth: &'a [f64],
    pub num_samples: usize,
    pub steps: usize,
    pub series: usize,
}

impl<'a, X: SampleValue> Window<'a, X> {
    /// A window of `num_samples` × `steps` × `series`; the buffer sizes are checked by the metric functions.
    pub fn new(
        samples: &'a [X],
        truth: &'a [f64],
        num_samples: usize,
        steps: usize,
        series: usize,
    ) -> Self {
        Self {
            samples,
            truth,
            num_samples,
            steps,
            series,
        }
    }

    /// Sample `i` at step `t` of series `d`.
    #[inline]
    pub fn sample(&self, i: usize, t: usize, d: usize) -> f64 {
        self.samples[(i * self.steps + t) * self.series + d].to_f64()
    }
}

/// Bad forecast input, naming the window and the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ForecastError {
    #[error("forecast window {window}: {what} has {got} values, expected {expected}")]
    Shape {
        window: usize,
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("forecast window {window}: {got} series, the first window has {expected}")]
    Series {
        window: usize,
        expected: usize,
        got: usize,
    },
    #[error("forecast window {window}: sample value {index} is NaN or infinite")]
    NonFiniteSample { window: usize, index: usize },
    #[error("forecast window {window}: zero samples, steps or series")]
    EmptyWindow { window: usize },
    #[error("no forecast windows to evaluate")]
    NoWindows,
    #[error("quantile level {0} is not in (0, 1)")]
    Quantile(f64),
}

/// Checks every window's shape and samples (GluonTS refuses NaN forecasts as well).
pub(crate) fn check<X: SampleValue>(windows: &[Window<X>]) -> Result<(), ForecastError> {
    let first = windows.first().ok_or(ForecastError::NoWindows)?;
    for (w, win) in windows.iter().enumerate() {
        if win.num_samples == 0 || win.steps == 0 || win.series == 0 {
            return Err(ForecastError::EmptyWindow { window: w });
        }
        if win.series != first.series {
            return Err(ForecastError::Series {
                window: w,
                expected: first.series,
                got: win.series,
            });
        }
        let ns = win.num_samples * win.steps * win.series;
        if win.samples.len() != ns {
            return Err(ForecastError::Shape {
                window: w,
                what: "samples",
                expected: ns,
                got: win.samples.len(),
            });
        }
        let nt = win.steps * win.series;
        if win.truth.len() != nt {
            return Err(ForecastError::Shape {
                window: w,
                what: "truth",
                expected: nt,
                got: win.truth.len(),
            });
        }
        if let Some(index) = win.samples.iter().position(|x| !x.is_finite_value()) {
            return Err(ForecastError::NonFiniteSample { window: w, index });
        }
    }
    Ok(())
}
