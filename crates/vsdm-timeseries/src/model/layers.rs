//! Transformer pieces with a backward pass in candle 0.11 (its fused `softmax_last_dim`, `layer_norm` and
//! `rms_norm` have none): written from primitive tensor operations, or, for the attention, one op whose
//! backward is its own ([`attention`]).

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};

use vsdm_core::fastmath::{
    avx2, exp_rows, gemm_rows, gram_and_sums_f32, lane_sum, matmul as mm, matmul_bias, par_rows,
    par_rows_mut, softmax_rows, sum_middle_f32, sum_parts, with_cpu_f32, Shared,
};

/// A linear layer applied to the last dimension of a tensor of any rank as ONE matrix product: the leading
/// dimensions are flattened first. (`candle_nn::Linear` on a rank-3 or rank-4 input broadcasts its weight over
/// the leading dimensions and runs one small matrix product per leading index, forward and backward.)
/// Same parameters and names as `candle_nn::linear` (`weight`, `bias`), so weight files are unchanged.
///
/// Recorded as one op with its own backward ([`dense_op`]): candle's backward of the bias's broadcast
/// addition sums the output gradient over its rows with a strided reduction, which single-threaded took a
/// quarter of an exchange-rate training step on the CPU (`perf`, 2026-12-05).
pub struct Dense(Linear);

/// A [`Dense`] layer `inp → out` with `candle_nn::linear`'s initialisation.
pub fn dense(inp: usize, out: usize, vb: VarBuilder) -> Result<Dense> {
    Ok(Dense(candle_nn::linear(inp, out, vb)?))
}

impl Module for Dense {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // All outputs: the weight and bias themselves (a narrow to the whole length is the tensor).
        self.forward_outputs(x, 0, self.0.weight().dim(0)?)
    }
}

/// A [`Dense`] layer's outputs `start .. start + len` for an input: weight rows `w` `[len, last]` and bias
/// entries `b` (views), the input as `rows × last`, and the output's shape `out`.
struct Part {
    w: Tensor,
    b: Tensor,
    rows: usize,
    last: usize,
    out: Vec<usize>,
}

impl Dense {
    /// The number of outputs.
    pub fn outputs(&self) -> usize {
        self.0.weight().dims()[0]
    }

    /// Views of the weight's rows and the bias's entries for outputs `start .. start + len`, and the shapes
    /// of the product for an input `x`.
    fn part(&self, x: &Tensor, (start, len): (usize, usize)) -> Result<Part> {
        let bias = self
            .0
            .bias()
            .ok_or_else(|| candle_core::Error::Msg("dense layer without a bias".into()))?;
        let dims = x.dims();
        let last = dims[dims.len() - 1];
        let mut out = dims.to_vec();
        let n = out.len();
        out[n - 1] = len;
        Ok(Part {
            w: self.0.weight().narrow(0, start, len)?,
            b: bias.narrow(0, start, len)?,
            rows: x.elem_count() / last.max(1),
            last,
            out,
        })
    }

    /// Outputs `start .. start + len` of the layer alone: the same values as those columns of
    /// [`Module::forward`]'s result, from views of the weight's rows and the bias (their gradients land in the
    /// full parameters). Two such halves of one layer give contiguous outputs, where narrowing the full output
    /// reads it strided and each narrow's backward zero-pads its gradient to the full width before the two are
    /// added.
    pub fn forward_outputs(&self, x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
        let Part {
            w,
            b,
            rows,
            last,
            out,
        } = self.part(x, (start, len))?;
        dense_op(&x.reshape((rows, last))?, &w, &b)?.reshape(out)
    }

    /// `scale` · (`base` + outputs `start .. start + len` of the layer on `x`) — a residual connection, with
    /// `base` the residual stream. Without a tracked input, on the CPU in f32, one product onto the base
    /// ([`vsdm_core::fastmath::matmul_bias_onto_f32`]: no separate passes for the addition and the scaling;
    /// the rounding differs from the chain's); otherwise candle's addition and `affine` after the layer's
    /// outputs ([`Dense::forward_outputs`]), the value the chain has always computed.
    pub fn forward_onto(
        &self,
        x: &Tensor,
        base: &Tensor,
        scale: f64,
        part: (usize, usize),
    ) -> Result<Tensor> {
        let Part {
            w,
            b,
            rows,
            last,
            out,
        } = self.part(x, part)?;
        if [x, base, &w, &b]
            .iter()
            .any(|t| t.track_op() || !cpu_f32(t))
            || base.dims() != out.as_slice()
            || w.dim(1)? != last
        {
            let y = (base + dense_op(&x.reshape((rows, last))?, &w, &b)?.reshape(out)?)?;
            return if scale == 1.0 {
                Ok(y)
            } else {
                y.affine(scale, 0.0)
            };
        }
        let (x, w, base) = (x.contiguous()?, w.contiguous()?, base.contiguous()?);
        let y = with_cpu_f32(
            "dense onto a base",
            [&x, &w, &b, &base],
            |[x, w, b, base]| {
                // W [len, in] read as Wᵀ [in, len]: row stride 1, column stride `last`.
                vsdm_core::fastmath::matmul_bias_onto_f32(
                    (x, (last, 1)),
                    (w, (1, last)),
                    b,
                    (base, scale as f32),
                    (rows, last, part.1),
                )
            },
        )?;
        Tensor::from_vec(y, out, x.device())
    }
}

/// Σ over the rows of `t` `[rows, n]` → `[n]`, as the product ones`[1, rows]` · t (a GEMM, where candle's
/// `sum(0)` is a strided single-threaded loop).
pub fn sum_rows(t: &Tensor) -> Result<Tensor> {
    let (rows, n) = t.dims2()?;
    let ones = Tensor::ones((1, rows), t.dtype(), t.device())?;
    ones.matmul(&t.contiguous()?)?.reshape(n)
}

/// a + b with numpy-style broadcasting (candle's `broadcast_add` for the value), recorded as one op whose
/// backward sums the output's gradient over each input's broadcast axes with [`sum_to`]. candle's backward
/// of `broadcast_add` sums with `sum_keepdim` over middle axes, a strided single-threaded loop: 4.4% of an
/// electricity-shaped training step (`perf`, 2026-12-06; the diffusion-time embedding added to every series
/// and patch, the series embedding and the side information).
pub fn add_broadcast(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let y = a.detach().broadcast_add(&b.detach())?;
    if !(a.track_op() || b.track_op()) {
        return Ok(y);
    }
    // The third input is only a placeholder (no gradient); `a` again costs nothing.
    vsdm_core::carried::apply(y, a, b, a, AddBroadcastBackward)
}

/// The backward of [`add_broadcast`].
struct AddBroadcastBackward;

impl vsdm_core::carried::Backward for AddBroadcastBackward {
    const NAME: &'static str = "add-broadcast-backward";

    fn backward(
        &self,
        a: &Tensor,
        b: &Tensor,
        _: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        Ok((
            Some(sum_to(dy, a.dims())?),
            Some(sum_to(dy, b.dims())?),
            None,
        ))
    }
}

/// `t` summed over the axes along which a tensor of shape `dims` was broadcast to `t`'s shape (numpy rules:
/// missing leading axes and axes of length 1), reshaped to `dims`. For f32 on the CPU adjacent axes of the same
/// kind are merged and each summed run of axes goes through [`sum_middle_f32`] (candle's pool, fixed runs);
/// elsewhere candle's `sum_keepdim`.
pub fn sum_to(t: &Tensor, dims: &[usize]) -> Result<Tensor> {
    let full = t.dims();
    let lead = match full.len().checked_sub(dims.len()) {
        Some(lead)
            if dims
                .iter()
                .zip(&full[lead..])
                .all(|(&d, &f)| d == f || d == 1) =>
        {
            lead
        }
        _ => candle_core::bail!("sum_to: {full:?} is not a broadcast of {dims:?}"),
    };
    let summed: Vec<bool> = (0..full.len())
        .map(|k| k < lead || (dims[k - lead] == 1 && full[k] != 1))
        .collect();
    if !summed.contains(&true) {
        return t.reshape(dims);
    }
    if !cpu_f32(t) {
        let axes: Vec<usize> = (0..full.len()).filter(|&k| summed[k]).collect();
        return t.sum_keepdim(axes)?.reshape(dims);
    }
    // Groups of adjacent axes (length > 1) of the same kind: (size, summed).
    let mut groups: Vec<(usize, bool)> = Vec::new();
    for (&n, &s) in full.iter().zip(&summed) {
        match groups.last_mut() {
            _ if n == 1 => {}
            Some((size, last)) if *last == s => *size *= n,
            _ => groups.push((n, s)),
        }
    }
    // The next summed group as [o, r, i] (outer, summed, inner sizes), taken out of `groups`.
    let next = |groups: &mut Vec<(usize, bool)>| {
        let g = groups.iter().position(|&(_, s)| s)?;
        let o: usize = groups[..g].iter().map(|&(n, _)| n).product();
        let i: usize = groups[g + 1..].iter().map(|&(n, _)| n).product();
        let r = groups.remove(g).0;
        if g > 0 && g < groups.len() {
            let (n, _) = groups.remove(g);
            groups[g - 1].0 *= n;
        }
        Some((o, r, i))
    };
    let t = t.contiguous()?;
    let Some(first) = next(&mut groups) else {
        return t.reshape(dims);
    };
    // The first sum reads the tensor in place.
    let mut values = with_cpu_f32("sum_to", [&t], |[x]| sum_middle_f32(x, first, RUN_ROWS))?;
    while let Some(ori) = next(&mut groups) {
        values = sum_middle_f32(&values, ori, RUN_ROWS);
    }
    Tensor::from_vec(values, dims, t.device())
}

