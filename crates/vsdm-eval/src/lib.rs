//! # vsdm-eval
//!
//! Every number that judges a model: forecast metrics in GluonTS's definitions, 2-D sample metrics for the
//! anisotropic toys, the Inception-v3 FID network and Fréchet distance, and sample export.

pub mod cli;
pub mod export;
pub mod fid;
pub mod forecast;
pub mod shapes;
