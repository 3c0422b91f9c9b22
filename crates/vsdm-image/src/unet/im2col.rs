//! Stride-1 convolutions as matrix products: one patch matrix and one product, or products on shifted views.
//!
//! candle 0.11.1's CPU `conv2d` gathers its patches element by element inside each tile (and transposes the input
//! to NHWC first, single-threaded), which at the tiny network's 32 channels runs at about 23 GFLOP/s on this
//! project's machine (`examples/conv_probe.rs`). Here a convolution and its weight gradient are matrix
//! products in one of two schemes:
//!
//! - Channel-major patches ([`im2col`], `[C·k·k, B·H'·W']`, one row per (channel, kernel offset), copied as
//!   slices): W `[C_out, C·k·k]` · cols, then the batch moved in front; the weight gradient dy `[C_out, B·H'·W']`
//!   · colsᵀ. Used on CUDA under `--conv patch` ([`super::fastconv::ConvBackward::Patch`]) and on the CPU for
//!   f16 and bf16 tensors (candle's products). On CUDA the matrix comes from this crate's own kernel
//!   (`im2col.cu`, compiled to PTX by the build script in a `cuda` build): candle's CUDA `im2col` took 35–43% of
//!   a paper-scale training step on an H200. It first ran on an H100 on 2026-12-05 (`check-device`: ≤ 2.0e-6 in
//!   f32) and is the default since; its index arithmetic is tested on the CPU (`tests/im2col_kernel.rs` compiles
//!   the same source as C++ and runs every block and thread against a direct definition), and `vsdm-image --cuda
//!   --conv patch check-device` compares it with the CPU.
//! - Shifted rows, no patch matrix (`ShiftedOp`; on the CPU in f32 and f64,
//!   `shifted_rows`): the input is copied once, zero-padded and channels last
//!   `[B, H+2p, W+2p, C]`. Read as a matrix with row stride C, its row q holds the k·C values of k horizontally
//!   adjacent pixels from padded position q on, which is the part of a receptive field in one kernel row; so
//!   the output over the padded width (`oh` rows of `W+2p` positions, the last k − 1 of each row dropped
//!   afterwards) is the sum over the k kernel rows of that matrix shifted by one padded row each, read in place
//!   (rows overlapping), times the weight's k·C rows for that kernel row — k gemm calls accumulating into one
//!   output, channels last, moved back to `[B, C_out, H', W']` by a tiled transposition that drops the extra
//!   columns. The weight gradient is the same views transposed times dy channels last over the padded width
//!   (zeros in the dropped columns). With the channel count as the product's short side these run 2–3.5× faster
//!   than the channel-major products at 32–96 channels (`examples/mm_probe.rs`); against a position-major patch
//!   matrix (`[B·H'·W', k·k·C]`, this crate's CPU layout from 2026-12-05 to 2026-12-06) they save writing and
//!   reading k·k copies of the input, at the cost of (k − 1)/(W + 2p) of the product's rows
//!   (`examples/implicit_probe.rs`, docs/benchmarks/image.md).

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, WithDType};
use vsdm_core::fastmath::{gemm_into, par_fill, par_rows_mut, par_runs_mut, transpose, GemmFloat};

/// The output size along an axis of `n` input pixels of a stride-1 convolution with a `k`-wide kernel and zero
/// padding `p` (callers check that the kernel fits, [`check_fit`]).
fn out_size(n: usize, k: usize, p: usize) -> usize {
    n + 2 * p + 1 - k
}

/// The patch matrix of a stride-1 convolution with a `k×k` kernel and zero padding `p`.
struct Im2Col {
    k: usize,
    p: usize,
}

impl Im2Col {
    fn out_size(&self, n: usize) -> usize {
        out_size(n, self.k, self.p)
    }

    /// The patches in the layout `[C·k·k, B, H'·W']`, so that one matrix product covers the whole batch.
    fn fill<T: WithDType + Copy + Send + Sync>(
        &self,
        x: &[T],
        (b, c, h, w): (usize, usize, usize, usize),
        (oh, ow): (usize, usize),
    ) -> Vec<T> {
        let (k, p) = (self.k, self.p);
        let n = oh * ow;
        let mut cols = vec![T::zero(); c * k * k * b * n];
        // One task per row (channel, kernel offset): each holds the whole batch's positions.
        par_rows_mut(
            (&mut cols, b * n),
            (&mut [] as &mut [u8], 0),
            c * k * k,
            |r0, blocks, _| {
                for (i, block) in blocks.chunks_mut(b * n).enumerate() {
                    let r = r0 + i;
                    let (ci, ki, kj) = (r / (k * k), (r / k) % k, r % k);
                    // Output columns whose input column x + kj − p lies inside the image.
                    let x0 = p.saturating_sub(kj);
                    let x1 = ow.min((w + p).saturating_sub(kj));
                    if x0 >= x1 {
                        continue;
                    }
                    for (bi, row) in block.chunks_mut(n).enumerate() {
                        let plane = &x[(bi * c + ci) * h * w..][..h * w];
                        for y in 0..oh {
                            let iy = y + ki;
                            if iy < p || iy - p >= h {
                                continue;
                            }
                            let src = &plane[(iy - p) * w + x0 + kj - p..][..x1 - x0];
                            row[y * ow + x0..y * ow + x1].copy_from_slice(src);
                        }
                    }
                }
            },
        );
        cols
    }
}

/// `$body` (a function of `$x`, the contiguous slice of a float CPU storage `$s` with layout `$l`, generic over
/// the float type) wrapped back into a storage of the same type; an error naming `$name` for a non-contiguous
/// layout or a non-float type.
macro_rules! map_floats {
    ($s:expr, $l:expr, $name:expr, |$x:ident| $body:expr) => {{
        let (start, end) = $l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: input not contiguous", $name)))?;
        match $s {
            CpuStorage::F32(v) => {
                let $x = &v[start..end];
                CpuStorage::F32($body)
            }
            CpuStorage::F64(v) => {
                let $x = &v[start..end];
                CpuStorage::F64($body)
            }
            CpuStorage::F16(v) => {
                let $x = &v[start..end];
                CpuStorage::F16($body)
            }
            CpuStorage::BF16(v) => {
                let $x = &v[start..end];
                CpuStorage::BF16($body)
            }
            _ => candle_core::bail!("{}: floating-point inputs only", $name),
        }
    }};
}

/// The geometry of a stride-1 `k×k` convolution with zero padding `p` over `[B, C, H, W]` inputs in the
/// shifted-rows scheme (module documentation): the input padded channels last `[B, H+2p, W+2p, C]`, the
/// output over the padded width, `oh` rows of `wp` positions per image, of which the first `ow` are outputs.
#[derive(Debug, Clone, Copy)]
struct Shifted {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    p: usize,
}

