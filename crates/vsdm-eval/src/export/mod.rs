//! Sample export. Forecasts: a CSV of sample quantiles and a PNG fan chart per series. Images: a PNG grid, a
//! folder of PNGs and a uint8 NHWC `.npz` ([`images`]).

pub mod forecast;
pub mod images;
pub mod npz;

pub use forecast::{fan_chart, fan_charts, write_forecast_csv, CSV_QUANTILES};
pub use images::{
    read_npz_u8, save_grid_png, save_npz_u8, save_png_folder, write_npz_u8, U8Images,
};

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
    #[error("{path}: encoding failed: {reason}")]
    Encode { path: String, reason: String },
    #[error(transparent)]
    Npz(#[from] npz::NpzError),
}
