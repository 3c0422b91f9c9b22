//! A value computed ahead of a custom op and handed out once as the op's forward result.
//!
//! [`super::fastconv`] and [`super::fastnorm`] compute a layer's value with candle's own ops on detached inputs
//! (so no graph is recorded for it) and need an op on the layer's inputs whose result is that value and whose
//! backward is their own. The op's forward copies the value's storage (one pass over the output, like the
//! addition of a zero-valued carrier would cost, without keeping a second output-sized tensor in the graph).

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Result, Shape, Storage, Tensor};

pub(crate) struct Carried(Mutex<Option<Tensor>>);

impl Carried {
    pub(crate) fn new(value: Tensor) -> Self {
        Self(Mutex::new(Some(value)))
    }

    fn take(&self, op: &str) -> Result<Tensor> {
        self.0
            .lock()
            .map_err(|e| candle_core::Error::Msg(format!("{op}: {e}")))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg(format!("{op}: applied twice")))
    }

    /// The value's storage on the op's backend, picked out of the tensor's storage by `pick`.
    fn storage<S: BackendStorage>(
        &self,
        op: &str,
        pick: impl Fn(&Storage) -> Option<&S>,
    ) -> Result<(S, Shape)> {
        let v = self.take(op)?;
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

    /// The value as CPU storage (for `cpu_fwd`).
    pub(crate) fn cpu(&self, op: &str) -> Result<(CpuStorage, Shape)> {
        self.storage(op, |s| match s {
            Storage::Cpu(c) => Some(c),
            _ => None,
        })
    }

    /// The value as CUDA storage (for `cuda_fwd`).
    #[cfg(feature = "cuda")]
    pub(crate) fn cuda(&self, op: &str) -> Result<(candle_core::CudaStorage, Shape)> {
        self.storage(op, |s| match s {
            Storage::Cuda(c) => Some(c),
            _ => None,
        })
    }
}