impl Shifted {
    fn hp(&self) -> usize {
        self.h + 2 * self.p
    }
    fn wp(&self) -> usize {
        self.w + 2 * self.p
    }
    fn oh(&self) -> usize {
        out_size(self.h, self.k, self.p)
    }
    fn ow(&self) -> usize {
        out_size(self.w, self.k, self.p)
    }
    /// Values of one padded image.
    fn image(&self) -> usize {
        self.hp() * self.wp() * self.c
    }
    /// Output rows per image over the padded width.
    fn ext(&self) -> usize {
        self.oh() * self.wp()
    }
    /// The padded input, `[B·(H+2p) + 1, (W+2p)·C]` ([`channels_last_padded`]): the last row is slack for
    /// the last image's last k − 1 overlapping reads, which land in dropped columns.
    fn pad<T: WithDType>(&self, x: &[T]) -> Vec<T> {
        let (p, dims) = (self.p, (self.b, self.c, self.h, self.w));
        channels_last_padded(x, dims, (p, p), (p, p), 1)
    }
}

/// `[B, C, H, W]` → channels last with zeros around, `[B, top + H + bottom, left + W + right, C]`, plus `slack`
/// rows of zeros at the end (each of `(left + W + right)·C` values). In parallel over rows; each input row a
/// `[C, W]` → `[W, C]` transposition ([`transpose`]: 8×8 register blocks in f32).
fn channels_last_padded<T: WithDType>(
    x: &[T],
    (b, c, h, w): (usize, usize, usize, usize),
    (top, bottom): (usize, usize),
    (left, right): (usize, usize),
    slack: usize,
) -> Vec<T> {
    let (hp, wp) = (top + h + bottom, left + w + right);
    let zero = |d: &mut [MaybeUninit<T>]| {
        for e in d {
            e.write(T::zero());
        }
    };
    // SAFETY: every row is written whole: zeros, or zeros around the input row's w·c values.
    unsafe {
        par_fill(b * hp + slack, wp * c, |r0, rows| {
            for (i, row) in rows.chunks_mut(wp * c).enumerate() {
                let (bi, yy) = ((r0 + i) / hp, (r0 + i) % hp);
                if bi >= b || yy < top || yy >= top + h {
                    zero(row);
                    continue;
                }
                let (head, rest) = row.split_at_mut(left * c);
                let (mid, tail) = rest.split_at_mut(w * c);
                zero(head);
                zero(tail);
                let src = &x[bi * c * h * w + (yy - top) * w..];
                transpose((src, h * w), (mid, c), (c, w));
            }
        })
    }
}

/// What a convolution's value gets on the way out of the shifted-row products, (y + bias + skip) · scale: a
/// layer's bias (per output channel, or per image and output channel) and a residual block's skip connection
/// and rescaling, added in the same order and with the same roundings as candle's ops would
/// (`broadcast_add`, `+`, `* scale`), in the pass that moves the output back to channels first.
#[derive(Debug, Clone, Copy)]
struct Epilogue<'a, T> {
    /// `[C_out]` or `[B, C_out]`.
    bias: &'a [T],
    /// `[B, C_out, H', W']`.
    skip: Option<&'a [T]>,
    scale: Option<T>,
}

/// `[B, oh·wp, C]` (rows over a padded width `wp`) → `[B, C, oh, ow]`, the columns from `ow` on dropped, and
/// the epilogue applied. In parallel over (image, channel) planes; for each output row, the planes of a run
/// that belong to one image take an `[ow, channels]` → `[channels, ow]` transposition ([`transpose`]), then
/// the epilogue while the row is in cache.
fn channels_first_cropped<T: WithDType>(
    y: &[T],
    (b, c): (usize, usize),
    (oh, ow, wp): (usize, usize, usize),
    epi: Option<Epilogue<T>>,
) -> Vec<T> {
    let plane = oh * ow;
    // SAFETY: each run's planes are written whole, every (row, column) < (oh, ow) of each, before the epilogue
    // reads them.
    unsafe {
        par_fill(b * c, plane, |r0, planes| {
            let n = planes.len() / plane.max(1);
            let mut i = 0;
            while i < n {
                let (bi, c0) = ((r0 + i) / c, (r0 + i) % c);
                let g = (c - c0).min(n - i);
                let src = &y[bi * oh * wp * c..][..oh * wp * c];
                let dst = &mut planes[i * plane..(i + g) * plane];
                for yy in 0..oh {
                    transpose(
                        (&src[yy * wp * c + c0..], c),
                        (&mut dst[yy * ow..], plane),
                        (ow, g),
                    );
                    let Some(e) = epi else { continue };
                    for j in 0..g {
                        let ch = bi * c + c0 + j;
                        let bias = e.bias[if e.bias.len() == c { c0 + j } else { ch }];
                        let row = &mut dst[j * plane + yy * ow..][..ow];
                        let skip = e.skip.map(|s| &s[ch * plane + yy * ow..][..ow]);
                        for (x, v) in row.iter_mut().enumerate() {
                            let mut t = v.assume_init() + bias;
                            if let Some(s) = skip {
                                t += s[x];
                            }
                            if let Some(k) = e.scale {
                                t *= k;
                            }
                            v.write(t);
                        }
                    }
                }
                i += g;
            }
        })
    }
}

/// The `[cols, rows]` transposition of the `[rows, cols]` matrix at `src` with row stride `srs`, on this thread.
fn transposed<T: WithDType>((src, srs): (&[T], usize), (rows, cols): (usize, usize)) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(rows * cols);
    transpose(
        (src, srs),
        (&mut v.spare_capacity_mut()[..rows * cols], rows),
        (rows, cols),
    );
    // SAFETY: the transposition wrote every value of the `[cols, rows]` block.
    unsafe { v.set_len(rows * cols) };
    v
}

/// A new vector of `rows` rows of `w` values, one run of rows per thread of candle's pool, each run cut where
/// a unit of `per_unit` rows ends: `f(dst, unit, first, m)` writes the `m` rows at `dst`, rows `first..first
/// + m` of unit `unit`, whole.
///
/// # Safety
/// `f` writes every value of the rows it is given.
unsafe fn par_units<T: Send>(
    rows: usize,
    per_unit: usize,
    w: usize,
    f: impl Fn(*mut T, usize, usize, usize) + Sync,
) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(rows * w);
    par_runs_mut(
        (&mut out.spare_capacity_mut()[..rows * w], w),
        rows,
        |r0, o| {
            let end = r0 + o.len() / w;
            let mut r = r0;
            while r < end {
                let (unit, first) = (r / per_unit, r % per_unit);
                let m = (per_unit - first).min(end - r);
                f(o[(r - r0) * w..].as_mut_ptr() as *mut T, unit, first, m);
                r += m;
            }
        },
    );
    // SAFETY: the runs cover all rows, each written whole by `f` (the caller's contract).
    unsafe { out.set_len(rows * w) };
    out
}

