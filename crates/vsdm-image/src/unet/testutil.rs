//! Comparisons shared by the U-Net's op tests.

use candle_core::{DType, Tensor, Var};

/// The largest absolute entry.
pub fn max_abs(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// max |a − b| / max |a|.
pub fn rel(a: &Tensor, b: &Tensor) -> f64 {
    max_abs(&(a - b).unwrap()) / max_abs(a)
}

/// The gradients of Σ y ⊙ probe with respect to `vars`.
pub fn probe_gradients(y: &Tensor, probe: &Tensor, vars: &[&Var]) -> Vec<Tensor> {
    let g = (y * probe).unwrap().sum_all().unwrap().backward().unwrap();
    vars.iter()
        .map(|v| g.get(v.as_tensor()).unwrap().clone())
        .collect()
}
