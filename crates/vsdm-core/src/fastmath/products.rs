//! Matrix products through single-threaded gemm calls, one per run of rows on candle's worker pool, and
//! the row and column sums that go with them.

use super::*;

/// A strided f32 matrix: its values (from the first element on), row stride and column stride.
pub type Strided<'a> = (&'a [f32], (usize, usize));

/// a · b for a `[m, k]` and b `[k, n]` given with any strides (a transposed view reads in place), into a
/// row-major `[m, n]`: the rows of a split into runs on candle's worker pool ([`par_rows_mut`]), each run one
/// single-threaded gemm call (the crate candle's `matmul` calls with rayon's pool; on that pool the products
/// competed with candle's spinning workers, docs/benchmarks/image.md).
///
/// # Panics
/// When a matrix does not lie within its slice.
pub fn matmul_f32(a: Strided, b: Strided, dims: (usize, usize, usize)) -> Vec<f32> {
    matmul_bias_f32(a, b, None, dims)
}

/// [`matmul_f32`] plus `bias` `[n]` added to every row (a dense layer's x Wᵀ + b): each run's rows start as
/// copies of the bias and the product accumulates into them, in the same pass (no second pass over the
/// output, as `broadcast_add` after the product makes).
///
/// # Panics
/// When a matrix does not lie within its slice, or the bias is not `n` long.
pub fn matmul_bias_f32(
    a: Strided,
    b: Strided,
    bias: Option<&[f32]>,
    dims: (usize, usize, usize),
) -> Vec<f32> {
    matmul_start_f32(a, b, bias.map_or(Start::Zeros, Start::Bias), dims)
}

/// `scale` · (`base` + a · b + `bias`) for a `[m, k]` and b `[k, n]` with any strides, `base` row-major
/// `[m, n]` and `bias` `[n]`: a dense layer's output added onto a residual and scaled (the time-series
/// network's residual connections without a graph) in the product's pass. Each run's rows start as
/// `scale` · (base + bias) and the product, scaled, accumulates onto them; where the chain adds a second pass
/// that reads the product and the base and writes their sum (and a third for the scaling). The rounding differs
/// from the chain's (the terms are summed in another order).
///
/// # Panics
/// When a matrix does not lie within its slice, or the bias is not `n` or the base not `m · n` long.
pub fn matmul_bias_onto_f32(
    a: Strided,
    b: Strided,
    bias: &[f32],
    (base, scale): (&[f32], f32),
    dims: (usize, usize, usize),
) -> Vec<f32> {
    let (m, _, n) = dims;
    assert!(
        base.len() == m * n,
        "matmul_bias_onto_f32: a base of {} for [{m}, {n}]",
        base.len()
    );
    matmul_start_f32(a, b, Start::Onto { base, bias, scale }, dims)
}

/// How the output rows of [`matmul_start_f32`] start before the product is added.
#[derive(Clone, Copy)]
enum Start<'a> {
    /// Not read: the product is written.
    Zeros,
    /// Each row a copy of the bias.
    Bias(&'a [f32]),
    /// Row i is `scale` · (base row i + bias), and the product is added times `scale`.
    Onto {
        base: &'a [f32],
        bias: &'a [f32],
        scale: f32,
    },
}

