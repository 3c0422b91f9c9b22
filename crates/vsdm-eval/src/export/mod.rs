//! Sample export. Forecasts: a CSV of sample quantiles and a PNG fan chart per series ([`forecast`]).

pub mod forecast;
pub mod npz;

pub use forecast::{fan_chart, write_forecast_csv, CSV_QUANTILES};

/// Export failures, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: drawing failed: {reason}")]
    Draw { path: String, reason: String },
    #[error("{what}: {reason}")]
    Input { what: String, reason: String },
}
