//! Layer normalisation as one op with an analytic backward (candle 0.11's fused `layer_norm` has none).

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use vsdm_core::fastmath::{avx2, lane_sum, par_rows, par_rows_mut, sum_parts, with_cpu_f32};

use super::{cpu_f32, sum_rows, RUN_ROWS};

/// Layer normalisation over the last dimension (Ba et al. 2016) with learned gain and bias.
pub struct LayerNorm {
    gain: Tensor,
    bias: Tensor,
    eps: f64,
    /// Record no op (no backward pass): for inference only.
    pub(super) fused: bool,
}

impl LayerNorm {
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            gain: vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", Init::Const(0.0))?,
            eps: 1e-5,
            fused: false,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.fused {
            // Detached: the same value, no op recorded.
            return layer_norm(
                &x.detach(),
                &self.gain.detach(),
                &self.bias.detach(),
                self.eps,
            );
        }
        layer_norm(x, &self.gain, &self.bias, self.eps)
    }
}

/// Layer normalisation over the last dimension as candle's op chain (mean, centring, variance, division,
/// gain, bias): the reference of [`layer_norm`], and what [`LayerNorm`] computed before.
pub fn layer_norm_chain(x: &Tensor, gain: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xn.broadcast_mul(gain)?.broadcast_add(bias)
}

/// The backward of [`layer_norm`].
pub(super) struct LayerNormBackward {
    pub(super) eps: f64,
    /// (μ, r) of each row as the forward's CPU f32 kernel computed them (`layer_norm_f32`), so that the
    /// backward need not compute them again: the same values, and two of its four passes over each row.
    pub(super) stats: Option<Vec<f32>>,
}

impl vsdm_core::carried::Backward for LayerNormBackward {
    const NAME: &'static str = "layer-norm-backward";

    fn backward(
        &self,
        x: &Tensor,
        gain: &Tensor,
        _bias: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let n = x.dim(D::Minus1)?;
        let rows = x.elem_count() / n.max(1);
        let shape = x.shape().clone();
        if cpu_f32(x) && cpu_f32(gain) && cpu_f32(dy) && rows > 0 && n > 0 {
            let (x, gain, dy) = (x.contiguous()?, gain.contiguous()?, dy.contiguous()?);
            let eps = self.eps as f32;
            let (dx, dgain, dbias) =
                with_cpu_f32("layer norm backward", [&x, &gain, &dy], |[x, g, dy]| {
                    let stats = match &self.stats {
                        Some(s) if s.len() == 2 * rows => std::borrow::Cow::Borrowed(&s[..]),
                        _ => std::borrow::Cow::Owned(layer_norm_stats_f32(x, (rows, n), eps)),
                    };
                    layer_norm_backward_f32([x, g, dy], &stats, (rows, n), RUN_ROWS)
                })?;
            let dev = x.device();
            return Ok((
                Some(Tensor::from_vec(dx, shape, dev)?),
                Some(Tensor::from_vec(dgain, n, dev)?),
                Some(Tensor::from_vec(dbias, n, dev)?),
            ));
        }
        let (x, dy) = (x.reshape((rows, n))?, dy.contiguous()?.reshape((rows, n))?);
        let xc = x.broadcast_sub(&x.mean_keepdim(1)?)?;
        let r = (xc.sqr()?.mean_keepdim(1)? + self.eps)?.sqrt()?.recip()?;
        let xh = xc.broadcast_mul(&r)?;
        let gdy = dy.broadcast_mul(gain)?;
        let m1 = gdy.mean_keepdim(1)?;
        let m2 = (&gdy * &xh)?.mean_keepdim(1)?;
        let dx = gdy
            .broadcast_sub(&m1)?
            .sub(&xh.broadcast_mul(&m2)?)?
            .broadcast_mul(&r)?;
        let dgain = sum_rows(&(&dy * &xh)?)?;
        let dbias = sum_rows(&dy)?;
        Ok((Some(dx.reshape(shape)?), Some(dgain), Some(dbias)))
    }
}