/// Rows per partial sum of the CPU reductions over rows (a dense layer's dW and db, a layer norm's dγ and dβ):
/// the runs' partial sums are added in order, so the gradients do not depend on the number of threads.
const RUN_ROWS: usize = 1024;

/// The backward of [`dense_op`].
struct DenseBackward;

impl vsdm_core::carried::Backward for DenseBackward {
    const NAME: &'static str = "dense-backward";

    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = &dy.contiguous()?;
        let dx = mm(dy, w)?;
        if cpu_f32(x) && cpu_f32(dy) {
            // dW = dyᵀ x and db = Σ_rows dy in one pass over dy (`gram_and_sums_f32`).
            let x = x.contiguous()?;
            let ((rows, out), inp) = (dy.dims2()?, x.dim(1)?);
            let (dw, db) = with_cpu_f32("dense backward", [dy, &x], |[dy, x]| {
                gram_and_sums_f32(dy, x, (rows, out, inp), RUN_ROWS)
            })?;
            let dw = Tensor::from_vec(dw, (out, inp), x.device())?;
            return Ok((
                Some(dx),
                Some(dw),
                Some(Tensor::from_vec(db, out, x.device())?),
            ));
        }
        let dw = dy.t()?.matmul(x)?;
        Ok((Some(dx), Some(dw), Some(sum_rows(dy)?)))
    }
}

/// x Wᵀ + b for x `[rows, in]`, W `[out, in]`, b `[out]`, recorded as one op whose backward is
/// dx = dy W, dW = dyᵀ x, db = Σ_rows dy. Without a tracked input it records nothing. On the CPU in f32 the
/// bias is written into the output rows and the product accumulated onto it (`fastmath::matmul_bias`).
pub fn dense_op(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let value = |x: &Tensor, w: &Tensor, b: &Tensor| matmul_bias(x, &w.t()?, b);
    if !(x.track_op() || w.track_op() || b.track_op()) {
        return value(x, w, b);
    }
    let y = value(&x.detach(), &w.detach(), &b.detach())?;
    vsdm_core::carried::apply(y, x, w, b, DenseBackward)
}

