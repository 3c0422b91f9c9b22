//! One stride-1 3×3 convolution and its weight gradient on the CPU, with the patch matrix channel-major
//! (`im2col`, W · cols) and as the crate now computes it (`im2col::conv2d`, position-major below 128 output
//! channels), on shapes of the tiny network (batch 16) and of DDPM++ (batch 4):
//! `cargo run --release -p vsdm-image --example conv_layouts`. Prints the best of 3 means of 5 calls in ms.
use std::time::Instant;

use candle_core::{Device, Result, Tensor};
use vsdm_image::unet::im2col;

fn time(label: &str, f: impl Fn() -> Result<Tensor>) -> Result<f64> {
    f()?;
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..5 {
            f()?;
        }
        best = best.min(t.elapsed().as_secs_f64() / 5.0);
    }
    println!("  {label:<28} {:>7.2} ms", best * 1e3);
    Ok(best)
}

fn main() -> Result<()> {
    // As the crate's programs do: freed activation buffers are kept for reuse.
    vsdm_eval::cli::tune_allocator();
    let dev = Device::Cpu;
    for &(b, ci, co, h) in &[
        (16usize, 32usize, 32usize, 32usize),
        (16, 96, 32, 32),
        (16, 64, 64, 16),
        (4, 256, 256, 16),
        (4, 128, 256, 32),
    ] {
        let x = Tensor::randn(0f32, 1.0, (b, ci, h, h), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (co, ci, 3, 3), &dev)?;
        let dy = Tensor::randn(0f32, 1.0, (b, co, h, h), &dev)?;
        println!("batch {b}, {ci} → {co} channels, {h}×{h}");
        let old = time("forward, channel-major", || {
            w.reshape((co, ci * 9))?
                .matmul(&im2col::im2col(&x, 3, 1)?)?
                .reshape((co, b, h, h))?
                .transpose(0, 1)?
                .contiguous()
        })?;
        let new = time("forward, im2col::conv2d", || im2col::conv2d(&x, &w, 1))?;
        println!("  {:<28} {:>7.2}×", "ratio", new / old);
        let old = time("weight grad, channel-major", || {
            dy.transpose(0, 1)?
                .contiguous()?
                .reshape((co, b * h * h))?
                .matmul(&im2col::im2col(&x, 3, 1)?.t()?)?
                .reshape((co, ci, 3, 3))
        })?;
        let new = time("weight grad, im2col's", || {
            im2col::conv2d_weight_grad(&x, &dy, 3, 1)
        })?;
        println!("  {:<28} {:>7.2}×", "ratio", new / old);
    }
    Ok(())
}