vsdm_core::simd_fn! {
    /// [`LayerNormBackward`]'s formulas for the rows of one run: dx written, dγ and dβ (`sums`, `[2n]`)
    /// accumulated.
    fn layer_norm_backward_run(
        x: &[f32],
        gain: &[f32],
        dy: &[f32],
        stats: &[f32],
        dx: &mut [std::mem::MaybeUninit<f32>],
        sums: &mut [f32],
        n: usize,
    ) {
        let inv_n = 1.0 / n as f32;
        let (dgain, dbias) = sums.split_at_mut(n);
        let rows = x.chunks_exact(n).zip(dy.chunks_exact(n)).zip(dx.chunks_exact_mut(n));
        for (((x, dy), dx), st) in rows.zip(stats.chunks_exact(2)) {
            let (mean, r) = (st[0], st[1]);
            // Σ γ dy and Σ γ dy x̂, in eight lanes each (as `lane_sum`).
            let (mut l1, mut l2) = ([0f32; 8], [0f32; 8]);
            let (xc, dc, gc) = (x.chunks_exact(8), dy.chunks_exact(8), gain.chunks_exact(8));
            let (mut m1, mut m2) = (0f32, 0f32);
            for ((x, dy), g) in xc.remainder().iter().zip(dc.remainder()).zip(gc.remainder()) {
                let gdy = dy * g;
                m1 += gdy;
                m2 += gdy * (x - mean) * r;
            }
            for ((x, dy), g) in xc.zip(dc).zip(gc) {
                for l in 0..8 {
                    let gdy = dy[l] * g[l];
                    l1[l] += gdy;
                    l2[l] += gdy * (x[l] - mean) * r;
                }
            }
            let m1 = (l1.iter().sum::<f32>() + m1) * inv_n;
            let m2 = (l2.iter().sum::<f32>() + m2) * inv_n;
            let (dg, db) = (&mut dgain[..n], &mut dbias[..n]);
            for (((((x, dy), g), dx), dg), db) in x.iter().zip(dy).zip(gain).zip(dx).zip(dg).zip(db) {
                let xh = (x - mean) * r;
                dx.write(r * (dy * g - m1 - xh * m2));
                *dg += dy * xh;
                *db += dy;
            }
        }
    }
}

/// The layer norm's gradients dx `[rows, n]`, dγ and dβ `[n]` from x, γ, dy (row-major f32) and each row's
/// (μ, r) ([`layer_norm_stats_f32`], or as the forward kept them) in one pass per row on candle's worker
/// pool, where the op chain makes about fifteen passes over `[rows, n]` tensors. The rows go in runs of
/// `run_rows`, each accumulating its own partial dγ and dβ, which are added in the runs' order.
pub(super) fn layer_norm_backward_f32(
    [x, gain, dy]: [&[f32]; 3],
    stats: &[f32],
    (rows, n): (usize, usize),
    run_rows: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert!(
        n > 0
            && run_rows > 0
            && x.len() == rows * n
            && dy.len() == rows * n
            && gain.len() == n
            && stats.len() == 2 * rows,
        "layer_norm_backward_f32: {rows} rows of {n}, slices of {}, {}, {} and {}",
        x.len(),
        dy.len(),
        gain.len(),
        stats.len()
    );
    let runs = rows.div_ceil(run_rows);
    let avx = avx2();
    // Room for whole runs; only the first `rows` rows are written and kept.
    let mut dx: Vec<f32> = Vec::with_capacity(runs * run_rows * n);
    let mut sums = vec![0f32; runs * 2 * n];
    par_rows_mut(
        (
            &mut dx.spare_capacity_mut()[..runs * run_rows * n],
            run_rows * n,
        ),
        (&mut sums, 2 * n),
        runs,
        |run0, dx, sums| {
            for (i, (dx, sums)) in dx
                .chunks_mut(run_rows * n)
                .zip(sums.chunks_mut(2 * n))
                .enumerate()
            {
                let r0 = (run0 + i) * run_rows;
                let nr = run_rows.min(rows - r0);
                let (x, dy) = (&x[r0 * n..(r0 + nr) * n], &dy[r0 * n..(r0 + nr) * n]);
                let st = &stats[2 * r0..2 * (r0 + nr)];
                layer_norm_backward_run(avx, x, gain, dy, st, &mut dx[..nr * n], sums, n);
            }
        },
    );
    // SAFETY: the runs cover the `rows` rows and each run wrote every element of its rows.
    unsafe { dx.set_len(rows * n) };
    let mut total = sum_parts(&sums, 2 * n);
    let dbias = total.split_off(n);
    (dx, total, dbias)
}

/// (μ, r = 1/√(σ² + ε)) of one row, μ and σ² in two passes: the one computation of the forward's and the
/// backward's statistics, so that kept and recomputed ones are the same values.
#[inline(always)]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let inv_n = 1.0 / x.len() as f32;
    let mean = lane_sum(x, |v| v) * inv_n;
    let var = lane_sum(x, |v| (v - mean) * (v - mean)) * inv_n;
    (mean, 1.0 / (var + eps).sqrt())
}

vsdm_core::simd_fn! {
    /// y = γ (x − μ)/√(σ² + ε) + β for the rows of one run, and each row's (μ, r) into `stats` unless it is
    /// empty.
    fn layer_norm_run(
        x: &[f32],
        gain: &[f32],
        bias: &[f32],
        y: &mut [std::mem::MaybeUninit<f32>],
        stats: &mut [std::mem::MaybeUninit<f32>],
        n: usize,
        eps: f32,
    ) {
        let keep = !stats.is_empty();
        for (i, (x, y)) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)).enumerate() {
            let (mean, r) = row_stats(x, eps);
            if keep {
                stats[2 * i].write(mean);
                stats[2 * i + 1].write(r);
            }
            for (((y, x), g), b) in y.iter_mut().zip(x).zip(gain).zip(bias) {
                y.write((x - mean) * r * g + b);
            }
        }
    }
}

