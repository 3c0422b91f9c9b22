//! Stride-1 2-D convolutions whose forward pass and both backward passes run on cuDNN (`--conv cudnn`, cargo
//! feature `cudnn`).
//!
//! candle 0.11.1's own `cudnn` feature routes only the convolution *forward* through cuDNN. Its backward stays
//! candle's: `conv_transpose2d` (a direct kernel) for the input gradient, and for the weight gradient a `conv2d`
//! of the batch-transposed input with the output gradient as a 32×32 "kernel", a shape for which cuDNN's
//! heuristics are poor; `CUDA.md` measured training 3× slower with it. Here the three passes are cuDNN's own
//! `cudnnConvolutionForward`, `cudnnConvolutionBackwardData` and `cudnnConvolutionBackwardFilter` (through
//! cudarc's safe wrappers), each a graph-free candle custom op ([`forward`], [`gradients`]); the layer's op
//! in [`super::fastconv`] adds the bias and records the convolution in the graph with these as its backward, as
//! PyTorch does with cuDNN on.
//!
//! Precision, PyTorch's conventions:
//! - f32 tensors: exact FP32 arithmetic (`CUDNN_FMA_MATH`) unless candle's reduced-precision f32 GEMM switch
//!   (`candle_core::cuda::set_gemm_reduced_precision_f32`, `--tf32`) is on, then TF32 tensor cores
//!   (`CUDNN_TENSOR_OP_MATH`), which is what `torch.backends.cudnn.allow_tf32` selects;
//! - bf16 and f16 tensors: tensor cores with f32 accumulation (the convolution descriptor's compute type is
//!   f32), as under PyTorch's autocast.
//!
//! The algorithm of each pass is chosen once per shape, data type and math mode on the thread
//! ([`super::fastconv::set_cudnn_algo`], `--cudnn-algo`): by default ([`CudnnAlgo::Find`]) cuDNN's measured
//! search (`cudnnFind…Algorithm`: each algorithm run and timed on the shape) and the fastest allowed entry
//! ([`super::fastconv::fastest_allowed`]: in exact f32 only FMA-math ones), run with the math type it was
//! measured with, PyTorch's `cudnn.benchmark = True`; [`CudnnAlgo::FindExact`] also leaves out the Winograd
//! and FFT algorithms in exact f32; [`CudnnAlgo::Heuristic`] takes cuDNN's first heuristic choice
//! (`cudnnGet…Algorithm_v7`), PyTorch's behaviour with `cudnn.benchmark = False`. cudarc 0.19 keeps
//! its wrappers' handle and descriptors private, so the search builds its own ([`SearchHandle`],
//! [`RawDescriptors`]) on the same stream with the same settings. Handles are per thread and device (cuDNN
//! handles are neither `Send` nor `Sync`).
//!
//! Linking: cudarc links `libcudnn.so.9` dynamically (candle builds cudarc for dynamic linking), so a binary
//! built with this feature needs cuDNN 9 on the loader path at start-up, e.g. the copy inside a PyTorch
//! installation (`site-packages/nvidia/cudnn/lib`). `scripts/setup-cuda-build.sh --cudnn` installs the same
//! library for the build machine's linker.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::thread::LocalKey;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc;
use candle_core::cuda_backend::{CudaDType, CudaDevice, DeviceId};
use candle_core::{CpuStorage, CudaStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use cudarc::cudnn::sys::{
    cudnnConvolutionBwdDataAlgo_t as DataAlgo, cudnnConvolutionBwdFilterAlgo_t as FilterAlgo,
    cudnnConvolutionFwdAlgo_t as FwdAlgo, cudnnConvolutionMode_t, cudnnMathType_t,
    cudnnTensorFormat_t as Format,
};
use cudarc::cudnn::{
    result, sys, ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn,
    CudnnDataType, CudnnError, FilterDescriptor, TensorDescriptor,
};

use super::fastconv::{cudnn_algo, fastest_allowed, transform_algorithm, CudnnAlgo, Measured};
use cudarc::driver::{CudaSlice, DeviceRepr};

/// Which of the three convolution passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Forward,
    BackwardData,
    BackwardFilter,
}

