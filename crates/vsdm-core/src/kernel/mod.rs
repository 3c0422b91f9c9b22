//! Closed-form transition kernels x_t | x_0 of the linear forward processes, in f64 (ALGORITHM.md §A.4, §E.3).
//!
//! These functions take the integrated schedule B = B_t = ∫_0^t β_s ds, so they hold for any β schedule
//! whenever the drift matrix is time-invariant (the only case the workspace trains).

pub mod diag;
pub mod full;
pub mod momentum;