/// [`matmul_bias_f32`] and [`matmul_bias_onto_f32`]: the runs of rows on candle's worker pool, each started as
/// `start` says, then one gemm call accumulating onto it.
fn matmul_start_f32(
    (a, (ars, acs)): Strided,
    (b, (brs, bcs)): Strided,
    start: Start,
    (m, k, n): (usize, usize, usize),
) -> Vec<f32> {
    assert!(
        fits(a.len(), (m, k), (ars, acs)) && fits(b.len(), (k, n), (brs, bcs)),
        "matmul_f32: [{m}, {k}] · [{k}, {n}] outside slices of {} and {}",
        a.len(),
        b.len()
    );
    let bias_len = match start {
        Start::Zeros => n,
        Start::Bias(c) | Start::Onto { bias: c, .. } => c.len(),
    };
    assert!(
        bias_len == n,
        "matmul_bias_f32: a bias of {bias_len} for {n} columns"
    );
    let scale = match start {
        Start::Onto { scale, .. } => scale,
        _ => 1.0,
    };
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    par_runs_mut(
        (&mut out.spare_capacity_mut()[..m * n], n.max(1)),
        if n == 0 { 0 } else { m },
        |r0, o| {
            let rows = o.len() / n.max(1);
            match start {
                Start::Zeros => {}
                Start::Bias(c) => {
                    for row in o.chunks_exact_mut(n) {
                        // SAFETY: `row` and `c` both hold n values (the bias's length is asserted above).
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                c.as_ptr(),
                                row.as_mut_ptr() as *mut f32,
                                n,
                            )
                        };
                    }
                }
                Start::Onto { base, bias, scale } => {
                    let base = &base[r0 * n..(r0 + rows) * n];
                    for (row, br) in o.chunks_exact_mut(n).zip(base.chunks_exact(n)) {
                        for ((o, &x), &c) in row.iter_mut().zip(br).zip(bias) {
                            o.write(scale * (x + c));
                        }
                    }
                }
            }
            // SAFETY: a's rows r0.. and all of b lie within their slices (asserted above); unless the start is
            // zeros, every element of the run was just written, so it may be read.
            unsafe {
                gemm_raw(
                    o.as_mut_ptr() as *mut f32,
                    (a.as_ptr().add(r0 * ars), (ars, acs)),
                    (b.as_ptr(), (brs, bcs)),
                    (rows, k, n),
                    scale,
                    !matches!(start, Start::Zeros),
                )
            }
        },
    );
    // SAFETY: the runs cover all m rows and gemm wrote each run whole.
    unsafe { out.set_len(m * n) };
    out
}

/// aᵀ · b `[m, n]` and the column sums of a `[m]`, for row-major a `[rows, m]` and b `[rows, n]`: a dense
/// layer's weight and bias gradients (dyᵀ x, Σ_rows dy), in one pass over a. The rows are cut into runs of
/// `run_rows` (the last one shorter) whose partial products and sums are computed on candle's worker pool,
/// one single-threaded gemm call each, then added in the runs' order: the result depends on `run_rows` but
/// not on the number of threads. (candle's `matmul` of a transposed view splits such a product, with its few
/// output rows, over rayon's pool, whose spinning workers then compete with candle's own; a sum over the rows
/// as a product with a row of ones is a second pass.)
///
/// # Panics
/// When a or b is shorter than its rows, or `run_rows` is 0.
pub fn gram_and_sums_f32(
    a: &[f32],
    b: &[f32],
    (rows, m, n): (usize, usize, usize),
    run_rows: usize,
) -> (Vec<f32>, Vec<f32>) {
    assert!(
        a.len() >= rows * m && b.len() >= rows * n && run_rows > 0,
        "gram_and_sums_f32: {rows} rows of {m} and {n} in slices of {} and {}, runs of {run_rows}",
        a.len(),
        b.len()
    );
    let runs = rows.div_ceil(run_rows);
    let w = m * n + m;
    let avx = avx2();
    // SAFETY: each run writes its whole partial: the product (gemm, not accumulating) and the m sums.
    let partials = unsafe {
        par_fill(runs, w, |run0, o| {
            for (i, part) in o.chunks_exact_mut(w).enumerate() {
                let r0 = (run0 + i) * run_rows;
                let nr = run_rows.min(rows - r0);
                let (prod, sums) = part.split_at_mut(m * n);
                gemm_raw(
                    prod.as_mut_ptr() as *mut f32,
                    (a.as_ptr().add(r0 * m), (1, m)),
                    (b.as_ptr().add(r0 * n), (n, 1)),
                    (m, nr, n),
                    1.0,
                    false,
                );
                for v in sums.iter_mut() {
                    v.write(0.0);
                }
                let sums = std::slice::from_raw_parts_mut(sums.as_mut_ptr() as *mut f32, m);
                for row in a[r0 * m..(r0 + nr) * m].chunks_exact(m.max(1)) {
                    add_into(avx, sums, row);
                }
            }
        })
    };
    let mut total = sum_parts(&partials, w);
    let sums = total.split_off(m * n);
    (total, sums)
}