/// The convolution's value over the padded width, `[B·oh·wp, C_out]`: for each kernel row i, the padded
/// input read in place as a matrix whose row q is the k·C values from position q + i·wp on (rows overlapping,
/// stride C), times the weight's rows for kernel row i (`wm` `[k·k·C, C_out]`, rows ordered (kernel row,
/// kernel column, channel)), summed by gemm's accumulation: k gemm calls per image and run of rows.
fn shifted_forward<T: WithDType + GemmFloat>(xp: &[T], wm: &[T], g: Shifted, co: usize) -> Vec<T> {
    let (ext, img, kc, wp) = (g.ext(), g.image(), g.k * g.c, g.wp());
    assert!(
        xp.len() >= g.b * img + (g.k - 1) * g.c && wm.len() == g.k * kc * co,
        "shifted convolution: padded input of {} values or weight of {} for {g:?}, {co} output channels",
        xp.len(),
        wm.len()
    );
    // SAFETY: row q0 + m − 1 of kernel row i reads up to value (ext − 1 + (k−1)·wp)·C + k·C − 1 =
    // (hp·wp + k − 1)·C − 1 past its image's start: inside the next image or the slack row (asserted above);
    // the weight's rows i·k·C.. lie within wm; the first call writes the m output rows whole, the others add.
    unsafe {
        par_units(g.b * ext, ext, co, |dst, bi, q0, m| {
            for i in 0..g.k {
                gemm_into(
                    dst,
                    (xp.as_ptr().add(bi * img + (q0 + i * wp) * g.c), (g.c, 1)),
                    (wm.as_ptr().add(i * kc * co), (co, 1)),
                    (m, kc, co),
                    i > 0,
                )
            }
        })
    }
}

/// The weight gradient in the shifted-rows scheme, `[k·k·C, C_out]` (rows ordered as [`shifted_forward`]'s
/// weight): for kernel row i, the transposed shifted view of the padded input times the output gradient over
/// the padded width (`[oh·wp, C_out]` per image, zeros in the dropped columns: image bi's rows start at
/// `dyp[base + bi·stride]`), summed over the images by gemm's accumulation: B gemm calls per kernel row and
/// run of rows.
fn shifted_weight_grad<T: WithDType + GemmFloat>(
    xp: &[T],
    (dyp, base, stride): (&[T], usize, usize),
    g: Shifted,
    co: usize,
) -> Vec<T> {
    let (ext, img, kc, wp) = (g.ext(), g.image(), g.k * g.c, g.wp());
    assert!(
        g.b > 0
            && xp.len() >= g.b * img + (g.k - 1) * g.c
            && stride >= ext * co
            && dyp.len() >= base + (g.b - 1) * stride + ext * co,
        "shifted weight gradient: padded input of {} values or gradient of {} (from {base}, images {stride} \
         apart) for {g:?}, {co} output channels",
        xp.len(),
        dyp.len()
    );
    // SAFETY: as in shifted_forward (the same values, read transposed); image bi's gradient rows lie within
    // dyp (asserted above); the first image's call writes the m rows whole (b ≥ 1), the others add.
    unsafe {
        par_units(g.k * kc, kc, co, |dst, i, j0, m| {
            for bi in 0..g.b {
                gemm_into(
                    dst,
                    (xp.as_ptr().add(bi * img + i * wp * g.c + j0), (1, g.c)),
                    (dyp.as_ptr().add(base + bi * stride), (co, 1)),
                    (m, ext, co),
                    bi > 0,
                )
            }
        })
    }
}

/// The weight `[co, c, k, k]` (for the input gradient, `[c, co, k, k]` with its kernel offsets reversed) as
/// the shifted-rows products take it, `[k·k·c, co]`, rows ordered (kernel row, kernel column, input channel).
fn weight_rows<T: WithDType>(y: &[T], (c, co, k): (usize, usize, usize), flip: bool) -> Vec<T> {
    let kk = k * k;
    let mut wm = vec![T::zero(); y.len()];
    let mut row = |ij: usize, ch: usize, v: &[T]| {
        wm[(ij * c + ch) * co..][..co].copy_from_slice(v);
    };
    if flip {
        for ch in 0..c {
            // This input channel's `[co, kk]` → `[kk, co]`.
            let t = transposed((&y[ch * co * kk..], kk), (co, kk));
            for (ij, v) in t.chunks(co).enumerate() {
                row(kk - 1 - ij, ch, v);
            }
        }
    } else {
        // `[co, c·kk]` → `[c·kk, co]`, rows (channel, kernel offset).
        let t = transposed((y, c * kk), (co, c * kk));
        for (r, v) in t.chunks(co).enumerate() {
            row(r % kk, r / kk, v);
        }
    }
    wm
}

/// [`shifted_weight_grad`]'s `[k·k·c, co]` as a weight gradient `[co, c, k, k]`.
fn weight_grad_layout<T: WithDType>(gm: &[T], (c, co, k): (usize, usize, usize)) -> Vec<T> {
    // `[k·k·c, co]` → `[co, k·k·c]`, then each output channel's `[k·k, c]` → `[c, k·k]`.
    let kk = k * k;
    let t = transposed((gm, co), (kk * c, co));
    let mut dw: Vec<T> = Vec::with_capacity(gm.len());
    for (o, dst) in dw.spare_capacity_mut()[..gm.len()]
        .chunks_mut(c * kk)
        .enumerate()
    {
        transpose((&t[o * kk * c..], c), (dst, kk), (kk, c));
    }
    // SAFETY: each output channel's c·k·k values were written by its transposition.
    unsafe { dw.set_len(gm.len()) };
    dw
}

/// Both gradients of a "same" convolution (2p = k − 1) in the shifted-rows scheme from one channels-last
/// copy of dy: padded by k − 1 − p = p for the input gradient's products, its rows are `W + 2p` positions
/// wide, the padded input's width, so read from its p-th row and column on, each image's `oh` rows of
/// `W + 2p` values are dy over the padded width with zeros in the dropped columns (a row's right padding and
/// the next row's left), the weight gradient's operand — which [`ShiftedOp::WeightGrad`] would otherwise make
/// as a second copy of dy. The same products on the same values as the two passes apart, so the same bits.
/// x `[B, C, H, W]`, dy `[B, C_out, H, W]`, w `[C_out, C, k, k]`; returns (dx, dW).
fn shifted_gradients<T: WithDType + GemmFloat>(
    x: &[T],
    dy: &[T],
    w: &[T],
    g: Shifted,
    co: usize,
) -> (Vec<T>, Vec<T>) {
    let (k, p, c) = (g.k, g.p, g.c);
    assert!(
        2 * p + 1 == k,
        "shared gradient copy: padding {p} with a {k}×{k} kernel"
    );
    // The input gradient: dy convolved with W's channels swapped and kernel flipped, padding k − 1 − p = p.
    let gi = Shifted { c: co, ..g };
    let dyp = gi.pad(dy);
    let dx = shifted_forward(&dyp, &weight_rows(w, (co, c, k), true), gi, c);
    let dx = channels_first_cropped(&dx, (g.b, c), (gi.oh(), gi.ow(), gi.wp()), None);
    let base = (p * gi.wp() + p) * co;
    let gm = shifted_weight_grad(&g.pad(x), (&dyp, base, gi.image()), g, co);
    (dx, weight_grad_layout(&gm, (c, co, k)))
}

