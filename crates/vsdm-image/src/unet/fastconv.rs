//! A stride-1 2-D convolution with a per-channel bias whose backward pass runs on convolution *forward* kernels
//! (or on cuDNN), recorded in the graph as one op.
//!
//! candle 0.11.1 differentiates `conv2d` with `conv_transpose2d` for the input gradient, a direct kernel that
//! costs about 4× the forward on CUDA (`CUDA.md`) and is a plain loop nest on the CPU, while `conv2d` itself
//! runs as im2col + GEMM (cuBLAS on CUDA). For stride 1 the input gradient is itself a convolution:
//!
//!   dx = conv2d(dy, W̃, padding k − 1 − p),  W̃[ci, co, i, j] = W[co, ci, k − 1 − i, k − 1 − j],
//!
//! and the weight gradient is candle's own correlation of the batch-transposed input with the batch-transposed
//! output gradient; the bias gradient is dy summed over batch and positions. [`conv2d_bias`] computes
//! conv2d(x, W) + b without recording a graph and hands it to a custom op on (x, W, b) whose forward returns it
//! ([`vsdm_core::carried`]) and whose backward returns these three gradients, so every convolution of the training
//! step, forward and backward, goes through the im2col + GEMM path, and the graph keeps one output-sized tensor
//! per layer instead of two (the convolution's and the bias sum's).
//!
//! The choice is per thread ([`set_conv_backward`]): [`ConvBackward::Candle`] restores candle's own conv2d,
//! bias addition and backward, for comparisons (`vsdm-image --conv candle`); [`ConvBackward::Cudnn`] computes the
//! value and the two convolution gradients with cuDNN (`super::cudnnconv`, cargo feature `cudnn`).

use candle_core::{Result, Tensor};

use super::im2col;
use vsdm_core::carried;

/// How convolutions are computed and differentiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvBackward {
    /// candle's own: `conv2d` and a broadcast bias addition, `conv_transpose2d` for the input gradient.
    Candle,
    /// Both convolution gradients as `conv2d` forward passes (im2col + GEMM); see the module documentation.
    Gemm,
    /// The value and both convolution gradients through cuDNN (`super::cudnnconv`) for CUDA tensors, in a
    /// binary built with the `cudnn` feature (without it, an error naming the feature); CPU tensors take the
    /// GEMM path.
    Cudnn,
    /// As [`ConvBackward::Gemm`], but on CUDA the patch matrices come from this crate's own kernel
    /// ([`super::im2col`], `im2col.cu`) instead of candle's `im2col`, and each convolution is one GEMM over
    /// the batch. The same computation as `Gemm` on the CPU. The default: on an H100 (2026-12-05) it passed
    /// `vsdm-image --cuda --conv patch check-device` (≤ 2.0e-6 in f32) and trained the paper-scale network
    /// 1.87× as fast as `Gemm` in f32 and 2.79× in bf16 (docs/benchmarks/image.md).
    Patch,
}

backward_choice!(
    ConvBackward { "candle" => Candle, "gemm" => Gemm, "cudnn" => Cudnn, "patch" => Patch },
    default Patch,
    set_conv_backward,
    conv_backward,
    "convolution"
);

/// The backward of [`conv2d_bias`]'s op on (x, W, b): a stride-1 convolution with `padding`.
struct ConvBiasBackward {
    padding: usize,
    cudnn: bool,
}

