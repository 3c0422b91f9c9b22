use super::*;
use std::mem::MaybeUninit;

/// [`exp_f32`] against f64's exp on a dense grid of [−87, 88] (every 1/1024, and the ends): within 2 ulp
/// (2.4e-7 relative).
#[test]
fn exp_f32_is_within_two_ulp() {
    let mut worst = (0f64, 0f32);
    for i in -87 * 1024..=88 * 1024 {
        let x = i as f32 / 1024.0;
        let want = (x as f64).exp();
        let err = (exp_f32(x) as f64 - want).abs() / want;
        if err > worst.0 {
            worst = (err, x);
        }
    }
    assert!(
        worst.0 < 2.4e-7,
        "worst relative error {} at {}",
        worst.0,
        worst.1
    );
    // Below the clamp the result is e^−87, not 0: negligible beside a softmax row's largest term, 1.
    assert!(exp_f32(-1e4) < 2e-38 && exp_f32(-1e4) >= 0.0);
}

/// [`tanh_f32`] and [`sigmoid_f32`] against f64's on a dense grid of [−20, 20] and on tiny arguments
/// (where 1 − 2/(e^{2x} + 1) would cancel): tanh within 3e-7 relative, the sigmoid within 3e-7 relative
/// down to x = −20 and 2e-7 absolute beyond; NaN stays NaN, ±∞ give ±1 and 0 / 1.
#[test]
fn tanh_and_sigmoid_match_f64() {
    let mut worst = (0f64, 0f32, "");
    let mut check = |x: f32| {
        let xd = x as f64;
        let t = (tanh_f32(x) as f64 - xd.tanh()).abs() / xd.tanh().abs().max(1e-300);
        let sd = 1.0 / (1.0 + (-xd).exp());
        let s = (sigmoid_f32(x) as f64 - sd).abs() / sd;
        for (e, name) in [(t, "tanh"), (s, "sigmoid")] {
            if x != 0.0 && e > worst.0 {
                worst = (e, x, name);
            }
        }
    };
    for i in -20 * 4096..=20 * 4096 {
        check(i as f32 / 4096.0);
    }
    for k in 1..40 {
        check(0.5f32.powi(k));
        check(-(0.5f32.powi(k)));
    }
    assert!(
        worst.0 < 3e-7,
        "{} relative error {} at {}",
        worst.2,
        worst.0,
        worst.1
    );
    assert_eq!(tanh_f32(0.0), 0.0);
    assert!(tanh_f32(f32::NAN).is_nan() && sigmoid_f32(f32::NAN).is_nan());
    assert_eq!(
        (tanh_f32(f32::INFINITY), tanh_f32(f32::NEG_INFINITY)),
        (1.0, -1.0)
    );
    assert_eq!(
        (sigmoid_f32(f32::INFINITY), sigmoid_f32(-1e5)),
        (1.0, sigmoid_f32(-1e5))
    );
    assert!(sigmoid_f32(-1e5) < 1e-37);
}

/// [`par_rows_mut`] gives each call its first row's index and exactly its rows of both outputs: every row of
/// each is written once with its own index (a shifted or overlapping run would leave a wrong index or a
/// count other than one), for row counts below, at and above the pool's chunking.
#[test]
fn par_rows_mut_hands_out_disjoint_rows() {
    for rows in [0usize, 1, 7, 16, 1000] {
        let (wa, wb) = (3usize, 2usize);
        let mut a = vec![(usize::MAX, 0u32); rows * wa];
        let mut b = vec![(usize::MAX, 0u32); rows * wb];
        par_rows_mut((&mut a, wa), (&mut b, wb), rows, |r0, ra, rb| {
            assert_eq!(ra.len() / wa, rb.len() / wb);
            for (i, (ra, rb)) in ra.chunks_mut(wa).zip(rb.chunks_mut(wb)).enumerate() {
                for v in ra.iter_mut().chain(rb.iter_mut()) {
                    *v = (r0 + i, v.1 + 1);
                }
            }
        });
        for (x, w) in [(&a, wa), (&b, wb)] {
            for (r, row) in x.chunks(w).enumerate() {
                assert!(
                    row.iter().all(|v| *v == (r, 1)),
                    "{rows} rows: row {r} is {row:?}"
                );
            }
        }
    }
}

