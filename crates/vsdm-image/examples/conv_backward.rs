//! A convolution's two gradients on the CPU as the backward pass takes them (`im2col::conv2d_gradients`: one
//! channels-last copy of dy for both) against the two passes apart (`conv2d_input_grad`, `conv2d_weight_grad`:
//! one copy each), on shapes of the tiny network (batch 16) and of DDPM++ (batch 4), in one process with the
//! two alternated call by call, so that the machine's noise falls on both:
//! `cargo run --release -p vsdm-image --example conv_backward [ROUNDS]`. Prints the median milliseconds per
//! call of each and their ratio per shape, and the ratio of the sums.
use std::time::Instant;

use candle_core::{Device, Result, Tensor};
use vsdm_image::unet::im2col;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> Result<()> {
    vsdm_eval::cli::tune_allocator();
    let rounds: usize = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .map_err(|e| candle_core::Error::Msg(format!("ROUNDS {a:?}: {e}")))?,
        None => 15,
    };
    let dev = Device::Cpu;
    // (network, batch, input channels, output channels, side, kernel)
    let shapes = [
        ("tiny", 16, 32, 32, 32, 3),
        ("tiny", 16, 64, 64, 16, 3),
        ("tiny", 16, 96, 64, 16, 3),
        ("tiny", 16, 64, 32, 32, 1),
        ("ddpm++", 4, 128, 128, 32, 3),
        ("ddpm++", 4, 256, 256, 16, 3),
        ("ddpm++", 4, 256, 256, 8, 3),
    ];
    println!(
        "| network | shape (b, c → c_out, side, k) | apart, ms | shared, ms | shared / apart |"
    );
    println!("|---|---|---:|---:|---:|");
    let (mut sum_a, mut sum_s) = (0.0, 0.0);
    for (net, b, c, co, side, k) in shapes {
        let p = k / 2;
        let x = Tensor::randn(0f32, 1.0, (b, c, side, side), &dev)?;
        let w = Tensor::randn(0f32, 0.1, (co, c, k, k), &dev)?;
        let dy = Tensor::randn(0f32, 1.0, (b, co, side, side), &dev)?;
        let apart = || -> Result<(Tensor, Tensor)> {
            let dx = im2col::conv2d_input_grad(&dy, &w, p)?;
            Ok((dx, im2col::conv2d_weight_grad(&x, &dy, k, p)?))
        };
        let shared = || im2col::conv2d_gradients(&x, &w, &dy, p);
        apart()?;
        shared()?;
        let (mut ta, mut ts) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let t = Instant::now();
            apart()?;
            ta.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            shared()?;
            ts.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let (a, s) = (median(ta), median(ts));
        sum_a += a;
        sum_s += s;
        println!(
            "| {net} | {b}, {c} → {co}, {side}×{side}, {k}×{k} | {a:.2} | {s:.2} | {:.3} |",
            s / a
        );
    }
    println!(
        "| all | sum of the medians | {sum_a:.2} | {sum_s:.2} | {:.3} |",
        sum_s / sum_a
    );
    Ok(())
}
