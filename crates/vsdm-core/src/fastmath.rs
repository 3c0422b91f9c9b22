//! Vectorisable f32 transcendentals and a parallel row driver for the workspace's CPU kernels.
//!
//! candle's CPU backend evaluates `exp`, `tanh` and the logistic function with the C library's scalar `expf` /
//! `tanhf`, one element at a time. The functions here are branch-free polynomials, so a loop of them compiles to
//! vector instructions; [`crate::simd_fn!`](crate::simd_fn) builds such a loop twice, plainly and for AVX2 + FMA, and
//! picks the build at run time ([`avx2`]). [`par_rows`] runs a row kernel over rows in parallel (on candle's own
//! worker pool, [`par_rows_mut`]) into an output it never zero-fills. The time-series network's gate, SiLU and softmax and the U-Net's group norm use
//! them.

use std::mem::MaybeUninit;

/// e^x in f32 for x ≤ 88 (below −87, where e^x is under f32's smallest normal number, e^−87 is returned):
/// x = n ln 2 + r with |r| ≤ ln 2 / 2 (ln 2 in two parts, Cody–Waite), e^r by Cephes' degree-6 polynomial,
/// times 2ⁿ built in the exponent bits. Branch-free, so a loop of it compiles to vector instructions; within
/// 2 ulp of the true value (tested against f64's exp). Written with fused multiply-adds (`mul_add`), single
/// instructions in the [`crate::simd_fn!`] builds (AVX2 + FMA, AVX-512) and on aarch64; elsewhere calls to the C
/// library's `fmaf` (correct, slower). The softmax rows ran 1.35× faster in cache than with separate
/// multiplications and additions (docs/benchmarks/timeseries.md, "exp with FMA, AVX-512 builds").
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    // n = round(x / ln 2): adding 1.5 · 2²³ rounds to the nearest integer and leaves n in the low bits of
    // the sum (read as integers, no float-to-int conversion, which would not vectorise).
    let shifted = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = shifted - 12_582_912.0;
    let n_bits = shifted.to_bits().wrapping_sub(0x4B40_0000);
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let mut p = 1.987_569_2e-4f32;
    p = p.mul_add(r, 1.398_2e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let er = (p * r).mul_add(r, r) + 1.0;
    er * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// Σ f(x) in eight lanes (one AVX2 register: the chains of dependent additions of a plain loop are what limit
/// a short row), the lanes added in a fixed order. For the bodies of [`crate::simd_fn!`] kernels.
#[inline(always)]
pub fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for l in 0..8 {
            lanes[l] += f(c[l]);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// tanh in f32: for |x| ≥ 0.625, 1 − 2/(e^{2|x|} + 1) with the sign of x; below, Cephes' odd polynomial
/// x + x³ P(x²) (where the first form would cancel). Both are computed and one selected, so it vectorises.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    let big = (1.0 - 2.0 / (exp_f32(2.0 * a) + 1.0)).copysign(x);
    let z = x * x;
    let mut p = -5.704_988_7e-3;
    p = p * z + 2.063_909e-2;
    p = p * z - 5.373_971_6e-2;
    p = p * z + 1.333_144_2e-1;
    p = p * z - 3.333_328e-1;
    let small = p * z * x + x;
    if a >= 0.625 {
        big
    } else {
        small
    }
}

/// The logistic function 1 / (1 + e^−x) in f32.
#[inline(always)]
pub fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

/// Whether this CPU runs the AVX2 + FMA builds.
pub fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether this CPU has AVX-512F (the [`crate::simd_fn!`] builds' widest), detected once.
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Defines `fn NAME(avx2: bool, ARGS…) -> RET` running BODY compiled for AVX2 + FMA when `avx2` is true (the
/// caller's [`avx2`]`()`, read once per op, not per row) — for AVX-512F as well when the CPU also has it
/// ([`avx512`]) — and plainly otherwise: the body is written once, as an `#[inline(always)]` function that
/// the vector builds inline, so the loops over [`exp_f32`] and the like vectorise eight or sixteen lanes wide
/// where the CPU has them.
///
/// ```
/// vsdm_core::simd_fn! {
///     /// Doubles each value.
///     fn double(x: &[f32], out: &mut [f32]) {
///         for (o, x) in out.iter_mut().zip(x) {
///             *o = 2.0 * x;
///         }
///     }
/// }
/// let mut out = [0.0; 3];
/// double(vsdm_core::fastmath::avx2(), &[1.0, 2.0, 3.0], &mut out);
/// assert_eq!(out, [2.0, 4.0, 6.0]);
/// ```
#[macro_export]
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name(avx2: bool, $($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn plain($($arg: $ty),*) $(-> $ret)? $body
            /// # Safety
            /// The CPU must support AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn fast($($arg: $ty),*) $(-> $ret)? {
                plain($($arg),*)
            }
            /// # Safety
            /// The CPU must support AVX-512F, AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn fast512($($arg: $ty),*) $(-> $ret)? {
                plain($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                if $crate::fastmath::avx512() {
                    // SAFETY: `avx2` came from `fastmath::avx2()` (AVX2 and FMA), and AVX-512F was detected.
                    return unsafe { fast512($($arg),*) };
                }
                // SAFETY: the caller passes `avx2` from `fastmath::avx2()`, which detected AVX2 and FMA.
                return unsafe { fast($($arg),*) };
            }
            let _ = avx2;
            plain($($arg),*)
        }
    };
}

/// softmax(scale · x) of one row in place, its maximum and sum reduced in `L` lanes (the loop over
/// [`exp_f32`] vectorises `L` wide); without `NORM` the exponentials are left unnormalised. Returns the
/// inverse of their sum.
#[inline(always)]
fn softmax_row<const L: usize, const NORM: bool>(x: &mut [f32], scale: f32) -> f32 {
    // The larger of two by a plain comparison, one `maxps`: `f32::max`'s rule for a NaN (return the other)
    // costs a compare and a blend per vector, and the running maximum is never NaN here either way (it
    // starts at −∞ and only takes a value greater than itself), so the maximum is the same.
    let larger = |m: f32, v: f32| if v > m { v } else { m };
    let mut lanes = [f32::NEG_INFINITY; L];
    let xl = x.chunks_exact(L);
    let mut max = xl
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, v| larger(m, *v));
    for c in xl {
        for l in 0..L {
            lanes[l] = larger(lanes[l], c[l]);
        }
    }
    max = lanes.iter().fold(max, |m, v| larger(m, *v));
    let shift = scale * max;
    let mut lanes = [0f32; L];
    let mut xl = x.chunks_exact_mut(L);
    for c in &mut xl {
        for l in 0..L {
            let e = exp_f32(scale * c[l] - shift);
            lanes[l] += e;
            c[l] = e;
        }
    }
    let mut sum = 0f32;
    for v in xl.into_remainder() {
        let e = exp_f32(scale * *v - shift);
        sum += e;
        *v = e;
    }
    let inv = 1.0 / lanes.iter().fold(sum, |s, v| s + v);
    if NORM {
        for v in x.iter_mut() {
            *v *= inv;
        }
    }
    inv
}

