//! The workspace's CPU kernels' building blocks, re-exported here from their files:
//!
//! - `vector`: branch-free f32 transcendentals. candle's CPU backend evaluates `exp`, `tanh` and the logistic
//!   function with the C library's scalar `expf` / `tanhf`, one element at a time; these are polynomials, so a
//!   loop of them compiles to vector instructions. [`crate::simd_fn!`](crate::simd_fn) builds such a loop
//!   plainly and for AVX2 + FMA (and AVX-512F) and picks the build at run time ([`avx2`]); the softmax rows
//!   ([`softmax_rows`], [`exp_rows`]) are built on them.
//! - `par`: row drivers on candle's own worker pool ([`par_rows_mut`], [`par_rows`], [`par_fill`]) that write
//!   outputs they never zero-fill.
//! - `transpose`: [`transpose()`] between strided row-major matrices.
//! - `products`: matrix products as single-threaded gemm calls, one per run of rows on the pool ([`matmul`],
//!   [`matmul_bias`], [`bmm_f32`], [`gemm_into`]), and the row and column sums that go with them.
//! - `tensor`: contiguous f32 CPU values read in place ([`with_cpu_f32`]) and [`scaled`].
//!
//! The time-series network, the U-Net's CPU convolutions, group norm and attention, and AdamW use them.

mod par;
mod products;
mod tensor;
#[cfg(test)]
mod tests;
mod transpose;
mod vector;

pub use par::*;
pub use products::*;
pub use tensor::*;
pub use transpose::*;
pub use vector::*;

/// Whether a `rows × cols` matrix with strides `(rs, cs)` lies within `len` values.
fn fits(len: usize, (rows, cols): (usize, usize), (rs, cs): (usize, usize)) -> bool {
    rows == 0 || cols == 0 || (rows - 1) * rs + (cols - 1) * cs < len
}