impl carried::Backward for ConvBiasBackward {
    const NAME: &'static str = "conv2d-bias-backward";

    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Per channel, or per sample and channel (a bias of shape [B, C]).
        let db = plane_sums(dy, b.rank() == 1)?;
        let (dx, dw) = gradients(x, w, dy, self.padding, self.cudnn)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// The input and weight gradients of a stride-1 convolution, through cuDNN or as conv2d forward passes.
pub(crate) fn gradients(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    p: usize,
    cudnn: bool,
) -> Result<(Tensor, Tensor)> {
    if cudnn {
        cudnn::gradients(x, w, dy, p)
    } else {
        gemm_gradients(x, w, dy, p)
    }
}

/// Whether `x`'s convolutions take this crate's patch matrix and GEMM ([`super::im2col`]): always on the
/// CPU, on CUDA under [`ConvBackward::Patch`] (read when the convolution or its backward runs; the CLI sets
/// the mode once per thread before any network runs).
fn own_patches(x: &Tensor) -> bool {
    x.device().is_cpu() || conv_backward() == ConvBackward::Patch
}

/// conv2d(x, W) (stride 1), through cuDNN, this crate's patch matrix and GEMM ([`own_patches`]), or candle's
/// im2col + GEMM on CUDA; records nothing when the inputs are detached.
fn convolve(x: &Tensor, w: &Tensor, p: usize, cudnn: bool) -> Result<Tensor> {
    if cudnn {
        cudnn::forward(x, w, p)
    } else if own_patches(x) {
        im2col::conv2d(x, w, p)
    } else {
        x.conv2d(w, p, 1, 1, 1)
    }
}

/// The input and weight gradients of a stride-1 convolution from conv2d forward passes.
fn gemm_gradients(x: &Tensor, w: &Tensor, dy: &Tensor, p: usize) -> Result<(Tensor, Tensor)> {
    let (_, _, kh, kw) = w.dims4()?;
    if kh != kw {
        candle_core::bail!("conv2d backward: square kernels only, got {kh}×{kw}");
    }
    if p >= kh {
        candle_core::bail!("conv2d backward: padding {p} must be below the kernel size {kh}");
    }
    if own_patches(x) {
        return im2col::conv2d_gradients(x, w, dy, p);
    }
    candle_gradients(x, w, dy, p)
}

/// [`gemm_gradients`] through candle's `conv2d` (CUDA under [`ConvBackward::Gemm`]; any device, so the CPU
/// tests it): the input gradient as dy convolved with W's channels swapped and its kernel flipped, padding
/// k − 1 − p, the weight gradient as the batch-transposed x correlated with the batch-transposed dy. A square
/// kernel with p < k (checked by the caller).
fn candle_gradients(x: &Tensor, w: &Tensor, dy: &Tensor, p: usize) -> Result<(Tensor, Tensor)> {
    let k = w.dim(2)?;
    let dx = dy.conv2d(&im2col::flipped(w)?, k - 1 - p, 1, 1, 1)?;
    let dw = x
        .transpose(0, 1)?
        .conv2d(&dy.transpose(0, 1)?, p, 1, 1, 1)?
        .transpose(0, 1)?;
    Ok((dx, dw))
}

/// `x.conv2d(w, padding, 1, 1, 1) + b` (`b` `[C]` per output channel, or `[B, C]` per sample and output
/// channel, e.g. a layer's bias plus a per-sample shift), computed and differentiated as
/// [`conv_backward`] selects. Under [`ConvBackward::Cudnn`], CUDA tensors go through cuDNN and CPU tensors take
/// the GEMM path (so a CUDA run with cuDNN can be compared against the CPU with the same setting).
pub fn conv2d_bias(x: &Tensor, w: &Tensor, b: &Tensor, padding: usize) -> Result<Tensor> {
    let mode = conv_backward();
    let on_cudnn = mode == ConvBackward::Cudnn && x.device().is_cuda();
    let bshape = match *b.dims() {
        [c] => (1, c, 1, 1),
        [n, c] => (n, c, 1, 1),
        _ => candle_core::bail!("convolution bias must be [C] or [B, C], got {:?}", b.dims()),
    };
    let value = |x: &Tensor, w: &Tensor, b: &Tensor| -> Result<Tensor> {
        if mode != ConvBackward::Candle && im2col::shifted_rows(x) {
            // The CPU's shifted rows with the bias added on the way out (no graph: x, w and b are detached or
            // untracked here).
            return im2col::conv2d_fused(x, w, b, None, None, padding);
        }
        let y = if mode == ConvBackward::Candle {
            // candle's differentiable conv2d: the reference records its own graph.
            x.conv2d(w, padding, 1, 1, 1)?
        } else {
            convolve(x, w, padding, on_cudnn)?
        };
        y.broadcast_add(&b.reshape(bshape)?)
    };
    // candle's own graph, or nothing to differentiate (sampling, the EMA network).
    if mode == ConvBackward::Candle || !(x.track_op() || w.track_op() || b.track_op()) {
        return value(x, w, b);
    }
    let y = value(&x.detach(), &w.detach(), &b.detach())?;
    carried::apply(
        y,
        x,
        w,
        b,
        ConvBiasBackward {
            padding,
            cudnn: on_cudnn,
        },
    )
}

pub use super::dropout::DropMask;

/// `h` with the dropout of `drop` applied (h itself without a mask): candle's product with the factors when `h`
/// is tracked (the reference chain), else the mask's single pass.
fn dropped(h: &Tensor, drop: Option<&DropMask>) -> Result<Tensor> {
    match drop {
        Some(d) if h.track_op() => h * d.factors(h)?,
        Some(d) => d.apply(h),
        None => Ok(h.clone()),
    }
}

/// The backward of [`residual`]'s op on (h, [W | b], skip).
struct ResidualBackward {
    w_dims: (usize, usize, usize, usize),
    padding: usize,
    scale: f64,
    drop: Option<DropMask>,
    cudnn: bool,
}

impl carried::Backward for ResidualBackward {
    const NAME: &'static str = "conv2d-residual-backward";

