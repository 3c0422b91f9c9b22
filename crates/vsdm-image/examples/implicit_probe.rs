//! A 3×3 stride-1 "same" convolution of one channels-last image on one thread, two ways, on the tiny network's
//! shapes: `cargo run --release -p vsdm-image --example implicit_probe`.
//! - rows: the position-major patch matrix `[H·W, 9·C]` (zeros at the borders), then one product with the
//!   weight `[9·C, C_out]` (the CPU layout since 2026-12-05);
//! - shifted: the input zero-padded to `[H+2, W+2, C]`, and for each kernel row one product whose left operand
//!   is the padded image read in place: row q of it is the 3·C values from pixel q + row·(W+2) on (rows
//!   overlapping, stride C), accumulated into an output over the padded width `[H·(W+2), C_out]` whose two
//!   extra columns are dropped later.
//!
//! Prints the best of 5 means of 20 calls in ms, for the fill alone, the product(s) alone and both.
use std::mem::MaybeUninit;
use std::time::Instant;

use vsdm_core::fastmath::gemm_rows;

fn best(mut f: impl FnMut()) -> f64 {
    f();
    let iters = 20;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / iters as f64);
    }
    best * 1e3
}

fn main() {
    for &(c, co, h) in &[
        (32usize, 32usize, 32usize),
        (64, 32, 32),
        (96, 32, 32),
        (32, 64, 16),
        (64, 64, 16),
        (128, 64, 16),
        (64, 64, 8),
    ] {
        let w = h;
        let (wp, hp) = (w + 2, h + 2);
        let x: Vec<f32> = (0..h * w * c)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let wt: Vec<f32> = (0..9 * c * co)
            .map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        // rows
        let row = 9 * c;
        let mut rows = vec![0f32; h * w * row];
        let fill_rows = |rows: &mut [f32]| {
            for (q, r) in rows.chunks_mut(row).enumerate() {
                let (y, xo) = (q / w, q % w);
                for i in 0..3 {
                    for j in 0..3 {
                        let seg = &mut r[(i * 3 + j) * c..][..c];
                        let (iy, ix) = ((y + i) as isize - 1, (xo + j) as isize - 1);
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            seg.fill(0.0);
                        } else {
                            seg.copy_from_slice(&x[(iy as usize * w + ix as usize) * c..][..c]);
                        }
                    }
                }
            }
        };
        let mut out = vec![MaybeUninit::<f32>::uninit(); hp * wp * co];
        let t_fill = best(|| fill_rows(&mut rows));
        let t_mm = best(|| unsafe {
            gemm_rows(
                out.as_mut_ptr() as *mut f32,
                co,
                (rows.as_ptr(), (row, 1)),
                (wt.as_ptr(), (co, 1)),
                (h * w, row, co),
                1.0,
                false,
            )
        });
        // shifted: padded image with slack for the last row's overlapping reads.
        let mut xp = vec![0f32; hp * wp * c + 2 * c];
        let fill_pad = |xp: &mut [f32]| {
            for y in 0..h {
                xp[((y + 1) * wp + 1) * c..][..w * c].copy_from_slice(&x[y * w * c..][..w * c]);
            }
        };
        let mut acc = vec![0f32; h * wp * co];
        let t_pad = best(|| fill_pad(&mut xp));
        let t_sh = best(|| unsafe {
            for i in 0..3 {
                gemm_rows(
                    acc.as_mut_ptr(),
                    co,
                    (xp.as_ptr().add(i * wp * c), (c, 1)),
                    (wt.as_ptr().add(i * 3 * c * co), (co, 1)),
                    (h * wp, 3 * c, co),
                    1.0,
                    i > 0,
                )
            }
        });
        // Same values where both are defined.
        let out: Vec<f32> = out[..h * w * co]
            .iter()
            .map(|v| unsafe { v.assume_init() })
            .collect();
        let mut worst = 0f32;
        for y in 0..h {
            for xo in 0..w {
                for o in 0..co {
                    worst =
                        worst.max((out[(y * w + xo) * co + o] - acc[(y * wp + xo) * co + o]).abs());
                }
            }
        }
        // Weight gradients: rowsᵀ · dy `[H·W, C_out]` against Σ over kernel rows of (shifted view)ᵀ · dy over
        // the padded width (zeros in its extra columns).
        let dy: Vec<f32> = (0..h * w * co)
            .map(|i| ((i * 31) % 997) as f32 / 997.0 - 0.5)
            .collect();
        let mut dyp = vec![0f32; h * wp * co];
        for y in 0..h {
            dyp[y * wp * co..][..w * co].copy_from_slice(&dy[y * w * co..][..w * co]);
        }
        let mut gw = vec![MaybeUninit::<f32>::uninit(); 9 * c * co];
        let t_gw = best(|| unsafe {
            gemm_rows(
                gw.as_mut_ptr() as *mut f32,
                co,
                (rows.as_ptr(), (1, row)),
                (dy.as_ptr(), (co, 1)),
                (row, h * w, co),
                1.0,
                false,
            )
        });
        let mut gs = vec![0f32; 9 * c * co];
        let t_gs = best(|| unsafe {
            for i in 0..3 {
                gemm_rows(
                    gs[i * 3 * c * co..][..3 * c * co].as_mut_ptr(),
                    co,
                    (xp.as_ptr().add(i * wp * c), (1, c)),
                    (dyp.as_ptr(), (co, 1)),
                    (3 * c, h * wp, co),
                    1.0,
                    false,
                )
            }
        });
        let gw: Vec<f32> = gw.iter().map(|v| unsafe { v.assume_init() }).collect();
        let gworst = gw
            .iter()
            .zip(&gs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!(
            "   weight gradient: rows {:.3} ms (+ fill), shifted {t_gs:.3} ms ({:.2}× with the fills); max diff {gworst:.1e}",
            t_gw,
            (t_gs + t_pad) / (t_gw + t_fill)
        );
        println!(
            "c {c:>3} → {co:>3} at {h:>2}×{w:>2}: rows fill {t_fill:.3} + mm {t_mm:.3} = {:.3} ms; \
             shifted pad {t_pad:.3} + 3 mm {t_sh:.3} = {:.3} ms ({:.2}×); max diff {worst:.1e}",
            t_fill + t_mm,
            t_pad + t_sh,
            (t_pad + t_sh) / (t_fill + t_mm)
        );
    }
}
