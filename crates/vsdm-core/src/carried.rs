//! Ops whose forward value is computed ahead and whose backward is the caller's own.
//!
//! A fused layer (vsdm-image's convolutions, group norms and attention; vsdm-timeseries' attention) computes
//! its value with candle's own ops (or cuDNN) on detached inputs, so no graph is recorded for it, and needs an
//! op on the layer's three inputs whose result is that value and whose backward is its own: [`apply`]. The op's forward copies the value's storage (one pass
//! over the output, like the addition of a zero-valued carrier would cost, without keeping a second output-sized
//! tensor in the graph).

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
    /// The value's storage on the op's backend, picked out of the tensor's storage by `pick`; handed out once.
    fn storage<S: BackendStorage>(
        &self,
        pick: impl Fn(&Storage) -> Option<&S>,
    ) -> Result<(S, Shape)> {
        let op = B::NAME;
        let v = self
            .value
            .lock()
            .map_err(|e| candle_core::Error::Msg(format!("{op}: {e}")))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg(format!("{op}: applied twice")))?;
        let (st, l) = v.storage_and_layout();
        match pick(&st) {
            Some(s) if l.is_contiguous() && l.start_offset() == 0 => {
                Ok((s.try_clone(l)?, l.shape().clone()))
            }
            _ => candle_core::bail!(
                "{op}: the carried value is not a contiguous tensor on the op's device"
            ),
        }
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