/// A pass's problem: `x` `[b, ci, h, w]`, `w` `[co, ci, k, k]`, `y` `[b, co, h', w']`, padding and precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Problem {
    x: [i32; 4],
    w: [i32; 4],
    y: [i32; 4],
    padding: i32,
    dtype: DType,
    tensor_ops: bool,
    /// The algorithm is chosen by cuDNN's measured search ([`CudnnAlgo::Find`], [`CudnnAlgo::FindExact`]), not
    /// its heuristic.
    measured: bool,
    /// The search may choose transform algorithms (all but [`CudnnAlgo::FindExact`] in exact f32).
    transforms: bool,
}

impl Problem {
    fn new(x: &Shape, w: &Shape, y: &Shape, padding: usize, dtype: DType) -> Result<Self> {
        let tensor_ops = dtype != DType::F32 || candle_core::cuda::gemm_reduced_precision_f32();
        Ok(Self {
            x: dims4(x, "input")?,
            w: dims4(w, "weight")?,
            y: dims4(y, "output")?,
            padding: i32::try_from(padding).map_err(wrap)?,
            dtype,
            tensor_ops,
            measured: cudnn_algo() != CudnnAlgo::Heuristic,
            transforms: tensor_ops || cudnn_algo() != CudnnAlgo::FindExact,
        })
    }

    /// The math type the problem's convolution descriptor starts with: tensor cores where allowed, else
    /// exact FMA arithmetic.
    fn math(&self) -> MathType {
        if self.tensor_ops {
            MathType::CUDNN_TENSOR_OP_MATH
        } else {
            MathType::CUDNN_FMA_MATH
        }
    }
}

type MathType = cudnnMathType_t;

thread_local! {
    static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
    static FORWARD: RefCell<HashMap<Problem, (FwdAlgo, MathType)>> = RefCell::new(HashMap::new());
    static BACKWARD_DATA: RefCell<HashMap<Problem, (DataAlgo, MathType)>> = RefCell::new(HashMap::new());
    static BACKWARD_FILTER: RefCell<HashMap<Problem, (FilterAlgo, MathType)>> =
        RefCell::new(HashMap::new());
    static SEARCH_HANDLES: RefCell<HashMap<DeviceId, SearchHandle>> = RefCell::new(HashMap::new());
}

fn handle(dev: &CudaDevice) -> Result<Arc<Cudnn>> {
    HANDLES.with(|h| {
        if let Some(c) = h.borrow().get(&dev.id()) {
            return Ok(c.clone());
        }
        let c = Cudnn::new(dev.cuda_stream()).map_err(wrap)?;
        h.borrow_mut().insert(dev.id(), c.clone());
        Ok(c)
    })
}

fn wrap(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("cuDNN convolution: {e}"))
}

fn dims4(s: &Shape, what: &str) -> Result<[i32; 4]> {
    let (a, b, c, d) = s
        .dims4()
        .map_err(|_| wrap(format!("{what} must be 4-D, got {s:?}")))?;
    let cast =
        |v: usize| i32::try_from(v).map_err(|_| wrap(format!("{what} dimension {v} too large")));
    Ok([cast(a)?, cast(b)?, cast(c)?, cast(d)?])
}

/// The descriptors of a problem in element type `T` (tensors NCHW, compute type f32).
struct Descriptors<T: CudnnDataType> {
    conv: ConvDescriptor<f32>,
    x: TensorDescriptor<T>,
    w: FilterDescriptor<T>,
    y: TensorDescriptor<T>,
}