vsdm_core::simd_fn! {
    /// Each row's (μ, r) into `stats`.
    fn layer_norm_stats_run(x: &[f32], stats: &mut [std::mem::MaybeUninit<f32>], n: usize, eps: f32) {
        for (x, st) in x.chunks_exact(n).zip(stats.chunks_exact_mut(2)) {
            let (mean, r) = row_stats(x, eps);
            st[0].write(mean);
            st[1].write(r);
        }
    }
}

/// Each row's (μ, r) `[rows, 2]` of row-major f32 x `[rows, n]` (a backward whose forward kept none).
pub(super) fn layer_norm_stats_f32(x: &[f32], (rows, n): (usize, usize), eps: f32) -> Vec<f32> {
    let avx = avx2();
    par_rows((x, n), (&[], 0), 2, rows, |x, _, st| {
        layer_norm_stats_run(avx, x, st, n, eps)
    })
}

/// The layer norm's value `[rows, n]` from row-major f32 x, γ and β, on candle's worker pool ([`par_rows`]).
/// (candle_nn's CPU kernel runs its rows on rayon's pool, whose threads then compete for the cores with
/// candle's own spinning workers: 5% of an electricity-shaped sampling forward, `perf`.)
/// With `keep`, each row's (μ, r) too (`[rows, 2]`, for the backward).
pub(super) fn layer_norm_f32(
    [x, gain, bias]: [&[f32]; 3],
    (rows, n): (usize, usize),
    eps: f32,
    keep: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    assert!(
        n > 0 && x.len() == rows * n && gain.len() == n && bias.len() == n,
        "layer_norm_f32: {rows} rows of {n}, slices of {}, {} and {}",
        x.len(),
        gain.len(),
        bias.len()
    );
    let avx = avx2();
    let w = if keep { 2 } else { 0 };
    let mut y: Vec<f32> = Vec::with_capacity(rows * n);
    let mut stats: Vec<f32> = Vec::with_capacity(rows * w);
    par_rows_mut(
        (&mut y.spare_capacity_mut()[..rows * n], n),
        (&mut stats.spare_capacity_mut()[..rows * w], w),
        rows,
        |r0, y, st| {
            let m = y.len() / n;
            layer_norm_run(avx, &x[r0 * n..(r0 + m) * n], gain, bias, y, st, n, eps)
        },
    );
    // SAFETY: the runs cover all rows, and layer_norm_run wrote each row's n values (and 2 statistics when
    // kept).
    unsafe {
        y.set_len(rows * n);
        stats.set_len(rows * w);
    }
    (y, keep.then_some(stats))
}

/// Layer normalisation over the last dimension, y = γ (x − μ)/√(σ² + ε) + β, recorded as one op: the value
/// from one pass per row (`layer_norm_f32` for f32 on the CPU, candle's fused kernel otherwise), the
/// backward analytic, with x̂ = (x − μ) r,
/// r = 1/√(σ² + ε) and dy the output's gradient:
///
///   dx = r (γ dy − mean(γ dy) − x̂ mean(γ dy x̂)),  dγ = Σ_rows dy x̂,  dβ = Σ_rows dy.
///
/// (candle's chain [`layer_norm_chain`] records seven ops, whose backward sums γ's and β's gradients over the
/// rows with strided single-threaded reductions.) Without a tracked input it records nothing.
pub fn layer_norm(x: &Tensor, gain: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    // candle's kernel takes f32, f16 and bf16; f64 (the tests' exact reference) goes through the chain.
    // Contiguous once: the value's kernels and the backward both read it so.
    let x = &x.contiguous()?;
    // The value, and each row's (μ, r) from the CPU kernel when `keep`.
    let value = |x: &Tensor,
                 gain: &Tensor,
                 bias: &Tensor,
                 keep: bool|
     -> Result<(Tensor, Option<Vec<f32>>)> {
        let n = x.dim(D::Minus1)?;
        let rows = x.elem_count() / n.max(1);
        if cpu_f32(x) && cpu_f32(gain) && cpu_f32(bias) && rows > 0 && n > 0 {
            let (gain, bias) = (gain.contiguous()?, bias.contiguous()?);
            let (y, stats) = with_cpu_f32("layer norm", [x, &gain, &bias], |[x, g, b]| {
                layer_norm_f32([x, g, b], (rows, n), eps as f32, keep)
            })?;
            return Ok((Tensor::from_vec(y, x.shape(), x.device())?, stats));
        }
        let y = match x.dtype() {
            candle_core::DType::F64 => layer_norm_chain(x, gain, bias, eps),
            _ => candle_nn::ops::layer_norm(x, gain, bias, eps as f32),
        }?;
        Ok((y, None))
    };
    if !(x.track_op() || gain.track_op() || bias.track_op()) {
        return Ok(value(x, gain, bias, false)?.0);
    }
    let (y, stats) = value(&x.detach(), &gain.detach(), &bias.detach(), true)?;
    vsdm_core::carried::apply(y, x, gain, bias, LayerNormBackward { eps, stats })
}