/// Softmax over the last dimension as exp / sum, shifted by the (detached) row maximum for range safety.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Layer normalisation over the last dimension (Ba et al. 2016) with learned gain and bias.
pub struct LayerNorm {
    gain: Tensor,
    bias: Tensor,
    eps: f64,
    /// Record no op (no backward pass): for inference only.
    fused: bool,
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
struct LayerNormBackward {
    eps: f64,
    /// (μ, r) of each row as the forward's CPU f32 kernel computed them (`layer_norm_f32`), so that the
    /// backward need not compute them again: the same values, and two of its four passes over each row.
    stats: Option<Vec<f32>>,
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
fn layer_norm_backward_f32(
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
fn layer_norm_stats_f32(x: &[f32], (rows, n): (usize, usize), eps: f32) -> Vec<f32> {
    let avx = avx2();
    par_rows((x, n), (&[], 0), 2, rows, |x, _, st| {
        layer_norm_stats_run(avx, x, st, n, eps)
    })
}

/// The layer norm's value `[rows, n]` from row-major f32 x, γ and β, on candle's worker pool ([`par_rows`]).
/// (candle_nn's CPU kernel runs its rows on rayon's pool, whose threads then compete for the cores with
/// candle's own spinning workers: 5% of an electricity-shaped sampling forward, `perf`.)
/// With `keep`, each row's (μ, r) too (`[rows, 2]`, for the backward).
fn layer_norm_f32(
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

/// softmax(q kᵀ/√d) v for q, k, v `[…, S, d]` (any leading axes), candle's op chain with [`softmax_last`]: the
/// reference of [`attention`], and what it computed before.
pub fn attention_chain(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let d = q.dim(D::Minus1)?;
    let att = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
    softmax_last(&att)?.matmul(v)
}

/// The backward of [`attention`]'s op on (q, k, v), from the probabilities P its forward kept, one tensor per
/// chunk of the flattened leading axes.
struct AttentionBackward {
    /// P of each chunk, `[len, S_q, S_k]`.
    p: Vec<Tensor>,
    /// (first row, rows) of each chunk in the flattened leading axes.
    chunks: Vec<(usize, usize)>,
    scale: f64,
}

impl vsdm_core::carried::Backward for AttentionBackward {
    const NAME: &'static str = "attention-backward";

    fn backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The gradient arriving through a transpose can be a strided view: `flat` copies it once.
        let (q3, k3, v3, dy3) = (flat(q)?, flat(k)?, flat(v)?, flat(dy)?);
        let (mut dq, mut dk, mut dv) = (Vec::new(), Vec::new(), Vec::new());
        for (p, &(start, len)) in self.p.iter().zip(&self.chunks) {
            let part = |t: &Tensor| t.narrow(0, start, len);
            let (q, k, v, dy) = (part(&q3)?, part(&k3)?, part(&v3)?, part(&dy3)?);
            if let Some((gq, gk, gv)) = attention_grads_fused(&q, &k, &v, &dy, p, self.scale)? {
                dq.push(gq);
                dk.push(gk);
                dv.push(gv);
                continue;
            }
            dv.push(mm(&p.t()?, &dy)?);
            let dp = mm(&dy, &v.t()?)?;
            let ds = softmax_backward(&dp, p)?;
            dq.push((mm(&ds, &k)? * self.scale)?);
            dk.push((mm(&ds.t()?, &q)? * self.scale)?);
        }
        let whole = |parts: Vec<Tensor>, like: &Tensor| join(parts)?.reshape(like.shape());
        Ok((
            Some(whole(dq, q)?),
            Some(whole(dk, k)?),
            Some(whole(dv, v)?),
        ))
    }
}

/// softmax(scale · x) along the last axis, for `scale > 0`, as candle's ops: the attention's path off the CPU
/// or in f64 (on the CPU in f32 the attention runs as one kernel of its own, [`attention_rows`]).
fn softmax_scaled(x: &Tensor, scale: f64) -> Result<Tensor> {
    candle_nn::ops::softmax_last_dim(&(x * scale)?)
}

/// The most bytes of one block's scores in [`attention_rows`]: the block stays in the core's cache between
/// its product with kᵀ, its softmax and its product with v.
const BLOCK_SCORE_BYTES: usize = 64 << 10;

/// Where each item's matrix lies in a buffer: item i = b · `heads` + h starts at `offset` + b · `item` +
/// h · `head` and its rows are `row` apart (columns adjacent). A contiguous `[n, rows, cols]` tensor is
/// [`Rows::packed`]; one head's q, k or v inside a dense layer's `[N, S, 3, heads, dh]` output is a column
/// block of every row ([`attention_heads`]).
#[derive(Clone, Copy, Debug)]
struct Rows {
    offset: usize,
    heads: usize,
    item: usize,
    head: usize,
    row: usize,
}

impl Rows {
    /// Items of `rows × cols` one after the other.
    fn packed(rows: usize, cols: usize) -> Self {
        Rows {
            offset: 0,
            heads: 1,
            item: rows * cols,
            head: 0,
            row: cols,
        }
    }

    /// The offset of item `i`'s first row.
    fn at(&self, i: usize) -> usize {
        self.offset + i / self.heads * self.item + i % self.heads * self.head
    }

    /// Whether items 0..n of `rows × cols` lie within `len` values.
    fn fits(&self, len: usize, n: usize, rows: usize, cols: usize) -> bool {
        n == 0 || rows == 0 || cols == 0 || self.at(n - 1) + (rows - 1) * self.row + cols <= len
    }
}

/// softmax(scale · q_i k_iᵀ) v_i for items i = i0 .. i0 + n of q `[sq, d]`, k `[sk, d]` and v `[sk, dv]`
/// (`sk` ≥ 1) laid out as their [`Rows`] say, into y `[sq, dv]` per item at `y`'s layout, and the
/// probabilities P `[n, sq, sk]` (row-major, these items only) too when `p` is given.
///
/// The query rows go in blocks whose scores take at most [`BLOCK_SCORE_BYTES`], each block one task step:
/// the scores q kᵀ by one single-threaded gemm call (kᵀ read in place), the softmax in place, then the
/// block's rows of y by a second call, so that the scores are written once and read back from cache, where
/// the chain of ops (batched product, softmax, batched product) makes three passes over a map of
/// `[n, sq, sk]` through memory. Blocks are written into P when it is kept, else into a scratch buffer of one
/// block per task, unnormalised ([`exp_rows`]): each row of y is then divided by its row's sum instead,
/// `dv` values where the probabilities had `sk` (the same value up to rounding, within an ulp or two). Runs
/// of rows go to candle's worker pool ([`par_rows_mut`]).
///
/// # Panics
/// When a matrix does not lie within its buffer.
#[allow(clippy::type_complexity)]
fn attention_rows(
    [(q, lq), (k, lk), (v, lv)]: [(&[f32], Rows); 3],
    (y, ly): (&mut [std::mem::MaybeUninit<f32>], Rows),
    p: Option<&mut [std::mem::MaybeUninit<f32>]>,
    (i0, n, sq, sk, d, dv): (usize, usize, usize, usize, usize, usize),
    scale: f32,
) {
    let (end, keep) = (i0 + n, p.is_some());
    assert!(
        sk >= 1
            && lq.fits(q.len(), end, sq, d)
            && lk.fits(k.len(), end, sk, d)
            && lv.fits(v.len(), end, sk, dv)
            && ly.fits(y.len(), end, sq, dv)
            && p.as_ref().is_none_or(|p| p.len() >= n * sq * sk),
        "attention_rows: q {}, k {}, v {}, y {} values for items {i0}..{end} of ({sq}, {sk}, {d}, {dv})",
        q.len(),
        k.len(),
        v.len(),
        y.len()
    );
    let rows = n * sq;
    let block = (BLOCK_SCORE_BYTES / (4 * sk)).max(1);
    let pw = if keep { sk } else { 0 };
    let mut none = [];
    let p = p.unwrap_or(&mut none);
    let yp = Shared(y.as_mut_ptr() as *mut f32);
    let fast = avx2();
    // One unit per row: what tells each task how many rows it has.
    let mut units = vec![(); rows];
    par_rows_mut((&mut units, 1), (p, pw), rows, |r0, u, pr| {
        let len = u.len();
        let (mut scratch, mut inv) = (Vec::new(), Vec::new());
        if !keep {
            scratch.resize(block.min(len) * sk, 0f32);
            inv.resize(block.min(len), 0f32);
        }
        let mut r = 0;
        while r < len {
            let (i, a) = (i0 + (r0 + r) / sq, (r0 + r) % sq);
            let m = block.min(sq - a).min(len - r);
            let s: &mut [f32] = if keep {
                let part = &mut pr[r * sk..(r + m) * sk];
                // SAFETY: f32 and MaybeUninit<f32> share their layout; the first gemm call below writes all
                // m · sk values before anything reads them.
                unsafe { std::slice::from_raw_parts_mut(part.as_mut_ptr() as *mut f32, part.len()) }
            } else {
                &mut scratch[..m * sk]
            };
            // SAFETY: rows a..a + m of item i of q and y, and all of item i of k (as kᵀ: row stride 1, column
            // stride its row) and of v lie within their buffers (asserted above); this task alone writes
            // those rows of y (rows go to one task each), which the gemm call has written before they are
            // rescaled, and `s` holds m · sk values.
            unsafe {
                gemm_rows(
                    s.as_mut_ptr(),
                    sk,
                    (q.as_ptr().add(lq.at(i) + a * lq.row), (lq.row, 1)),
                    (k.as_ptr().add(lk.at(i)), (1, lk.row)),
                    (m, d, sk),
                    1.0,
                    false,
                );
                if keep {
                    softmax_rows(fast, s, sk, scale);
                } else {
                    exp_rows(fast, s, sk, scale, &mut inv[..m]);
                }
                gemm_rows(
                    yp.at(ly.at(i) + a * ly.row),
                    ly.row,
                    (s.as_ptr(), (sk, 1)),
                    (v.as_ptr().add(lv.at(i)), (lv.row, 1)),
                    (m, sk, dv),
                    1.0,
                    false,
                );
                if !keep {
                    // Unkept probabilities stay unnormalised: each output row takes its row's 1/Σ instead.
                    for (j, f) in inv[..m].iter().enumerate() {
                        let row =
                            std::slice::from_raw_parts_mut(yp.at(ly.at(i) + (a + j) * ly.row), dv);
                        for e in row {
                            *e *= f;
                        }
                    }
                }
            }
            r += m;
        }
    });
}

/// The softmax's backward for one row, in place: dP in `g` becomes dS = P ⊙ (dP − ⟨dP, P⟩), ⟨dP, P⟩ summed
/// in eight lanes. The one implementation of [`softmax_grad_rows`] (f32, AVX2 build where the CPU has it) and
/// [`softmax_backward_rows`] (f32 and f64).
#[inline(always)]
fn softmax_grad_row<T>(g: &mut [T], p: &[T])
where
    T: Copy
        + Default
        + std::ops::Add<Output = T>
        + std::ops::Sub<Output = T>
        + std::ops::Mul<Output = T>,
{
    let mut lanes = [T::default(); 8];
    let (g8, p8) = (g.chunks_exact(8), p.chunks_exact(8));
    let mut dot = g8
        .remainder()
        .iter()
        .zip(p8.remainder())
        .fold(T::default(), |s, (a, b)| s + *a * *b);
    for (a, b) in g8.zip(p8) {
        for l in 0..8 {
            lanes[l] = lanes[l] + a[l] * b[l];
        }
    }
    dot = lanes.iter().fold(dot, |s, l| s + *l);
    for (g, p) in g.iter_mut().zip(p) {
        *g = *p * (*g - dot);
    }
}

vsdm_core::simd_fn! {
    /// [`softmax_grad_row`] on each row of `n`.
    fn softmax_grad_rows(dp: &mut [f32], p: &[f32], n: usize) {
        for (g, p) in dp.chunks_mut(n).zip(p.chunks(n)) {
            softmax_grad_row(g, p);
        }
    }
}

/// The gradients of [`attention_rows`]'s value for items i0 .. i0 + n from their output gradient dy and the
/// kept probabilities P `[n, sq, sk]` (row-major, these items only): dq, dk and dv written at their layouts
/// in `out` (every element of these items' matrices is written; the buffer may start uninitialised).
///
/// Items go to candle's worker pool ([`par_rows_mut`]); within an item, blocks of query rows as in the forward:
/// dP = dy vᵀ into a scratch block, dS = P ⊙ (dP − rowsum(dP ⊙ P)) in place ([`softmax_grad_rows`]), the block's
/// rows of dq = scale · dS k, and its contributions dk += scale · dSᵀ q and dv += Pᵀ dy, accumulated over the
/// item's blocks (the first block writes them). dP and dS never leave the block, where the chain of ops writes
/// both whole (two tensors of P's size) and reads P three times.
///
/// # Panics
/// When a matrix does not lie within its buffer.
#[allow(clippy::type_complexity)]
fn attention_backward_rows(
    [(q, lq), (k, lk), (v, lv), (dy, ldy)]: [(&[f32], Rows); 4],
    p: &[f32],
    (out, [lgq, lgk, lgv]): (&mut [std::mem::MaybeUninit<f32>], [Rows; 3]),
    (i0, n, sq, sk, d, dv): (usize, usize, usize, usize, usize, usize),
    scale: f32,
) {
    let end = i0 + n;
    assert!(
        sk >= 1
            && lq.fits(q.len(), end, sq, d)
            && lk.fits(k.len(), end, sk, d)
            && lv.fits(v.len(), end, sk, dv)
            && ldy.fits(dy.len(), end, sq, dv)
            && p.len() >= n * sq * sk
            && lgq.fits(out.len(), end, sq, d)
            && lgk.fits(out.len(), end, sk, d)
            && lgv.fits(out.len(), end, sk, dv),
        "attention_backward_rows: buffers too short for items {i0}..{end} of ({sq}, {sk}, {d}, {dv})"
    );
    let block = (BLOCK_SCORE_BYTES / (4 * sk)).max(1);
    let op = Shared(out.as_mut_ptr() as *mut f32);
    let fast = avx2();
    let mut units = vec![(); n];
    par_rows_mut(
        (&mut units, 1),
        (&mut [] as &mut [f32], 0),
        n,
        |j0, u, _| {
            let mut s = vec![0f32; block.min(sq) * sk];
            for j in j0..j0 + u.len() {
                let i = i0 + j;
                let (qi, ki, vi, dyi) = (lq.at(i), lk.at(i), lv.at(i), ldy.at(i));
                let pi = &p[j * sq * sk..(j + 1) * sq * sk];
                let (gq, gk, gv) = (lgq.at(i), lgk.at(i), lgv.at(i));
                let mut a = 0;
                while a < sq {
                    let m = block.min(sq - a);
                    let s = &mut s[..m * sk];
                    let pb = &pi[a * sk..(a + m) * sk];
                    // SAFETY: rows a..a + m of this item's dy, q and P, and all of its k and v (v as vᵀ: row stride
                    // 1, column stride its row), lie within their buffers, and so do its dq, dk and dv (asserted
                    // above); this task alone writes this item's gradients (items go to one task each), and dk,
                    // dv are written by the first block before later ones accumulate into them.
                    unsafe {
                        gemm_rows(
                            s.as_mut_ptr(),
                            sk,
                            (dy.as_ptr().add(dyi + a * ldy.row), (ldy.row, 1)),
                            (v.as_ptr().add(vi), (1, lv.row)),
                            (m, dv, sk),
                            1.0,
                            false,
                        );
                        softmax_grad_rows(fast, s, pb, sk);
                        gemm_rows(
                            op.at(gq + a * lgq.row),
                            lgq.row,
                            (s.as_ptr(), (sk, 1)),
                            (k.as_ptr().add(ki), (lk.row, 1)),
                            (m, sk, d),
                            scale,
                            false,
                        );
                        gemm_rows(
                            op.at(gk),
                            lgk.row,
                            (s.as_ptr(), (1, sk)),
                            (q.as_ptr().add(qi + a * lq.row), (lq.row, 1)),
                            (sk, m, d),
                            scale,
                            a > 0,
                        );
                        gemm_rows(
                            op.at(gv),
                            lgv.row,
                            (pb.as_ptr(), (1, sk)),
                            (dy.as_ptr().add(dyi + a * ldy.row), (ldy.row, 1)),
                            (sk, m, dv),
                            1.0,
                            a > 0,
                        );
                    }
                    a += m;
                }
            }
        },
    );
}

/// dq, dk, dv of one chunk by [`attention_backward_rows`] when q, k, v, dy and P are f32 on the CPU with at
/// least one key; `None` otherwise (the caller's chain of ops).
fn attention_grads_fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dy: &Tensor,
    p: &Tensor,
    scale: f64,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    if ![q, k, v, dy, p].into_iter().all(cpu_f32) || k.dim(1)? == 0 {
        return Ok(None);
    }
    let ((n, sq, d), (_, sk, _), (_, _, dv)) = (q.dims3()?, k.dims3()?, v.dims3()?);
    let (q, k, v, p, dy) = (
        q.contiguous()?,
        k.contiguous()?,
        v.contiguous()?,
        p.contiguous()?,
        dy.contiguous()?,
    );
    // dq `[n, sq, d]`, then per item its dk `[sk, d]` followed by its dv `[sk, dv]`.
    let (wq, wkv) = (sq * d, sk * (d + dv));
    let len = n * (wq + wkv);
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let lgk = Rows {
        offset: n * wq,
        item: wkv,
        ..Rows::packed(sk, d)
    };
    let lgv = Rows {
        offset: n * wq + sk * d,
        item: wkv,
        ..Rows::packed(sk, dv)
    };
    with_cpu_f32(
        "attention backward",
        [&q, &k, &v, &p, &dy],
        |[q, k, v, p, dy]| {
            attention_backward_rows(
                [
                    (q, Rows::packed(sq, d)),
                    (k, Rows::packed(sk, d)),
                    (v, Rows::packed(sk, dv)),
                    (dy, Rows::packed(sq, dv)),
                ],
                p,
                (
                    &mut out.spare_capacity_mut()[..len],
                    [Rows::packed(sq, d), lgk, lgv],
                ),
                (0, n, sq, sk, d, dv),
                scale as f32,
            )
        },
    )?;
    // SAFETY: attention_backward_rows wrote every element of the n items' dq, dk and dv, which tile `out`.
    unsafe { out.set_len(len) };
    let dev = q.device();
    let out = Tensor::from_vec(out, len, dev)?;
    let gq = out.narrow(0, 0, n * wq)?.reshape((n, sq, d))?;
    let gkv = out.narrow(0, n * wq, n * wkv)?.reshape((n, wkv))?;
    let gk = gkv.narrow(1, 0, sk * d)?.reshape((n, sk, d))?;
    let gv = gkv.narrow(1, sk * d, sk * dv)?.reshape((n, sk, dv))?;
    Ok(Some((gq, gk, gv)))
}

/// Whether `t` is f32 on the CPU: what the attention kernels take.
fn cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == candle_core::DType::F32
}

/// softmax(scale · q kᵀ) v for q `[n, sq, d]`, k `[n, sk, d]`, v `[n, sk, dv]` without a graph, and P
/// `[n, sq, sk]` when `keep`: [`attention_rows`] for f32 CPU tensors with at least one key, else candle's
/// products and softmax.
fn attention_parts(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    keep: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    if cpu_f32(q) && cpu_f32(k) && cpu_f32(v) && k.dim(1)? > 0 {
        let ((n, sq, d), (nk, sk, dk), (nv, sv, dv)) = (q.dims3()?, k.dims3()?, v.dims3()?);
        if nk != n || nv != n || dk != d || sv != sk {
            candle_core::bail!(
                "attention: q {:?}, k {:?} and v {:?} do not make an attention",
                q.dims(),
                k.dims(),
                v.dims()
            );
        }
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        let mut y: Vec<f32> = Vec::with_capacity(n * sq * dv);
        let mut p: Vec<f32> = Vec::with_capacity(if keep { n * sq * sk } else { 0 });
        with_cpu_f32("attention", [&q, &k, &v], |[q, k, v]| {
            attention_rows(
                [
                    (q, Rows::packed(sq, d)),
                    (k, Rows::packed(sk, d)),
                    (v, Rows::packed(sk, dv)),
                ],
                (
                    &mut y.spare_capacity_mut()[..n * sq * dv],
                    Rows::packed(sq, dv),
                ),
                keep.then(|| &mut p.spare_capacity_mut()[..n * sq * sk]),
                (0, n, sq, sk, d, dv),
                scale as f32,
            )
        })?;
        // SAFETY: attention_rows wrote every row of y, and of P when kept.
        unsafe {
            y.set_len(n * sq * dv);
            p.set_len(if keep { n * sq * sk } else { 0 });
        }
        let dev = q.device();
        let p = keep
            .then(|| Tensor::from_vec(p, (n, sq, sk), dev))
            .transpose()?;
        return Ok((Tensor::from_vec(y, (n, sq, dv), dev)?, p));
    }
    let p = softmax_scaled(&mm(q, &k.t()?)?, scale)?;
    let y = mm(&p, v)?;
    Ok((y, keep.then_some(p)))
}

/// The softmax's backward along the last axis, dS = P ⊙ (dP − rowsum(dP ⊙ P)), for the probabilities P and their
/// gradient dP. On the CPU (f32, f64) one fused pass per row ([`SoftmaxBackward`]) instead of candle's four ops
/// and three intermediate tensors of the scores' size; elsewhere candle's ops.
fn softmax_backward(dp: &Tensor, p: &Tensor) -> Result<Tensor> {
    let fused = dp.device().is_cpu()
        && matches!(
            dp.dtype(),
            candle_core::DType::F32 | candle_core::DType::F64
        )
        && dp.dtype() == p.dtype()
        && dp.shape() == p.shape()
        && dp.is_contiguous()
        && p.is_contiguous();
    if fused {
        return dp.apply_op2_no_bwd(p, &SoftmaxBackward);
    }
    let row = (dp * p)?.sum_keepdim(D::Minus1)?;
    dp.broadcast_sub(&row)? * p
}

/// [`softmax_backward`]'s CPU kernel on contiguous (dP, P) of the same shape and dtype.
struct SoftmaxBackward;

/// dS row by row (rows of `n`) into a new vector: each row of dP copied, then [`softmax_grad_row`] in place;
/// rows in parallel ([`par_rows`]).
fn softmax_backward_rows<T>(dp: &[T], p: &[T], n: usize) -> Vec<T>
where
    T: Copy
        + Send
        + Sync
        + Default
        + std::ops::Add<Output = T>
        + std::ops::Sub<Output = T>
        + std::ops::Mul<Output = T>,
{
    let n = n.max(1);
    par_rows((dp, n), (p, n), n, dp.len() / n, |dp, p, o| {
        for ((o, dp), p) in o.chunks_mut(n).zip(dp.chunks(n)).zip(p.chunks(n)) {
            for (o, v) in o.iter_mut().zip(dp) {
                o.write(*v);
            }
            // SAFETY: every element of the row was written just above; MaybeUninit<T> has T's layout.
            let g = unsafe { &mut *(o as *mut [std::mem::MaybeUninit<T>] as *mut [T]) };
            softmax_grad_row(g, p);
        }
    })
}

impl candle_core::CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage as S;
        let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("softmax-backward: inputs not contiguous");
        };
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "softmax-backward: dP {:?} and P {:?} differ",
                l1.shape(),
                l2.shape()
            );
        }
        let n = l1.shape().dims().last().copied().unwrap_or(1);
        let out = match (s1, s2) {
            (S::F32(dp), S::F32(p)) => S::F32(softmax_backward_rows(&dp[a0..a1], &p[b0..b1], n)),
            (S::F64(dp), S::F64(p)) => S::F64(softmax_backward_rows(&dp[a0..a1], &p[b0..b1], n)),
            _ => candle_core::bail!("softmax-backward: f32 or f64 inputs of one dtype only"),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// `[…, S, d]` as `[N, S, d]` with N the product of the leading axes (a copy only if not contiguous).
fn flat(t: &Tensor) -> Result<Tensor> {
    let r = t.rank();
    if r < 2 {
        candle_core::bail!("attention: expected […, S, d], got {:?}", t.shape());
    }
    let n = t.dims()[..r - 2].iter().product::<usize>();
    t.contiguous()?.reshape((n, t.dim(r - 2)?, t.dim(r - 1)?))
}

/// Chunks concatenated along the first axis (the one chunk itself when there is one).
fn join(mut parts: Vec<Tensor>) -> Result<Tensor> {
    if parts.len() == 1 {
        Ok(parts.remove(0))
    } else {
        Tensor::cat(&parts, 0)
    }
}

/// On the CPU, the most bytes of one chunk's scores in [`attention`]: the scores and the tensors of their
/// size made from them (probabilities, their gradient) then stay below glibc's mmap threshold (at least 32 MiB, set
/// by `vsdm_eval::cli::tune_allocator`), so they reuse freed heap memory instead of being mapped and zeroed by the
/// kernel on every call (a sixth of an electricity-sized training step went to zeroing fresh pages).
const CPU_SCORE_CHUNK_BYTES: usize = 8 << 20;

/// softmax(q kᵀ/√d) v for q, k, v `[…, S, d]` (any leading axes), recorded as one op.
///
/// At electricity's 370 series the series attention's scores are the largest tensors of a training step
/// (`[B·tokens, heads, 370, 370]`, 70 MB at batch 4), and [`attention_chain`] makes five of them in the forward
/// pass (the scores, their scaling, the shifted scores, the exponentials, the probabilities), all kept for the
/// backward pass, and about as many again there. Here the value is computed on detached inputs, only the
/// probabilities P are kept, and the backward is the analytic one, with dy the output's gradient:
///
///   dv = Pᵀ dy,  dP = dy vᵀ,  dS = P ⊙ (dP − rowsum(dP ⊙ P)),  dq = dS k/√d,  dk = dSᵀ q/√d.
///
/// On the CPU in f32 both passes are kernels of their own over blocks of query rows (`attention_rows`,
/// `attention_backward_rows`), run over chunks of the leading axes whose scores fit in
/// `CPU_SCORE_CHUNK_BYTES` (the rows are independent, so the result is the same); elsewhere (a GPU, f64)
/// candle's products and fused softmax, on a GPU in one piece. Without a tracked input (sampling) it records
/// nothing and keeps nothing (on the CPU in f32 one call for the whole batch).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    attention_in_chunks(q, k, v, score_chunk_bytes(q))
}