/// The element-wise sum of the rows of `w` values in `parts`, added in their order (runs' partial results,
/// so that a reduction split over candle's pool does not depend on the number of threads).
pub fn sum_parts(parts: &[f32], w: usize) -> Vec<f32> {
    let mut total = vec![0f32; w];
    let avx = avx2();
    for part in parts.chunks_exact(w.max(1)) {
        add_into(avx, &mut total, part);
    }
    total
}

crate::simd_fn! {
    /// acc += row, element by element.
    fn add_into(acc: &mut [f32], row: &[f32]) {
        for (a, v) in acc.iter_mut().zip(row) {
            *a += v;
        }
    }
}

/// Σ over the middle axis of `x` `[o, r, i]` (row-major f32) → `[o, i]`, on candle's worker pool: each item's
/// `r` rows go in runs of `run_rows` (and columns in blocks of 4,096), each run summing its rows in order into
/// its own partial row, and the runs' partials are added in their order ([`sum_parts`]), so the result does
/// not depend on the number of threads. The reduction behind a broadcast's gradient, where candle's
/// `sum_keepdim` over a middle axis is a strided single-threaded loop.
///
/// # Panics
/// When `x` does not hold `o · r · i` values or `run_rows` is 0.
pub fn sum_middle_f32(x: &[f32], (o, r, i): (usize, usize, usize), run_rows: usize) -> Vec<f32> {
    const COLS: usize = 4096;
    assert!(
        x.len() == o * r * i && run_rows > 0,
        "sum_middle_f32: {} values for [{o}, {r}, {i}], runs of {run_rows}",
        x.len()
    );
    if o * i == 0 {
        return Vec::new();
    }
    let runs = r.div_ceil(run_rows).max(1);
    let chunks = i.div_ceil(COLS);
    let mut partial = vec![0f32; o * runs * i];
    let tasks = o * runs * chunks;
    let p = Shared(partial.as_mut_ptr());
    let avx = avx2();
    candle_core::utils::barrier_pool().execute_chunked(tasks, |ts| {
        for t in ts {
            let (item, rest) = (t / (runs * chunks), t % (runs * chunks));
            let (run, chunk) = (rest / chunks, rest % chunks);
            let (c0, r0) = (chunk * COLS, run * run_rows);
            let (cw, nr) = (COLS.min(i - c0), run_rows.min(r - r0));
            // SAFETY: task t alone writes columns c0..c0 + cw of partial row (item, run), which lie within
            // `partial` (o · runs rows of i); `partial` outlives the call.
            let acc = unsafe { p.part((item * runs + run) * i + c0, cw) };
            for row in r0..r0 + nr {
                add_into(avx, acc, &x[(item * r + row) * i + c0..][..cw]);
            }
        }
    });
    partial
        .chunks_exact(runs * i)
        .flat_map(|parts| sum_parts(parts, i))
        .collect()
}

/// One single-threaded gemm call into rows `out_rs` apart: `out` `[m, n]` (row i at `out + i·out_rs`) =
/// `out` + `scale` · a · b when `accumulate`, else `scale` · a · b (then written whole, never read: it may be
/// uninitialised), for a `[m, k]` at `a` with strides (rs, cs) and b `[k, n]` at `b` likewise. For kernels
/// that run their own products inside a task of candle's worker pool (the time-series attention's blocks of
/// query rows, whose output rows may lie inside a wider matrix: one head's columns of rows that hold them all).
///
/// # Safety
/// Every element of a and b lies within the allocations `a` and `b` point into; rows `out_rs` ≥ n apart from
/// `out` hold n values each, initialised when `accumulate`.
pub unsafe fn gemm_rows(
    out: *mut f32,
    out_rs: usize,
    a: (*const f32, (usize, usize)),
    b: (*const f32, (usize, usize)),
    dims: (usize, usize, usize),
    scale: f32,
    accumulate: bool,
) {
    gemm_raw_rs(out, out_rs, a, b, dims, scale, accumulate)
}

/// The float types gemm has kernels for that this workspace multiplies in: f32 and f64.
pub trait GemmFloat: Copy + Send + Sync + 'static {
    const ZERO: Self;
    const ONE: Self;
}

impl GemmFloat for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

impl GemmFloat for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
}