/// [`softmax_row`] on a row of a matrix with `n` columns: in sixteen lanes (one AVX-512 register), or eight
/// for rows under 32, which would otherwise run mostly in the scalar remainder.
#[inline(always)]
fn softmax_row_of<const NORM: bool>(x: &mut [f32], n: usize, scale: f32) -> f32 {
    if n >= 32 {
        softmax_row::<16, NORM>(x, scale)
    } else {
        softmax_row::<8, NORM>(x, scale)
    }
}

crate::simd_fn! {
    /// softmax(scale · row) of each row of `n` in `rows`, in place: the maximum, exp(scale (x − max)) with
    /// [`exp_f32`] (where candle's kernel calls the C library's scalar `expf` element by element), and the
    /// division by their sum, each reduction in sixteen lanes (eight for rows under 32). The attention softmax
    /// of the time-series network and of the U-Net on the CPU.
    pub fn softmax_rows(rows: &mut [f32], n: usize, scale: f32) {
        for x in rows.chunks_mut(n) {
            softmax_row_of::<true>(x, n, scale);
        }
    }
}

crate::simd_fn! {
    /// [`softmax_rows`] without its last pass: each row of `n` in `rows` becomes exp(scale (x − max)), and
    /// `inv` (one per row) the inverse of its sum, for a caller that applies it to something smaller than
    /// the row — the attention's output row (`dv` values) instead of its probabilities (`n`), where the
    /// probabilities are not kept. The normalising pass was a fifth of the softmax's time at 96–370 columns
    /// (docs/benchmarks/timeseries.md, "The softmax's maximum in one instruction").
    pub fn exp_rows(rows: &mut [f32], n: usize, scale: f32, inv: &mut [f32]) {
        assert!(
            n > 0 && rows.len().is_multiple_of(n) && inv.len() == rows.len() / n,
            "exp_rows: {} values in rows of {n}, {} inverse sums",
            rows.len(),
            inv.len()
        );
        for (x, i) in rows.chunks_mut(n).zip(inv) {
            *i = softmax_row_of::<false>(x, n, scale);
        }
    }
}

/// A raw pointer that may cross threads: [`par_rows_mut`] hands each task a disjoint part of the memory, and
/// kernels that write disjoint strided parts of one buffer from their tasks (the time-series attention's heads,
/// each a column block of shared rows) share their output through it.
pub struct Shared<T>(pub *mut T);

