//! The conditional score network: a CSDI-style transformer over the (series × context+horizon) grid.

pub mod elementwise;
pub mod layers;
pub mod net;

pub use net::{ForecastNet, NetConfig};