/// [`matmul_f32`], [`matmul_bias_f32`] and [`matmul_bias_onto_f32`] against the sums written out in f64:
/// row-major and transposed (column-major) operands, one row, fewer rows than threads, many rows, an empty
/// inner dimension (zeros, or the bias and base) and no columns.
#[test]
fn matmul_matches_the_written_out_sum() {
    let f = |i: usize, s: usize| (((i * 7919 + s) % 101) as f32 - 50.0) / 37.0;
    for (m, k, n) in [
        (1usize, 1usize, 1usize),
        (5, 3, 7),
        (1000, 72, 33),
        (3, 300, 2),
        (4, 0, 3),
        (6, 2, 0),
    ] {
        let a: Vec<f32> = (0..m * k).map(|i| f(i, 1)).collect();
        let b: Vec<f32> = (0..k * n).map(|i| f(i, 2)).collect();
        // a row-major [m, k] (strides (k, 1)) or stored transposed ([k, m] row-major: strides (1, m)).
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let want = |i: usize, j: usize| {
            (0..k)
                .map(|l| a[i * k + l] as f64 * b[l * n + j] as f64)
                .sum::<f64>()
        };
        for (name, aa, bb) in [
            ("a·b", (&a[..], (k, 1)), (&b[..], (n, 1))),
            ("a·(bᵀ)ᵀ", (&a[..], (k, 1)), (&bt[..], (1, k))),
            ("(aᵀ)ᵀ·b", (&at[..], (1, m)), (&b[..], (n, 1))),
        ] {
            // Without a bias, with one added to every row (matmul_bias_f32), and onto a base, scaled
            // (matmul_bias_onto_f32).
            let c: Vec<f32> = (0..n).map(|j| f(j, 3) * 4.0).collect();
            let base: Vec<f32> = (0..m * n).map(|i| f(i, 4) * 3.0).collect();
            for (bias, onto) in [
                (None, None),
                (Some(&c[..]), None),
                (Some(&c[..]), Some(1.0f32)),
                (Some(&c[..]), Some(std::f32::consts::FRAC_1_SQRT_2)),
            ] {
                let y = match (bias, onto) {
                    (None, _) => matmul_f32(aa, bb, (m, k, n)),
                    (Some(c), None) => matmul_bias_f32(aa, bb, Some(c), (m, k, n)),
                    (Some(c), Some(s)) => matmul_bias_onto_f32(aa, bb, c, (&base, s), (m, k, n)),
                };
                assert_eq!(y.len(), m * n, "{name}");
                for i in 0..m {
                    for j in 0..n {
                        let mut w = want(i, j) + bias.map_or(0.0, |c| c[j] as f64);
                        if let Some(s) = onto {
                            w = s as f64 * (w + base[i * n + j] as f64);
                        }
                        let got = y[i * n + j] as f64;
                        assert!(
                            (got - w).abs() <= 1e-5 * (1.0 + w.abs()),
                            "{name} bias {} onto {onto:?} ({m}, {k}, {n}) [{i}, {j}]: {got} vs {w}",
                            bias.is_some()
                        );
                    }
                }
            }
        }
    }
}