    fn backward(
        &self,
        h: &Tensor,
        wb: &Tensor,
        _skip: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let w = unpack_weight(wb, self.w_dims)?;
        let dy = vsdm_core::fastmath::scaled(dy, self.scale)?;
        // The convolution's input, recomputed from the mask's seed rather than stored.
        let x = match &self.drop {
            Some(d) => d.apply(h)?,
            None => h.clone(),
        };
        let (dx, dw) = gradients(&x, &w, &dy, self.padding, self.cudnn)?;
        let dh = match &self.drop {
            Some(d) => d.apply(&dx)?,
            None => dx,
        };
        Ok((Some(dh), Some(packed_gradient(&dw, &dy)?), Some(dy)))
    }
}

/// A layer's weight `[co, ci, k, k]` and bias `[co]` as the one tensor `[W | b]` its fused ops take (a
/// parameter-sized concatenation, whose gradient candle splits back).
pub(crate) fn pack(w: &Tensor, b: &Tensor) -> Result<Tensor> {
    Tensor::cat(&[w.flatten_all()?, b.clone()], 0)
}

/// W `[co, ci, k, k]` out of [`pack`]'s `[W | b]`.
pub(crate) fn unpack_weight(wb: &Tensor, dims: (usize, usize, usize, usize)) -> Result<Tensor> {
    wb.narrow(0, 0, dims.0 * dims.1 * dims.2 * dims.3)?
        .reshape(dims)
}

/// The gradient of [`pack`]'s `[W | b]`: the weight gradient `dw` and the bias gradient (the output gradient
/// `dy` `[B, C, H, W]` summed over batch and positions).
pub(crate) fn packed_gradient(dw: &Tensor, dy: &Tensor) -> Result<Tensor> {
    Tensor::cat(&[dw.flatten_all()?, plane_sums(dy, true)?], 0)
}

vsdm_core::simd_fn! {
    /// The sum of each row of `n` values in `rows` into `out`.
    fn row_sums(rows: &[f32], n: usize, out: &mut [std::mem::MaybeUninit<f32>]) {
        for (row, o) in rows.chunks_exact(n).zip(out) {
            o.write(vsdm_core::fastmath::lane_sum(row, |v| v));
        }
    }
}

/// Σ over each plane of dy `[B, C, H, W]` → `[B, C]`, and over the batch too when `batch` → `[C]` (a
/// convolution bias's gradient). For f32 on the CPU each plane is summed in lanes on candle's worker pool and
/// the batch added in order; elsewhere candle's sums (on the CPU single-threaded: one pass over rows of W and
/// one strided over H).
pub(crate) fn plane_sums(dy: &Tensor, batch: bool) -> Result<Tensor> {
    let (b, c, h, w) = dy.dims4()?;
    if !(dy.device().is_cpu() && dy.dtype() == candle_core::DType::F32) || h * w == 0 {
        let s = dy.sum(3)?.sum(2)?;
        return if batch { s.sum(0) } else { Ok(s) };
    }
    let dy = dy.contiguous()?;
    let n = h * w;
    let avx = vsdm_core::fastmath::avx2();
    let sums = vsdm_core::fastmath::with_cpu_f32("plane sums", [&dy], |[x]| {
        vsdm_core::fastmath::par_rows((x, n), (&[], 0), 1, b * c, |x, _, o| row_sums(avx, x, n, o))
    })?;
    if !batch {
        return Tensor::from_vec(sums, (b, c), dy.device());
    }
    let total = vsdm_core::fastmath::sum_parts(&sums, c);
    Tensor::from_vec(total, c, dy.device())
}

/// A residual block's tail, (conv2d(dropout(h), W) + b + skip) · `scale` (EDM's `conv1`, its skip connection
/// and the √½ rescaling; or the attention's projection and its residual), with the convolution computed as
/// [`conv_backward`] selects.
///
/// Under this crate's backwards it is one op on (h, [W | b], skip) whose backward recomputes the dropped input
/// from the mask's seed: the graph keeps the output instead of the scaled mask, the dropped input, the
/// convolution's output and the sum (four activation-sized tensors). The weight and bias travel
/// as one concatenated parameter-sized tensor, whose gradient candle splits back. Under
/// [`ConvBackward::Candle`] it is candle's op chain, the reference.
pub fn residual(
    h: &Tensor,
    w: &Tensor,
    b: &Tensor,
    skip: &Tensor,
    drop: Option<&DropMask>,
    scale: f64,
    padding: usize,
) -> Result<Tensor> {
    let mode = conv_backward();
    // candle's ops on the inputs given: the reference's graph, or the fused op's value on detached inputs.
    let chain = |h: &Tensor, w: &Tensor, b: &Tensor, skip: &Tensor| -> Result<Tensor> {
        if mode != ConvBackward::Candle && im2col::shifted_rows(h) {
            // The CPU's shifted rows with bias, skip and scale applied on the way out, as the chain below
            // rounds them (h, w, b and skip are detached or untracked here).
            let x = dropped(h, drop)?;
            return im2col::conv2d_fused(&x, w, b, Some(skip), Some(scale), padding);
        }
        (conv2d_bias(&dropped(h, drop)?, w, b, padding)? + skip)? * scale
    };
    let tracked = h.track_op() || w.track_op() || b.track_op() || skip.track_op();
    if mode == ConvBackward::Candle || !tracked {
        return chain(h, w, b, skip);
    }
    let value = chain(&h.detach(), &w.detach(), &b.detach(), &skip.detach())?;
    let wb = pack(w, b)?;
    carried::apply(
        value,
        h,
        &wb,
        skip,
        ResidualBackward {
            w_dims: w.dims4()?,
            padding,
            scale,
            drop: drop.cloned(),
            cudnn: mode == ConvBackward::Cudnn && h.device().is_cuda(),
        },
    )
}

/// How `--conv cudnn` chooses each convolution pass's algorithm (once per shape, precision and math mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CudnnAlgo {
    /// cuDNN's first heuristic choice (`cudnnGet…Algorithm_v7`): PyTorch with `cudnn.benchmark = False`.
    Heuristic,
    /// cuDNN's measured search (`cudnnFind…Algorithm`: every algorithm is run on the shape and timed), the
    /// fastest that is allowed ([`fastest_allowed`]): PyTorch with `cudnn.benchmark = True`, its default in the
    /// benchmark of `bench/`. The search costs a few seconds at the first step. The default: on an H100
    /// (2026-12-05), with `--norm kernel`, 3.30× the f32 training rate of `Gemm` with the fused norm (303.5
    /// against 91.9 images/s, 0.90× PyTorch eager with `cudnn.benchmark`); f32 errors against the CPU up to
    /// 1.6e-5 on two of five convolution shapes (docs/benchmarks/image.md): the search had chosen Winograd
    /// algorithms there.
    Find,
    /// As [`CudnnAlgo::Find`], but in exact f32 (no TF32) without the transform algorithms (Winograd, FFT),
    /// whose rounding differs most from a direct sum: the candidates that keep f32 convolutions within 1e-5 of
    /// the CPU. Not yet run on a GPU.
    FindExact,
}

