//! Ops whose forward value is computed ahead and whose backward is the caller's own.
//!
//! A fused layer (vsdm-image's convolutions, group norms and attention; vsdm-timeseries' attention) computes
//! its value with candle's own ops (or cuDNN) on detached inputs, so no graph is recorded for it, and needs an
//! op on the layer's three inputs whose result is that value and whose backward is its own: [`apply`]. The
//! op's forward moves the value's storage into its result when nothing else holds it (`Tensor::into_storage`,
//! added in the vendored candle-core, vendor/README.md), and copies it otherwise (one pass over the output).

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};

/// The backward half of a carried op: the gradients of its three inputs from the output's gradient `dy`.
pub trait Backward: Send + Sync + 'static {
    /// The op's name in candle's errors.
    const NAME: &'static str;

    fn backward(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)>;
}

/// `value` as the result of an op on (`a`, `b`, `c`) whose gradients come from `backward`.
pub fn apply<B: Backward>(
    value: Tensor,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    backward: B,
) -> Result<Tensor> {
    a.apply_op3(
        b,
        c,
        CarriedOp {
            value: Mutex::new(Some(value)),
            backward,
        },
    )
}

struct CarriedOp<B> {
    value: Mutex<Option<Tensor>>,
    backward: B,
}

impl<B: Backward> CarriedOp<B> {
    /// The value's storage on the op's backend, picked out by `take`, handed out once: moved out of the value
    /// tensor when it holds the only reference to its storage (the usual case: a layer's freshly computed
    /// output, given away to [`apply`]), otherwise a copy.
    fn storage<S: BackendStorage>(
        &self,
        take: impl Fn(Storage) -> Option<S>,
    ) -> Result<(S, Shape)> {
        let op = B::NAME;
        let v = self
            .value
            .lock()
            .map_err(|e| candle_core::Error::Msg(format!("{op}: {e}")))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg(format!("{op}: applied twice")))?;
        let whole = |l: &Layout| l.is_contiguous() && l.start_offset() == 0;
        if !whole(v.layout()) {
            candle_core::bail!("{op}: the carried value is not a contiguous tensor");
        }
        let bad = || {
            candle_core::Error::Msg(format!("{op}: the carried value is not on the op's device"))
        };
        // A whole contiguous layout: the storage holds exactly the value, in order.
        let (st, shape) = match v.into_storage() {
            Ok((st, l)) => (st, l.shape().clone()),
            Err(v) => {
                let (st, l) = v.storage_and_layout();
                (st.try_clone(l)?, l.shape().clone())
            }
        };
        Ok((take(st).ok_or_else(bad)?, shape))
    }
}

impl<B: Backward> CustomOp3 for CarriedOp<B> {
    fn name(&self) -> &'static str {
        B::NAME
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.storage(|s| match s {
            Storage::Cpu(c) => Some(c),
            _ => None,
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.storage(|s| match s {
            Storage::Cuda(c) => Some(c),
            _ => None,
        })
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.backward.backward(a, b, c, dy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// A backward that hands `dy` to `a` and nothing to the others.
    struct PassToA;

    impl Backward for PassToA {
        const NAME: &'static str = "pass-to-a";

        fn backward(
            &self,
            _: &Tensor,
            _: &Tensor,
            _: &Tensor,
            dy: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            Ok((Some(dy.clone()), None, None))
        }
    }

    fn cpu_ptr(t: &Tensor) -> *const f32 {
        match &*t.storage_and_layout().0 {
            Storage::Cpu(CpuStorage::F32(v)) => v.as_ptr(),
            _ => panic!("not an f32 CPU tensor"),
        }
    }

    /// The op's result holds the value, and its backward is the caller's; a value nothing else holds is moved
    /// into the result (same allocation), a value still held elsewhere is copied and the other holder keeps
    /// its own; a strided value is refused with the op's name.
    #[test]
    fn carried_value_is_moved_when_unshared_and_copied_otherwise() {
        let dev = Device::Cpu;
        let a = Var::new(&[1f32, 2.0, 3.0], &dev).unwrap();
        let value = Tensor::new(&[10f32, 20.0, 30.0], &dev).unwrap();
        let before = cpu_ptr(&value);
        let y = apply(value, a.as_tensor(), a.as_tensor(), a.as_tensor(), PassToA).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), [10.0, 20.0, 30.0]);
        assert_eq!(
            cpu_ptr(&y),
            before,
            "an unshared value should be moved, not copied"
        );
        let probe = Tensor::new(&[1f32, -1.0, 2.0], &dev).unwrap();
        let g = (&y * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_eq!(
            g.get(a.as_tensor()).unwrap().to_vec1::<f32>().unwrap(),
            [1.0, -1.0, 2.0]
        );

        let kept = Tensor::new(&[4f32, 5.0, 6.0], &dev).unwrap();
        let y = apply(
            kept.clone(),
            a.as_tensor(),
            a.as_tensor(),
            a.as_tensor(),
            PassToA,
        )
        .unwrap();
        assert_ne!(cpu_ptr(&y), cpu_ptr(&kept), "a shared value must be copied");
        assert_eq!(y.to_vec1::<f32>().unwrap(), kept.to_vec1::<f32>().unwrap());

        let strided = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &dev)
            .unwrap()
            .t()
            .unwrap();
        let e = apply(
            strided,
            a.as_tensor(),
            a.as_tensor(),
            a.as_tensor(),
            PassToA,
        )
        .unwrap_err();
        assert!(e.to_string().contains("pass-to-a"), "{e}");
    }
}