/// The shifted-rows scheme's three passes on CPU f32 or f64 tensors, no graph recorded ([`ShiftedOp::apply`]):
/// [`conv2d`]'s value on (x `[B, C, H, W]`, W `[C_out, C, k, k]`), [`conv2d_input_grad`] on (dy, W) and
/// [`conv2d_weight_grad`] on (x, dy `[B, C_out, H', W']`), W's gradient `[C_out, C, k, k]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShiftedOp {
    Conv {
        p: usize,
    },
    /// [`conv2d_input_grad`] on (dy, W): the convolution of dy with W's channels swapped and kernel flipped,
    /// padding k − 1 − p, the flip made while the weight is laid out for the products.
    InputGrad {
        p: usize,
    },
    WeightGrad {
        k: usize,
        p: usize,
    },
}

impl ShiftedOp {
    fn run<T: WithDType + GemmFloat>(
        self,
        x: &[T],
        y: &[T],
        g: Shifted,
        co: usize,
        epi: Option<Epilogue<T>>,
    ) -> Vec<T> {
        let (k, c) = (g.k, g.c);
        match self {
            Self::Conv { .. } | Self::InputGrad { .. } => {
                let flip = matches!(self, Self::InputGrad { .. });
                let out = shifted_forward(&g.pad(x), &weight_rows(y, (c, co, k), flip), g, co);
                channels_first_cropped(&out, (g.b, co), (g.oh(), g.ow(), g.wp()), epi)
            }
            Self::WeightGrad { .. } => {
                let (oh, ow, wp) = (g.oh(), g.ow(), g.wp());
                let dyp = channels_last_padded(y, (g.b, co, oh, ow), (0, 0), (0, wp - ow), 0);
                let gm = shifted_weight_grad(&g.pad(x), (&dyp, 0, g.ext() * co), g, co);
                weight_grad_layout(&gm, (c, co, k))
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Conv { .. } => "shifted-conv",
            Self::InputGrad { .. } => "shifted-input-grad",
            Self::WeightGrad { .. } => "shifted-weight-grad",
        }
    }

    /// The pass on CPU f32 or f64 tensors of one type, no graph recorded: x `[B, C, H, W]` (dy for the input
    /// gradient) and y, the weight (`[C_out, C, k, k]`; `[C, C_out, k, k]` for the input gradient, whose
    /// output has the weight's input channels) or the output gradient `[B, C_out, H', W']`; for the value, the
    /// epilogue's bias, skip and scale ([`Epilogue`], checked by the caller).
    fn apply(
        self,
        x: &Tensor,
        y: &Tensor,
        epi: Option<(&Tensor, Option<&Tensor>, Option<f64>)>,
    ) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let (d0, d1, d2, _) = y.dims4()?;
        let (co, k, p) = match self {
            Self::Conv { p } => (d0, d2, p),
            Self::InputGrad { p } if p < d2 => (d1, d2, d2 - 1 - p),
            Self::InputGrad { p } => {
                candle_core::bail!(
                    "{}: padding {p} must be below the kernel size {d2}",
                    self.name()
                )
            }
            Self::WeightGrad { k, p } => (d1, k, p),
        };
        let g = Shifted { b, c, h, w, k, p };
        let shape = match self {
            Self::Conv { .. } | Self::InputGrad { .. } => Shape::from((b, co, g.oh(), g.ow())),
            Self::WeightGrad { .. } => Shape::from((co, c, k, k)),
        };
        let (x, y) = (x.contiguous()?, y.contiguous()?);
        let epi = match epi {
            Some((bias, skip, scale)) => Some((
                bias.contiguous()?,
                skip.map(|s| s.contiguous()).transpose()?,
                scale,
            )),
            None => None,
        };
        let epi = epi.as_ref().map(|(b, s, k)| (b, s.as_ref(), *k));
        match x.dtype() {
            DType::F32 => {
                Tensor::from_vec(self.values::<f32>(&x, &y, epi, g, co)?, shape, x.device())
            }
            DType::F64 => {
                Tensor::from_vec(self.values::<f64>(&x, &y, epi, g, co)?, shape, x.device())
            }
            dt => candle_core::bail!("{}: f32 or f64 inputs only, got {dt:?}", self.name()),
        }
    }

    /// [`ShiftedOp::run`] on the contiguous CPU tensors' values, read in place (a tensor of another type is an
    /// error).
    fn values<T: WithDType + GemmFloat>(
        self,
        x: &Tensor,
        y: &Tensor,
        epi: Option<(&Tensor, Option<&Tensor>, Option<f64>)>,
        g: Shifted,
        co: usize,
    ) -> Result<Vec<T>> {
        let slice = |s, l| cpu_values::<T>(s, l, self.name());
        let ((xs, xl), (ys, yl)) = (x.storage_and_layout(), y.storage_and_layout());
        let guards =
            epi.map(|(b, s, k)| (b.storage_and_layout(), s.map(|s| s.storage_and_layout()), k));
        let epi = match &guards {
            Some(((bs, bl), skip, scale)) => Some(Epilogue {
                bias: slice(bs, bl)?,
                skip: match skip {
                    Some((s, l)) => Some(slice(s, l)?),
                    None => None,
                },
                scale: scale.map(T::from_f64),
            }),
            None => None,
        };
        Ok(self.run(slice(&xs, xl)?, slice(&ys, yl)?, g, co, epi))
    }
}

/// The values of a contiguous CPU tensor's storage, in `T` (another type is an error naming `what`).
fn cpu_values<'a, T: WithDType>(
    s: &'a candle_core::Storage,
    l: &Layout,
    what: &str,
) -> Result<&'a [T]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: input not contiguous")))?;
    match s {
        candle_core::Storage::Cpu(c) => Ok(&c.as_slice::<T>()?[start..end]),
        _ => candle_core::bail!("{what}: CPU tensors only"),
    }
}

fn check_fit(x: &Tensor, k: usize, p: usize) -> Result<()> {
    let (_, _, h, w) = x.dims4()?;
    if x.elem_count() == 0 {
        candle_core::bail!("im2col: empty input {:?}", x.dims());
    }
    if h + 2 * p < k || w + 2 * p < k {
        candle_core::bail!("im2col: a {k}×{k} kernel does not fit a {h}×{w} input padded by {p}");
    }
    Ok(())
}

/// The PTX of `im2col.cu` (built by `build.rs` with the CUDA toolkit's nvcc).
#[cfg(feature = "cuda")]
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/im2col.ptx"));