impl CudnnAlgo {
    /// The choice as `--cudnn-algo` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Heuristic => "heuristic",
            Self::Find => "find",
            Self::FindExact => "find-exact",
        }
    }
}

impl std::str::FromStr for CudnnAlgo {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        [Self::Find, Self::FindExact, Self::Heuristic]
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                format!("cuDNN algorithm choice {s:?}: expected find, find-exact or heuristic (default find)")
            })
    }
}

thread_local! {
    static CUDNN_ALGO: std::cell::Cell<CudnnAlgo> = const { std::cell::Cell::new(CudnnAlgo::Find) };
}

/// Selects how cuDNN convolutions run on this thread afterwards choose their algorithms.
pub fn set_cudnn_algo(a: CudnnAlgo) {
    CUDNN_ALGO.with(|m| m.set(a));
}

/// The current choice of [`set_cudnn_algo`] on this thread.
pub fn cudnn_algo() -> CudnnAlgo {
    CUDNN_ALGO.with(|m| m.get())
}

/// The current convolution choice as the bench and check tables print it: `Gemm`, `Patch`, …, and for cuDNN
/// also how its algorithms are chosen (`Cudnn (find)`).
pub fn conv_label() -> String {
    match conv_backward() {
        ConvBackward::Cudnn if cudnn_algo() != CudnnAlgo::Heuristic => {
            format!("Cudnn ({})", cudnn_algo().name())
        }
        c => format!("{c:?}"),
    }
}

