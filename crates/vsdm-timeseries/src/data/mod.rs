//! Data: file formats, the named-dataset registry and cache, downloads, and a synthetic archive generator.

pub mod date_csv;
pub mod download;
pub mod freq;
pub mod gluonts;
pub mod lstnet;
pub mod registry;
pub mod series;
pub mod synthetic;
pub mod time_features;

pub use freq::Freq;
pub use registry::{DataSources, DatasetSpec, DATASETS};
pub use series::{Dataset, SeriesMatrix, TestSplit};