/// Threads per block and blocks for `rows` rows of `n` positions: one block per row (at most 2³⁰ blocks, which
/// then stride over the rest), the threads rounded up to whole warps, at most 256.
#[cfg(feature = "cuda")]
fn launch_dims(rows: usize, n: usize) -> (u32, u32) {
    let threads = n.div_ceil(32).clamp(1, 8) * 32;
    (rows.clamp(1, 1 << 30) as u32, threads as u32)
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::{CudaDType, WrapErr};
        use candle_core::{CudaDevice, CudaStorage, DType};

        let (b, c, h, w) = l.shape().dims4()?;
        let (oh, ow) = (self.out_size(h), self.out_size(w));
        let (start, _) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("im2col: input not contiguous".into()))?;
        let rows = c * self.k * self.k * b;
        let n = oh * ow;
        let dims: Vec<u32> = [b, c, h, w, self.k, self.p, oh, ow]
            .iter()
            .map(|&d| {
                u32::try_from(d).map_err(|_| {
                    candle_core::Error::Msg(format!("im2col: dimension {d} does not fit 32 bits"))
                })
            })
            .collect::<Result<_>>()?;
        if c * h * w >= 1 << 32 || n >= 1 << 32 {
            candle_core::bail!("im2col: an image of {c}×{h}×{w} is too large for the CUDA kernel");
        }
        let (grid, threads) = launch_dims(rows, n);
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        fn run<T: CudaDType + DeviceRepr>(
            s: &CudaStorage,
            dev: &CudaDevice,
            kernel: &str,
            start: usize,
            len: usize,
            dims: &[u32],
            cfg: LaunchConfig,
        ) -> Result<CudaStorage> {
            let x = s.as_cuda_slice::<T>()?.slice(start..);
            // SAFETY: every element is written by the kernel (rows × positions, all of them).
            let out = unsafe { dev.alloc::<T>(len)? };
            let func = dev.get_or_load_custom_func(kernel, "vsdm_image_im2col", PTX)?;
            let mut builder = func.builder();
            builder.arg(&x);
            builder.arg(&out);
            for d in dims {
                builder.arg(d);
            }
            // SAFETY: the arguments match the kernel's signature (two pointers, eight u32).
            unsafe { builder.launch(cfg) }.w()?;
            Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
        }
        let dev = s.device();
        let len = rows * n;
        let out = match s.dtype() {
            DType::F32 => run::<f32>(s, dev, "im2col_b32", start, len, &dims, cfg)?,
            DType::F64 => run::<f64>(s, dev, "im2col_b64", start, len, &dims, cfg)?,
            DType::F16 => run::<half::f16>(s, dev, "im2col_b16", start, len, &dims, cfg)?,
            DType::BF16 => run::<half::bf16>(s, dev, "im2col_b16", start, len, &dims, cfg)?,
            dt => candle_core::bail!("im2col: floating-point inputs only, got {dt:?}"),
        };
        Ok((out, Shape::from((c * self.k * self.k, b * n))))
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let (oh, ow) = (self.out_size(h), self.out_size(w));
        let shape = Shape::from((c * self.k * self.k, b * oh * ow));
        let out = map_floats!(s, l, self.name(), |x| self.fill(x, (b, c, h, w), (oh, ow)));
        Ok((out, shape))
    }
}

/// `[B, C, H, W]` → `[C·k·k, B·H'·W']` (H' = H + 2p − k + 1): rows ordered (channel, kernel row, kernel column)
/// as a `[C_out, C, k, k]` weight flattens, columns (image, output position). No graph is recorded (callers
/// pass detached tensors).
pub fn im2col(x: &Tensor, k: usize, p: usize) -> Result<Tensor> {
    check_fit(x, k, p)?;
    x.contiguous()?.apply_op1_no_bwd(&Im2Col { k, p })
}

