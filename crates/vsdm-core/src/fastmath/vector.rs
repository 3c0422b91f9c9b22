//! Branch-free f32 transcendentals, the run-time choice of vector builds ([`crate::simd_fn!`]) and the
//! softmax rows built on them.

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
