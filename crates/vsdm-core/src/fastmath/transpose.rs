//! Transpositions between strided row-major matrices (8×8 register blocks in f32 with AVX).

use std::mem::MaybeUninit;

use super::fits;

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