/// Whether a convolution of `x` takes the shifted-rows scheme (module documentation): on the CPU in f32 and
/// f64 (gemm's kernels), at every channel count. Until 2026-12-06 the CPU took position-major patch matrices
/// below 128 output channels and channel-major ones above; the shifted rows run the DDPM++ network's
/// training 1.11× and its forward 1.12× faster than the channel-major patches at its 128–256 channels
/// (docs/benchmarks/image.md), and they are level with them at 4×4, where the dropped columns are a third of
/// the product's rows.
pub(crate) fn shifted_rows(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// The largest patch matrix made at once on the CPU, in bytes: below glibc's mmap threshold (at least 32 MiB,
/// which `vsdm_eval::cli::tune_allocator` sets), so the matrix reuses freed heap memory instead of a fresh
/// mapping that the kernel page-faults and zeroes on every call (at batch 16 the tiny network's 32×32 decoder
/// blocks would make 38 and 57 MB). On the CPU only f16 and bf16 convolutions make patch matrices now.
const PATCH_BUDGET: usize = 24 << 20;

/// `(first image, images)` of consecutive chunks of `x`'s batch whose patch matrices of `per_image` elements
/// each stay within [`PATCH_BUDGET`] (one image at least) on the CPU; the whole batch at once on a GPU.
fn image_chunks(x: &Tensor, per_image: usize) -> impl Iterator<Item = (usize, usize)> {
    let b = x.dim(0).unwrap_or(0);
    let chunk = if x.device().is_cpu() {
        (PATCH_BUDGET / (per_image * x.dtype().size_in_bytes()).max(1)).clamp(1, b.max(1))
    } else {
        b.max(1)
    };
    (0..b)
        .step_by(chunk)
        .map(move |start| (start, chunk.min(b - start)))
}

/// That W `[C_out, C, k, k]` (square, at least one output channel) convolves `x` `[B, C, H, W]` with
/// padding `p` ([`check_fit`]).
fn check_conv(x: &Tensor, w: &Tensor, p: usize) -> Result<()> {
    let c = x.dims4()?.1;
    let (co, ci, k, kw) = w.dims4()?;
    if k != kw || c != ci {
        candle_core::bail!(
            "conv2d: weight {:?} does not fit input {:?} (square kernels over the input's channels)",
            w.dims(),
            x.dims()
        );
    }
    check_fit(x, k, p)?;
    if co == 0 {
        candle_core::bail!("conv2d: weight {:?} has no output channels", w.dims());
    }
    Ok(())
}

/// conv2d(x, W) with stride 1 and zero padding `p` (W `[C_out, C, k, k]`, square), on `x`'s device: in the
/// shifted-rows scheme on the CPU in f32 and f64 (`ShiftedOp::Conv`), else one channel-major product (W
/// `[C_out, C·k·k]` · cols `[C·k·k, B·H'·W']`, then the batch moved in front).
pub fn conv2d(x: &Tensor, w: &Tensor, p: usize) -> Result<Tensor> {
    check_conv(x, w, p)?;
    if shifted_rows(x) {
        return ShiftedOp::Conv { p }.apply(x, w, None);
    }
    conv2d_patches(x, w, p)
}

/// (conv2d(x, W) + b + skip) · scale for a convolution that takes the shifted rows (`shifted_rows`: CPU,
/// f32 or f64), with the bias (`[C_out]` or `[B, C_out]`), the skip connection (`[B, C_out, H', W']`, when
/// given) and the scale (when given) applied in the pass that moves the output back to channels first
/// (`Epilogue`) instead of one candle op each — the value of `fastconv`'s layer and residual ops, with the
/// same roundings as the chain `conv2d(x, W).broadcast_add(b) + skip) * scale`. Records no graph.
pub fn conv2d_fused(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    skip: Option<&Tensor>,
    scale: Option<f64>,
    p: usize,
) -> Result<Tensor> {
    if !shifted_rows(x) || w.dtype() != x.dtype() || b.dtype() != x.dtype() {
        candle_core::bail!(
            "conv2d_fused: CPU f32 or f64 tensors of one type only, got {:?} on {:?}, weight {:?}, bias {:?}",
            x.dtype(),
            x.device(),
            w.dtype(),
            b.dtype()
        );
    }
    check_conv(x, w, p)?;
    let (bsz, _, h, wd) = x.dims4()?;
    let (co, _, k, _) = w.dims4()?;
    let out_dims = [bsz, co, out_size(h, k, p), out_size(wd, k, p)];
    if b.dims() != [co] && b.dims() != [bsz, co] {
        candle_core::bail!(
            "convolution bias must be [{co}] or [{bsz}, {co}], got {:?}",
            b.dims()
        );
    }
    if let Some(s) = skip {
        if s.dims() != out_dims || s.dtype() != x.dtype() {
            candle_core::bail!(
                "conv2d_fused: skip {:?} ({:?}) does not match the output {out_dims:?} ({:?})",
                s.dims(),
                s.dtype(),
                x.dtype()
            );
        }
    }
    ShiftedOp::Conv { p }.apply(x, w, Some((b, skip, scale)))
}

/// [`conv2d`] through channel-major patch matrices, whatever the device and type (arguments checked by the
/// caller).
fn conv2d_patches(x: &Tensor, w: &Tensor, p: usize) -> Result<Tensor> {
    let (b, _, h, wd) = x.dims4()?;
    let (co, ci, k, _) = w.dims4()?;
    let (oh, ow) = (out_size(h, k, p), out_size(wd, k, p));
    let wm = w.reshape((co, ci * k * k))?;
    let parts = image_chunks(x, k * k * ci * oh * ow)
        .map(|(start, n)| {
            let x = x.narrow(0, start, n)?;
            wm.matmul(&im2col(&x, k, p)?)?
                .reshape((co, n, oh * ow))?
                .transpose(0, 1)?
                .contiguous()
        })
        .collect::<Result<Vec<_>>>()?;
    let y = if parts.len() == 1 {
        parts.into_iter().next().expect("one part")
    } else {
        Tensor::cat(&parts, 0)?
    };
    y.reshape((b, co, oh, ow))
}

/// The input gradient of [`conv2d`]`(x, w, p)` for the output gradient `dy` `[B, C_out, H', W']`: the
/// convolution of dy with W's channels swapped and its kernel flipped, padding k − 1 − p (p < k). In the
/// shifted-rows scheme the flip is made while the weight is laid out for the products
/// (`ShiftedOp::InputGrad`); elsewhere W̃ is made first and convolved by [`conv2d`].
pub fn conv2d_input_grad(dy: &Tensor, w: &Tensor, p: usize) -> Result<Tensor> {
    let (co, ci, kh, kw) = w.dims4()?;
    if kh != kw || dy.dims4()?.1 != co {
        candle_core::bail!(
            "conv2d input gradient: weight {:?} does not fit output gradient {:?} (square kernels)",
            w.dims(),
            dy.dims()
        );
    }
    if ci == 0 {
        candle_core::bail!(
            "conv2d input gradient: weight {:?} has no input channels",
            w.dims()
        );
    }
    if p >= kh {
        candle_core::bail!("conv2d backward: padding {p} must be below the kernel size {kh}");
    }
    check_fit(dy, kh, kh - 1 - p)?;
    if shifted_rows(dy) {
        return ShiftedOp::InputGrad { p }.apply(dy, w, None);
    }
    conv2d(dy, &flipped(w)?, kh - 1 - p)
}

/// W̃ `[C, C_out, k, k]` of W `[C_out, C, k, k]`: channels swapped, both kernel axes reversed.
pub fn flipped(w: &Tensor) -> Result<Tensor> {
    let k = w.dim(2)?;
    let rev = Tensor::arange_step(k as i64 - 1, -1, -1, w.device())?.to_dtype(DType::U32)?;
    w.transpose(0, 1)?
        .contiguous()?
        .index_select(&rev, 2)?
        .index_select(&rev, 3)?
        .contiguous()
}

/// The weight gradient of [`conv2d`] for the output gradient `dy` `[B, C_out, H', W']`: in the shifted-rows
/// scheme (`ShiftedOp::WeightGrad`) where [`conv2d`] takes it, else dy `[C_out, B·H'·W']` · colsᵀ.
pub fn conv2d_weight_grad(x: &Tensor, dy: &Tensor, k: usize, p: usize) -> Result<Tensor> {
    let (b, co, oh, ow) = dy.dims4()?;
    check_fit(x, k, p)?;
    if co == 0 {
        candle_core::bail!(
            "conv2d weight gradient: output gradient {:?} has no channels",
            dy.dims()
        );
    }
    if (out_size(x.dim(2)?, k, p), out_size(x.dim(3)?, k, p)) != (oh, ow) || x.dim(0)? != b {
        candle_core::bail!(
            "conv2d weight gradient: output gradient {:?} does not fit input {:?} with a {k}×{k} kernel and padding {p}",
            dy.dims(),
            x.dims()
        );
    }
    if shifted_rows(x) {
        return ShiftedOp::WeightGrad { k, p }.apply(x, dy, None);
    }
    weight_grad_patches(x, dy, k, p)
}

/// Both gradients of [`conv2d`]`(x, w, p)` for the output gradient `dy`: ([`conv2d_input_grad`],
/// [`conv2d_weight_grad`]). A "same" convolution (2p = k − 1, the U-Net's 3×3 and 1×1 layers) in the
/// shifted-rows scheme takes one channels-last copy of dy for both (`shifted_gradients`) instead of one
/// each, with the same bits; otherwise the two passes apart.
pub fn conv2d_gradients(x: &Tensor, w: &Tensor, dy: &Tensor, p: usize) -> Result<(Tensor, Tensor)> {
    let same = match (x.dims4(), dy.dims4(), w.dims4()) {
        (Ok((b, c, h, wd)), Ok((db, co, dh, dw)), Ok((wo, wi, k, kw))) => {
            let fits = (db, dh, dw, wo, wi, kw) == (b, h, wd, co, c, k);
            let types = dy.dtype() == x.dtype() && w.dtype() == x.dtype();
            let some = b * c * h * wd * co > 0;
            (fits && types && some && 2 * p + 1 == k && shifted_rows(x))
                .then_some((b, c, h, wd, co, k))
        }
        _ => None,
    };
    let Some((b, c, h, wd, co, k)) = same else {
        let k = w.dim(2)?;
        let dx = conv2d_input_grad(dy, w, p)?;
        return Ok((dx, conv2d_weight_grad(x, dy, k, p)?));
    };
    let g = Shifted {
        b,
        c,
        h,
        w: wd,
        k,
        p,
    };
    let (x, dy, w) = (x.contiguous()?, dy.contiguous()?, w.contiguous()?);
    let (dx, dw) = match x.dtype() {
        DType::F32 => {
            let (dx, dw) = gradient_values::<f32>(&x, &dy, &w, g, co)?;
            (
                Tensor::from_vec(dx, x.shape(), x.device())?,
                Tensor::from_vec(dw, w.shape(), w.device())?,
            )
        }
        DType::F64 => {
            let (dx, dw) = gradient_values::<f64>(&x, &dy, &w, g, co)?;
            (
                Tensor::from_vec(dx, x.shape(), x.device())?,
                Tensor::from_vec(dw, w.shape(), w.device())?,
            )
        }
        dt => candle_core::bail!("shifted-gradients: f32 or f64 inputs only, got {dt:?}"),
    };
    Ok((dx, dw))
}

/// [`shifted_gradients`] on the contiguous CPU tensors' values, read in place (as [`ShiftedOp::values`]).
fn gradient_values<T: WithDType + GemmFloat>(
    x: &Tensor,
    dy: &Tensor,
    w: &Tensor,
    g: Shifted,
    co: usize,
) -> Result<(Vec<T>, Vec<T>)> {
    let slice = |s, l| cpu_values::<T>(s, l, "shifted-gradients");
    let ((xs, xl), (ds, dl), (ws, wl)) = (
        x.storage_and_layout(),
        dy.storage_and_layout(),
        w.storage_and_layout(),
    );
    Ok(shifted_gradients(
        slice(&xs, xl)?,
        slice(&ds, dl)?,
        slice(&ws, wl)?,
        g,
        co,
    ))
}

/// [`conv2d_weight_grad`] through channel-major patch matrices (arguments checked by the caller).
fn weight_grad_patches(x: &Tensor, dy: &Tensor, k: usize, p: usize) -> Result<Tensor> {
    let (b, co, oh, ow) = dy.dims4()?;
    let ci = x.dim(1)?;
    let dy = dy.reshape((b, co, oh * ow))?;
    // Σ over chunks of images of dy `[C_out, n·H'·W']` · colsᵀ (`[C_out, C·k·k]`).
    let mut sum: Option<Tensor> = None;
    for (start, n) in image_chunks(x, k * k * ci * oh * ow) {
        let (x, dy) = (x.narrow(0, start, n)?, dy.narrow(0, start, n)?);
        let dy = dy
            .transpose(0, 1)?
            .contiguous()?
            .reshape((co, n * oh * ow))?;
        let g = dy.matmul(&im2col(&x, k, p)?.t()?)?;
        sum = Some(match sum {
            Some(s) => (s + g)?,
            None => g,
        });
    }
    sum.expect("at least one image").reshape((co, ci, k, k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unet::testutil::rel;
    use candle_core::{DType, Device};
    use vsdm_core::NoiseRng;

    #[test]
    fn mismatched_weights_are_errors() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 5, 5), DType::F32, &dev).unwrap();
        for w in [(2, 4, 3, 3), (2, 3, 3, 1)] {
            let e = conv2d(&x, &Tensor::zeros(w, DType::F32, &dev).unwrap(), 1)
                .unwrap_err()
                .to_string();
            assert!(e.contains("does not fit input [1, 3, 5, 5]"), "{e}");
        }
        assert!(im2col(&x, 9, 1).is_err());
        // An empty batch is an error, not a panic.
        let empty = Tensor::zeros((0, 3, 5, 5), DType::F32, &dev).unwrap();
        assert!(conv2d(
            &empty,
            &Tensor::zeros((2, 3, 3, 3), DType::F32, &dev).unwrap(),
            1
        )
        .is_err());
    }

    /// Inputs the gradients cannot be taken of are errors, not panics and not tensors of some shape: an empty
    /// batch, channel set or row, and an output gradient of the input's size for a convolution that shrinks
    /// the image (3×3 without padding) — whichever path ("same" convolutions share one pass) would take them.
    #[test]
    fn gradients_of_degenerate_or_mismatched_inputs_are_errors() {
        let dev = Device::Cpu;
        let z = |d: &[usize]| Tensor::zeros(d, DType::F32, &dev).unwrap();
        for (x, w, dy, p) in [
            ([0, 3, 5, 5], [2, 3, 3, 3], [0, 2, 5, 5], 1),
            ([2, 0, 5, 5], [2, 0, 3, 3], [2, 2, 5, 5], 1),
            ([2, 3, 5, 0], [2, 3, 3, 3], [2, 2, 5, 0], 1),
            ([2, 3, 5, 5], [0, 3, 3, 3], [2, 0, 5, 5], 1),
            ([2, 3, 5, 5], [2, 3, 3, 3], [2, 2, 5, 5], 0),
        ] {
            let r = conv2d_gradients(&z(&x), &z(&w), &z(&dy), p);
            assert!(r.is_err(), "x {x:?} w {w:?} dy {dy:?} p {p}: {r:?}");
        }
        // An output gradient smaller than any input of this kernel and padding makes: a 1×1 dy of a 3×3
        // kernel with padding 2 would be the gradient of a −1×−1 input.
        let e = conv2d_input_grad(&z(&[1, 2, 1, 1]), &z(&[2, 3, 3, 3]), 2).unwrap_err();
        assert!(e.to_string().contains("does not fit a 1×1 input"), "{e}");
        // A kernel that fits one side of the input but not the other, each side alone.
        for (h, w) in [(5, 2), (2, 5)] {
            let e = check_conv(&z(&[1, 1, h, w]), &z(&[1, 1, 3, 3]), 0).unwrap_err();
            assert!(
                e.to_string()
                    .contains(&format!("does not fit a {h}×{w} input")),
                "{e}"
            );
        }
        // The input gradient's weight: not square alone, or not of dy's channels alone.
        for (dy, w) in [([1, 2, 5, 5], [2, 3, 3, 2]), ([1, 3, 5, 5], [2, 3, 3, 3])] {
            let e = conv2d_input_grad(&z(&dy), &z(&w), 1).unwrap_err();
            assert!(
                e.to_string().contains("does not fit output gradient"),
                "{e}"
            );
        }
    }

    /// The fused convolution's type and skip checks, each alone: a weight or a bias of another type, a skip of
    /// another shape or of another type.
    #[test]
    fn fused_convolution_names_each_mismatch() {
        let dev = Device::Cpu;
        let t = |d: &[usize], dt: DType| Tensor::zeros(d, dt, &dev).unwrap();
        let f32s = |d: &[usize]| t(d, DType::F32);
        let (x, w, b) = (f32s(&[1, 2, 4, 4]), f32s(&[3, 2, 3, 3]), f32s(&[3]));
        assert!(conv2d_fused(&x, &w, &b, None, None, 1).is_ok());
        for (w, b) in [
            (t(&[3, 2, 3, 3], DType::F64), b.clone()),
            (w.clone(), t(&[3], DType::F64)),
        ] {
            let e = conv2d_fused(&x, &w, &b, None, None, 1)
                .unwrap_err()
                .to_string();
            assert!(e.contains("of one type only"), "{e}");
        }
        let skip = f32s(&[1, 3, 4, 4]);
        assert!(conv2d_fused(&x, &w, &b, Some(&skip), Some(1.0), 1).is_ok());
        for s in [f32s(&[1, 3, 4, 5]), t(&[1, 3, 4, 4], DType::F64)] {
            let e = conv2d_fused(&x, &w, &b, Some(&s), Some(1.0), 1)
                .unwrap_err()
                .to_string();
            assert!(e.contains("does not match the output [1, 3, 4, 4]"), "{e}");
        }
    }

    /// The CPU's patch matrices are made a chunk of images at a time, each chunk within `PATCH_BUDGET` bytes
    /// (one image at least), covering the batch in order; on other devices the batch is one chunk.
    #[test]
    fn patch_matrices_are_chunked_within_the_budget() {
        let dev = Device::Cpu;
        let chunks = |dt: DType, b: usize, per_image: usize| {
            let x = Tensor::zeros((b, 1, 1, 1), dt, &dev).unwrap();
            image_chunks(&x, per_image).collect::<Vec<_>>()
        };
        // A 48×48 image of 128 channels under a 3×3 kernel: 2,654,208 patch values, 10.6 MB in f32 (two fit
        // in 24 MiB, three do not) and 21.2 MB in f64 (one fits).
        let per = 9 * 128 * 48 * 48;
        assert_eq!(chunks(DType::F32, 3, per), [(0, 2), (2, 1)]);
        assert_eq!(chunks(DType::F32, 5, per), [(0, 2), (2, 2), (4, 1)]);
        assert_eq!(chunks(DType::F64, 3, per), [(0, 1), (1, 1), (2, 1)]);
        assert_eq!(chunks(DType::BF16, 5, per), [(0, 4), (4, 1)]);
        // Small images: the whole batch; larger than the budget alone: one image at a time.
        assert_eq!(chunks(DType::F32, 7, 1000), [(0, 7)]);
        assert_eq!(chunks(DType::F32, 2, PATCH_BUDGET), [(0, 1), (1, 1)]);
        assert!(chunks(DType::F32, 0, per).is_empty());
    }

    /// Equal to candle's conv2d and to its weight gradient (candle's correlation of the batch-transposed
    /// tensors) and the input gradient to candle's transposed convolution, for odd kernels, "same", smaller and
    /// larger padding, non-square inputs and f64: the CPU's shifted rows and the channel-major patches (CUDA's
    /// layout).
    #[test]
    fn matches_candles_conv2d() {
        let dev = Device::Cpu;
        let mut rng = NoiseRng::new(5);
        for &(b, ci, co, h, w, k, p) in &[
            (2usize, 3usize, 4usize, 6usize, 5usize, 3usize, 1usize),
            (1, 2, 3, 7, 7, 3, 0),
            (3, 4, 2, 5, 6, 1, 0),
            (2, 2, 2, 6, 6, 5, 2),
            (1, 3, 2, 4, 4, 3, 2),
            // Kernels that exactly fill the padded input: one output pixel.
            (2, 3, 2, 3, 3, 3, 0),
            (1, 2, 2, 1, 1, 3, 1),
            (2, 2, 3, 1, 4, 3, 1),
            // Padding beyond the kernel: output borders of zeros.
            (2, 2, 3, 4, 5, 3, 3),
            // More channels and positions than one 16×16 transposition tile, in both directions.
            (2, 20, 18, 18, 17, 3, 1),
            (1, 40, 3, 5, 7, 1, 0),
            // More output channels than gemm's register tiles, several runs per output.
            (2, 3, 130, 5, 4, 3, 1),
            // Patch matrices over PATCH_BUDGET: chunks of 2 + 1 images in f32, 1 + 1 + 1 in f64.
            (3, 128, 4, 48, 48, 3, 1),
            (3, 128, 128, 48, 48, 3, 1),
        ] {
            for dt in [DType::F32, DType::F64] {
                let x = rng
                    .randn(&[b, ci, h, w], &dev)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap();
                let wt = rng
                    .randn(&[co, ci, k, k], &dev)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap();
                let y0 = x.conv2d(&wt, p, 1, 1, 1).unwrap();
                let case = format!("b{b} ci{ci} co{co} {h}×{w} k{k} p{p} {dt:?}");
                for y1 in [
                    conv2d(&x, &wt, p).unwrap(),
                    conv2d_patches(&x, &wt, p).unwrap(),
                ] {
                    assert_eq!(y0.dims(), y1.dims(), "{case}");
                    assert!(rel(&y0, &y1) < 1e-5, "{case}: value {}", rel(&y0, &y1));
                }
                let dy = rng.randn(y0.dims(), &dev).unwrap().to_dtype(dt).unwrap();
                let g0 = x
                    .transpose(0, 1)
                    .unwrap()
                    .conv2d(&dy.transpose(0, 1).unwrap(), p, 1, 1, 1)
                    .unwrap()
                    .transpose(0, 1)
                    .unwrap();
                if p < k {
                    // The input gradient against candle's transposed convolution.
                    let d0 = dy.conv_transpose2d(&wt, p, 0, 1, 1).unwrap();
                    let flipped = flipped(&wt).unwrap();
                    // Both gradients at once ("same" convolutions share dy's channels-last copy): the
                    // same bits as the two passes apart.
                    let (dx, dw) = conv2d_gradients(&x, &wt, &dy, p).unwrap();
                    let apart = conv2d_weight_grad(&x, &dy, k, p).unwrap();
                    for (a, b, what) in [(&dx, &d0, "input"), (&dw, &g0, "weight")] {
                        assert!(
                            rel(a, b) < 1e-5,
                            "{case}: shared {what} gradient {}",
                            rel(a, b)
                        );
                    }
                    let bits = |t: &Tensor| {
                        t.flatten_all()
                            .unwrap()
                            .to_dtype(DType::F64)
                            .unwrap()
                            .to_vec1::<f64>()
                            .unwrap()
                    };
                    assert_eq!(bits(&dw), bits(&apart), "{case}: shared weight gradient");
                    let dx_apart = conv2d_input_grad(&dy, &wt, p).unwrap();
                    assert_eq!(bits(&dx), bits(&dx_apart), "{case}: shared input gradient");
                    for d1 in [
                        dx,
                        dx_apart,
                        conv2d_patches(&dy, &flipped, k - 1 - p).unwrap(),
                    ] {
                        assert_eq!(d0.dims(), d1.dims(), "{case}");
                        assert!(
                            rel(&d0, &d1) < 1e-5,
                            "{case}: input gradient {}",
                            rel(&d0, &d1)
                        );
                    }
                }
                for g1 in [
                    conv2d_weight_grad(&x, &dy, k, p).unwrap(),
                    weight_grad_patches(&x, &dy, k, p).unwrap(),
                ] {
                    assert!(
                        rel(&g0, &g1) < 1e-5,
                        "{case}: weight gradient {}",
                        rel(&g0, &g1)
                    );
                }
            }
        }
    }
}
