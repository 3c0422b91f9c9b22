//! Agreement of two tensors, as the crates' checks and tests measure it: on the CPU in f64, whatever the
//! tensors' device and dtype.

use candle_core::{DType, Device, Result, Tensor};

fn cpu_f64(t: &Tensor) -> Result<Tensor> {
    t.to_device(&Device::Cpu)?.to_dtype(DType::F64)
}

/// ‖t‖∞, the largest absolute entry (0 for an empty tensor).
pub fn max_abs(t: &Tensor) -> Result<f64> {
    if t.elem_count() == 0 {
        return Ok(0.0);
    }
    cpu_f64(t)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
}

/// ‖a − b‖∞. Shapes must agree (candle's shape error otherwise).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    max_abs(&(cpu_f64(a)? - cpu_f64(b)?)?)
}

/// ‖b − a‖∞ / ‖a‖∞, relative to the reference `a` (‖b − a‖∞ when `a` is zero).
pub fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    let d = max_abs_diff(a, b)?;
    let n = max_abs(a)?;
    Ok(if n > 0.0 { d / n } else { d })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_against_hand_computed_values() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1.0f32, -4.0], [2.0, 0.5]], &dev).unwrap();
        let b = Tensor::new(&[[1.5f32, -4.0], [1.0, 0.5]], &dev).unwrap();
        assert_eq!(max_abs(&a).unwrap(), 4.0);
        assert_eq!(max_abs_diff(&a, &b).unwrap(), 1.0);
        assert_eq!(rel_err(&a, &b).unwrap(), 0.25);
        let z = Tensor::zeros((2, 2), DType::F32, &dev).unwrap();
        assert_eq!(rel_err(&z, &b).unwrap(), 4.0);
        assert!(max_abs_diff(&a, &z.reshape(4).unwrap()).is_err());
        assert_eq!(
            max_abs(&Tensor::zeros(0, DType::F32, &dev).unwrap()).unwrap(),
            0.0
        );
    }
}
