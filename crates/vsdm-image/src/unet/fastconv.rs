//! A stride-1 2-D convolution whose backward pass runs on convolution *forward* kernels.
//!
//! candle 0.11.1 differentiates `conv2d` with `conv_transpose2d` for the input gradient, a direct kernel that
//! costs about 4× the forward on CUDA (`CUDA.md`) and is a plain loop nest on the CPU, while `conv2d` itself
//! runs as im2col + GEMM (cuBLAS on CUDA). For stride 1 the input gradient is itself a convolution:
//!
//!   dx = conv2d(dy, W̃, padding k − 1 − p),  W̃[ci, co, i, j] = W[co, ci, k − 1 − i, k − 1 − j],
//!
//! and the weight gradient is candle's own correlation of the batch-transposed input with the batch-transposed
//! output gradient. [`conv2d_gemm`] computes the value with a gradient-free `conv2d` and hands it to a custom op
//! on (x, W) whose forward returns it ([`super::carried`]) and whose backward returns these two gradients, so
//! every convolution of the training step, forward and backward, goes through the im2col + GEMM path.
//!
//! The choice is per thread ([`set_conv_backward`]); [`ConvBackward::Candle`] restores candle's own backward, for
//! comparisons (`vsdm-image bench --conv candle`).

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::carried::Carried;

/// How convolutions are differentiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvBackward {
    /// candle's own: `conv_transpose2d` for the input gradient.
    Candle,
    /// Both gradients as `conv2d` forward passes (im2col + GEMM); see the module documentation.
    Gemm,
    /// The forward and both gradients through cuDNN (`super::cudnnconv`) for CUDA tensors, in a binary built
    /// with the `cudnn` feature (without it, an error naming the feature); CPU tensors take the GEMM path.
    Cudnn,
}

backward_choice!(
    ConvBackward { "candle" => Candle, "gemm" => Gemm, "cudnn" => Cudnn },
    default Gemm,
    set_conv_backward,
    conv_backward,
    "convolution"
);

/// The op of [`conv2d_gemm`] on (x, W): its forward returns the convolution computed beforehand, its backward the
/// two gradients of a stride-1 convolution with `padding`.
struct ConvGrad {
    padding: usize,
    value: Carried,
}

impl CustomOp2 for ConvGrad {
    fn name(&self) -> &'static str {
        "conv2d-gemm-backward"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.value.cpu(self.name())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.value.cuda(self.name())
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, _, kh, kw) = w.dims4()?;
        if kh != kw {
            candle_core::bail!("conv2d-gemm-backward: square kernels only, got {kh}×{kw}");
        }
        let p = self.padding;
        // W̃: swap in/out channels and flip both spatial axes.
        let rev = Tensor::arange_step(kh as i64 - 1, -1, -1, w.device())?
            .to_dtype(candle_core::DType::U32)?;
        let wt = w
            .transpose(0, 1)?
            .contiguous()?
            .index_select(&rev, 2)?
            .index_select(&rev, 3)?
            .contiguous()?;
        let dx = dy.conv2d(&wt, kh - 1 - p, 1, 1, 1)?;
        let dw = x
            .transpose(0, 1)?
            .conv2d(&dy.transpose(0, 1)?, p, 1, 1, 1)?
            .transpose(0, 1)?;
        let dw = if dw.dim(2)? != kh || dw.dim(3)? != kw {
            dw.narrow(2, 0, kh)?.narrow(3, 0, kw)?
        } else {
            dw
        };
        Ok((Some(dx), Some(dw)))
    }
}

/// `x.conv2d(w, padding, 1, 1, 1)` with the backward pass chosen by [`conv_backward`]. Under
/// [`ConvBackward::Cudnn`], CUDA tensors go through cuDNN and CPU tensors take the GEMM path (so a CUDA run with
/// cuDNN can be compared against the CPU with the same setting).
pub fn conv2d_gemm(x: &Tensor, w: &Tensor, padding: usize) -> Result<Tensor> {
    let mode = conv_backward();
    if mode == ConvBackward::Cudnn && x.device().is_cuda() {
        return cudnn_conv2d(x, w, padding);
    }
    match mode {
        ConvBackward::Candle => x.conv2d(w, padding, 1, 1, 1),
        // Nothing to differentiate (sampling, EMA network): the plain forward, no gradient carrier.
        _ if !x.track_op() && !w.track_op() => x.conv2d(w, padding, 1, 1, 1),
        ConvBackward::Gemm | ConvBackward::Cudnn => {
            let y = x.detach().conv2d(&w.detach(), padding, 1, 1, 1)?;
            x.apply_op2(
                w,
                ConvGrad {
                    padding,
                    value: Carried::new(y),
                },
            )
        }
    }
}

#[cfg(feature = "cudnn")]
fn cudnn_conv2d(x: &Tensor, w: &Tensor, padding: usize) -> Result<Tensor> {
    super::cudnnconv::conv2d(x, w, padding)
}

#[cfg(not(feature = "cudnn"))]
fn cudnn_conv2d(_: &Tensor, _: &Tensor, _: usize) -> Result<Tensor> {
    candle_core::bail!(
        "--conv cudnn: this binary was built without cuDNN; rebuild with `--features cudnn` (README, GPU section)"
    )
}

/// A `k×k` stride-1 convolution layer with "same" padding (`weight` `[out, in, k, k]`, `bias` `[out]`), the
/// module form of [`conv2d_gemm`].
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
}

impl candle_core::Module for Conv {
    /// Runs in the input's precision: the (f32 master) weight and bias are cast to it, a no-op in f32, and the
    /// casts' backward returns their gradients in f32.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.to_dtype(x.dtype())?;
        let b = self.bias.to_dtype(x.dtype())?;
        let y = conv2d_gemm(x, &w, self.padding)?;
        let c = b.dim(0)?;
        y.broadcast_add(&b.reshape((1, c, 1, 1))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use vsdm_core::NoiseRng;

    fn max_abs(t: &Tensor) -> f64 {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    }

    fn rel(a: &Tensor, b: &Tensor) -> f64 {
        max_abs(&(a - b).unwrap()) / max_abs(a)
    }

    /// The value and both gradients equal candle's conv2d and its own backward (f32, ≤ 1e-5 relative), for
    /// 1×1 and 3×3 kernels, "same" and smaller padding, channel counts that differ.
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
            let oh = h + 2 * p + 1 - k;
            let probe = rng.randn(&[b, co, oh, oh], &dev).unwrap();
            let run = |mode| {
                set_conv_backward(mode);
                let y = conv2d_gemm(x.as_tensor(), w.as_tensor(), p).unwrap();
                let g = (&y * &probe)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                (
                    y,
                    g.get(x.as_tensor()).unwrap().clone(),
                    g.get(w.as_tensor()).unwrap().clone(),
                )
            };
            let (y0, dx0, dw0) = run(ConvBackward::Candle);
            let (y1, dx1, dw1) = run(ConvBackward::Gemm);
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
        }
    }
}