/// The most bytes of one chunk's scores for inputs like `t`: [`CPU_SCORE_CHUNK_BYTES`] on the CPU, no limit
/// on a GPU.
fn score_chunk_bytes(t: &Tensor) -> usize {
    if t.device().is_cpu() {
        CPU_SCORE_CHUNK_BYTES
    } else {
        usize::MAX
    }
}

/// [`attention`] with chunks whose scores take at most `max_bytes` (at least one row of the leading axes).
fn attention_in_chunks(q: &Tensor, k: &Tensor, v: &Tensor, max_bytes: usize) -> Result<Tensor> {
    let track = q.track_op() || k.track_op() || v.track_op();
    let (y, backward) = attention_value(q, k, v, max_bytes, track)?;
    match backward {
        Some(b) => vsdm_core::carried::apply(y, q, k, v, b),
        None => Ok(y),
    }
}

/// The value of [`attention`] on detached inputs and, when `track`, the backward that goes with it.
fn attention_value(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    max_bytes: usize,
    track: bool,
) -> Result<(Tensor, Option<AttentionBackward>)> {
    let r = q.rank();
    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
    let (q3, k3, v3) = (flat(&q.detach())?, flat(&k.detach())?, flat(&v.detach())?);
    let (n, sq, _) = q3.dims3()?;
    let (nk, sk, _) = k3.dims3()?;
    let (nv, _, dv) = v3.dims3()?;
    if nk != n || nv != n {
        candle_core::bail!(
            "attention: q {:?}, k {:?} and v {:?} differ in their leading axes",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    // Without a backward nothing of the scores' size is kept: one piece (the fused CPU kernel holds one block
    // of scores per task; elsewhere the chunks bound the scores as they do with a backward).
    let per_row = (sq * sk * q.dtype().size_in_bytes()).max(1);
    let fused_whole = !track && cpu_f32(q);
    let rows = if fused_whole {
        n.max(1)
    } else {
        (max_bytes / per_row).clamp(1, n.max(1))
    };
    let chunks: Vec<(usize, usize)> = (0..n).step_by(rows).map(|s| (s, rows.min(n - s))).collect();
    let (mut ps, mut ys) = (Vec::new(), Vec::new());
    for &(start, len) in &chunks {
        let part = |t: &Tensor| t.narrow(0, start, len);
        let (y, p) = attention_parts(&part(&q3)?, &part(&k3)?, &part(&v3)?, scale, track)?;
        ys.push(y);
        ps.extend(p);
    }
    let mut dims = q.dims().to_vec();
    dims[r - 1] = dv;
    let y = join(ys)?.reshape(dims)?;
    let backward = track.then_some(AttentionBackward {
        p: ps,
        chunks,
        scale,
    });
    Ok((y, backward))
}

/// [`attention`] of q, k, v packed along the first axis of `qkv` `[3, …, S, d]` (any layout: a permuted view
/// of a projection's output), recorded as one op on `qkv` whose backward returns the three gradients packed
/// the same way. Taking q, k and v apart with candle's `get` instead records three narrowings, whose backward
/// pads each gradient with zeros to the full packed size and adds the three (with their `contiguous` and
/// `squeeze` steps, about 17 passes over a `qkv`-sized tensor where the packed op's backward makes one).
pub fn attention_packed(qkv: &Tensor) -> Result<Tensor> {
    if qkv.rank() < 3 || qkv.dim(0)? != 3 {
        candle_core::bail!(
            "attention: expected q, k and v packed as [3, …, S, d], got {:?}",
            qkv.shape()
        );
    }
    let d = qkv.detach();
    let (q, k, v) = (
        d.get(0)?.contiguous()?,
        d.get(1)?.contiguous()?,
        d.get(2)?.contiguous()?,
    );
    let (y, backward) = attention_value(&q, &k, &v, score_chunk_bytes(qkv), qkv.track_op())?;
    match backward {
        // qkv is passed as all three inputs of the carried op; only the first receives a gradient.
        Some(inner) => {
            vsdm_core::carried::apply(y, qkv, qkv, qkv, PackedAttentionBackward { inner, q, k, v })
        }
        None => Ok(y),
    }
}

/// The backward of [`attention_packed`]: [`AttentionBackward`] on the unpacked q, k, v, its three gradients
/// stacked along a new first axis.
struct PackedAttentionBackward {
    inner: AttentionBackward,
    q: Tensor,
    k: Tensor,
    v: Tensor,
}

impl vsdm_core::carried::Backward for PackedAttentionBackward {
    const NAME: &'static str = "packed-attention-backward";

    fn backward(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dq, dk, dv) = self.inner.backward(&self.q, &self.k, &self.v, dy)?;
        match (dq, dk, dv) {
            (Some(dq), Some(dk), Some(dv)) => {
                Ok((Some(Tensor::stack(&[dq, dk, dv], 0)?), None, None))
            }
            _ => candle_core::bail!("packed attention: the unpacked backward left a gradient out"),
        }
    }
}

/// Multi-head self-attention on q, k and v as a dense layer writes them: `qkv` `[n, s, 3·c]`, whose last axis
/// holds q, k and v one after the other, each `heads` heads of c / heads values side by side; the result
/// `[n, s, c]` with the heads side by side, as the output projection takes it. The same as [`attention_packed`]
/// on `qkv` reshaped to `[n, s, 3, heads, dh]` and permuted to `[3, n, heads, s, dh]`, with the result transposed
/// back. On the CPU in f32 the kernels read each head's q, k and v in place, write its output columns in place,
/// and the backward writes the gradient straight in `qkv`'s layout, none of the copies of that path (q, k and
/// v made contiguous, the output transposed back, the three gradients stacked and permuted back, the output's
/// gradient made contiguous); P is kept in chunks of items of at most 8 MiB as there.
/// Elsewhere, that path.
pub fn attention_heads(qkv: &Tensor, heads: usize) -> Result<Tensor> {
    let (n, s, c3) = qkv.dims3()?;
    if heads == 0 || c3 % (3 * heads) != 0 {
        candle_core::bail!(
            "attention: {c3} channels of q, k and v cannot be split into {heads} heads"
        );
    }
    let (c, dh) = (c3 / 3, c3 / 3 / heads);
    if !cpu_f32(qkv) || s == 0 {
        let packed = qkv
            .reshape((n, s, 3, heads, dh))?
            .permute((2, 0, 3, 1, 4))?;
        return attention_packed(&packed)?
            .transpose(1, 2)?
            .reshape((n, s, c));
    }
    let track = qkv.track_op();
    let x = qkv.detach().contiguous()?;
    let items = n * heads;
    let chunk = if track {
        (CPU_SCORE_CHUNK_BYTES / (s * s * 4)).clamp(1, items.max(1))
    } else {
        items.max(1)
    };
    let heads_at = HeadsLayout { heads, s, c, dh };
    let scale = 1.0 / (dh as f32).sqrt();
    let len = n * s * c;
    let mut y: Vec<f32> = Vec::with_capacity(len);
    let mut ps: Vec<Vec<f32>> = Vec::new();
    with_cpu_f32("attention", [&x], |[xs]| {
        for i0 in (0..items).step_by(chunk) {
            let m = chunk.min(items - i0);
            let mut p: Vec<f32> = Vec::with_capacity(if track { m * s * s } else { 0 });
            attention_rows(
                [0, 1, 2].map(|part| (xs, heads_at.qkv(part))),
                (&mut y.spare_capacity_mut()[..len], heads_at.y()),
                track.then(|| &mut p.spare_capacity_mut()[..m * s * s]),
                (i0, m, s, s, dh, dh),
                scale,
            );
            if track {
                // SAFETY: attention_rows wrote every row of these items' P.
                unsafe { p.set_len(m * s * s) };
                ps.push(p);
            }
        }
    })?;
    // SAFETY: the chunks cover every item, and attention_rows wrote each item's rows of y.
    unsafe { y.set_len(len) };
    let y = Tensor::from_vec(y, (n, s, c), qkv.device())?;
    if !track {
        return Ok(y);
    }
    // qkv is passed as all three inputs of the carried op; only the first receives a gradient.
    let backward = HeadsAttentionBackward {
        x,
        ps,
        chunk,
        at: heads_at,
        n,
        scale,
    };
    vsdm_core::carried::apply(y, qkv, qkv, qkv, backward)
}

/// Where one head's matrices lie in [`attention_heads`]' buffers.
#[derive(Clone, Copy)]
struct HeadsLayout {
    heads: usize,
    s: usize,
    c: usize,
    dh: usize,
}

impl HeadsLayout {
    /// q (`part` 0), k (1) or v (2) of each (row, head) item in `[n, s, 3·c]`.
    fn qkv(&self, part: usize) -> Rows {
        Rows {
            offset: part * self.c,
            heads: self.heads,
            item: self.s * 3 * self.c,
            head: self.dh,
            row: 3 * self.c,
        }
    }

    /// The output (and its gradient) of each item in `[n, s, c]`.
    fn y(&self) -> Rows {
        Rows {
            offset: 0,
            heads: self.heads,
            item: self.s * self.c,
            head: self.dh,
            row: self.c,
        }
    }
}

/// The backward of [`attention_heads`] on the CPU: [`attention_backward_rows`] per chunk of items, the
/// gradient written in `qkv`'s layout.
struct HeadsAttentionBackward {
    /// qkv, detached and contiguous.
    x: Tensor,
    /// P of each chunk of items, `[items, s, s]`.
    ps: Vec<Vec<f32>>,
    chunk: usize,
    at: HeadsLayout,
    n: usize,
    scale: f32,
}

impl vsdm_core::carried::Backward for HeadsAttentionBackward {
    const NAME: &'static str = "heads-attention-backward";

    fn backward(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let HeadsLayout { s, c, dh, .. } = self.at;
        let dy = dy.contiguous()?;
        let len = self.n * s * 3 * c;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        with_cpu_f32("attention backward", [&self.x, &dy], |[xs, dys]| {
            let inputs = [0, 1, 2].map(|part| (xs, self.at.qkv(part)));
            for (ci, p) in self.ps.iter().enumerate() {
                attention_backward_rows(
                    [inputs[0], inputs[1], inputs[2], (dys, self.at.y())],
                    p,
                    (
                        &mut out.spare_capacity_mut()[..len],
                        [0, 1, 2].map(|part| self.at.qkv(part)),
                    ),
                    (ci * self.chunk, p.len() / (s * s), s, s, dh, dh),
                    self.scale,
                )
            }
        })?;
        // SAFETY: the chunks cover every item, and attention_backward_rows wrote each one's dq, dk and dv,
        // which together tile the gradient.
        unsafe { out.set_len(len) };
        let g = Tensor::from_vec(out, (self.n, s, 3 * c), dy.device())?;
        Ok((Some(g), None, None))
    }
}

/// Multi-head self-attention over the middle axis of `[N, S, C]`.
pub struct SelfAttention {
    qkv: Dense,
    out: Dense,
    heads: usize,
}

impl SelfAttention {
    pub fn new(dim: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            candle_core::bail!("attention width {dim} is not divisible by {heads} heads");
        }
        Ok(Self {
            qkv: dense(dim, 3 * dim, vb.pp("qkv"))?,
            out: dense(dim, dim, vb.pp("out"))?,
            heads,
        })
    }
}

