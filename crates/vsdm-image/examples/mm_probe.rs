//! The CPU matrix products of a stride-1 convolution in both patch layouts, on the tiny and DDPM++ networks'
//! shapes: `cargo run --release -p vsdm-image --example mm_probe`. `co` output channels, `kk` = C·k·k, `n` =
//! B·H'·W' positions. The forward is W `[co, kk]` · cols `[kk, n]` (channel-major patches, the CUDA `--conv
//! patch` layout) or rows `[n, kk]` · Wᵀ (position-major patches, the CPU layout since 2026-12-05); the weight
//! gradient dy `[co, n]` · colsᵀ or rowsᵀ · dyᵀ `[n, co]`. Prints the best of 3 means of 20 calls in ms and
//! GFLOP/s.
use std::time::Instant;

use candle_core::{Device, Result, Tensor};

fn time(label: &str, flops: f64, f: impl Fn() -> Result<Tensor>) -> Result<()> {
    f()?;
    let iters = 20;
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..iters {
            f()?;
        }
        best = best.min(t.elapsed().as_secs_f64() / iters as f64);
    }
    println!(
        "  {label:<34} {:>7.2} ms {:>7.1} GFLOP/s",
        best * 1e3,
        flops / best / 1e9
    );
    Ok(())
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    // tiny at 32×32 (32 → 32, a decoder block's 96 → 32, the input gradient's 32 → 96) and 16×16, batch 16;
    // DDPM++ at 16×16, batch 4.
    for &(co, kk, n) in &[
        (32usize, 288usize, 16384usize),
        (32, 864, 16384),
        (96, 288, 16384),
        (64, 576, 4096),
        (256, 2304, 1024),
    ] {
        let flops = 2.0 * (co * kk * n) as f64;
        let w = Tensor::randn(0f32, 1.0, (co, kk), &dev)?;
        let cols = Tensor::randn(0f32, 1.0, (kk, n), &dev)?;
        let rows = Tensor::randn(0f32, 1.0, (n, kk), &dev)?;
        let dy = Tensor::randn(0f32, 1.0, (co, n), &dev)?;
        let dyt = Tensor::randn(0f32, 1.0, (n, co), &dev)?;
        println!("co {co}, kk {kk}, n {n}");
        time("forward  W · cols", flops, || w.matmul(&cols))?;
        time("forward  rows · Wᵀ", flops, || rows.matmul(&w.t()?))?;
        time("weight   dy · colsᵀ", flops, || dy.matmul(&cols.t()?))?;
        time("weight   rowsᵀ · dyᵀ", flops, || {
            rows.t()?.matmul(&dyt)
        })?;
    }
    Ok(())
}
