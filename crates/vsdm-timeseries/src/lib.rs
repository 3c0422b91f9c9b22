//! # vsdm-timeseries
//!
//! Conditional multivariate probabilistic forecasting with VSDM and VSMD: data sets in the formats the
//! forecasting literature uses (GluonTS JSON lines, LSTNet text, date-indexed CSV), a registry with a download
//! cache (downloads with checksums, offline errors that say which file to put where), GluonTS time features and
//! rolling test splits. The TimeGrad windowing and scaling, the conditional transformer and the CLI are not built
//! yet (the binary says so and exits with status 2).

pub mod data;
pub mod error;

pub use error::{DataError, Result};