impl<T: CudnnDataType> Descriptors<T> {
    fn new(cudnn: &Arc<Cudnn>, p: &Problem) -> Result<Self> {
        let mut conv = cudnn
            .create_conv2d::<f32>(
                [p.padding, p.padding],
                [1, 1],
                [1, 1],
                cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
            )
            .map_err(wrap)?;
        conv.set_math_type(p.math()).map_err(wrap)?;
        Ok(Self {
            conv,
            x: cudnn
                .create_4d_tensor::<T>(Format::CUDNN_TENSOR_NCHW, p.x)
                .map_err(wrap)?,
            w: cudnn
                .create_4d_filter::<T>(Format::CUDNN_TENSOR_NCHW, p.w)
                .map_err(wrap)?,
            y: cudnn
                .create_4d_tensor::<T>(Format::CUDNN_TENSOR_NCHW, p.y)
                .map_err(wrap)?,
        })
    }
}

/// The algorithm and math type cached in `cache` for `p`, or else chosen: by the measured search (`search`,
/// when `p.measured`; its fastest allowed entry) or by the heuristic's first choice (`pick`, with the
/// problem's own math type, also when the search fails or finds nothing allowed), then cached.
fn algorithm<A: Copy + PartialEq + std::fmt::Debug + 'static>(
    cache: &'static LocalKey<RefCell<HashMap<Problem, (A, MathType)>>>,
    pass: Pass,
    p: &Problem,
    search: impl FnOnce() -> Result<Vec<Measured<(A, MathType)>>>,
    pick: impl FnOnce() -> std::result::Result<A, CudnnError>,
) -> Result<(A, MathType)> {
    if let Some(a) = cache.with(|m| m.borrow().get(p).copied()) {
        return Ok(a);
    }
    let mut chosen = None;
    if p.measured {
        // A search that fails as a whole (say, no memory for its buffers) leaves the heuristic's choice.
        let results = search().unwrap_or_else(|e| {
            tracing::warn!(
                "cuDNN measured search, {pass:?} x {:?} w {:?}: {e}; using the heuristic",
                p.x,
                p.w
            );
            Vec::new()
        });
        chosen = fastest_allowed(&results, p.tensor_ops, p.transforms);
        let time = |c: (A, MathType)| {
            results
                .iter()
                .find(|m| m.algo == c)
                .map_or(f32::NAN, |m| m.time_ms)
        };
        tracing::info!(
            "cuDNN measured search, {pass:?} x {:?} w {:?} {:?} (tensor cores {}): {} of {} ran; chose {:?} \
             ({:.3} ms)",
            p.x,
            p.w,
            p.dtype,
            p.tensor_ops,
            results.iter().filter(|m| m.ran).count(),
            results.len(),
            chosen,
            chosen.map_or(f32::NAN, time)
        );
    }
    let a = match chosen {
        Some(c) => c,
        None => (pick().map_err(wrap)?, p.math()),
    };
    cache.with(|m| m.borrow_mut().insert(*p, a));
    Ok(a)
}

/// A cuDNN handle of the measured search's own on a device's stream (cudarc's [`Cudnn`] keeps its raw handle
/// private), destroyed with the thread's table.
struct SearchHandle(sys::cudnnHandle_t);

impl Drop for SearchHandle {
    fn drop(&mut self) {
        // SAFETY: created by `result::create_handle` and destroyed only here.
        let _ = unsafe { result::destroy_handle(self.0) };
    }
}

/// This thread's search handle for `dev`, created on first use on the device's stream (so the search runs in
/// order with candle's kernels).
fn search_handle(dev: &CudaDevice) -> Result<sys::cudnnHandle_t> {
    SEARCH_HANDLES.with(|h| {
        if let Some(s) = h.borrow().get(&dev.id()) {
            return Ok(s.0);
        }
        let stream = dev.cuda_stream();
        stream.context().bind_to_thread().map_err(wrap)?;
        let s = SearchHandle(result::create_handle().map_err(wrap)?);
        // SAFETY: a live handle and the device's live stream (the device outlives its tensors' ops).
        unsafe { result::set_stream(s.0, stream.cu_stream() as sys::cudaStream_t) }
            .map_err(wrap)?;
        let raw = s.0;
        h.borrow_mut().insert(dev.id(), s);
        Ok(raw)
    })
}

