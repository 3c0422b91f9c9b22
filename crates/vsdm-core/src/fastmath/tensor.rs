//! Tensor-level helpers: contiguous f32 CPU values read in place, and scaling on the worker pool.

use super::*;

/// `t` · `s` as a new tensor, recording no op: for a contiguous f32 CPU tensor on candle's worker pool
/// ([`par_rows`]; candle's `affine` runs single-threaded on the CPU), elsewhere candle's `affine`. For
/// gradients scaled inside a backward pass.
pub fn scaled(t: &candle_core::Tensor, s: f64) -> candle_core::Result<candle_core::Tensor> {
    if !(t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && t.is_contiguous()) {
        return t.affine(s, 0.0);
    }
    t.apply_op1_no_bwd(&Scaled(s as f32))
}

/// The CPU op of [`scaled`].
struct Scaled(f32);

impl candle_core::CustomOp1 for Scaled {
    fn name(&self) -> &'static str {
        "scaled"
    }

    fn cpu_fwd(
        &self,
        st: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let x = f32_slice(st, l, self.name())?;
        let s = self.0;
        // One value per row: par_rows hands each task a run of them.
        let y = par_rows((x, 1), (&[], 0), 1, x.len(), |x, _, y| {
            for (y, x) in y.iter_mut().zip(x) {
                y.write(x * s);
            }
        });
        Ok((candle_core::CpuStorage::F32(y), l.shape().clone()))
    }
}

/// `f` on the values of contiguous f32 CPU tensors, read in place, in the order given; an error naming `what`
/// for a tensor that is not one (strided, another type, off the CPU).
pub fn with_cpu_f32<R, const N: usize>(
    what: &str,
    ts: [&candle_core::Tensor; N],
    f: impl FnOnce([&[f32]; N]) -> R,
) -> candle_core::Result<R> {
    let guards = ts.map(|t| t.storage_and_layout());
    let mut parts: [&[f32]; N] = [&[]; N];
    for (part, (st, l)) in parts.iter_mut().zip(&guards) {
        *part = match &**st {
            candle_core::Storage::Cpu(c) => f32_slice(c, l, what)?,
            _ => candle_core::bail!("{what}: a tensor not on the CPU"),
        };
    }
    Ok(f(parts))
}

/// The f32 values of a contiguous CPU storage (a custom op's input); an error naming `what` otherwise.
pub fn f32_slice<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    use candle_core::backend::BackendStorage;
    match (s, l.contiguous_offsets()) {
        (candle_core::CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (candle_core::CpuStorage::F32(_), None) => {
            candle_core::bail!("{what}: a contiguous f32 CPU tensor only, got a strided one")
        }
        _ => candle_core::bail!(
            "{what}: a contiguous f32 CPU tensor only, got {:?}",
            s.dtype()
        ),
    }
}