// SAFETY: `Shared` only carries the base pointer of a `&mut [T]` whose disjoint parts go to different tasks
// (see `par_rows_mut`), which is sound whenever `T` itself may be sent to another thread.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// The part of `len` elements at `start` (a method, so that closures capture the whole wrapper).
    ///
    /// # Safety
    /// `start + len` lies within the slice the pointer came from, and no other live reference overlaps it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn part(&self, start: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }

    /// The element `off` values in (a method, so that closures capture the whole wrapper).
    ///
    /// # Safety
    /// `off` lies within the buffer the pointer came from.
    pub unsafe fn at(&self, off: usize) -> *mut T {
        self.0.add(off)
    }
}

/// Runs `f(first_row, a_rows, b_rows)` over `rows` rows in parallel, each call on a contiguous run of rows: `a`
/// holds rows of `wa` elements and `b` rows of `wb` (`wb` = 0: none), and each call gets exactly its rows of
/// both, to write. The tasks run on candle's own CPU worker pool (`candle_core::utils::barrier_pool`, the one
/// its element-wise ops run on), not on rayon's: candle's workers spin for a while after each of its ops, so a
/// kernel sent to another pool in between competes with them for the cores (measured on the U-Net's group
/// norm, docs/benchmarks/image.md). Runs of about an eighth of a thread's share.
///
/// # Panics
/// When `a` or `b` is shorter than its rows.
pub fn par_rows_mut<A: Send, B: Send>(
    (a, wa): (&mut [A], usize),
    (b, wb): (&mut [B], usize),
    rows: usize,
    f: impl Fn(usize, &mut [A], &mut [B]) + Sync,
) {
    assert!(
        a.len() >= rows * wa && b.len() >= rows * wb,
        "par_rows_mut: {rows} rows of {wa} and {wb} in slices of {} and {}",
        a.len(),
        b.len()
    );
    let (pa, pb) = (Shared(a.as_mut_ptr()), Shared(b.as_mut_ptr()));
    candle_core::utils::barrier_pool().execute_chunked(rows, |r| {
        // SAFETY: `execute_chunked` hands out disjoint ranges of 0..rows, so the parts do not overlap; they lie
        // within `a` and `b` (asserted above), which stay mutably borrowed for the whole call.
        let (ra, rb) = unsafe {
            (
                pa.part(r.start * wa, r.len() * wa),
                pb.part(r.start * wb, r.len() * wb),
            )
        };
        f(r.start, ra, rb)
    });
}

/// Runs `f(first_row, rows_of_a)` over `rows` rows of `w` elements of `a`, one contiguous run per thread of
/// candle's worker pool (where [`par_rows_mut`] makes about eight runs per thread): for kernels with a fixed
/// cost per call, such as a matrix product that packs its right-hand side again in every call.
pub fn par_runs_mut<A: Send>(
    (a, w): (&mut [A], usize),
    rows: usize,
    f: impl Fn(usize, &mut [A]) + Sync,
) {
    assert!(
        a.len() >= rows * w,
        "par_runs_mut: {rows} rows of {w} in a slice of {}",
        a.len()
    );
    if rows == 0 {
        return;
    }
    let pool = candle_core::utils::barrier_pool();
    let runs = (pool.n_workers() + 1).min(rows);
    let per = rows.div_ceil(runs);
    let pa = Shared(a.as_mut_ptr());
    // One item per run (the pool hands out single items when there are this few, and runs nested calls inline).
    pool.execute_chunked(runs, |items| {
        for run in items {
            let r0 = run * per;
            if r0 >= rows {
                continue;
            }
            let n = per.min(rows - r0);
            // SAFETY: run `run` covers rows [run·per, run·per + n), disjoint between runs and within `a`
            // (asserted above), which stays mutably borrowed for the whole call.
            f(r0, unsafe { pa.part(r0 * w, n * w) })
        }
    });
}

/// A vector of `rows` rows of `w` values, written in parallel by `fill(first_row, run)` on runs of whole rows
/// ([`par_rows_mut`]) and never zero-filled.
///
/// # Safety
/// `fill` writes every element of each run it is given (the vector is read as initialised afterwards).
pub unsafe fn par_fill<T: Send>(
    rows: usize,
    w: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let len = rows * w;
    let mut out: Vec<T> = Vec::with_capacity(len);
    if len == 0 {
        return out;
    }
    par_rows_mut(
        (&mut out.spare_capacity_mut()[..len], w),
        (&mut [] as &mut [u8], 0),
        rows,
        |r0, run, _| fill(r0, run),
    );
    // SAFETY: the runs cover all `rows` rows of `w` elements and `fill` writes each one (the caller's contract).
    out.set_len(len);
    out
}