/// One single-threaded gemm call in f32 or f64: `out` (row-major `[m, n]`) = `out` + a · b when `accumulate`,
/// else a · b (`out` then written whole, never read: it may be uninitialised), a and b as in [`gemm_rows`].
///
/// # Safety
/// As [`gemm_rows`] with `out_rs` = n.
pub unsafe fn gemm_into<T: GemmFloat>(
    out: *mut T,
    a: (*const T, (usize, usize)),
    b: (*const T, (usize, usize)),
    dims: (usize, usize, usize),
    accumulate: bool,
) {
    gemm_raw(out, a, b, dims, T::ONE, accumulate)
}

/// The gemm call of [`gemm_into`] and the products here: `out` = (`out` +) `scale` · a · b,
/// row-major `[m, n]` (read only when `accumulate`; written whole, zeros when k = 0 and not accumulating).
///
/// # Safety
/// As [`gemm_rows`] with `out_rs` = n.
unsafe fn gemm_raw<T: GemmFloat>(
    out: *mut T,
    a: (*const T, (usize, usize)),
    b: (*const T, (usize, usize)),
    (m, k, n): (usize, usize, usize),
    scale: T,
    accumulate: bool,
) {
    gemm_raw_rs(out, n, a, b, (m, k, n), scale, accumulate)
}

/// [`gemm_raw`] with the output's rows `out_rs` apart.
///
/// # Safety
/// As [`gemm_rows`].
unsafe fn gemm_raw_rs<T: GemmFloat>(
    out: *mut T,
    out_rs: usize,
    (a, (ars, acs)): (*const T, (usize, usize)),
    (b, (brs, bcs)): (*const T, (usize, usize)),
    (m, k, n): (usize, usize, usize),
    scale: T,
    accumulate: bool,
) {
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                std::ptr::write_bytes(out.add(i * out_rs), 0, n);
            }
        }
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        out,
        1,
        out_rs as isize,
        accumulate,
        a,
        acs as isize,
        ars as isize,
        b,
        bcs as isize,
        brs as isize,
        if accumulate { T::ONE } else { T::ZERO },
        scale,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// The batched product a_i · b_i of a `[batch, m, k]` and b `[batch, k, n]` with any strides (batch, row,
/// column), into a row-major `[batch, m, n]`: the batch items split over candle's worker pool, one
/// single-threaded gemm call each (candle's batched `matmul` calls gemm once per item with rayon's pool, which
/// splits each small product again).
///
/// # Panics
/// When a matrix does not lie within its slice.
pub fn bmm_f32(
    (a, (abs, ars, acs)): (&[f32], (usize, usize, usize)),
    (b, (bbs, brs, bcs)): (&[f32], (usize, usize, usize)),
    (batch, m, k, n): (usize, usize, usize, usize),
) -> Vec<f32> {
    let last = |s: usize| batch.saturating_sub(1) * s;
    assert!(
        batch == 0
            || (fits(a.len().saturating_sub(last(abs)), (m, k), (ars, acs))
                && fits(b.len().saturating_sub(last(bbs)), (k, n), (brs, bcs))),
        "bmm_f32: {batch} × [{m}, {k}] · [{k}, {n}] outside slices of {} and {}",
        a.len(),
        b.len()
    );
    let item = m * n;
    // SAFETY: each gemm call writes its item whole; item bi's matrices lie within a and b (asserted above for
    // the last item, and the batch strides only move forward).
    unsafe {
        par_fill(batch, item, |i0, o| {
            for (i, o) in o.chunks_mut(item).enumerate() {
                let bi = i0 + i;
                gemm_rows(
                    o.as_mut_ptr() as *mut f32,
                    n,
                    (a.as_ptr().add(bi * abs), (ars, acs)),
                    (b.as_ptr().add(bi * bbs), (brs, bcs)),
                    (m, k, n),
                    1.0,
                    false,
                )
            }
        })
    }
}