/// Raw descriptors of a problem for the measured search, set exactly as [`Descriptors::new`] sets cudarc's
/// (NCHW, cross-correlation, stride 1, dilation 1, f32 compute type, the problem's math type); each one
/// created is destroyed on drop.
struct RawDescriptors {
    x: sys::cudnnTensorDescriptor_t,
    w: sys::cudnnFilterDescriptor_t,
    y: sys::cudnnTensorDescriptor_t,
    conv: sys::cudnnConvolutionDescriptor_t,
}

impl RawDescriptors {
    fn new(p: &Problem, data_type: sys::cudnnDataType_t) -> Result<Self> {
        let null = std::ptr::null_mut();
        let mut d = Self {
            x: null,
            w: null as _,
            y: null,
            conv: null as _,
        };
        // SAFETY: each descriptor is set right after its creation, before any use; `Drop` frees what exists.
        unsafe {
            d.x = result::create_tensor_descriptor().map_err(wrap)?;
            result::set_tensor4d_descriptor(d.x, Format::CUDNN_TENSOR_NCHW, data_type, p.x)
                .map_err(wrap)?;
            d.y = result::create_tensor_descriptor().map_err(wrap)?;
            result::set_tensor4d_descriptor(d.y, Format::CUDNN_TENSOR_NCHW, data_type, p.y)
                .map_err(wrap)?;
            d.w = result::create_filter_descriptor().map_err(wrap)?;
            result::set_filter4d_descriptor(d.w, data_type, Format::CUDNN_TENSOR_NCHW, p.w)
                .map_err(wrap)?;
            d.conv = result::create_convolution_descriptor().map_err(wrap)?;
            result::set_convolution2d_descriptor(
                d.conv,
                p.padding,
                p.padding,
                1,
                1,
                1,
                1,
                cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            )
            .map_err(wrap)?;
            result::set_convolution_math_type(d.conv, p.math()).map_err(wrap)?;
        }
        Ok(d)
    }
}

impl Drop for RawDescriptors {
    fn drop(&mut self) {
        // SAFETY: each non-null descriptor was created by `RawDescriptors::new` and is freed only here.
        unsafe {
            if !self.x.is_null() {
                let _ = result::destroy_tensor_descriptor(self.x);
            }
            if !self.y.is_null() {
                let _ = result::destroy_tensor_descriptor(self.y);
            }
            if !self.w.is_null() {
                let _ = result::destroy_filter_descriptor(self.w);
            }
            if !self.conv.is_null() {
                let _ = result::destroy_convolution_descriptor(self.conv);
            }
        }
    }
}

/// Runs one of cuDNN's `cudnnFind…Algorithm` calls (`find(requested, &mut returned, results)`, which runs and
/// times every algorithm on buffers it allocates itself) and reads its `returned` entries with `entry`
/// (algorithm, status, time, math type).
fn measured_search<R: Copy, A: Copy + std::fmt::Debug>(
    requested: usize,
    find: impl FnOnce(i32, *mut i32, *mut R) -> sys::cudnnStatus_t,
    entry: impl Fn(&R) -> (A, sys::cudnnStatus_t, f32, MathType),
) -> Result<Vec<Measured<(A, MathType)>>> {
    // SAFETY: plain C structs of enums (all-zero is a valid value of each) and numbers, which cuDNN overwrites.
    let mut out: Vec<R> = vec![unsafe { std::mem::zeroed() }; requested];
    let mut returned = 0i32;
    find(requested as i32, &mut returned, out.as_mut_ptr())
        .result()
        .map_err(wrap)?;
    let n = (returned.max(0) as usize).min(requested);
    Ok(out[..n]
        .iter()
        .map(|r| {
            let (algo, status, time_ms, math) = entry(r);
            Measured {
                algo: (algo, math),
                ran: status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS,
                time_ms,
                tensor_ops: math != MathType::CUDNN_FMA_MATH,
                transform: transform_algorithm(&format!("{algo:?}")),
            }
        })
        .collect())
}

