//! # vsdm-image
//!
//! CIFAR-10 with VSDM (Deng et al., ICML 2024) and VSMD (Rojas et al., AISTATS 2025): data loading (binary
//! batches, image folders, the Hugging Face hub's parquet copy), EDM's DDPM++ U-Net in candle, and the pieces of the `vsdm-image` command line
//! (training, sampling, FID).

pub mod data;
pub mod error;
pub mod unet;

pub use error::{Error, Result};
pub use unet::{UNet, UNetConfig};
pub mod method;
pub mod sample;
pub mod train;

pub use method::{Method, RunSpec};
pub mod bench;
pub mod devcheck;
pub mod weights;