/// [`matmul_bias`] (the op, a transposed right-hand side read in place) against candle's product and
/// broadcast addition; a bias of the wrong length is an error naming the shapes.
#[test]
fn matmul_bias_matches_candles_chain() {
    let dev = candle_core::Device::Cpu;
    let a = candle_core::Tensor::randn(0f32, 1.0, (37, 11), &dev).unwrap();
    let w = candle_core::Tensor::randn(0f32, 1.0, (5, 11), &dev).unwrap();
    let c = candle_core::Tensor::randn(0f32, 1.0, 5, &dev).unwrap();
    let want = a
        .matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(&c)
        .unwrap();
    let got = matmul_bias(&a, &w.t().unwrap(), &c).unwrap();
    let err = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
    assert!(err.to_scalar::<f32>().unwrap() < 1e-5);
    let bad = candle_core::Tensor::zeros(4, candle_core::DType::F32, &dev).unwrap();
    let e = matmul_bias(&a, &w.t().unwrap(), &bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("a bias of 4"), "{e}");
}

/// [`gram_and_sums_f32`] against the written-out sums in f64, with runs of one row, runs that end inside
/// the rows, one run, and no rows at all.
#[test]
fn gram_and_sums_match_the_written_out_sums() {
    let f = |i: usize, s: usize| (((i * 7919 + s) % 101) as f32 - 50.0) / 37.0;
    for (rows, m, n) in [
        (1usize, 1usize, 1usize),
        (50, 4, 6),
        (1000, 33, 17),
        (0, 3, 2),
    ] {
        let a: Vec<f32> = (0..rows * m).map(|i| f(i, 1)).collect();
        let b: Vec<f32> = (0..rows * n).map(|i| f(i, 2)).collect();
        for run_rows in [1usize, 7, 256, rows.max(1), rows + 5] {
            let (g, s) = gram_and_sums_f32(&a, &b, (rows, m, n), run_rows);
            assert_eq!((g.len(), s.len()), (m * n, m));
            for i in 0..m {
                let ws: f64 = (0..rows).map(|r| a[r * m + i] as f64).sum();
                assert!(
                    (s[i] as f64 - ws).abs() <= 1e-4 * (1.0 + ws.abs()),
                    "sum {i}"
                );
                for j in 0..n {
                    let w: f64 = (0..rows)
                        .map(|r| a[r * m + i] as f64 * b[r * n + j] as f64)
                        .sum();
                    let got = g[i * n + j] as f64;
                    assert!(
                        (got - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "({rows}, {m}, {n}) runs of {run_rows} [{i}, {j}]: {got} vs {w}"
                    );
                }
            }
        }
    }
}

/// [`bmm_f32`] against [`matmul_f32`] item by item (to rounding: the two split gemm's work differently), with
/// a transposed right-hand side, a batch of one and an empty inner dimension.
#[test]
fn batched_matmul_matches_item_by_item() {
    let f = |i: usize| (((i * 7919) % 101) as f32 - 50.0) / 37.0;
    for (batch, m, k, n) in [
        (1usize, 3usize, 4usize, 5usize),
        (37, 20, 16, 20),
        (5, 1, 7, 1),
        (3, 4, 0, 2),
    ] {
        let a: Vec<f32> = (0..batch * m * k).map(f).collect();
        let b: Vec<f32> = (0..batch * n * k).map(|i| f(i + 3)).collect();
        // b stored as [batch, n, k] and read transposed: strides (n·k, 1, k).
        let y = bmm_f32((&a, (m * k, k, 1)), (&b, (n * k, 1, k)), (batch, m, k, n));
        assert_eq!(y.len(), batch * m * n);
        for i in 0..batch {
            let want = matmul_f32(
                (&a[i * m * k..], (k, 1)),
                (&b[i * n * k..], (1, k)),
                (m, k, n),
            );
            for (got, w) in y[i * m * n..(i + 1) * m * n].iter().zip(&want) {
                let tol = 1e-5 * (1.0 + w.abs());
                assert!((got - w).abs() <= tol, "item {i} of {batch}: {got} vs {w}");
            }
        }
    }
}

/// [`transpose`] moves every value to its place and writes nothing outside the block: f32 (register
/// blocks and edges) and f64 (one value at a time), sizes below, at and across multiples of 8, row
/// strides longer than the rows.
#[test]
fn transpose_moves_every_value() {
    fn check<T: Copy + PartialEq + std::fmt::Debug + 'static>(of: impl Fn(usize) -> T, fill: T) {
        for &(rows, cols, srs, drs) in &[
            (1usize, 1usize, 1usize, 1usize),
            (8, 8, 8, 8),
            (3, 5, 7, 4),
            (16, 24, 24, 16),
            (19, 13, 20, 23),
            (40, 9, 9, 41),
        ] {
            let src: Vec<T> = (0..rows * srs).map(&of).collect();
            let mut dst = vec![MaybeUninit::new(fill); cols * drs];
            transpose((&src, srs), (&mut dst, drs), (rows, cols));
            for j in 0..cols {
                for k in 0..drs {
                    // SAFETY: every element was initialised with `fill`.
                    let got = unsafe { dst[j * drs + k].assume_init() };
                    let want = if k < rows { src[k * srs + j] } else { fill };
                    assert_eq!(
                        got, want,
                        "{rows}×{cols} (strides {srs}, {drs}) at ({j}, {k})"
                    );
                }
            }
        }
    }
    check(|i| i as f32, -1.0f32);
    check(|i| i as f64 + 0.5, -1.0f64);
}