/// The measured search of `pass` for problem `p` in element type `T`.
fn search_forward<T: CudnnDataType>(
    dev: &CudaDevice,
    p: &Problem,
) -> Result<Vec<Measured<(FwdAlgo, MathType)>>> {
    let (h, d) = (search_handle(dev)?, RawDescriptors::new(p, T::DATA_TYPE)?);
    measured_search(
        FwdAlgo::CUDNN_CONVOLUTION_FWD_ALGO_COUNT as usize,
        // SAFETY: live handle and descriptors; `out` holds `n` entries.
        |n, got, out| unsafe {
            sys::cudnnFindConvolutionForwardAlgorithm(h, d.x, d.w, d.conv, d.y, n, got, out)
        },
        |r: &sys::cudnnConvolutionFwdAlgoPerf_t| (r.algo, r.status, r.time, r.mathType),
    )
}

fn search_backward_data<T: CudnnDataType>(
    dev: &CudaDevice,
    p: &Problem,
) -> Result<Vec<Measured<(DataAlgo, MathType)>>> {
    let (h, d) = (search_handle(dev)?, RawDescriptors::new(p, T::DATA_TYPE)?);
    measured_search(
        DataAlgo::CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT as usize,
        // SAFETY: as in `search_forward`.
        |n, got, out| unsafe {
            sys::cudnnFindConvolutionBackwardDataAlgorithm(h, d.w, d.y, d.conv, d.x, n, got, out)
        },
        |r: &sys::cudnnConvolutionBwdDataAlgoPerf_t| (r.algo, r.status, r.time, r.mathType),
    )
}

fn search_backward_filter<T: CudnnDataType>(
    dev: &CudaDevice,
    p: &Problem,
) -> Result<Vec<Measured<(FilterAlgo, MathType)>>> {
    let (h, d) = (search_handle(dev)?, RawDescriptors::new(p, T::DATA_TYPE)?);
    measured_search(
        FilterAlgo::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT as usize,
        // SAFETY: as in `search_forward`.
        |n, got, out| unsafe {
            sys::cudnnFindConvolutionBackwardFilterAlgorithm(h, d.x, d.y, d.conv, d.w, n, got, out)
        },
        |r: &sys::cudnnConvolutionBwdFilterAlgoPerf_t| (r.algo, r.status, r.time, r.mathType),
    )
}

/// An uninitialised device buffer of `n` elements (every pass writes all of its output: β = 0).
fn output<T: DeviceRepr>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: cuDNN overwrites every element (β = 0) before anything reads the buffer.
    unsafe { dev.alloc::<T>(n) }
}

/// A workspace of `bytes` bytes, `None` when the algorithm needs none.
fn workspace(dev: &CudaDevice, bytes: usize) -> Result<Option<CudaSlice<u8>>> {
    if bytes == 0 {
        return Ok(None);
    }
    // SAFETY: scratch memory; cuDNN does not read what it has not written.
    Ok(Some(unsafe { dev.alloc::<u8>(bytes) }?))
}