impl Module for SelfAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("attention").entered();
        self.out.forward(&self.heads_of(x)?)
    }
}

impl SelfAttention {
    /// The heads' outputs before the output projection: `[N, S, 3·C]` → `[N, S, C]`.
    fn heads_of(&self, x: &Tensor) -> Result<Tensor> {
        attention_heads(&self.qkv.forward(x)?, self.heads)
    }

    /// `base` + the attention of `x`: the output projection added onto the residual stream in its product
    /// ([`Dense::forward_onto`]).
    pub fn forward_onto(&self, x: &Tensor, base: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("attention").entered();
        let y = self.heads_of(x)?;
        self.out
            .forward_onto(&y, base, 1.0, (0, self.out.outputs()))
    }
}

/// A pre-norm transformer encoder layer: x + MHA(LN x), then + FFN(LN ·) with a SiLU feed-forward.
pub struct EncoderLayer {
    ln1: LayerNorm,
    attn: SelfAttention,
    ln2: LayerNorm,
    ff1: Dense,
    ff2: Dense,
}

impl EncoderLayer {
    pub fn new(dim: usize, heads: usize, ff: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            ln1: LayerNorm::new(dim, vb.pp("ln1"))?,
            attn: SelfAttention::new(dim, heads, vb.pp("attn"))?,
            ln2: LayerNorm::new(dim, vb.pp("ln2"))?,
            ff1: dense(dim, ff, vb.pp("ff1"))?,
            ff2: dense(ff, dim, vb.pp("ff2"))?,
        })
    }
}