/// The CPU softmax (in place, plain and vector builds: AVX-512 where the CPU has it, else AVX2) equals
/// candle's on rows of every length 1..=70 (both lane widths and all their remainders), with scales and
/// offsets that put the exponents far from 0, to 1e-6 relative; so do [`exp_rows`]' exponentials times their
/// inverse sums.
#[test]
fn softmax_rows_match_candles() {
    let dev = candle_core::Device::Cpu;
    let mut rng = crate::NoiseRng::new(11);
    for n in 1..=70 {
        for (scale, offset) in [(0.25, 0.0), (1.0, 300.0), (3.0, -50.0)] {
            let x = rng
                .randn(&[3, 5, n], &dev)
                .unwrap()
                .affine(4.0, offset)
                .unwrap();
            let want = candle_nn::ops::softmax_last_dim(&(&x * scale).unwrap()).unwrap();
            for (fast, unnormalised) in [
                (false, false),
                (avx2(), false),
                (false, true),
                (avx2(), true),
            ] {
                let mut rows = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                if unnormalised {
                    // exp_rows and its inverse sums, applied here.
                    let mut inv = vec![0f32; 15];
                    exp_rows(fast, &mut rows, n, scale as f32, &mut inv);
                    for (r, f) in rows.chunks_mut(n).zip(&inv) {
                        r.iter_mut().for_each(|v| *v *= f);
                    }
                } else {
                    softmax_rows(fast, &mut rows, n, scale as f32);
                }
                let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let r = rows
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max)
                    / want.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!(
                    r < 1e-6,
                    "n {n} scale {scale} offset {offset} avx2 {fast} unnormalised {unnormalised}: {r}"
                );
            }
        }
    }
}

/// [`sum_middle_f32`] against f64 sums of small integers (exact in f32 too, whatever the order): one run,
/// several with a short last one, more columns than a block, no rows, no items, one column.
#[test]
fn sum_middle_matches_exact_sums() {
    for (o, r, i, run) in [
        (1usize, 5usize, 3usize, 8usize),
        (4, 2500, 32, 1024),
        (3, 7, 5000, 2),
        (1, 4, 9000, 1024),
        (2, 0, 3, 4),
        (0, 3, 3, 4),
        (5, 3, 1, 1),
    ] {
        let x: Vec<f32> = (0..o * r * i)
            .map(|k| ((k * 7919) % 61) as f32 - 30.0)
            .collect();
        let want: Vec<f32> = (0..o * i)
            .map(|k| {
                let (a, c) = (k / i, k % i);
                (0..r).map(|b| x[(a * r + b) * i + c] as f64).sum::<f64>() as f32
            })
            .collect();
        assert_eq!(
            sum_middle_f32(&x, (o, r, i), run),
            want,
            "[{o}, {r}, {i}] runs of {run}"
        );
    }
}