/// Runs `pass` of problem `p` with element type `T`: `a` and `b` are the pass's two inputs (forward: x, w;
/// backward-data: dy, w; backward-filter: x, dy), contiguous from their layouts' offsets.
fn run<T>(
    pass: Pass,
    p: &Problem,
    dev: &CudaDevice,
    a: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
) -> Result<CudaSlice<T>>
where
    T: CudnnDataType + DeviceRepr + CudaDType + Scale,
{
    let cudnn = handle(dev)?;
    let mut d = Descriptors::<T>::new(&cudnn, p)?;
    let av = a.0.as_cuda_slice::<T>()?.slice(a.1.start_offset()..);
    let bv = b.0.as_cuda_slice::<T>()?.slice(b.1.start_offset()..);
    let count = |s: [i32; 4]| s.iter().map(|&v| v as usize).product::<usize>();
    let (one, zero) = (T::ONE, T::ZERO);
    match pass {
        Pass::Forward => {
            let (algo, math) = algorithm(
                &FORWARD,
                pass,
                p,
                || search_forward::<T>(dev, p),
                || {
                    let op = ConvForward {
                        conv: &d.conv,
                        x: &d.x,
                        w: &d.w,
                        y: &d.y,
                    };
                    op.pick_algorithm()
                },
            )?;
            d.conv.set_math_type(math).map_err(wrap)?;
            let op = ConvForward {
                conv: &d.conv,
                x: &d.x,
                w: &d.w,
                y: &d.y,
            };
            let mut ws = workspace(dev, op.get_workspace_size(algo).map_err(wrap)?)?;
            let mut y = output::<T>(dev, count(p.y))?;
            // SAFETY: the descriptors describe `av`, `bv` and `y` (contiguous NCHW of type T).
            unsafe { op.launch(algo, ws.as_mut(), (one, zero), &av, &bv, &mut y) }.map_err(wrap)?;
            Ok(y)
        }
        Pass::BackwardData => {
            let (algo, math) = algorithm(
                &BACKWARD_DATA,
                pass,
                p,
                || search_backward_data::<T>(dev, p),
                || {
                    let op = ConvBackwardData {
                        conv: &d.conv,
                        dx: &d.x,
                        w: &d.w,
                        dy: &d.y,
                    };
                    op.pick_algorithm()
                },
            )?;
            d.conv.set_math_type(math).map_err(wrap)?;
            let op = ConvBackwardData {
                conv: &d.conv,
                dx: &d.x,
                w: &d.w,
                dy: &d.y,
            };
            let mut ws = workspace(dev, op.get_workspace_size(algo).map_err(wrap)?)?;
            let mut dx = output::<T>(dev, count(p.x))?;
            // SAFETY: as above; `av` is dy, `bv` is w.
            unsafe { op.launch(algo, ws.as_mut(), (one, zero), &mut dx, &bv, &av) }
                .map_err(wrap)?;
            Ok(dx)
        }
        Pass::BackwardFilter => {
            let (algo, math) = algorithm(
                &BACKWARD_FILTER,
                pass,
                p,
                || search_backward_filter::<T>(dev, p),
                || {
                    let op = ConvBackwardFilter {
                        conv: &d.conv,
                        x: &d.x,
                        dw: &d.w,
                        dy: &d.y,
                    };
                    op.pick_algorithm()
                },
            )?;
            d.conv.set_math_type(math).map_err(wrap)?;
            let op = ConvBackwardFilter {
                conv: &d.conv,
                x: &d.x,
                dw: &d.w,
                dy: &d.y,
            };
            let mut ws = workspace(dev, op.get_workspace_size(algo).map_err(wrap)?)?;
            let mut dw = output::<T>(dev, count(p.w))?;
            // SAFETY: as above; `av` is x, `bv` is dy.
            unsafe { op.launch(algo, ws.as_mut(), (one, zero), &av, &mut dw, &bv) }
                .map_err(wrap)?;
            Ok(dw)
        }
    }
}

/// The scaling factors α = 1, β = 0 of cuDNN's `y = α·op + β·y` in each element type.
trait Scale: Sized {
    const ONE: Self;
    const ZERO: Self;
}
impl Scale for f32 {
    const ONE: Self = 1.0;
    const ZERO: Self = 0.0;
}
impl Scale for half::bf16 {
    const ONE: Self = half::bf16::ONE;
    const ZERO: Self = half::bf16::ZERO;
}
impl Scale for half::f16 {
    const ONE: Self = half::f16::ONE;
    const ZERO: Self = half::f16::ZERO;
}

/// One cuDNN pass as a candle op on its two inputs; `out` is the result's shape.
struct PassOp {
    pass: Pass,
    problem: Problem,
    out: Shape,
}

impl PassOp {
    /// The pass on tensors `a` and `b` (made contiguous) for the convolution of shapes `x` ⊛ `w` → `y`.
    fn apply(
        pass: Pass,
        a: &Tensor,
        b: &Tensor,
        shapes: [&Shape; 3],
        padding: usize,
    ) -> Result<Tensor> {
        let [x, w, y] = shapes;
        let op = PassOp {
            pass,
            problem: Problem::new(x, w, y, padding, a.dtype())?,
            out: match pass {
                Pass::Forward => y.clone(),
                Pass::BackwardData => x.clone(),
                Pass::BackwardFilter => w.clone(),
            },
        };
        a.contiguous()?.apply_op2_no_bwd(&b.contiguous()?, &op)
    }
}