impl EncoderLayer {
    /// Switches the layer norms to recording no op (no backward pass): for sampling only ([`attention`] and
    /// [`layer_norm`] compute their values with candle's fused kernels in both modes).
    pub fn set_inference(&mut self, on: bool) {
        self.ln1.fused = on;
        self.ln2.fused = on;
    }
}

impl Module for EncoderLayer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // The residual additions inside the output products (`forward_onto`).
        let h = self.attn.forward_onto(&self.ln1.forward(x)?, x)?;
        let f = super::elementwise::silu(&self.ff1.forward(&self.ln2.forward(&h)?)?)?;
        self.ff2.forward_onto(&f, &h, 1.0, (0, self.ff2.outputs()))
    }
}

/// Sinusoidal features of a scalar per row: `[N] → [N, dim]` (sin of the first half, cos of the second), with
/// frequencies 10000^(−k/(dim/2)) as in the transformer's positional encoding.
pub fn sinusoidal(x: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|k| (-(10_000f32.ln()) * k as f32 / half as f32).exp())
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), x.device())?;
    let args = x.unsqueeze(1)?.broadcast_mul(&freqs)?;
    Tensor::cat(&[args.sin()?, args.cos()?], 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;
    use vsdm_core::NoiseRng;

    /// ‖a − b‖∞ / ‖b‖∞ (‖a − b‖∞ where b = 0: one key makes the softmax constant, the gradients of q and k
    /// zero).
    fn rel(a: &Tensor, b: &Tensor) -> f64 {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        let n = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
        let f = |t: Tensor| t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
        let n = f(n);
        f(d) / if n > 0.0 { n } else { 1.0 }
    }

    /// The fused op equals candle's chain in value and in the gradients of q, k and v (f32 ≤ 1e-5, f64 ≤ 1e-12
    /// relative), for 3-D and 4-D inputs, one and several keys, and scores large enough that the softmax
    /// saturates; the gradients are of ⟨y, probe⟩ for a random probe, with the output reached through a
    /// transpose (a strided gradient) as in [`SelfAttention`], in one piece and in chunks of the leading axes;
    /// without tracked inputs it records nothing.
    /// `Dense::forward_onto` without a graph (one product onto the base) equals candle's chain
    /// scale · (base + layer output) to rounding, for the whole layer and for each half, scale 1 and 1/√2, a
    /// rank-4 input, 1 and 700 rows; with tracked weights it is the chain itself (the same bits) and records
    /// the gradients.
    #[test]
    fn dense_onto_a_base_matches_the_chain() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = vsdm_core::init::seeded_var_builder(&vm, NoiseRng::new(8), DType::F32, &dev);
        let tracked = dense(12, 8, vb).unwrap();
        let plain = dense(
            12,
            8,
            vsdm_core::init::untracked_var_builder(&vm, DType::F32, &dev),
        )
        .unwrap();
        let mut rng = NoiseRng::new(9);
        for lead in [vec![1usize], vec![7, 4, 25]] {
            let mut xd = lead.clone();
            xd.push(12);
            let x = rng.randn(&xd, &dev).unwrap();
            for (start, len) in [(0, 8), (0, 4), (4, 4)] {
                let mut bd = lead.clone();
                bd.push(len);
                let base = rng.randn(&bd, &dev).unwrap();
                for scale in [1.0, 1.0 / std::f64::consts::SQRT_2] {
                    let chain = (&base + tracked.forward_outputs(&x, start, len).unwrap())
                        .unwrap()
                        .affine(scale, 0.0)
                        .unwrap();
                    let fast = plain.forward_onto(&x, &base, scale, (start, len)).unwrap();
                    assert!(!fast.track_op());
                    let e = rel(&fast, &chain);
                    assert!(e < 1e-6, "{lead:?} ({start}, {len}) scale {scale}: {e}");
                    let slow = tracked
                        .forward_onto(&x, &base, scale, (start, len))
                        .unwrap();
                    assert!(slow.track_op());
                    assert_eq!(rel(&slow, &chain), 0.0);
                }
            }
        }
    }

    #[test]
    fn attention_matches_candles_chain_and_its_gradients() {
        let dev = Device::Cpu;
        let mut rng = NoiseRng::new(3);
        for (shape, gain) in [
            (vec![2usize, 3, 5, 4], 1.0f64),
            (vec![3, 7, 6], 1.0),
            (vec![2, 2, 1, 3], 1.0),
            (vec![1, 2, 9, 4], 8.0),
            // Scores of 135,000 elements: the CPU softmax backward runs in several parallel tasks.
            (vec![2, 3, 150, 4], 1.0),
        ] {
            for (dt, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
                let draw = |rng: &mut NoiseRng| {
                    let t = (rng.randn(&shape, &dev).unwrap() * gain).unwrap();
                    Var::from_tensor(&t.to_dtype(dt).unwrap()).unwrap()
                };
                let (q, k, v) = (draw(&mut rng), draw(&mut rng), draw(&mut rng));
                let r = shape.len();
                let probe = rng
                    .randn(&shape, &dev)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap()
                    .transpose(r - 3, r - 2)
                    .unwrap()
                    .contiguous()
                    .unwrap();
                let case = format!("{shape:?} ×{gain} {dt:?}");
                let run = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>| {
                    let y = f(q.as_tensor(), k.as_tensor(), v.as_tensor()).unwrap();
                    let loss = (y.transpose(r - 3, r - 2).unwrap() * &probe)
                        .unwrap()
                        .sum_all()
                        .unwrap();
                    let g = loss.backward().unwrap();
                    let grads: Vec<Tensor> = [&q, &k, &v]
                        .iter()
                        .map(|x| g.get(x.as_tensor()).unwrap().clone())
                        .collect();
                    (y, grads)
                };
                let (y0, g0) = run(&attention_chain);
                let s = shape[r - 2];
                let row = s * s * dt.size_in_bytes();
                // One piece, and chunks of one row, of two rows (an uneven last chunk where the leading axes
                // hold an odd count) and of a byte budget smaller than one row (still one row).
                for bytes in [usize::MAX, row, 2 * row, row / 2] {
                    let (y1, g1) = run(&|q, k, v| attention_in_chunks(q, k, v, bytes));
                    let case = format!("{case} chunks of {bytes} bytes");
                    assert!(rel(&y1, &y0) < tol, "{case}: value {}", rel(&y1, &y0));
                    for (name, (a, b)) in ["q", "k", "v"].iter().zip(g1.iter().zip(&g0)) {
                        assert!(rel(a, b) < tol, "{case}: gradient of {name} {}", rel(a, b));
                    }
                }
                let plain = attention(
                    &q.as_tensor().detach(),
                    &k.as_tensor().detach(),
                    &v.as_tensor().detach(),
                )
                .unwrap();
                assert!(
                    !plain.track_op() && rel(&plain, &y0) < tol,
                    "{case}: detached"
                );
            }
        }
    }

    /// The packed attention on a permuted view of a projection's output, and [`attention_heads`] (what
    /// [`SelfAttention`] calls) on the output itself, equal candle's op chain on q, k and v taken apart with
    /// `get`, in value and in the gradient of the projection (f32 ≤ 1e-5, f64 ≤ 1e-12 relative), in one chunk
    /// and in several; detached they record nothing; a first axis other than 3, or channels that do not split
    /// into the heads, is an error naming the shape. (Fails when the heads' backward misplaces its second
    /// chunk of items, or reads every head's columns at the first's — both checked.)
    #[test]
    fn packed_and_head_attention_match_the_chain_on_a_projection_view() {
        let dev = Device::Cpu;
        let mut rng = NoiseRng::new(5);
        // (N, S, heads, dh): the last two's scores (2 × 3 × 150², 40 × 3 × 150²) exceed one CPU chunk, and
        // their query rows make two blocks per item.
        for (n, s, heads, dh) in [
            (2usize, 5usize, 2usize, 3usize),
            (3, 1, 1, 4),
            (2, 150, 3, 4),
            (40, 150, 3, 2),
        ] {
            for (dt, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
                let h = Var::from_tensor(
                    &rng.randn(&[n, s, 3 * heads * dh], &dev)
                        .unwrap()
                        .to_dtype(dt)
                        .unwrap(),
                )
                .unwrap();
                let probe = rng
                    .randn(&[n, heads, s, dh], &dev)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap();
                let case = format!("N {n} S {s} heads {heads} dh {dh} {dt:?}");
                let run = |f: &dyn Fn(&Tensor) -> Result<Tensor>| {
                    let qkv = h
                        .as_tensor()
                        .reshape((n, s, 3, heads, dh))
                        .unwrap()
                        .permute((2, 0, 3, 1, 4))
                        .unwrap();
                    let y = f(&qkv).unwrap();
                    let g = (&y * &probe)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .backward()
                        .unwrap();
                    (y, g.get(h.as_tensor()).unwrap().clone())
                };
                let (y0, g0) = run(&|qkv| {
                    let part = |i: usize| qkv.get(i).unwrap().contiguous().unwrap();
                    attention_chain(&part(0), &part(1), &part(2))
                });
                let (y1, g1) = run(&attention_packed);
                assert!(rel(&y1, &y0) < tol, "{case}: value {}", rel(&y1, &y0));
                assert!(rel(&g1, &g0) < tol, "{case}: gradient {}", rel(&g1, &g0));
                // attention_heads on the unpermuted [N, S, 3·C] (in place on the CPU in f32): its output is
                // y0 with the heads side by side, the same loss with the probe laid out alike, so the same
                // gradient.
                let c = heads * dh;
                let y2 = attention_heads(h.as_tensor(), heads).unwrap();
                let side = |t: &Tensor| t.transpose(1, 2).unwrap().reshape((n, s, c)).unwrap();
                let g = (&y2 * side(&probe))
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let g2 = g.get(h.as_tensor()).unwrap();
                assert!(rel(&y2, &side(&y0)) < tol, "{case}: heads value");
                assert!(
                    rel(g2, &g0) < tol,
                    "{case}: heads gradient {}",
                    rel(g2, &g0)
                );
                let plain = attention_heads(&h.as_tensor().detach(), heads).unwrap();
                assert!(
                    !plain.track_op() && rel(&plain, &side(&y0)) < tol,
                    "{case}: heads detached"
                );
                let detached = h
                    .as_tensor()
                    .detach()
                    .reshape((n, s, 3, heads, dh))
                    .unwrap();
                let plain = attention_packed(&detached.permute((2, 0, 3, 1, 4)).unwrap()).unwrap();
                assert!(
                    !plain.track_op() && rel(&plain, &y0) < tol,
                    "{case}: detached"
                );
            }
        }
        let wrong = Tensor::zeros((2, 4, 5, 3), DType::F32, &dev).unwrap();
        let e = attention_packed(&wrong).unwrap_err().to_string();
        assert!(e.contains("[2, 4, 5, 3]"), "{e}");
        let wrong = Tensor::zeros((2, 4, 10), DType::F32, &dev).unwrap();
        let e = attention_heads(&wrong, 3).unwrap_err().to_string();
        assert!(e.contains("10 channels") && e.contains("3 heads"), "{e}");
    }

    /// The fused CPU kernel against candle's chain on items whose query rows span several blocks of scores
    /// (an uneven last one) and runs of the worker pool that start inside an item: value and kept
    /// probabilities to 1e-5 relative, with and without P, for as many values as keys and fewer.
    #[test]
    fn fused_attention_blocks_match_the_chain() {
        let dev = Device::Cpu;
        let mut rng = NoiseRng::new(17);
        // (n, sq, sk, d, dv): 700 keys make blocks of 23 rows, so 61 query rows take three.
        for (n, sq, sk, d, dv) in [
            (3usize, 61usize, 700usize, 5usize, 5usize),
            (5, 7, 1, 3, 2),
            (2, 33, 40, 4, 1),
        ] {
            let q = rng.randn(&[n, sq, d], &dev).unwrap();
            let k = rng.randn(&[n, sk, d], &dev).unwrap();
            let v = rng.randn(&[n, sk, dv], &dev).unwrap();
            let scale = 0.7;
            let p0 = candle_nn::ops::softmax_last_dim(
                &(q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap(),
            )
            .unwrap();
            let y0 = p0.matmul(&v).unwrap();
            for keep in [false, true] {
                let (y, p) = attention_parts(&q, &k, &v, scale, keep).unwrap();
                let case = format!("{:?} keep {keep}", (n, sq, sk, d, dv));
                assert!(rel(&y, &y0) < 1e-5, "{case}: value {}", rel(&y, &y0));
                match p {
                    Some(p) => assert!(keep && rel(&p, &p0) < 1e-5, "{case}: P {}", rel(&p, &p0)),
                    None => assert!(!keep, "{case}: P missing"),
                }
            }
        }
    }

    /// [`Dense::forward_outputs`] on two halves equals the full layer's output split in two, in value and in the
    /// gradients of the input, the weight and the bias (f32, 1e-6 relative).
    #[test]
    fn dense_halves_match_the_whole_layer() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = vsdm_core::init::seeded_var_builder(&vm, NoiseRng::new(13), DType::F32, &dev);
        let layer = dense(6, 8, vb).unwrap();
        let mut rng = NoiseRng::new(12);
        let x = Var::from_tensor(&rng.randn(&[2, 5, 6], &dev).unwrap()).unwrap();
        let probe = rng.randn(&[2, 5, 8], &dev).unwrap();
        let params: Vec<Var> = {
            let data = vm.data().lock().unwrap();
            vec![data["weight"].clone(), data["bias"].clone()]
        };
        let grads = |y: &Tensor| {
            let g = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let mut all = vec![g.get(x.as_tensor()).unwrap().clone()];
            all.extend(params.iter().map(|p| g.get(p.as_tensor()).unwrap().clone()));
            all
        };
        let whole = layer.forward(x.as_tensor()).unwrap();
        let halves = Tensor::cat(
            &[
                layer.forward_outputs(x.as_tensor(), 0, 3).unwrap(),
                layer.forward_outputs(x.as_tensor(), 3, 5).unwrap(),
            ],
            2,
        )
        .unwrap();
        assert!(
            rel(&halves, &whole) < 1e-6,
            "value {}",
            rel(&halves, &whole)
        );
        for (name, (a, b)) in ["x", "weight", "bias"]
            .iter()
            .zip(grads(&halves).iter().zip(&grads(&whole)))
        {
            assert!(rel(a, b) < 1e-6, "d{name} {}", rel(a, b));
        }
    }

    /// The fused layer norm and dense ops equal candle's chains in value and in every input's gradient
    /// (f32 ≤ 1e-5, f64 ≤ 1e-12 relative), for 2-D, 3-D and 4-D inputs, the gradients of ⟨y, probe⟩ for a
    /// random probe reached through a transpose (a strided gradient).
    /// [`add_broadcast`] against candle's `broadcast_add`: value and both inputs' gradients (of ⟨y, probe⟩,
    /// read through a transpose, so the incoming gradient is not contiguous), in f32 (the CPU reduction) and
    /// f64 (candle's), for one input broadcast, both, a missing leading axis on either side, none, and a
    /// summed axis of three runs; [`sum_to`] refuses a shape that does not broadcast.
    #[test]
    fn add_broadcast_matches_candles_broadcast_add_and_its_gradients() {
        let dev = Device::Cpu;
        let mut rng = NoiseRng::new(9);
        let pairs: [(&[usize], &[usize]); 7] = [
            (&[2, 3, 4, 5], &[2, 1, 1, 5]),
            (&[2, 1, 4, 5], &[1, 3, 1, 5]),
            (&[3, 4], &[4]),
            (&[4, 1], &[2, 3, 4, 6]),
            (&[2, 3], &[2, 3]),
            (&[2, 2100, 3], &[2, 1, 3]),
            (&[1, 2100, 2], &[3, 1, 1]),
        ];
        for (da, db) in pairs {
            for (dt, tol) in [(DType::F32, 1e-6), (DType::F64, 1e-14)] {
                let draw = |rng: &mut NoiseRng, dims: &[usize]| {
                    Var::from_tensor(&rng.randn(dims, &dev).unwrap().to_dtype(dt).unwrap()).unwrap()
                };
                let (a, b) = (draw(&mut rng, da), draw(&mut rng, db));
                let y0 = a.as_tensor().broadcast_add(b.as_tensor()).unwrap();
                let y1 = add_broadcast(a.as_tensor(), b.as_tensor()).unwrap();
                let case = format!("{da:?} + {db:?} {dt:?}");
                assert_eq!(y1.dims(), y0.dims(), "{case}");
                assert!(rel(&y1, &y0) < tol, "{case}: value {}", rel(&y1, &y0));
                let probe = rng.randn(y0.dims(), &dev).unwrap().to_dtype(dt).unwrap();
                let grads = |y: &Tensor| {
                    let (r, probe) = (y.rank(), probe.clone());
                    let loss = if r >= 2 {
                        (y.transpose(0, r - 1).unwrap() * probe.transpose(0, r - 1).unwrap())
                            .unwrap()
                            .sum_all()
                            .unwrap()
                    } else {
                        (y * probe).unwrap().sum_all().unwrap()
                    };
                    let g = loss.backward().unwrap();
                    [&a, &b].map(|v| g.get(v.as_tensor()).unwrap().clone())
                };
                let (g0, g1) = (grads(&y0), grads(&y1));
                for (name, (x, y)) in ["a", "b"].iter().zip(g1.iter().zip(&g0)) {
                    assert_eq!(x.dims(), y.dims(), "{case}: d{name}");
                    assert!(rel(x, y) < tol, "{case}: d{name} {}", rel(x, y));
                }
            }
        }
        let t = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let e = sum_to(&t, &[2, 2]).unwrap_err().to_string();
        assert!(e.contains("not a broadcast of [2, 2]"), "{e}");
        assert!(sum_to(&t, &[4, 2, 3]).is_err());
    }

    #[test]
    fn layer_norm_and_dense_match_candles_chains_and_their_gradients() {
        let dev = Device::Cpu;
        let mut rng = NoiseRng::new(5);
        // [3, 700, 20]: 2,100 rows, three runs of the CPU reductions (RUN_ROWS), the last one short; rows of
        // 6 (shorter than the eight lanes of the row sums), 32 (four whole lane blocks), 20 and 37 (with
        // remainders).
        for shape in [
            vec![7usize, 6],
            vec![3, 4, 6],
            vec![2, 3, 5, 6],
            vec![5, 32],
            vec![2, 3, 37],
            vec![3, 700, 20],
        ] {
            for (dt, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
                let mut draw = |dims: &[usize], shift: f64| {
                    let t = (rng.randn(dims, &dev).unwrap() + shift).unwrap();
                    Var::from_tensor(&t.to_dtype(dt).unwrap()).unwrap()
                };
                let n = shape[shape.len() - 1];
                let x = draw(&shape, 0.7);
                let (gain, bias) = (draw(&[n], 1.0), draw(&[n], 0.0));
                let (w, b) = (draw(&[4, n], 0.0), draw(&[4], 0.0));
                let rows = x.elem_count() / n;
                let probe_ln = draw(&shape, 0.0);
                let probe_dense = draw(&[rows, 4], 0.0);
                let case = format!("{shape:?} {dt:?}");
                // ⟨y, probe⟩ with y read through a transpose of its first two axes.
                let grads = |y: &Tensor, probe: &Tensor, of: [&Var; 3]| {
                    let loss = (y.transpose(0, 1).unwrap() * probe.transpose(0, 1).unwrap())
                        .unwrap()
                        .sum_all()
                        .unwrap();
                    let g = loss.backward().unwrap();
                    of.map(|v| g.get(v.as_tensor()).unwrap().clone())
                };
                let eps = 1e-5;
                let y0 = layer_norm_chain(x.as_tensor(), gain.as_tensor(), bias.as_tensor(), eps)
                    .unwrap();
                let y1 =
                    layer_norm(x.as_tensor(), gain.as_tensor(), bias.as_tensor(), eps).unwrap();
                assert!(rel(&y1, &y0) < tol, "{case}: layer norm {}", rel(&y1, &y0));
                let g0 = grads(&y0, probe_ln.as_tensor(), [&x, &gain, &bias]);
                let g1 = grads(&y1, probe_ln.as_tensor(), [&x, &gain, &bias]);
                for (name, (a, b)) in ["x", "gain", "bias"].iter().zip(g1.iter().zip(&g0)) {
                    assert!(rel(a, b) < tol, "{case}: layer norm d{name} {}", rel(a, b));
                }
                // The backward with the statistics the forward kept (above) and with them recomputed: the
                // same bits.
                let again = vsdm_core::carried::Backward::backward(
                    &LayerNormBackward { eps, stats: None },
                    x.as_tensor(),
                    gain.as_tensor(),
                    bias.as_tensor(),
                    probe_ln.as_tensor(),
                )
                .unwrap();
                let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for (name, (a, b)) in ["x", "gain", "bias"]
                    .iter()
                    .zip([again.0, again.1, again.2].iter().zip(&g1))
                {
                    if dt == DType::F32 {
                        let a = a.as_ref().expect("a gradient");
                        assert_eq!(bits(a), bits(b), "{case}: recomputed statistics, d{name}");
                    }
                }
                let x2 = x.as_tensor().reshape((rows, n)).unwrap();
                let y0 = x2
                    .matmul(&w.as_tensor().t().unwrap())
                    .unwrap()
                    .broadcast_add(b.as_tensor())
                    .unwrap();
                let y1 = dense_op(&x2, w.as_tensor(), b.as_tensor()).unwrap();
                assert!(rel(&y1, &y0) < tol, "{case}: dense {}", rel(&y1, &y0));
                let g0 = grads(&y0, probe_dense.as_tensor(), [&x, &w, &b]);
                let g1 = grads(&y1, probe_dense.as_tensor(), [&x, &w, &b]);
                for (name, (a, b)) in ["x", "w", "bias"].iter().zip(g1.iter().zip(&g0)) {
                    assert!(rel(a, b) < tol, "{case}: dense d{name} {}", rel(a, b));
                }
                // Without tracked inputs: nothing recorded, the same value.
                let plain = layer_norm(
                    &x.as_tensor().detach(),
                    &gain.as_tensor().detach(),
                    &bias.as_tensor().detach(),
                    eps,
                )
                .unwrap();
                assert!(!plain.track_op(), "{case}");
            }
        }
    }

    #[test]
    fn softmax_and_layer_norm_match_closed_forms_and_have_gradients() {
        let dev = Device::Cpu;
        let x = Var::from_vec(vec![1f32, 2.0, 3.0, 1000.0, 1000.0, 1000.0], (2, 3), &dev).unwrap();
        let p = softmax_last(x.as_tensor())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        // softmax(1,2,3) = e^k / (e + e² + e³); a huge constant row is uniform.
        let z: f32 = (1..=3).map(|k| (k as f32).exp()).sum();
        for (k, (a, b)) in p[0].iter().zip(&p[1]).enumerate() {
            assert!((a - ((k + 1) as f32).exp() / z).abs() < 1e-6);
            assert!((b - 1.0 / 3.0).abs() < 1e-6);
        }
        // d softmax_0 / d x_0 = p0 (1 − p0).
        let g = softmax_last(x.as_tensor())
            .unwrap()
            .narrow(1, 0, 1)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gx = g.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert!((gx[0][0] - p[0][0] * (1.0 - p[0][0])).abs() < 1e-6);

        let vm = VarMap::new();
        let ln = LayerNorm::new(4, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
        let y = ln
            .forward(&Tensor::new(&[[1f32, 2.0, 3.0, 4.0]], &dev).unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        // (x − 2.5) / sqrt(1.25 + 1e-5)
        for (k, v) in y[0].iter().enumerate() {
            let want = (k as f32 + 1.0 - 2.5) / (1.25f32 + 1e-5).sqrt();
            assert!((v - want).abs() < 1e-5, "{v} vs {want}");
        }
        // The network's sigmoid (inside its gate op).
        let s = [0f32, 2.0, -200.0].map(vsdm_core::fastmath::sigmoid_f32);
        assert!((s[0] - 0.5).abs() < 1e-7 && (s[1] - 1.0 / (1.0 + (-2f32).exp())).abs() < 1e-6);
        assert!(s[2] >= 0.0 && s[2] < 1e-30);
    }
}
