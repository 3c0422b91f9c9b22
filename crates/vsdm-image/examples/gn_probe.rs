//! Times the group norm + SiLU value at the U-Net's shapes on the CPU: as a chain of candle's ops (how
//! `unet::fastnorm` computed it on the CPU before `unet::gncpu`) and as the crate's loops, and the loops'
//! backward alone. `cargo run --release -p vsdm-image --example gn_probe`

use std::time::Instant;

use candle_core::{Device, Result, Tensor};
use vsdm_image::unet::{fastnorm::group_norm, gncpu, gnkernel::Spec};

/// The value as candle's op chain: mean, subtract, square, mean, √, reciprocal, scale, shift, SiLU.
fn chain(x: &Tensor, g: &Tensor, b: &Tensor, groups: usize) -> Result<Tensor> {
    let (bs, c) = (x.dim(0)?, x.dim(1)?);
    let xr = x.reshape((bs, groups, ()))?;
    let xc = xr.broadcast_sub(&xr.mean_keepdim(2)?)?;
    let r = (xc.sqr()?.mean_keepdim(2)? + 1e-5)?.sqrt()?.recip()?;
    let xhat = xc.broadcast_mul(&r)?.reshape(x.shape())?;
    let y = xhat
        .broadcast_mul(&g.reshape((1, c, 1, 1))?)?
        .broadcast_add(&b.reshape((1, c, 1, 1))?)?;
    candle_nn::ops::silu(&y)
}

/// Mean milliseconds of 20 calls after one warm-up.
fn time(f: &dyn Fn() -> Result<()>) -> Result<f64> {
    f()?;
    let t = Instant::now();
    for _ in 0..20 {
        f()?;
    }
    Ok(t.elapsed().as_secs_f64() / 20.0 * 1e3)
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    println!("| shape | groups | value, candle's chain | value, loops | backward, loops |");
    println!("|---|---:|---:|---:|---:|");
    for (bs, c, h, groups) in [
        (16, 32, 32, 8),
        (16, 64, 16, 16),
        (4, 256, 16, 32),
        (4, 128, 32, 32),
    ] {
        let x = Tensor::randn(0f32, 1., (bs, c, h, h), &dev)?;
        let g = (Tensor::randn(0f32, 1., c, &dev)? + 1.0)?;
        let b = Tensor::randn(0f32, 1., c, &dev)?;
        let du = Tensor::randn(0f32, 1., (bs, c, h, h), &dev)?;
        let spec = Spec {
            groups,
            eps: 1e-5,
            silu: true,
        };
        let old = time(&|| chain(&x, &g, &b, groups).map(drop))?;
        let new = time(&|| group_norm(&x, &g, &b, groups, 1e-5, true).map(drop))?;
        let bwd = time(&|| gncpu::gradients(&x, &g, &b, &du, spec).map(drop))?;
        println!("| {bs}×{c}×{h}×{h} | {groups} | {old:.3} ms | {new:.3} ms | {bwd:.3} ms |");
    }
    Ok(())
}