impl PassOp {
    /// [`run`] in element type `T`, its result as candle storage.
    fn run<T>(&self, a: (&CudaStorage, &Layout), b: (&CudaStorage, &Layout)) -> Result<CudaStorage>
    where
        T: CudnnDataType + DeviceRepr + CudaDType + Scale,
    {
        let dev = a.0.device().clone();
        let out = run::<T>(self.pass, &self.problem, &dev, a, b)?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }
}

impl CustomOp2 for PassOp {
    fn name(&self) -> &'static str {
        match self.pass {
            Pass::Forward => "cudnn-conv2d",
            Pass::BackwardData => "cudnn-conv2d-backward-data",
            Pass::BackwardFilter => "cudnn-conv2d-backward-filter",
        }
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        refuse_cpu(self.name())
    }

    fn cuda_fwd(
        &self,
        a: &CudaStorage,
        al: &Layout,
        b: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        if !al.is_contiguous() || !bl.is_contiguous() {
            candle_core::bail!("{}: inputs must be contiguous", self.name());
        }
        let st = match a.dtype() {
            DType::F32 => self.run::<f32>((a, al), (b, bl))?,
            DType::BF16 => self.run::<half::bf16>((a, al), (b, bl))?,
            DType::F16 => self.run::<half::f16>((a, al), (b, bl))?,
            other => candle_core::bail!("{}: unsupported dtype {other:?}", self.name()),
        };
        Ok((st, self.out.clone()))
    }
}

fn refuse_cpu(op: &str) -> Result<(CpuStorage, Shape)> {
    candle_core::bail!("{op}: cuDNN runs on CUDA devices only (use --conv gemm on the CPU)")
}

/// `[b, co, h + 2p − k + 1, w + 2p − k + 1]`, or an error naming the mismatch.
fn out_shape(x: &Shape, w: &Shape, padding: usize) -> Result<Shape> {
    let (b, ci, h, wd) = x.dims4()?;
    let (co, wci, kh, kw) = w.dims4()?;
    if ci != wci {
        candle_core::bail!("cuDNN convolution: input has {ci} channels, weight expects {wci}");
    }
    if h + 2 * padding < kh || wd + 2 * padding < kw {
        candle_core::bail!(
            "cuDNN convolution: {kh}×{kw} kernel larger than the padded {h}×{wd} input"
        );
    }
    Ok(Shape::from((
        b,
        co,
        h + 2 * padding + 1 - kh,
        wd + 2 * padding + 1 - kw,
    )))
}

fn check_cuda(x: &Tensor) -> Result<()> {
    if !x.device().is_cuda() {
        candle_core::bail!(
            "--conv cudnn: cuDNN runs on CUDA devices only; this tensor is on {:?}",
            x.device()
        );
    }
    Ok(())
}

/// `x.conv2d(w, padding, 1, 1, 1)` through cuDNN, without recording a graph (callers differentiate it with
/// [`gradients`]).
pub fn forward(x: &Tensor, w: &Tensor, padding: usize) -> Result<Tensor> {
    check_cuda(x)?;
    let y = out_shape(x.shape(), w.shape(), padding)?;
    PassOp::apply(Pass::Forward, x, w, [x.shape(), w.shape(), &y], padding)
}

/// The input and weight gradients of `x.conv2d(w, padding, 1, 1, 1)` for the output gradient `dy`, through
/// cuDNN's backward-data and backward-filter passes (in `dy`'s precision, which is the activations').
pub fn gradients(x: &Tensor, w: &Tensor, dy: &Tensor, padding: usize) -> Result<(Tensor, Tensor)> {
    check_cuda(x)?;
    let shapes = [x.shape(), w.shape(), dy.shape()];
    let dx = PassOp::apply(Pass::BackwardData, dy, w, shapes, padding)?;
    let dw = PassOp::apply(Pass::BackwardFilter, x, dy, shapes, padding)?;
    Ok((dx, dw))
}