/// [`scaled`] against candle's `affine`: bit-identical (one product per value) for lengths below, at and
/// above whole rows of 4,096, on a contiguous tensor and (candle's own path) a transposed view.
#[test]
fn scaled_equals_candles_affine() {
    let dev = candle_core::Device::Cpu;
    let mut rng = crate::NoiseRng::new(4);
    for n in [0usize, 1, 4095, 4096, 3 * 4096 + 17] {
        let t = rng.randn(&[n], &dev).unwrap();
        let (a, b) = (scaled(&t, 0.7).unwrap(), t.affine(0.7, 0.0).unwrap());
        assert_eq!(
            a.to_vec1::<f32>().unwrap(),
            b.to_vec1::<f32>().unwrap(),
            "{n}"
        );
    }
    let t = rng.randn(&[70, 90], &dev).unwrap().t().unwrap();
    let (a, b) = (scaled(&t, -1.5).unwrap(), t.affine(-1.5, 0.0).unwrap());
    assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
}

/// [`par_rows`] hands each task whole rows of both inputs with the matching output rows (more rows than one
/// task holds, rows wider than a task, an empty second input, output rows of one and of two values), and
/// [`crate::simd_fn!`](crate::simd_fn)'s two builds agree. The kernel refuses inputs whose row count differs
/// from its output's.
#[test]
fn par_rows_covers_every_row_once() {
    crate::simd_fn! {
        fn sum_rows(a: &[f64], b: &[f64], o: &mut [MaybeUninit<f64>], wa: usize, wb: usize) {
            let rows = a.len() / wa;
            assert!(a.len() == rows * wa && (wb == 0 || b.len() == rows * wb) && o.len().is_multiple_of(rows.max(1)));
            let wo = o.len() / rows.max(1);
            for (i, o) in o.chunks_exact_mut(wo.max(1)).enumerate() {
                let bs: f64 = if wb == 0 { 0.0 } else { b[i * wb..(i + 1) * wb].iter().sum() };
                // Output rows of two: the two sums apart; of one: their total.
                let sa = a[i * wa..(i + 1) * wa].iter().sum::<f64>();
                if wo == 2 {
                    o[0].write(sa);
                    o[1].write(bs);
                } else {
                    o[0].write(sa + bs);
                }
            }
        }
    }
    for (rows, wa, wb) in [
        (0usize, 3usize, 0usize),
        (5, 3, 2),
        (70_000, 1, 1),
        (3, 100_000, 0),
    ] {
        let a: Vec<f64> = (0..rows * wa).map(|i| (i % 97) as f64).collect();
        let b: Vec<f64> = (0..rows * wb).map(|i| (i % 13) as f64).collect();
        let want: Vec<f64> = (0..rows)
            .map(|r| {
                a[r * wa..(r + 1) * wa].iter().sum::<f64>()
                    + b[r * wb..(r + 1) * wb].iter().sum::<f64>()
            })
            .collect();
        for fast in [false, avx2()] {
            let got = par_rows((&a, wa), (&b, wb), 1, rows, |a, b, o| {
                sum_rows(fast, a, b, o, wa, wb)
            });
            assert_eq!(got, want, "{rows} rows of {wa} and {wb}");
            let apart = par_rows((&a, wa), (&b, wb), 2, rows, |a, b, o| {
                sum_rows(fast, a, b, o, wa, wb)
            });
            let total: Vec<f64> = apart.chunks(2).map(|p| p[0] + p[1]).collect();
            assert_eq!(
                total, want,
                "{rows} rows of {wa} and {wb}, two outputs a row"
            );
        }
    }
}

