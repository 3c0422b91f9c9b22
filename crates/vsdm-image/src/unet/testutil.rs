//! Comparisons shared by the U-Net's op tests.

use candle_core::{Tensor, Var};

/// max |a − b| / max |a|.
pub fn rel(a: &Tensor, b: &Tensor) -> f64 {
    vsdm_core::compare::rel_err(a, b).unwrap()
}

/// The gradients of Σ y ⊙ probe with respect to `vars`.
pub fn probe_gradients(y: &Tensor, probe: &Tensor, vars: &[&Var]) -> Vec<Tensor> {
    let g = (y * probe).unwrap().sum_all().unwrap().backward().unwrap();
    vars.iter()
        .map(|v| g.get(v.as_tensor()).unwrap().clone())
        .collect()
}