/// Runs `kernel(a_rows, b_rows, out_rows)` over `rows` rows in parallel ([`par_fill`]) and returns the
/// output: `a` has rows of `wa`, `b` rows of `wb` (or is empty, `wb` = 0), the output rows of `wo`; the kernel
/// must write every element of its output rows (the output is never zero-filled).
pub fn par_rows<T: Copy + Send + Sync>(
    (a, wa): (&[T], usize),
    (b, wb): (&[T], usize),
    wo: usize,
    rows: usize,
    kernel: impl Fn(&[T], &[T], &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    // SAFETY: every kernel writes each element of its output rows (this function's documented contract).
    unsafe {
        par_fill(rows, wo, |r0, o| {
            let n = o.len() / wo;
            let b = if wb == 0 {
                &[][..]
            } else {
                &b[r0 * wb..(r0 + n) * wb]
            };
            kernel(&a[r0 * wa..(r0 + n) * wa], b, o)
        })
    }
}

/// `dst[j·drs + i] = src[i·srs + j]` for i < `rows`, j < `cols`: a transposition between row-major matrices
/// with any row strides (`dst` uninitialised is fine: every element of the transposed block is written). In
/// f32 on a CPU with AVX it moves 8×8 blocks through registers (unpack, shuffle and lane permutes) and the
/// edges one value at a time; other types and CPUs one value at a time, in 8×8 tiles.
///
/// # Panics
/// When a matrix does not lie within its slice.
pub fn transpose<T: Copy + 'static>(
    (src, srs): (&[T], usize),
    (dst, drs): (&mut [MaybeUninit<T>], usize),
    (rows, cols): (usize, usize),
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        fits(src.len(), (rows, cols), (srs, 1)) && fits(dst.len(), (cols, rows), (drs, 1)),
        "transpose: [{rows}, {cols}] (row strides {srs}, {drs}) outside slices of {} and {}",
        src.len(),
        dst.len()
    );
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && is_x86_feature_detected!("avx")
    {
        // SAFETY: T is f32 (checked above), the CPU has AVX, both matrices lie within their slices (asserted).
        unsafe {
            transpose_f32_avx(
                src.as_ptr() as *const f32,
                srs,
                dst.as_mut_ptr() as *mut f32,
                drs,
                rows,
                cols,
            )
        };
        return;
    }
    for i0 in (0..rows).step_by(8) {
        for j0 in (0..cols).step_by(8) {
            for i in i0..(i0 + 8).min(rows) {
                for j in j0..(j0 + 8).min(cols) {
                    dst[j * drs + i].write(src[i * srs + j]);
                }
            }
        }
    }
}

/// [`transpose`] in f32 with 8×8 register blocks.
///
/// # Safety
/// The CPU supports AVX; `src` holds a `[rows, cols]` matrix with row stride `srs`, `dst` room for a `[cols,
/// rows]` one with row stride `drs`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose_f32_avx(
    src: *const f32,
    srs: usize,
    dst: *mut f32,
    drs: usize,
    rows: usize,
    cols: usize,
) {
    use std::arch::x86_64::*;
    let (rb, cb) = (rows / 8 * 8, cols / 8 * 8);
    for i0 in (0..rb).step_by(8) {
        for j0 in (0..cb).step_by(8) {
            let r = |k: usize| _mm256_loadu_ps(src.add((i0 + k) * srs + j0));
            let (r0, r1, r2, r3, r4, r5, r6, r7) = (r(0), r(1), r(2), r(3), r(4), r(5), r(6), r(7));
            // Pairs of rows interleaved, then quadruples, then the 128-bit halves exchanged.
            let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
            let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
            let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
            let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
            let (u0, u1) = (
                _mm256_shuffle_ps::<0x44>(t0, t2),
                _mm256_shuffle_ps::<0xEE>(t0, t2),
            );
            let (u2, u3) = (
                _mm256_shuffle_ps::<0x44>(t1, t3),
                _mm256_shuffle_ps::<0xEE>(t1, t3),
            );
            let (u4, u5) = (
                _mm256_shuffle_ps::<0x44>(t4, t6),
                _mm256_shuffle_ps::<0xEE>(t4, t6),
            );
            let (u6, u7) = (
                _mm256_shuffle_ps::<0x44>(t5, t7),
                _mm256_shuffle_ps::<0xEE>(t5, t7),
            );
            let w = |k: usize, v: __m256| _mm256_storeu_ps(dst.add((j0 + k) * drs + i0), v);
            w(0, _mm256_permute2f128_ps::<0x20>(u0, u4));
            w(1, _mm256_permute2f128_ps::<0x20>(u1, u5));
            w(2, _mm256_permute2f128_ps::<0x20>(u2, u6));
            w(3, _mm256_permute2f128_ps::<0x20>(u3, u7));
            w(4, _mm256_permute2f128_ps::<0x31>(u0, u4));
            w(5, _mm256_permute2f128_ps::<0x31>(u1, u5));
            w(6, _mm256_permute2f128_ps::<0x31>(u2, u6));
            w(7, _mm256_permute2f128_ps::<0x31>(u3, u7));
        }
    }
    // The edges: the last cols % 8 columns of every row, the last rows % 8 rows of the rest.
    for i in 0..rows {
        for j in (if i < rb { cb } else { 0 })..cols {
            *dst.add(j * drs + i) = *src.add(i * srs + j);
        }
    }
}