/// `fits` (the guard before every unsafe product and transpose) against the largest index the matrix touches,
/// found by visiting every element: a slice one value shorter than that index + 1 does not hold it.
#[test]
fn fits_agrees_with_the_largest_index_touched() {
    for rows in 0..4usize {
        for cols in 0..4usize {
            for rs in 0..6usize {
                for cs in 0..6usize {
                    let need = (0..rows)
                        .flat_map(|i| (0..cols).map(move |j| i * rs + j * cs + 1))
                        .max()
                        .unwrap_or(0);
                    for len in need.saturating_sub(2)..need + 2 {
                        assert_eq!(
                            super::fits(len, (rows, cols), (rs, cs)),
                            len >= need,
                            "[{rows}, {cols}] strides ({rs}, {cs}) in {len}"
                        );
                    }
                }
            }
        }
    }
}

/// The unsafe kernels refuse a matrix that does not lie within its slice (one value short), by name, and take
/// one that just fits.
#[test]
fn kernels_refuse_matrices_outside_their_slices() {
    let refused = |f: &(dyn Fn() + std::panic::RefUnwindSafe), name: &str| {
        let e = std::panic::catch_unwind(f).expect_err(name);
        let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.starts_with(name) && msg.contains("outside"), "{msg}");
    };
    let v: Vec<f32> = (0..12).map(|i| i as f32).collect();
    // [3, 4] row-major needs 12 values.
    let mut dst = vec![MaybeUninit::<f32>::uninit(); 12];
    transpose((&v, 4), (&mut dst, 3), (3, 4));
    refused(
        &|| {
            let mut dst = vec![MaybeUninit::<f32>::uninit(); 12];
            transpose((&v[..11], 4), (&mut dst, 3), (3, 4))
        },
        "transpose",
    );
    assert_eq!(matmul_f32((&v, (4, 1)), (&v, (3, 1)), (3, 4, 3)).len(), 9);
    refused(
        &|| {
            matmul_f32((&v[..11], (4, 1)), (&v, (3, 1)), (3, 4, 3));
        },
        "matmul_f32",
    );
    // Two items of [2, 3] · [3, 2], batch strides 6: 12 values each.
    assert_eq!(
        bmm_f32((&v, (6, 3, 1)), (&v, (6, 2, 1)), (2, 2, 3, 2)).len(),
        8
    );
    refused(
        &|| {
            bmm_f32((&v[..11], (6, 3, 1)), (&v, (6, 2, 1)), (2, 2, 3, 2));
        },
        "bmm_f32",
    );
}

/// Both results fail, or both hold the same values (to f32 round-off of a different summation order: 1e-5, on
/// products of standard-normal matrices).
fn same_outcome(
    what: &str,
    got: candle_core::Result<candle_core::Tensor>,
    want: candle_core::Result<candle_core::Tensor>,
) {
    match (got, want) {
        (Ok(g), Ok(w)) => {
            assert_eq!((g.dims(), g.dtype()), (w.dims(), w.dtype()), "{what}");
            let d = crate::compare::max_abs_diff(&g, &w).unwrap();
            assert!(d <= 1e-5, "{what}: differs by {d}");
        }
        (Err(_), Err(_)) => {}
        (g, w) => panic!(
            "{what}: ours {:?}, candle's {:?}",
            g.map(|t| t.dims().to_vec()),
            w.map(|t| t.dims().to_vec())
        ),
    }
}

/// [`matmul`] and [`matmul_bias`] against candle's `matmul` (and `broadcast_add`) on every mix of f32 and f64
/// operands and of ranks 2, 3 and 4, matching and mismatched: the same values where candle has them, an error
/// (not a panic) where candle has one. The f32 2-D and 3-D products take the fast path, the rest candle's.
#[test]
fn matmul_and_matmul_bias_agree_with_candle_on_every_kind_of_operand() {
    use candle_core::DType::{F32, F64};
    let dev = candle_core::Device::Cpu;
    let mut rng = crate::NoiseRng::new(21);
    let mut t = |shape: &[usize], dt| rng.randn(shape, &dev).unwrap().to_dtype(dt).unwrap();
    let shapes: [(&[usize], &[usize]); 8] = [
        (&[3, 4], &[4, 5]),
        (&[2, 3, 4], &[2, 4, 5]),
        (&[2, 2, 3, 4], &[2, 2, 4, 5]),
        (&[3, 4], &[3, 5]),
        (&[2, 3, 4], &[3, 4, 5]),
        (&[2, 3, 4], &[2, 3, 5]),
        (&[3, 4], &[2, 4, 5]),
        (&[2, 3, 4], &[4, 5]),
    ];
    for (sa, sb) in shapes {
        for (da, db) in [(F32, F32), (F64, F64), (F32, F64)] {
            let (a, b) = (t(sa, da), t(sb, db));
            let what = format!("{sa:?} {da:?} · {sb:?} {db:?}");
            same_outcome(&what, matmul(&a, &b), a.matmul(&b));
            for (dc, n) in [(db, 5), (F64, 5), (db, 4)] {
                let bias = t(&[n], dc);
                same_outcome(
                    &format!("{what} + [{n}] {dc:?}"),
                    matmul_bias(&a, &b, &bias),
                    a.matmul(&b).and_then(|p| p.broadcast_add(&bias)),
                );
            }
        }
    }
}

