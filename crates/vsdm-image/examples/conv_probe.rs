//! candle's CPU `conv2d` (3×3, stride 1, "same") against an im2col built from tensor ops (nine shifted windows,
//! stacked) and one batched matmul, forward and weight gradient, on shapes of the tiny and DDPM++ networks:
//! `cargo run --release -p vsdm-image --example conv_probe`. Prints milliseconds per call (mean of 3) and the
//! forward's largest difference between the two.
use std::time::Instant;

use candle_core::{Device, Result, Tensor};

/// `[b, c, h, w]` → `[b, c·k·k, h·w]`, the patches of a stride-1 "same" convolution.
fn im2col(x: &Tensor, k: usize, p: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let xp = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
    let mut parts = Vec::with_capacity(k * k);
    for i in 0..k {
        for j in 0..k {
            parts.push(xp.narrow(2, i, h)?.narrow(3, j, w)?);
        }
    }
    Tensor::stack(&parts, 2)?.reshape((b, c * k * k, h * w))
}

/// Mean seconds of `n` calls of `f`.
fn time<T>(n: usize, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    let t = Instant::now();
    for _ in 0..n {
        f()?;
    }
    Ok(t.elapsed().as_secs_f64() / n as f64)
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    for &(b, c, h) in &[(16usize, 32usize, 32usize), (4, 256, 32), (4, 256, 16)] {
        let x = Tensor::randn(0f32, 1., (b, c, h, h), &dev)?;
        let w = Tensor::randn(0f32, 1., (c, c, 3, 3), &dev)?;
        let dy = Tensor::randn(0f32, 1., (b, c, h, h), &dev)?;
        let via_cols = || -> Result<Tensor> {
            let wm = w.reshape((1, c, c * 9))?.broadcast_as((b, c, c * 9))?;
            wm.matmul(&im2col(&x, 3, 1)?)?.reshape((b, c, h, h))
        };
        let fwd = time(3, || x.conv2d(&w, 1, 1, 1, 1))?;
        let fwd_cols = time(3, via_cols)?;
        let diff = (x.conv2d(&w, 1, 1, 1, 1)? - via_cols()?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        let dw = time(3, || {
            x.transpose(0, 1)?
                .conv2d(&dy.transpose(0, 1)?, 1, 1, 1, 1)?
                .transpose(0, 1)
        })?;
        let dw_cols = time(3, || {
            let cols = im2col(&x, 3, 1)?
                .transpose(0, 1)?
                .reshape((c * 9, b * h * h))?;
            let dym = dy.transpose(0, 1)?.contiguous()?.reshape((c, b * h * h))?;
            dym.matmul(&cols.t()?)?.reshape((c, c, 3, 3))
        })?;
        let gflop = 2.0 * (b * h * h * c * c * 9) as f64 / 1e9;
        println!(
            "batch {b}, {c} channels, {h}×{h}: conv2d {:.1} ms ({:.0} GFLOP/s), im2col + matmul {:.1} ms \
             (max diff {diff:.1e}); weight gradient: conv2d {:.1} ms, im2col + matmul {:.1} ms",
            fwd * 1e3,
            gflop / fwd,
            fwd_cols * 1e3,
            dw * 1e3,
            dw_cols * 1e3
        );
    }
    Ok(())
}
