//! Scaled dot-product attention as one op whose backward is its own ([`attention`]): on the CPU in f32,
//! kernels over blocks of query rows; elsewhere candle's products and fused softmax.

use candle_core::{Result, Tensor, D};

use vsdm_core::fastmath::{
    avx2, exp_rows, gemm_rows, matmul as mm, par_rows, par_rows_mut, softmax_rows, with_cpu_f32,
    Shared,
};

use super::cpu_f32;

/// Softmax over the last dimension as exp / sum, shifted by the (detached) row maximum for range safety.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
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

/// dq, dk, dv of one chunk by [`attention_backward_rows`] when q, k, v, dy and P are f32 on the CPU; `None`
/// otherwise (the caller's chain of ops). There is at least one key: [`attention_parts`] refuses none before a
/// backward is recorded.
fn attention_grads_fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dy: &Tensor,
    p: &Tensor,
    scale: f64,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    if ![q, k, v, dy, p].into_iter().all(cpu_f32) {
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

/// softmax(scale · q kᵀ) v for q `[n, sq, d]`, k `[n, sk, d]`, v `[n, sk, dv]` without a graph, and P
/// `[n, sq, sk]` when `keep`: [`attention_rows`] for f32 CPU tensors, else candle's products and softmax. No
/// keys (sk = 0) are an error: a softmax over nothing has no value (candle's softmax panicked on it).
pub(super) fn attention_parts(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    keep: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    if k.dim(1)? == 0 {
        candle_core::bail!(
            "attention: no keys to attend to (q {:?}, k {:?})",
            q.dims(),
            k.dims()
        );
    }
    if cpu_f32(q) && cpu_f32(k) && cpu_f32(v) {
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
pub(super) fn softmax_backward(dp: &Tensor, p: &Tensor) -> Result<Tensor> {
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
pub(super) fn attention_in_chunks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    max_bytes: usize,
) -> Result<Tensor> {
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