/// One algorithm's entry in cuDNN's measured search (`cudnnConvolution…AlgoPerf_t`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured<A> {
    /// The algorithm.
    pub algo: A,
    /// Whether it ran (`status == CUDNN_STATUS_SUCCESS`; unsupported shapes and failed allocations do not).
    pub ran: bool,
    /// Its measured time in milliseconds.
    pub time_ms: f32,
    /// Whether it used tensor cores (any math type but `CUDNN_FMA_MATH`), which for f32 tensors means TF32.
    pub tensor_ops: bool,
    /// Whether it is a transform algorithm (Winograd or FFT).
    pub transform: bool,
}

/// The fastest algorithm of a measured search that ran and, unless `tensor_ops_allowed`, used exact FMA
/// arithmetic: PyTorch's rule, which in f32 without `allow_tf32` runs only FMA-math results; unless
/// `transforms_allowed`, not a transform algorithm either ([`CudnnAlgo::FindExact`]). `None` when none
/// qualifies (the caller then takes the heuristic's choice). cuDNN returns the entries sorted by time, but the
/// order is not relied upon; on equal times the earlier entry wins.
pub fn fastest_allowed<A: Copy>(
    results: &[Measured<A>],
    tensor_ops_allowed: bool,
    transforms_allowed: bool,
) -> Option<A> {
    results
        .iter()
        .filter(|m| m.ran && m.time_ms.is_finite() && m.time_ms >= 0.0)
        .filter(|m| tensor_ops_allowed || !m.tensor_ops)
        .filter(|m| transforms_allowed || !m.transform)
        .fold(None::<&Measured<A>>, |best, m| match best {
            Some(b) if b.time_ms <= m.time_ms => Some(b),
            _ => Some(m),
        })
        .map(|m| m.algo)
}

/// Whether a cuDNN convolution algorithm, by its enum name (`CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED`, as
/// cudarc's `Debug` prints it), is a transform algorithm: Winograd or FFT (direct and GEMM ones are not).
pub fn transform_algorithm(name: &str) -> bool {
    name.contains("WINOGRAD") || name.contains("FFT")
}

/// The error of `--conv cudnn` in a binary built without the `cudnn` feature.
pub const NO_CUDNN: &str =
    "--conv cudnn: this binary was built without cuDNN; rebuild with `--features cudnn` (README, GPU section)";

#[cfg(feature = "cudnn")]
use super::cudnnconv as cudnn;

/// Stand-ins for a build without cuDNN: [`ConvBackward::Cudnn`] is then refused on CUDA tensors.
#[cfg(not(feature = "cudnn"))]
mod cudnn {
    use candle_core::{Result, Tensor};

    fn refuse<T>() -> Result<T> {
        candle_core::bail!("{}", super::NO_CUDNN)
    }

    pub fn forward(_: &Tensor, _: &Tensor, _: usize) -> Result<Tensor> {
        refuse()
    }

    pub fn gradients(_: &Tensor, _: &Tensor, _: &Tensor, _: usize) -> Result<(Tensor, Tensor)> {
        refuse()
    }
}

/// A `k×k` stride-1 convolution layer with "same" padding (`weight` `[out, in, k, k]`, `bias` `[out]`), the
/// module form of [`conv2d_bias`].
#[derive(Debug, Clone)]
pub struct Conv {
    weight: Tensor,
    bias: Tensor,
    padding: usize,
}

impl Conv {
    pub fn new(weight: Tensor, bias: Tensor, padding: usize) -> Self {
        Self {
            weight,
            bias,
            padding,
        }
    }

    /// The weight and bias in `dtype` (the activations' precision; the f32 master copies are cast, a no-op in
    /// f32, and the casts' backward returns their gradients in f32).
    pub fn params(&self, dtype: candle_core::DType) -> Result<(Tensor, Tensor)> {
        Ok((self.weight.to_dtype(dtype)?, self.bias.to_dtype(dtype)?))
    }

    /// (self(dropout(h)) + skip) · `scale` ([`residual`]), in h's precision.
    pub fn forward_residual(
        &self,
        h: &Tensor,
        skip: &Tensor,
        drop: Option<&DropMask>,
        scale: f64,
    ) -> Result<Tensor> {
        let (w, b) = self.params(h.dtype())?;
        residual(h, &w, &b, skip, drop, scale, self.padding)
    }