/// A strided f32 matrix: its values (from the first element on), row stride and column stride.
pub type Strided<'a> = (&'a [f32], (usize, usize));

/// Whether a `rows × cols` matrix with strides `(rs, cs)` lies within `len` values.
fn fits(len: usize, (rows, cols): (usize, usize), (rs, cs): (usize, usize)) -> bool {
    rows == 0 || cols == 0 || (rows - 1) * rs + (cols - 1) * cs < len
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// [`exp_f32`] against f64's exp on a dense grid of [−87, 88] (every 1/1024, and the ends): within 2 ulp
    /// (2.4e-7 relative).
    #[test]
    fn exp_f32_is_within_two_ulp() {
        let mut worst = (0f64, 0f32);
        for i in -87 * 1024..=88 * 1024 {
            let x = i as f32 / 1024.0;
            let want = (x as f64).exp();
            let err = (exp_f32(x) as f64 - want).abs() / want;
            if err > worst.0 {
                worst = (err, x);
            }
        }
        assert!(
            worst.0 < 2.4e-7,
            "worst relative error {} at {}",
            worst.0,
            worst.1
        );
        // Below the clamp the result is e^−87, not 0: negligible beside a softmax row's largest term, 1.
        assert!(exp_f32(-1e4) < 2e-38 && exp_f32(-1e4) >= 0.0);
    }

    /// [`tanh_f32`] and [`sigmoid_f32`] against f64's on a dense grid of [−20, 20] and on tiny arguments
    /// (where 1 − 2/(e^{2x} + 1) would cancel): tanh within 3e-7 relative, the sigmoid within 3e-7 relative
    /// down to x = −20 and 2e-7 absolute beyond; NaN stays NaN, ±∞ give ±1 and 0 / 1.
    #[test]
    fn tanh_and_sigmoid_match_f64() {
        let mut worst = (0f64, 0f32, "");
        let mut check = |x: f32| {
            let xd = x as f64;
            let t = (tanh_f32(x) as f64 - xd.tanh()).abs() / xd.tanh().abs().max(1e-300);
            let sd = 1.0 / (1.0 + (-xd).exp());
            let s = (sigmoid_f32(x) as f64 - sd).abs() / sd;
            for (e, name) in [(t, "tanh"), (s, "sigmoid")] {
                if x != 0.0 && e > worst.0 {
                    worst = (e, x, name);
                }
            }
        };
        for i in -20 * 4096..=20 * 4096 {
            check(i as f32 / 4096.0);
        }
        for k in 1..40 {
            check(0.5f32.powi(k));
            check(-(0.5f32.powi(k)));
        }
        assert!(
            worst.0 < 3e-7,
            "{} relative error {} at {}",
            worst.2,
            worst.0,
            worst.1
        );
        assert_eq!(tanh_f32(0.0), 0.0);
        assert!(tanh_f32(f32::NAN).is_nan() && sigmoid_f32(f32::NAN).is_nan());
        assert_eq!(
            (tanh_f32(f32::INFINITY), tanh_f32(f32::NEG_INFINITY)),
            (1.0, -1.0)
        );
        assert_eq!(
            (sigmoid_f32(f32::INFINITY), sigmoid_f32(-1e5)),
            (1.0, sigmoid_f32(-1e5))
        );
        assert!(sigmoid_f32(-1e5) < 1e-37);
    }

    /// [`par_rows_mut`] gives each call its first row's index and exactly its rows of both outputs: every row of
    /// each is written once with its own index (a shifted or overlapping run would leave a wrong index or a
    /// count other than one), for row counts below, at and above the pool's chunking.
    #[test]
    fn par_rows_mut_hands_out_disjoint_rows() {
        for rows in [0usize, 1, 7, 16, 1000] {
            let (wa, wb) = (3usize, 2usize);
            let mut a = vec![(usize::MAX, 0u32); rows * wa];
            let mut b = vec![(usize::MAX, 0u32); rows * wb];
            par_rows_mut((&mut a, wa), (&mut b, wb), rows, |r0, ra, rb| {
                assert_eq!(ra.len() / wa, rb.len() / wb);
                for (i, (ra, rb)) in ra.chunks_mut(wa).zip(rb.chunks_mut(wb)).enumerate() {
                    for v in ra.iter_mut().chain(rb.iter_mut()) {
                        *v = (r0 + i, v.1 + 1);
                    }
                }
            });
            for (x, w) in [(&a, wa), (&b, wb)] {
                for (r, row) in x.chunks(w).enumerate() {
                    assert!(
                        row.iter().all(|v| *v == (r, 1)),
                        "{rows} rows: row {r} is {row:?}"
                    );
                }
            }
        }
    }

    /// [`matmul_f32`], [`matmul_bias_f32`] and [`matmul_bias_onto_f32`] against the sums written out in f64:
    /// row-major and transposed (column-major) operands, one row, fewer rows than threads, many rows, an empty
    /// inner dimension (zeros, or the bias and base) and no columns.
    #[test]
    fn matmul_matches_the_written_out_sum() {
        let f = |i: usize, s: usize| (((i * 7919 + s) % 101) as f32 - 50.0) / 37.0;
        for (m, k, n) in [
            (1usize, 1usize, 1usize),
            (5, 3, 7),
            (1000, 72, 33),
            (3, 300, 2),
            (4, 0, 3),
            (6, 2, 0),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| f(i, 1)).collect();
            let b: Vec<f32> = (0..k * n).map(|i| f(i, 2)).collect();
            // a row-major [m, k] (strides (k, 1)) or stored transposed ([k, m] row-major: strides (1, m)).
            let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let want = |i: usize, j: usize| {
                (0..k)
                    .map(|l| a[i * k + l] as f64 * b[l * n + j] as f64)
                    .sum::<f64>()
            };
            for (name, aa, bb) in [
                ("a·b", (&a[..], (k, 1)), (&b[..], (n, 1))),
                ("a·(bᵀ)ᵀ", (&a[..], (k, 1)), (&bt[..], (1, k))),
                ("(aᵀ)ᵀ·b", (&at[..], (1, m)), (&b[..], (n, 1))),
            ] {
                // Without a bias, with one added to every row (matmul_bias_f32), and onto a base, scaled
                // (matmul_bias_onto_f32).
                let c: Vec<f32> = (0..n).map(|j| f(j, 3) * 4.0).collect();
                let base: Vec<f32> = (0..m * n).map(|i| f(i, 4) * 3.0).collect();
                for (bias, onto) in [
                    (None, None),
                    (Some(&c[..]), None),
                    (Some(&c[..]), Some(1.0f32)),
                    (Some(&c[..]), Some(std::f32::consts::FRAC_1_SQRT_2)),
                ] {
                    let y = match (bias, onto) {
                        (None, _) => matmul_f32(aa, bb, (m, k, n)),
                        (Some(c), None) => matmul_bias_f32(aa, bb, Some(c), (m, k, n)),
                        (Some(c), Some(s)) => {
                            matmul_bias_onto_f32(aa, bb, c, (&base, s), (m, k, n))
                        }
                    };
                    assert_eq!(y.len(), m * n, "{name}");
                    for i in 0..m {
                        for j in 0..n {
                            let mut w = want(i, j) + bias.map_or(0.0, |c| c[j] as f64);
                            if let Some(s) = onto {
                                w = s as f64 * (w + base[i * n + j] as f64);
                            }
                            let got = y[i * n + j] as f64;
                            assert!(
                                (got - w).abs() <= 1e-5 * (1.0 + w.abs()),
                                "{name} bias {} onto {onto:?} ({m}, {k}, {n}) [{i}, {j}]: {got} vs {w}",
                                bias.is_some()
                            );
                        }
                    }
                }
            }
        }
    }

    /// [`matmul_bias`] (the op, a transposed right-hand side read in place) against candle's product and
    /// broadcast addition; a bias of the wrong length is an error naming the shapes.
    #[test]
    fn matmul_bias_matches_candles_chain() {
        let dev = candle_core::Device::Cpu;
        let a = candle_core::Tensor::randn(0f32, 1.0, (37, 11), &dev).unwrap();
        let w = candle_core::Tensor::randn(0f32, 1.0, (5, 11), &dev).unwrap();
        let c = candle_core::Tensor::randn(0f32, 1.0, 5, &dev).unwrap();
        let want = a
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&c)
            .unwrap();
        let got = matmul_bias(&a, &w.t().unwrap(), &c).unwrap();
        let err = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(err.to_scalar::<f32>().unwrap() < 1e-5);
        let bad = candle_core::Tensor::zeros(4, candle_core::DType::F32, &dev).unwrap();
        let e = matmul_bias(&a, &w.t().unwrap(), &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a bias of 4"), "{e}");
    }

    /// [`gram_and_sums_f32`] against the written-out sums in f64, with runs of one row, runs that end inside
    /// the rows, one run, and no rows at all.
    #[test]
    fn gram_and_sums_match_the_written_out_sums() {
        let f = |i: usize, s: usize| (((i * 7919 + s) % 101) as f32 - 50.0) / 37.0;
        for (rows, m, n) in [
            (1usize, 1usize, 1usize),
            (50, 4, 6),
            (1000, 33, 17),
            (0, 3, 2),
        ] {
            let a: Vec<f32> = (0..rows * m).map(|i| f(i, 1)).collect();
            let b: Vec<f32> = (0..rows * n).map(|i| f(i, 2)).collect();
            for run_rows in [1usize, 7, 256, rows.max(1), rows + 5] {
                let (g, s) = gram_and_sums_f32(&a, &b, (rows, m, n), run_rows);
                assert_eq!((g.len(), s.len()), (m * n, m));
                for i in 0..m {
                    let ws: f64 = (0..rows).map(|r| a[r * m + i] as f64).sum();
                    assert!(
                        (s[i] as f64 - ws).abs() <= 1e-4 * (1.0 + ws.abs()),
                        "sum {i}"
                    );
                    for j in 0..n {
                        let w: f64 = (0..rows)
                            .map(|r| a[r * m + i] as f64 * b[r * n + j] as f64)
                            .sum();
                        let got = g[i * n + j] as f64;
                        assert!(
                            (got - w).abs() <= 1e-4 * (1.0 + w.abs()),
                            "({rows}, {m}, {n}) runs of {run_rows} [{i}, {j}]: {got} vs {w}"
                        );
                    }
                }
            }
        }
    }

    /// [`bmm_f32`] against [`matmul_f32`] item by item (to rounding: the two split gemm's work differently), with
    /// a transposed right-hand side, a batch of one and an empty inner dimension.
    #[test]
    fn batched_matmul_matches_item_by_item() {
        let f = |i: usize| (((i * 7919) % 101) as f32 - 50.0) / 37.0;
        for (batch, m, k, n) in [
            (1usize, 3usize, 4usize, 5usize),
            (37, 20, 16, 20),
            (5, 1, 7, 1),
            (3, 4, 0, 2),
        ] {
            let a: Vec<f32> = (0..batch * m * k).map(f).collect();
            let b: Vec<f32> = (0..batch * n * k).map(|i| f(i + 3)).collect();
            // b stored as [batch, n, k] and read transposed: strides (n·k, 1, k).
            let y = bmm_f32((&a, (m * k, k, 1)), (&b, (n * k, 1, k)), (batch, m, k, n));
            assert_eq!(y.len(), batch * m * n);
            for i in 0..batch {
                let want = matmul_f32(
                    (&a[i * m * k..], (k, 1)),
                    (&b[i * n * k..], (1, k)),
                    (m, k, n),
                );
                for (got, w) in y[i * m * n..(i + 1) * m * n].iter().zip(&want) {
                    let tol = 1e-5 * (1.0 + w.abs());
                    assert!((got - w).abs() <= tol, "item {i} of {batch}: {got} vs {w}");
                }
            }
        }
    }

    /// [`par_rows`] hands each task whole rows of both inputs with the matching output rows (more rows than one
    /// task holds, rows wider than a task, an empty second input), and [`crate::simd_fn!`](crate::simd_fn)'s two
    /// builds agree.
    /// [`transpose`] moves every value to its place and writes nothing outside the block: f32 (register
    /// blocks and edges) and f64 (one value at a time), sizes below, at and across multiples of 8, row
    /// strides longer than the rows.
    #[test]
    fn transpose_moves_every_value() {
        fn check<T: Copy + PartialEq + std::fmt::Debug + 'static>(
            of: impl Fn(usize) -> T,
            fill: T,
        ) {
            for &(rows, cols, srs, drs) in &[
                (1usize, 1usize, 1usize, 1usize),
                (8, 8, 8, 8),
                (3, 5, 7, 4),
                (16, 24, 24, 16),
                (19, 13, 20, 23),
                (40, 9, 9, 41),
            ] {
                let src: Vec<T> = (0..rows * srs).map(&of).collect();
                let mut dst = vec![MaybeUninit::new(fill); cols * drs];
                transpose((&src, srs), (&mut dst, drs), (rows, cols));
                for j in 0..cols {
                    for k in 0..drs {
                        // SAFETY: every element was initialised with `fill`.
                        let got = unsafe { dst[j * drs + k].assume_init() };
                        let want = if k < rows { src[k * srs + j] } else { fill };
                        assert_eq!(
                            got, want,
                            "{rows}×{cols} (strides {srs}, {drs}) at ({j}, {k})"
                        );
                    }
                }
            }
        }
        check(|i| i as f32, -1.0f32);
        check(|i| i as f64 + 0.5, -1.0f64);
    }

    /// The CPU softmax (in place, plain and vector builds: AVX-512 where the CPU has it, else AVX2) equals
    /// candle's on rows of every length 1..=70 (both lane widths and all their remainders), with scales and
    /// offsets that put the exponents far from 0, to 1e-6 relative; so do [`exp_rows`]' exponentials times their
    /// inverse sums.
    #[test]
    fn softmax_rows_match_candles() {
        let dev = candle_core::Device::Cpu;
        let mut rng = crate::NoiseRng::new(11);
        for n in 1..=70 {
            for (scale, offset) in [(0.25, 0.0), (1.0, 300.0), (3.0, -50.0)] {
                let x = rng
                    .randn(&[3, 5, n], &dev)
                    .unwrap()
                    .affine(4.0, offset)
                    .unwrap();
                let want = candle_nn::ops::softmax_last_dim(&(&x * scale).unwrap()).unwrap();
                for (fast, unnormalised) in [
                    (false, false),
                    (avx2(), false),
                    (false, true),
                    (avx2(), true),
                ] {
                    let mut rows = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    if unnormalised {
                        // exp_rows and its inverse sums, applied here.
                        let mut inv = vec![0f32; 15];
                        exp_rows(fast, &mut rows, n, scale as f32, &mut inv);
                        for (r, f) in rows.chunks_mut(n).zip(&inv) {
                            r.iter_mut().for_each(|v| *v *= f);
                        }
                    } else {
                        softmax_rows(fast, &mut rows, n, scale as f32);
                    }
                    let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let r = rows
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max)
                        / want.iter().fold(0f32, |m, v| m.max(v.abs()));
                    assert!(
                        r < 1e-6,
                        "n {n} scale {scale} offset {offset} avx2 {fast} unnormalised {unnormalised}: {r}"
                    );
                }
            }
        }
    }

    /// [`sum_middle_f32`] against f64 sums of small integers (exact in f32 too, whatever the order): one run,
    /// several with a short last one, more columns than a block, no rows, no items, one column.
    #[test]
    fn sum_middle_matches_exact_sums() {
        for (o, r, i, run) in [
            (1usize, 5usize, 3usize, 8usize),
            (4, 2500, 32, 1024),
            (3, 7, 5000, 2),
            (1, 4, 9000, 1024),
            (2, 0, 3, 4),
            (0, 3, 3, 4),
            (5, 3, 1, 1),
        ] {
            let x: Vec<f32> = (0..o * r * i)
                .map(|k| ((k * 7919) % 61) as f32 - 30.0)
                .collect();
            let want: Vec<f32> = (0..o * i)
                .map(|k| {
                    let (a, c) = (k / i, k % i);
                    (0..r).map(|b| x[(a * r + b) * i + c] as f64).sum::<f64>() as f32
                })
                .collect();
            assert_eq!(
                sum_middle_f32(&x, (o, r, i), run),
                want,
                "[{o}, {r}, {i}] runs of {run}"
            );
        }
    }

    /// [`scaled`] against candle's `affine`: bit-identical (one product per value) for lengths below, at and
    /// above whole rows of 4,096, on a contiguous tensor and (candle's own path) a transposed view.
    #[test]
    fn scaled_equals_candles_affine() {
        let dev = candle_core::Device::Cpu;
        let mut rng = crate::NoiseRng::new(4);
        for n in [0usize, 1, 4095, 4096, 3 * 4096 + 17] {
            let t = rng.randn(&[n], &dev).unwrap();
            let (a, b) = (scaled(&t, 0.7).unwrap(), t.affine(0.7, 0.0).unwrap());
            assert_eq!(
                a.to_vec1::<f32>().unwrap(),
                b.to_vec1::<f32>().unwrap(),
                "{n}"
            );
        }
        let t = rng.randn(&[70, 90], &dev).unwrap().t().unwrap();
        let (a, b) = (scaled(&t, -1.5).unwrap(), t.affine(-1.5, 0.0).unwrap());
        assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn par_rows_covers_every_row_once() {
        crate::simd_fn! {
            fn sum_rows(a: &[f64], b: &[f64], o: &mut [MaybeUninit<f64>], wa: usize, wb: usize) {
                for (i, o) in o.iter_mut().enumerate() {
                    let bs: f64 = if wb == 0 { 0.0 } else { b[i * wb..(i + 1) * wb].iter().sum() };
                    o.write(a[i * wa..(i + 1) * wa].iter().sum::<f64>() + bs);
                }
            }
        }
        for (rows, wa, wb) in [
            (0usize, 3usize, 0usize),
            (5, 3, 2),
            (70_000, 1, 1),
            (3, 100_000, 0),
        ] {
            let a: Vec<f64> = (0..rows * wa).map(|i| (i % 97) as f64).collect();
            let b: Vec<f64> = (0..rows * wb).map(|i| (i % 13) as f64).collect();
            let want: Vec<f64> = (0..rows)
                .map(|r| {
                    a[r * wa..(r + 1) * wa].iter().sum::<f64>()
                        + b[r * wb..(r + 1) * wb].iter().sum::<f64>()
                })
                .collect();
            for fast in [false, avx2()] {
                let got = par_rows((&a, wa), (&b, wb), 1, rows, |a, b, o| {
                    sum_rows(fast, a, b, o, wa, wb)
                });
                assert_eq!(got, want, "{rows} rows of {wa} and {wb}");
            }
        }
    }
}
