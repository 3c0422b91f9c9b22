//! Dense layers as one op with their own backward, and broadcast additions and row sums on the CPU's pool.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use vsdm_core::fastmath::{
    gram_and_sums_f32, matmul as mm, matmul_bias, sum_middle_f32, with_cpu_f32,
};

use super::{cpu_f32, RUN_ROWS};

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