    /// The layer plus a per-sample, per-channel `shift` `[B, C]` (EDM's noise-embedding shift after `conv0`),
    /// added inside the same op: the graph keeps no separate sum.
    pub fn forward_shifted(&self, x: &Tensor, shift: &Tensor) -> Result<Tensor> {
        let (w, b) = self.params(x.dtype())?;
        let b = b.unsqueeze(0)?.broadcast_add(&shift.to_dtype(x.dtype())?)?;
        conv2d_bias(x, &w, &b, self.padding)
    }
}

impl candle_core::Module for Conv {
    /// Runs in the input's precision ([`Conv::params`]).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (w, b) = self.params(x.dtype())?;
        conv2d_bias(x, &w, &b, self.padding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unet::testutil::{probe_gradients, rel};
    use candle_core::{Device, Var};
    use vsdm_core::NoiseRng;

    /// [`plane_sums`] against candle's sums (f64 reference of the same f32 values): per sample and channel and
    /// over the batch, planes shorter and longer than the eight lanes and with a remainder, a transposed
    /// (non-contiguous) input, an empty batch, empty planes.
    #[test]
    fn plane_sums_match_candles_sums() {
        let dev = Device::Cpu;
        let mut rng = NoiseRng::new(17);
        for (b, c, h, w) in [
            (2usize, 3usize, 1usize, 3usize),
            (3, 5, 8, 8),
            (1, 2, 7, 9),
            (0, 4, 2, 2),
            // Empty planes: zero sums.
            (2, 3, 0, 4),
            (2, 3, 4, 0),
        ] {
            let x = rng.randn(&[b, c, h, w], &dev).unwrap();
            for t in [x.clone(), x.transpose(2, 3).unwrap()] {
                let exact = t
                    .to_dtype(candle_core::DType::F64)
                    .unwrap()
                    .sum(3)
                    .unwrap()
                    .sum(2)
                    .unwrap();
                for batch in [false, true] {
                    let want = if batch {
                        exact.sum(0).unwrap()
                    } else {
                        exact.clone()
                    };
                    let got = plane_sums(&t, batch)
                        .unwrap()
                        .to_dtype(candle_core::DType::F64)
                        .unwrap();
                    assert_eq!(
                        got.dims(),
                        want.dims(),
                        "[{b}, {c}, {h}, {w}] batch {batch}"
                    );
                    let d = (got - &want).unwrap().abs().unwrap().flatten_all().unwrap();
                    let d = if d.elem_count() == 0 {
                        0.0
                    } else {
                        d.max(0).unwrap().to_scalar::<f64>().unwrap()
                    };
                    assert!(d < 1e-5, "[{b}, {c}, {h}, {w}] batch {batch}: {d}");
                }
            }
        }
    }

    /// The value and the three gradients equal candle's conv2d plus a broadcast bias and their own backward
    /// (f32, ≤ 1e-5 relative), for 1×1, 3×3 and 5×5 kernels, "same" and smaller padding, channel counts that
    /// differ, biases per channel and per sample and channel.
    #[test]
    fn matches_candle_conv2d_and_its_gradients() {
        let dev = Device::Cpu;
        let mut rng = NoiseRng::new(42);
        for &(b, ci, co, h, k, p) in &[
            (2usize, 3usize, 5usize, 8usize, 3usize, 1usize),
            (3, 4, 4, 6, 1, 0),
            (1, 2, 3, 7, 3, 0),
            (2, 6, 2, 5, 5, 2),
        ] {
            let x = Var::from_tensor(&rng.randn(&[b, ci, h, h], &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&rng.randn(&[co, ci, k, k], &dev).unwrap()).unwrap();
            // A per-channel bias for odd cases, a per-sample one ([B, C]) for even ones.
            let bshape = if ci % 2 == 1 { vec![co] } else { vec![b, co] };
            let bias = Var::from_tensor(&rng.randn(&bshape, &dev).unwrap()).unwrap();
            let oh = h + 2 * p + 1 - k;
            let probe = rng.randn(&[b, co, oh, oh], &dev).unwrap();
            let run = |mode| {
                set_conv_backward(mode);
                let y = conv2d_bias(x.as_tensor(), w.as_tensor(), bias.as_tensor(), p).unwrap();
                let g = probe_gradients(&y, &probe, &[&x, &w, &bias]);
                (y, g[0].clone(), g[1].clone(), g[2].clone())
            };
            let (y0, dx0, dw0, db0) = run(ConvBackward::Candle);
            let (y1, dx1, dw1, db1) = run(ConvBackward::Gemm);
            set_conv_backward(ConvBackward::Gemm);
            let case = format!("b{b} ci{ci} co{co} h{h} k{k} p{p}");
            assert!(rel(&y0, &y1) < 1e-6, "{case}: value");
            assert!(
                rel(&dx0, &dx1) < 1e-5,
                "{case}: input gradient {}",
                rel(&dx0, &dx1)
            );
            assert!(
                rel(&dw0, &dw1) < 1e-5,
                "{case}: weight gradient {}",
                rel(&dw0, &dw1)
            );
            assert!(
                rel(&db0, &db1) < 1e-5,
                "{case}: bias gradient {}",
                rel(&db0, &db1)
            );
        }
    }

    /// The gradients through candle's conv2d (CUDA's `gemm` mode) equal the CPU's shifted-rows gradients and
    /// candle's transposed convolution (f32 and f64, ≤ 1e-5 relative): 1×1, 3×3 and 5×5 kernels, "same",
    /// smaller and no padding, non-square images.
    #[test]
    fn candles_conv2d_gradients_match_the_shifted_rows() {
        let dev = Device::Cpu;
        let mut rng = NoiseRng::new(23);
        for &(b, ci, co, h, w, k, p) in &[
            (2usize, 3usize, 4usize, 6usize, 5usize, 3usize, 1usize),
            (1, 2, 3, 7, 7, 3, 0),
            (3, 4, 2, 5, 6, 1, 0),
            (2, 2, 3, 6, 6, 5, 2),
            (1, 3, 2, 8, 7, 5, 1),
        ] {
            for dt in [candle_core::DType::F32, candle_core::DType::F64] {
                let mut r = |d: &[usize]| rng.randn(d, &dev).unwrap().to_dtype(dt).unwrap();
                let (x, wt) = (r(&[b, ci, h, w]), r(&[co, ci, k, k]));
                let dy = r(&[b, co, h + 2 * p + 1 - k, w + 2 * p + 1 - k]);
                let (dx, dw) = candle_gradients(&x, &wt, &dy, p).unwrap();
                let (dx1, dw1) = im2col::conv2d_gradients(&x, &wt, &dy, p).unwrap();
                let dx0 = dy.conv_transpose2d(&wt, p, 0, 1, 1).unwrap();
                let case = format!("b{b} ci{ci} co{co} {h}×{w} k{k} p{p} {dt:?}");
                assert_eq!((dx.dims(), dw.dims()), (x.dims(), wt.dims()), "{case}");
                for (a, e, what) in [
                    (&dx, &dx1, "input"),
                    (&dx, &dx0, "input (transposed)"),
                    (&dw, &dw1, "weight"),
                ] {
                    assert!(rel(a, e) < 1e-5, "{case}: {what} gradient {}", rel(a, e));
                }
            }
        }
    }

    /// The fused residual tail equals candle's chain (dropout product, conv2d, bias, skip sum, rescaling) in
    /// value and in the gradients of h, W, b and the skip (f32, ≤ 1e-5 relative), with and without a dropout
    /// mask, for 3×3 and 1×1 kernels; without tracked inputs it records nothing.
    #[test]
    fn residual_matches_candles_chain() {
        let dev = Device::Cpu;
        let mut rng = NoiseRng::new(7);
        for &(b, ci, co, h, k, p, drop) in &[
            (2usize, 4usize, 6usize, 8usize, 3usize, 1usize, 0.3f64),
            (3, 5, 5, 6, 1, 0, 0.0),
            (2, 3, 4, 7, 3, 1, 0.0),
        ] {
            let x = Var::from_tensor(&rng.randn(&[b, ci, h, h], &dev).unwrap()).unwrap();
            let w = Var::from_tensor(&rng.randn(&[co, ci, k, k], &dev).unwrap()).unwrap();
            let bias = Var::from_tensor(&rng.randn(&[co], &dev).unwrap()).unwrap();
            let skip = Var::from_tensor(&rng.randn(&[b, co, h, h], &dev).unwrap()).unwrap();
            let mask = super::super::layers::dropout_mask(drop, None);
            let probe = rng.randn(&[b, co, h, h], &dev).unwrap();
            let s = std::f64::consts::FRAC_1_SQRT_2;
            let run = |mode| {
                set_conv_backward(mode);
                let y = residual(
                    x.as_tensor(),
                    w.as_tensor(),
                    bias.as_tensor(),
                    skip.as_tensor(),
                    mask.as_ref(),
                    s,
                    p,
                )
                .unwrap();
                let grads = probe_gradients(&y, &probe, &[&x, &w, &bias, &skip]);
                (y, grads)
            };
            let (y0, g0) = run(ConvBackward::Candle);
            let (y1, g1) = run(ConvBackward::Gemm);
            let case = format!("b{b} ci{ci} co{co} h{h} k{k} p{p} drop{drop}");
            assert!(rel(&y0, &y1) < 1e-6, "{case}: value {}", rel(&y0, &y1));
            for (name, (a, c)) in ["h", "W", "b", "skip"].iter().zip(g0.iter().zip(&g1)) {
                assert!(rel(a, c) < 1e-5, "{case}: gradient of {name} {}", rel(a, c));
            }
            // Detached inputs (sampling): the plain value, no op recorded.
            let y2 = residual(
                &x.as_tensor().detach(),
                &w.as_tensor().detach(),
                &bias.as_tensor().detach(),
                &skip.as_tensor().detach(),
                mask.as_ref(),
                s,
                p,
            )
            .unwrap();
            assert!(rel(&y0, &y2) < 1e-6 && !y2.track_op(), "{case}: detached");
        }
    }

    /// The measured-search rule: fastest entry that ran; in exact f32 only FMA-math entries, and under
    /// find-exact no transform algorithm; failed, NaN-timed and excluded entries never win however fast; no
    /// qualifying entry gives `None`.
    #[test]
    fn measured_search_takes_the_fastest_allowed_algorithm() {
        let m = |algo: u8, ran: bool, time_ms: f32, tensor_ops: bool, transform: bool| Measured {
            algo,
            ran,
            time_ms,
            tensor_ops,
            transform,
        };
        // Deliberately unsorted: 1 fails, 2 is TF32, 3 has no timing, 6 is the fastest FMA-math one but a
        // Winograd algorithm, 4 the fastest direct FMA-math one.
        let results = [
            m(0, true, 3.0, false, false),
            m(1, false, 0.1, false, false),
            m(2, true, 0.5, true, false),
            m(3, true, f32::NAN, false, false),
            m(4, true, 1.0, false, false),
            m(5, true, 1.0, false, false),
            m(6, true, 0.7, false, true),
        ];
        assert_eq!(fastest_allowed(&results, false, true), Some(6));
        assert_eq!(fastest_allowed(&results, false, false), Some(4));
        assert_eq!(fastest_allowed(&results, true, true), Some(2));
        assert_eq!(fastest_allowed(&results[1..4], false, true), None);
        assert_eq!(fastest_allowed(&results[6..], false, false), None);
        assert_eq!(fastest_allowed::<u8>(&[], true, true), None);
        assert_eq!("find".parse::<CudnnAlgo>(), Ok(CudnnAlgo::Find));
        assert_eq!("find-exact".parse::<CudnnAlgo>(), Ok(CudnnAlgo::FindExact));
        assert!("fastest"
            .parse::<CudnnAlgo>()
            .unwrap_err()
            .contains("find, find-exact or heuristic"));
    }

    /// Every transform algorithm among cuDNN 9's convolution algorithms (cudnn_cnn.h), and none of the others.
    #[test]
    fn transform_algorithms_are_winograd_and_fft() {
        for (name, transform) in [
            ("CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM", false),
            ("CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM", false),
            ("CUDNN_CONVOLUTION_FWD_ALGO_GEMM", false),
            ("CUDNN_CONVOLUTION_FWD_ALGO_DIRECT", false),
            ("CUDNN_CONVOLUTION_FWD_ALGO_FFT", true),
            ("CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING", true),
            ("CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD", true),
            ("CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED", true),
            ("CUDNN_CONVOLUTION_BWD_DATA_ALGO_0", false),
            ("CUDNN_CONVOLUTION_BWD_DATA_ALGO_1", false),
            ("CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT", true),
            ("CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING", true),
            ("CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD", true),
            ("CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED", true),
            ("CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0", false),
            ("CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1", false),
            ("CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT", true),
            ("CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3", false),
            ("CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED", true),
            ("CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING", true),
        ] {
            assert_eq!(transform_algorithm(name), transform, "{name}");
        }
    }
}