/// [`scaled`] equals candle's `affine` for f64 tensors too (candle's path), and [`with_cpu_f32`] hands over
/// the values of contiguous f32 tensors in order and names the one it cannot read.
#[test]
fn scaled_and_with_cpu_f32_on_other_tensors() {
    let dev = candle_core::Device::Cpu;
    let t = candle_core::Tensor::new(&[[1.0f64, -2.0], [3.5, 0.25]], &dev).unwrap();
    assert_eq!(
        scaled(&t, -2.0).unwrap().to_vec2::<f64>().unwrap(),
        [[-2.0, 4.0], [-7.0, -0.5]]
    );
    let a = candle_core::Tensor::new(&[1.0f32, 2.0, 3.0], &dev).unwrap();
    let b = candle_core::Tensor::new(&[[4.0f32, 5.0], [6.0, 7.0]], &dev).unwrap();
    let got = with_cpu_f32("pair", [&a, &b], |[x, y]| (x.to_vec(), y.to_vec())).unwrap();
    assert_eq!(got, (vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0, 7.0]));
    let e = with_cpu_f32("pair", [&a, &b.t().unwrap()], |_| ()).unwrap_err();
    assert!(
        e.to_string()
            .contains("pair: a contiguous f32 CPU tensor only, got a strided one"),
        "{e}"
    );
    let e = with_cpu_f32("pair", [&a, &t], |_| ()).unwrap_err();
    assert!(
        e.to_string()
            .contains("pair: a contiguous f32 CPU tensor only, got F64"),
        "{e}"
    );
}

/// [`lane_sum`] against the sum in f64, for lengths around multiples of its eight lanes (tail only, lanes only,
/// both) and a function that is not the identity.
#[test]
fn lane_sum_matches_the_f64_sum() {
    for n in [0usize, 1, 7, 8, 9, 16, 23, 100, 1001] {
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 37) % 19) as f32 * 0.25 - 2.0)
            .collect();
        let want: f64 = x.iter().map(|&v| (v as f64) * (v as f64) + 1.0).sum();
        let got = lane_sum(&x, |v| v * v + 1.0) as f64;
        assert!(
            (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
            "{n}: {got} vs {want}"
        );
    }
}

/// The builds are chosen by what the CPU reports: [`avx2`] and [`avx512`] against the flags in
/// /proc/cpuinfo (Linux on x86-64; elsewhere the test says so and checks nothing).
#[test]
fn cpu_feature_detection_agrees_with_proc_cpuinfo() {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        eprintln!("skipped: no /proc/cpuinfo");
        return;
    };
    let Some(flags) = info.lines().find(|l| l.starts_with("flags")) else {
        eprintln!("skipped: /proc/cpuinfo lists no flags (not x86-64)");
        return;
    };
    let has = |f: &str| flags.split_whitespace().any(|w| w == f);
    assert_eq!(avx2(), has("avx2") && has("fma"), "{flags}");
    assert_eq!(avx512(), has("avx512f"), "{flags}");
}
