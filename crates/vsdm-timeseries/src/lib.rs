//! # vsdm-timeseries
//!
//! Conditional multivariate probabilistic forecasting with VSDM and VSMD (ALGORITHM.md §F.3):
//! * [`data`]: data sets in the formats the forecasting literature uses (GluonTS JSON lines, LSTNet text,
//!   date-indexed CSV), a registry with a download cache (checksums, offline errors that say which file to put
//!   where), GluonTS time features and rolling test splits;
//! * [`window`]: the TimeGrad protocol's context/horizon windows and per-series scaling;
//! * [`model`]: a CSDI-style conditional transformer (attention along time and along series);
//! * [`pipeline`]: methods (VP, VSDM, VSMD), budgets and training on vsdm-core's alternating trainer;
//! * [`forecast`]: sampling forecasts, the random-walk reference, GluonTS metrics (vsdm-eval), CSV and charts;
//! * [`weights`]: exported weights, local or `hf:OWNER/NAME[@REV]` on the Hugging Face hub (cache, then download).

pub mod data;
pub mod error;
pub mod forecast;
pub mod model;
pub mod pipeline;
pub mod weights;
pub mod window;

pub use error::{DataError, Result};