/// a · b for 2-D a and b, or batched for 3-D ones: on the CPU in f32 [`matmul_f32`] / [`bmm_f32`] (rows or
/// batch items split over candle's worker pool; transposed views read in place), elsewhere candle's `matmul`.
pub fn matmul(
    a: &candle_core::Tensor,
    b: &candle_core::Tensor,
) -> candle_core::Result<candle_core::Tensor> {
    let f32_cpu =
        |t: &candle_core::Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
    let ranks = (a.rank(), b.rank());
    if !(f32_cpu(a) && f32_cpu(b) && (ranks == (2, 2) || ranks == (3, 3))) {
        return a.matmul(b);
    }
    a.apply_op2_no_bwd(b, &MatmulRows)
}

/// a · b + bias for a `[m, k]`, b `[k, n]` and bias `[n]`: on the CPU in f32 [`matmul_bias_f32`] (the bias
/// written into the output rows before the product accumulates into them), elsewhere candle's `matmul` and
/// `broadcast_add`. Records no op.
pub fn matmul_bias(
    a: &candle_core::Tensor,
    b: &candle_core::Tensor,
    bias: &candle_core::Tensor,
) -> candle_core::Result<candle_core::Tensor> {
    let f32_cpu =
        |t: &candle_core::Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
    if !(f32_cpu(a) && f32_cpu(b) && f32_cpu(bias) && a.rank() == 2 && b.rank() == 2) {
        return a.matmul(b)?.broadcast_add(bias);
    }
    let (n, c) = (b.dim(1)?, bias.dims1()?);
    if c != n {
        candle_core::bail!(
            "matmul-bias: a bias of {c} for {:?} · {:?}",
            a.dims(),
            b.dims()
        );
    }
    a.apply_op3_no_bwd(b, &bias.contiguous()?, &MatmulRows)
}

/// [`matmul`]'s and [`matmul_bias`]'s CPU op.
struct MatmulRows;

impl candle_core::CustomOp2 for MatmulRows {
    fn name(&self) -> &'static str {
        "matmul-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (candle_core::CpuStorage::F32(a), candle_core::CpuStorage::F32(b)) = (s1, s2) else {
            candle_core::bail!("matmul-rows: f32 inputs only");
        };
        if let (Ok((ba, m, k)), Ok((bb, k2, n))) = (l1.shape().dims3(), l2.shape().dims3()) {
            if ba != bb || k != k2 {
                candle_core::bail!("matmul-rows: {:?} · {:?}", l1.dims(), l2.dims());
            }
            let strides = |l: &candle_core::Layout| (l.stride()[0], l.stride()[1], l.stride()[2]);
            let y = bmm_f32(
                (&a[l1.start_offset()..], strides(l1)),
                (&b[l2.start_offset()..], strides(l2)),
                (ba, m, k, n),
            );
            return Ok((candle_core::CpuStorage::F32(y), (ba, m, n).into()));
        }
        matmul_2d((a, l1), (b, l2), None)
    }
}

impl candle_core::CustomOp3 for MatmulRows {
    fn name(&self) -> &'static str {
        "matmul-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (candle_core::CpuStorage::F32(a), candle_core::CpuStorage::F32(b)) = (s1, s2) else {
            candle_core::bail!("matmul-bias: f32 inputs only");
        };
        matmul_2d((a, l1), (b, l2), Some(f32_slice(s3, l3, "matmul-bias")?))
    }
}

/// [`MatmulRows`] on 2-D operands read in place through their layouts, with an optional bias `[n]`.
fn matmul_2d(
    (a, l1): (&[f32], &candle_core::Layout),
    (b, l2): (&[f32], &candle_core::Layout),
    bias: Option<&[f32]>,
) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
    let ((m, k), (k2, n)) = (l1.shape().dims2()?, l2.shape().dims2()?);
    if k != k2 || bias.is_some_and(|c| c.len() != n) {
        candle_core::bail!(
            "matmul-rows: {:?} · {:?} with a bias of {:?}",
            l1.dims(),
            l2.dims(),
            bias.map(<[f32]>::len)
        );
    }
    let strides = |l: &candle_core::Layout| (l.stride()[0], l.stride()[1]);
    let y = matmul_bias_f32(
        (&a[l1.start_offset()..], strides(l1)),
        (&b[l2.start_offset()..], strides(l2)),
        bias,
        (m, k, n),
    );
    Ok((candle_core::CpuStorage::F32(y), (m, n).into()))
}
