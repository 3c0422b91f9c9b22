//! The layers against candle's op chains, closed forms and f64 sums.

use super::attention::{attention_in_chunks, attention_parts, softmax_backward};
use super::norm::{
    layer_norm_backward_f32, layer_norm_f32, layer_norm_stats_f32, LayerNormBackward,
};
use super::*;
use candle_core::{DType, Device, Var};
use candle_nn::VarMap;
use vsdm_core::NoiseRng;

/// ‖a − b‖∞ / ‖b‖∞ (‖a − b‖∞ where b = 0: one key makes the softmax constant, the gradients of q and k
/// zero).
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    let n = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    let f = |t: Tensor| t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    let n = f(n);
    f(d) / if n > 0.0 { n } else { 1.0 }
}

/// `Dense::forward_onto` without a graph (one product onto the base) equals candle's chain
/// scale · (base + layer output) to rounding, for the whole layer and for each half, scale 1 and 1/√2, a
/// rank-4 input, 1 and 700 rows; with tracked weights it is the chain itself (the same bits) and records
/// the gradients.
#[test]
fn dense_onto_a_base_matches_the_chain() {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let vb = vsdm_core::init::seeded_var_builder(&vm, NoiseRng::new(8), DType::F32, &dev);
    let tracked = dense(12, 8, vb).unwrap();
    let plain = dense(
        12,
        8,
        vsdm_core::init::untracked_var_builder(&vm, DType::F32, &dev),
    )
    .unwrap();
    let mut rng = NoiseRng::new(9);
    for lead in [vec![1usize], vec![7, 4, 25]] {
        let mut xd = lead.clone();
        xd.push(12);
        let x = rng.randn(&xd, &dev).unwrap();
        for (start, len) in [(0, 8), (0, 4), (4, 4)] {
            let mut bd = lead.clone();
            bd.push(len);
            let base = rng.randn(&bd, &dev).unwrap();
            for scale in [1.0, 1.0 / std::f64::consts::SQRT_2] {
                let chain = (&base + tracked.forward_outputs(&x, start, len).unwrap())
                    .unwrap()
                    .affine(scale, 0.0)
                    .unwrap();
                let fast = plain.forward_onto(&x, &base, scale, (start, len)).unwrap();
                assert!(!fast.track_op());
                let e = rel(&fast, &chain);
                assert!(e < 1e-6, "{lead:?} ({start}, {len}) scale {scale}: {e}");
                let slow = tracked
                    .forward_onto(&x, &base, scale, (start, len))
                    .unwrap();
                assert!(slow.track_op());
                assert_eq!(rel(&slow, &chain), 0.0);
            }
        }
    }
}

/// The fused op equals candle's chain in value and in the gradients of q, k and v (f32 ≤ 1e-5, f64 ≤ 1e-12
/// relative), for 3-D and 4-D inputs, one and several keys, and scores large enough that the softmax
/// saturates; the gradients are of ⟨y, probe⟩ for a random probe, with the output reached through a
/// transpose (a strided gradient) as in [`SelfAttention`], in one piece and in chunks of the leading axes;
/// without tracked inputs it records nothing.
#[test]
fn attention_matches_candles_chain_and_its_gradients() {
    let dev = Device::Cpu;
    let mut rng = NoiseRng::new(3);
    for (shape, gain) in [
        (vec![2usize, 3, 5, 4], 1.0f64),
        (vec![3, 7, 6], 1.0),
        (vec![2, 2, 1, 3], 1.0),
        (vec![1, 2, 9, 4], 8.0),
        // Scores of 135,000 elements: the CPU softmax backward runs in several parallel tasks.
        (vec![2, 3, 150, 4], 1.0),
    ] {
        for (dt, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
            let draw = |rng: &mut NoiseRng| {
                let t = (rng.randn(&shape, &dev).unwrap() * gain).unwrap();
                Var::from_tensor(&t.to_dtype(dt).unwrap()).unwrap()
            };
            let (q, k, v) = (draw(&mut rng), draw(&mut rng), draw(&mut rng));
            let r = shape.len();
            let probe = rng
                .randn(&shape, &dev)
                .unwrap()
                .to_dtype(dt)
                .unwrap()
                .transpose(r - 3, r - 2)
                .unwrap()
                .contiguous()
                .unwrap();
            let case = format!("{shape:?} ×{gain} {dt:?}");
            let run = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>| {
                let y = f(q.as_tensor(), k.as_tensor(), v.as_tensor()).unwrap();
                let loss = (y.transpose(r - 3, r - 2).unwrap() * &probe)
                    .unwrap()
                    .sum_all()
                    .unwrap();
                let g = loss.backward().unwrap();
                let grads: Vec<Tensor> = [&q, &k, &v]
                    .iter()
                    .map(|x| g.get(x.as_tensor()).unwrap().clone())
                    .collect();
                (y, grads)
            };
            let (y0, g0) = run(&attention_chain);
            let s = shape[r - 2];
            let row = s * s * dt.size_in_bytes();
            // One piece, and chunks of one row, of two rows (an uneven last chunk where the leading axes
            // hold an odd count) and of a byte budget smaller than one row (still one row).
            for bytes in [usize::MAX, row, 2 * row, row / 2] {
                let (y1, g1) = run(&|q, k, v| attention_in_chunks(q, k, v, bytes));
                let case = format!("{case} chunks of {bytes} bytes");
                assert!(rel(&y1, &y0) < tol, "{case}: value {}", rel(&y1, &y0));
                for (name, (a, b)) in ["q", "k", "v"].iter().zip(g1.iter().zip(&g0)) {
                    assert!(rel(a, b) < tol, "{case}: gradient of {name} {}", rel(a, b));
                }
            }
            let plain = attention(
                &q.as_tensor().detach(),
                &k.as_tensor().detach(),
                &v.as_tensor().detach(),
            )
            .unwrap();
            assert!(
                !plain.track_op() && rel(&plain, &y0) < tol,
                "{case}: detached"
            );
        }
    }
}

/// The packed attention on a permuted view of a projection's output, and [`attention_heads`] (what
/// [`SelfAttention`] calls) on the output itself, equal candle's op chain on q, k and v taken apart with
/// `get`, in value and in the gradient of the projection (f32 ≤ 1e-5, f64 ≤ 1e-12 relative), in one chunk
/// and in several; detached they record nothing; a first axis other than 3, or channels that do not split
/// into the heads, is an error naming the shape. (Fails when the heads' backward misplaces its second
/// chunk of items, or reads every head's columns at the first's — both checked.)
#[test]
fn packed_and_head_attention_match_the_chain_on_a_projection_view() {
    let dev = Device::Cpu;
    let mut rng = NoiseRng::new(5);
    // (N, S, heads, dh): the last two's scores (2 × 3 × 150², 40 × 3 × 150²) exceed one CPU chunk, and
    // their query rows make two blocks per item.
    for (n, s, heads, dh) in [
        (2usize, 5usize, 2usize, 3usize),
        (3, 1, 1, 4),
        (2, 150, 3, 4),
        (40, 150, 3, 2),
    ] {
        for (dt, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
            let h = Var::from_tensor(
                &rng.randn(&[n, s, 3 * heads * dh], &dev)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap(),
            )
            .unwrap();
            let probe = rng
                .randn(&[n, heads, s, dh], &dev)
                .unwrap()
                .to_dtype(dt)
                .unwrap();
            let case = format!("N {n} S {s} heads {heads} dh {dh} {dt:?}");
            let run = |f: &dyn Fn(&Tensor) -> Result<Tensor>| {
                let qkv = h
                    .as_tensor()
                    .reshape((n, s, 3, heads, dh))
                    .unwrap()
                    .permute((2, 0, 3, 1, 4))
                    .unwrap();
                let y = f(&qkv).unwrap();
                let g = (&y * &probe)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                (y, g.get(h.as_tensor()).unwrap().clone())
            };
            let (y0, g0) = run(&|qkv| {
                let part = |i: usize| qkv.get(i).unwrap().contiguous().unwrap();
                attention_chain(&part(0), &part(1), &part(2))
            });
            let (y1, g1) = run(&attention_packed);
            assert!(rel(&y1, &y0) < tol, "{case}: value {}", rel(&y1, &y0));
            assert!(rel(&g1, &g0) < tol, "{case}: gradient {}", rel(&g1, &g0));
            // attention_heads on the unpermuted [N, S, 3·C] (in place on the CPU in f32): its output is
            // y0 with the heads side by side, the same loss with the probe laid out alike, so the same
            // gradient.
            let c = heads * dh;
            let y2 = attention_heads(h.as_tensor(), heads).unwrap();
            let side = |t: &Tensor| t.transpose(1, 2).unwrap().reshape((n, s, c)).unwrap();
            let g = (&y2 * side(&probe))
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g2 = g.get(h.as_tensor()).unwrap();
            assert!(rel(&y2, &side(&y0)) < tol, "{case}: heads value");
            assert!(
                rel(g2, &g0) < tol,
                "{case}: heads gradient {}",
                rel(g2, &g0)
            );
            let plain = attention_heads(&h.as_tensor().detach(), heads).unwrap();
            assert!(
                !plain.track_op() && rel(&plain, &side(&y0)) < tol,
                "{case}: heads detached"
            );
            let detached = h
                .as_tensor()
                .detach()
                .reshape((n, s, 3, heads, dh))
                .unwrap();
            let plain = attention_packed(&detached.permute((2, 0, 3, 1, 4)).unwrap()).unwrap();
            assert!(
                !plain.track_op() && rel(&plain, &y0) < tol,
                "{case}: detached"
            );
        }
    }
    // Two or four tensors packed, or no sequence axis: refused by name.
    for dims in [&[2usize, 4, 5, 3][..], &[4, 4, 5, 3], &[3, 5]] {
        let wrong = Tensor::zeros(dims, DType::F32, &dev).unwrap();
        let e = attention_packed(&wrong).unwrap_err().to_string();
        assert!(
            e.contains("expected q, k and v packed as [3, …, S, d]")
                && e.contains(&format!("{dims:?}")),
            "{e}"
        );
    }
    let wrong = Tensor::zeros((2, 4, 10), DType::F32, &dev).unwrap();
    let e = attention_heads(&wrong, 3).unwrap_err().to_string();
    assert!(e.contains("10 channels") && e.contains("3 heads"), "{e}");
}

/// The fused CPU kernel against candle's chain on items whose query rows span several blocks of scores
/// (an uneven last one) and runs of the worker pool that start inside an item: value and kept
/// probabilities to 1e-5 relative, with and without P, for as many values as keys and fewer.
#[test]
fn fused_attention_blocks_match_the_chain() {
    let dev = Device::Cpu;
    let mut rng = NoiseRng::new(17);
    // (n, sq, sk, d, dv): 700 keys make blocks of 23 rows, so 61 query rows take three.
    for (n, sq, sk, d, dv) in [
        (3usize, 61usize, 700usize, 5usize, 5usize),
        (5, 7, 1, 3, 2),
        (2, 33, 40, 4, 1),
    ] {
        let q = rng.randn(&[n, sq, d], &dev).unwrap();
        let k = rng.randn(&[n, sk, d], &dev).unwrap();
        let v = rng.randn(&[n, sk, dv], &dev).unwrap();
        let scale = 0.7;
        let p0 = candle_nn::ops::softmax_last_dim(
            &(q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap(),
        )
        .unwrap();
        let y0 = p0.matmul(&v).unwrap();
        for keep in [false, true] {
            let (y, p) = attention_parts(&q, &k, &v, scale, keep).unwrap();
            let case = format!("{:?} keep {keep}", (n, sq, sk, d, dv));
            assert!(rel(&y, &y0) < 1e-5, "{case}: value {}", rel(&y, &y0));
            match p {
                Some(p) => assert!(keep && rel(&p, &p0) < 1e-5, "{case}: P {}", rel(&p, &p0)),
                None => assert!(!keep, "{case}: P missing"),
            }
        }
    }
}

/// The softmax's backward, dS = P ⊙ (dP − Σ_j dP P), in f32 and f64 (the fused row pass on the CPU), against the
/// formula summed in f64 here, row by row.
#[test]
fn softmax_backward_matches_its_formula() {
    let dev = Device::Cpu;
    let mut rng = NoiseRng::new(19);
    let p = candle_nn::ops::softmax_last_dim(&rng.randn(&[2, 3, 7], &dev).unwrap()).unwrap();
    let dp = rng.randn(&[2, 3, 7], &dev).unwrap();
    // Rows of the `[2, 3, 7]` tensors, in f64.
    let rows = |t: &Tensor| -> Vec<Vec<f64>> {
        let t = t.to_dtype(DType::F64).unwrap();
        t.reshape((6, 7)).unwrap().to_vec2().unwrap()
    };
    let (pr, dr) = (rows(&p), rows(&dp));
    for (dtype, tol) in [(DType::F32, 1e-6), (DType::F64, 1e-12)] {
        let ds =
            softmax_backward(&dp.to_dtype(dtype).unwrap(), &p.to_dtype(dtype).unwrap()).unwrap();
        assert_eq!((ds.dtype(), ds.dims()), (dtype, &[2usize, 3, 7][..]));
        let got = rows(&ds);
        for ((p, d), g) in pr.iter().zip(&dr).zip(&got) {
            let dot: f64 = p.iter().zip(d).map(|(p, d)| p * d).sum();
            for ((p, d), g) in p.iter().zip(d).zip(g) {
                assert!(
                    (p * (d - dot) - g).abs() < tol,
                    "{dtype:?}: {} vs {g}",
                    p * (d - dot)
                );
            }
        }
    }
}

/// q, k and v packed as `[3, S, d]` (no leading axes) attend as one item: the same output as `[3, 1, S, d]`.
#[test]
fn packed_attention_takes_a_single_item() {
    let dev = Device::Cpu;
    let qkv = NoiseRng::new(20).randn(&[3, 5, 4], &dev).unwrap();
    let one = attention_packed(&qkv).unwrap();
    let batched = attention_packed(&qkv.unsqueeze(1).unwrap()).unwrap();
    assert_eq!(one.dims(), &[5, 4]);
    assert!(rel(&one, &batched.squeeze(0).unwrap()) < 1e-6);
}

/// Layer norm centres each row before squaring (two passes): rows of mean 1000 and spread 1, where
/// E[x²] − μ² in f32 loses the variance to rounding, match the f64 chain to 1e-4.
#[test]
fn layer_norm_of_offset_rows() {
    let dev = Device::Cpu;
    let x = (NoiseRng::new(21).randn(&[4, 64], &dev).unwrap() + 1000.0).unwrap();
    let gain = Tensor::ones(64, DType::F32, &dev).unwrap();
    let bias = Tensor::zeros(64, DType::F32, &dev).unwrap();
    let y = layer_norm(&x, &gain, &bias, 1e-5).unwrap();
    let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    let y0 = layer_norm_chain(&f64s(&x), &f64s(&gain), &f64s(&bias), 1e-5).unwrap();
    assert!(rel(&f64s(&y), &y0) < 1e-4, "{}", rel(&f64s(&y), &y0));
}

/// Attention over no keys is an error naming the shapes, in f32 (the fused kernel sizes its blocks by the key
/// count) and f64 (candle's softmax panicked on an empty row), never a panic.
#[test]
fn attention_over_no_keys_is_an_error() {
    let dev = Device::Cpu;
    for dtype in [DType::F32, DType::F64] {
        let q = NoiseRng::new(18)
            .randn(&[2, 3, 4], &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let k = Tensor::zeros((2, 0, 4), dtype, &dev).unwrap();
        let v = Tensor::zeros((2, 0, 5), dtype, &dev).unwrap();
        let e = attention_parts(&q, &k, &v, 0.5, true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no keys") && e.contains("[2, 0, 4]"),
            "{dtype:?}: {e}"
        );
    }
}

/// [`Dense::forward_outputs`] on two halves equals the full layer's output split in two, in value and in the
/// gradients of the input, the weight and the bias (f32, 1e-6 relative).
#[test]
fn dense_halves_match_the_whole_layer() {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let vb = vsdm_core::init::seeded_var_builder(&vm, NoiseRng::new(13), DType::F32, &dev);
    let layer = dense(6, 8, vb).unwrap();
    let mut rng = NoiseRng::new(12);
    let x = Var::from_tensor(&rng.randn(&[2, 5, 6], &dev).unwrap()).unwrap();
    let probe = rng.randn(&[2, 5, 8], &dev).unwrap();
    let params: Vec<Var> = {
        let data = vm.data().lock().unwrap();
        vec![data["weight"].clone(), data["bias"].clone()]
    };
    let grads = |y: &Tensor| {
        let g = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let mut all = vec![g.get(x.as_tensor()).unwrap().clone()];
        all.extend(params.iter().map(|p| g.get(p.as_tensor()).unwrap().clone()));
        all
    };
    let whole = layer.forward(x.as_tensor()).unwrap();
    let halves = Tensor::cat(
        &[
            layer.forward_outputs(x.as_tensor(), 0, 3).unwrap(),
            layer.forward_outputs(x.as_tensor(), 3, 5).unwrap(),
        ],
        2,
    )
    .unwrap();
    assert!(
        rel(&halves, &whole) < 1e-6,
        "value {}",
        rel(&halves, &whole)
    );
    for (name, (a, b)) in ["x", "weight", "bias"]
        .iter()
        .zip(grads(&halves).iter().zip(&grads(&whole)))
    {
        assert!(rel(a, b) < 1e-6, "d{name} {}", rel(a, b));
    }
}

/// The fused layer norm and dense ops equal candle's chains in value and in every input's gradient
/// (f32 ≤ 1e-5, f64 ≤ 1e-12 relative), for 2-D, 3-D and 4-D inputs, the gradients of ⟨y, probe⟩ for a
/// random probe reached through a transpose (a strided gradient).
/// [`add_broadcast`] against candle's `broadcast_add`: value and both inputs' gradients (of ⟨y, probe⟩,
/// read through a transpose, so the incoming gradient is not contiguous), in f32 (the CPU reduction) and
/// f64 (candle's), for one input broadcast, both, a missing leading axis on either side, none, two summed runs
/// between kept ones, and a summed axis of three runs; [`sum_to`] refuses a shape that does not broadcast.
#[test]
fn add_broadcast_matches_candles_broadcast_add_and_its_gradients() {
    let dev = Device::Cpu;
    let mut rng = NoiseRng::new(9);
    let pairs: [(&[usize], &[usize]); 8] = [
        (&[2, 3, 4, 5], &[2, 1, 1, 5]),
        // Two summed runs between kept ones: the second's outer size is the kept runs' product.
        (&[2, 3, 4, 5, 6], &[2, 1, 4, 1, 6]),
        (&[2, 1, 4, 5], &[1, 3, 1, 5]),
        (&[3, 4], &[4]),
        (&[4, 1], &[2, 3, 4, 6]),
        (&[2, 3], &[2, 3]),
        (&[2, 2100, 3], &[2, 1, 3]),
        (&[1, 2100, 2], &[3, 1, 1]),
    ];
    for (da, db) in pairs {
        for (dt, tol) in [(DType::F32, 1e-6), (DType::F64, 1e-14)] {
            let draw = |rng: &mut NoiseRng, dims: &[usize]| {
                Var::from_tensor(&rng.randn(dims, &dev).unwrap().to_dtype(dt).unwrap()).unwrap()
            };
            let (a, b) = (draw(&mut rng, da), draw(&mut rng, db));
            let y0 = a.as_tensor().broadcast_add(b.as_tensor()).unwrap();
            let y1 = add_broadcast(a.as_tensor(), b.as_tensor()).unwrap();
            let case = format!("{da:?} + {db:?} {dt:?}");
            assert_eq!(y1.dims(), y0.dims(), "{case}");
            assert!(rel(&y1, &y0) < tol, "{case}: value {}", rel(&y1, &y0));
            let probe = rng.randn(y0.dims(), &dev).unwrap().to_dtype(dt).unwrap();
            let grads = |y: &Tensor| {
                let (r, probe) = (y.rank(), probe.clone());
                let loss = if r >= 2 {
                    (y.transpose(0, r - 1).unwrap() * probe.transpose(0, r - 1).unwrap())
                        .unwrap()
                        .sum_all()
                        .unwrap()
                } else {
                    (y * probe).unwrap().sum_all().unwrap()
                };
                let g = loss.backward().unwrap();
                [&a, &b].map(|v| g.get(v.as_tensor()).unwrap().clone())
            };
            let (g0, g1) = (grads(&y0), grads(&y1));
            for (name, (x, y)) in ["a", "b"].iter().zip(g1.iter().zip(&g0)) {
                assert_eq!(x.dims(), y.dims(), "{case}: d{name}");
                assert!(rel(x, y) < tol, "{case}: d{name} {}", rel(x, y));
            }
        }
    }
    // One input tracked at a time: its gradient is candle's, the plain input's shape broadcast or not.
    for (da, db) in [
        (&[2usize, 3, 4][..], &[2usize, 1, 4][..]),
        (&[1, 4], &[3, 1]),
    ] {
        for tracked_a in [true, false] {
            let a = Var::from_tensor(&rng.randn(da, &dev).unwrap()).unwrap();
            let b = Var::from_tensor(&rng.randn(db, &dev).unwrap()).unwrap();
            let (x, y) = if tracked_a {
                (a.as_tensor().clone(), b.as_tensor().detach())
            } else {
                (a.as_tensor().detach(), b.as_tensor().clone())
            };
            let var = if tracked_a { &a } else { &b };
            let dims = x.broadcast_add(&y).unwrap().dims().to_vec();
            let probe = rng.randn(&dims, &dev).unwrap();
            let grad = |out: Tensor| {
                let g = (out * &probe)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                g.get(var.as_tensor()).cloned()
            };
            let (g0, g1) = (
                grad(x.broadcast_add(&y).unwrap()).unwrap(),
                grad(add_broadcast(&x, &y).unwrap()),
            );
            let case = format!("{da:?} + {db:?}, tracked a: {tracked_a}");
            let g1 = g1.unwrap_or_else(|| panic!("{case}: no gradient recorded"));
            assert!(rel(&g1, &g0) < 1e-6, "{case}: {}", rel(&g1, &g0));
        }
    }
    let t = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
    let e = sum_to(&t, &[2, 2]).unwrap_err().to_string();
    assert!(e.contains("not a broadcast of [2, 2]"), "{e}");
    assert!(sum_to(&t, &[4, 2, 3]).is_err());
}

#[test]
fn layer_norm_and_dense_match_candles_chains_and_their_gradients() {
    let dev = Device::Cpu;
    let mut rng = NoiseRng::new(5);
    // [3, 700, 20]: 2,100 rows, three runs of the CPU reductions (RUN_ROWS), the last one short; rows of
    // 6 (shorter than the eight lanes of the row sums), 32 (four whole lane blocks), 20 and 37 (with
    // remainders).
    for shape in [
        vec![7usize, 6],
        vec![3, 4, 6],
        vec![2, 3, 5, 6],
        vec![5, 32],
        vec![2, 3, 37],
        vec![3, 700, 20],
    ] {
        for (dt, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
            let mut draw = |dims: &[usize], shift: f64| {
                let t = (rng.randn(dims, &dev).unwrap() + shift).unwrap();
                Var::from_tensor(&t.to_dtype(dt).unwrap()).unwrap()
            };
            let n = shape[shape.len() - 1];
            let x = draw(&shape, 0.7);
            let (gain, bias) = (draw(&[n], 1.0), draw(&[n], 0.0));
            let (w, b) = (draw(&[4, n], 0.0), draw(&[4], 0.0));
            let rows = x.elem_count() / n;
            let probe_ln = draw(&shape, 0.0);
            let probe_dense = draw(&[rows, 4], 0.0);
            let case = format!("{shape:?} {dt:?}");
            // ⟨y, probe⟩ with y read through a transpose of its first two axes.
            let grads = |y: &Tensor, probe: &Tensor, of: &[&Var]| {
                let loss = (y.transpose(0, 1).unwrap() * probe.transpose(0, 1).unwrap())
                    .unwrap()
                    .sum_all()
                    .unwrap();
                let g = loss.backward().unwrap();
                let grad = |v: &&Var| g.get(v.as_tensor()).expect("a gradient").clone();
                of.iter().map(grad).collect::<Vec<_>>()
            };
            let eps = 1e-5;
            let y0 =
                layer_norm_chain(x.as_tensor(), gain.as_tensor(), bias.as_tensor(), eps).unwrap();
            let y1 = layer_norm(x.as_tensor(), gain.as_tensor(), bias.as_tensor(), eps).unwrap();
            assert!(rel(&y1, &y0) < tol, "{case}: layer norm {}", rel(&y1, &y0));
            let g0 = grads(&y0, probe_ln.as_tensor(), &[&x, &gain, &bias]);
            let g1 = grads(&y1, probe_ln.as_tensor(), &[&x, &gain, &bias]);
            for (name, (a, b)) in ["x", "gain", "bias"].iter().zip(g1.iter().zip(&g0)) {
                assert!(rel(a, b) < tol, "{case}: layer norm d{name} {}", rel(a, b));
            }
            // The backward with the statistics the forward kept (above) and with them recomputed: the
            // same bits.
            let again = vsdm_core::carried::Backward::backward(
                &LayerNormBackward { eps, stats: None },
                x.as_tensor(),
                gain.as_tensor(),
                bias.as_tensor(),
                probe_ln.as_tensor(),
            )
            .unwrap();
            let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (name, (a, b)) in ["x", "gain", "bias"]
                .iter()
                .zip([again.0, again.1, again.2].iter().zip(&g1))
            {
                if dt == DType::F32 {
                    let a = a.as_ref().expect("a gradient");
                    assert_eq!(bits(a), bits(b), "{case}: recomputed statistics, d{name}");
                }
            }
            let x2 = x.as_tensor().reshape((rows, n)).unwrap();
            let y0 = x2
                .matmul(&w.as_tensor().t().unwrap())
                .unwrap()
                .broadcast_add(b.as_tensor())
                .unwrap();
            let y1 = dense_op(&x2, w.as_tensor(), b.as_tensor()).unwrap();
            assert!(rel(&y1, &y0) < tol, "{case}: dense {}", rel(&y1, &y0));
            let g0 = grads(&y0, probe_dense.as_tensor(), &[&x, &w, &b]);
            let g1 = grads(&y1, probe_dense.as_tensor(), &[&x, &w, &b]);
            for (name, (a, b)) in ["x", "w", "bias"].iter().zip(g1.iter().zip(&g0)) {
                assert!(rel(a, b) < tol, "{case}: dense d{name} {}", rel(a, b));
            }
            // An input that is data (untracked), as for a network's first layer, with the bias tracked or
            // not: the tracked parameters still get their gradients.
            for bias_tracked in [true, false] {
                let bias = if bias_tracked {
                    b.as_tensor().clone()
                } else {
                    b.as_tensor().detach()
                };
                let y2 = dense_op(&x2.detach(), w.as_tensor(), &bias).unwrap();
                let tracked = if bias_tracked { 2 } else { 1 };
                let g2 = grads(&y2, probe_dense.as_tensor(), &[&w, &b][..tracked]);
                for ((name, got), want) in ["w", "bias"].iter().zip(&g2).zip(&g0[1..]) {
                    assert!(
                        rel(got, want) < tol,
                        "{case}: dense d{name}, data input {}",
                        rel(got, want)
                    );
                }
            }
            // Without tracked inputs: nothing recorded, the same value.
            let plain = layer_norm(
                &x.as_tensor().detach(),
                &gain.as_tensor().detach(),
                &bias.as_tensor().detach(),
                eps,
            )
            .unwrap();
            assert!(!plain.track_op(), "{case}");
        }
    }
}

#[test]
fn softmax_and_layer_norm_match_closed_forms_and_have_gradients() {
    let dev = Device::Cpu;
    let x = Var::from_vec(vec![1f32, 2.0, 3.0, 1000.0, 1000.0, 1000.0], (2, 3), &dev).unwrap();
    let p = softmax_last(x.as_tensor())
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    // softmax(1,2,3) = e^k / (e + e² + e³); a huge constant row is uniform.
    let z: f32 = (1..=3).map(|k| (k as f32).exp()).sum();
    for (k, (a, b)) in p[0].iter().zip(&p[1]).enumerate() {
        assert!((a - ((k + 1) as f32).exp() / z).abs() < 1e-6);
        assert!((b - 1.0 / 3.0).abs() < 1e-6);
    }
    // d softmax_0 / d x_0 = p0 (1 − p0).
    let g = softmax_last(x.as_tensor())
        .unwrap()
        .narrow(1, 0, 1)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gx = g.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
    assert!((gx[0][0] - p[0][0] * (1.0 - p[0][0])).abs() < 1e-6);

    let vm = VarMap::new();
    let ln = LayerNorm::new(4, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
    let y = ln
        .forward(&Tensor::new(&[[1f32, 2.0, 3.0, 4.0]], &dev).unwrap())
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    // (x − 2.5) / sqrt(1.25 + 1e-5)
    for (k, v) in y[0].iter().enumerate() {
        let want = (k as f32 + 1.0 - 2.5) / (1.25f32 + 1e-5).sqrt();
        assert!((v - want).abs() < 1e-5, "{v} vs {want}");
    }
    // The network's sigmoid (inside its gate op).
    let s = [0f32, 2.0, -200.0].map(vsdm_core::fastmath::sigmoid_f32);
    assert!((s[0] - 0.5).abs() < 1e-7 && (s[1] - 1.0 / (1.0 + (-2f32).exp())).abs() < 1e-6);
    assert!(s[2] >= 0.0 && s[2] < 1e-30);
}

/// The attention op beyond the shapes above: five axes (three leading), an input of rank below 2 and q, k, v
/// that do not make an attention (named errors), only some inputs tracked (each tracked one gets the chain's
/// gradient), and f16 (candle's products and the softmax backward's chain of ops, to f16's rounding against
/// the f32 chain).
#[test]
fn attention_ranks_shapes_partial_tracking_and_half_precision() {
    let dev = Device::Cpu;
    let mut rng = NoiseRng::new(23);
    let shape = [2usize, 2, 3, 5, 4];
    let draw = |rng: &mut NoiseRng, s: &[usize]| rng.randn(s, &dev).unwrap();
    let (q, k, v) = (
        draw(&mut rng, &shape),
        draw(&mut rng, &shape),
        draw(&mut rng, &shape),
    );
    let y = attention(&q, &k, &v).unwrap();
    // The chain on the leading axes flattened (candle's batched product takes at most four axes here).
    let three = |t: &Tensor| t.reshape((12, 5, 4)).unwrap();
    let y0 = attention_chain(&three(&q), &three(&k), &three(&v))
        .unwrap()
        .reshape(&shape)
        .unwrap();
    assert!(rel(&y, &y0) < 1e-5, "rank 5: {}", rel(&y, &y0));

    let e = attention(&q.flatten_all().unwrap(), &k, &v)
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected […, S, d]"), "{e}");
    let q3 = draw(&mut rng, &[2, 5, 4]);
    for (kk, vv) in [
        (draw(&mut rng, &[2, 5, 3]), draw(&mut rng, &[2, 5, 4])),
        (draw(&mut rng, &[2, 5, 4]), draw(&mut rng, &[2, 6, 4])),
    ] {
        let e = attention(&q3, &kk, &vv).unwrap_err().to_string();
        assert!(e.contains("do not make an attention"), "{e}");
    }

    // One tracked input at a time: its gradient of ⟨y, probe⟩ equals the chain's.
    let (q, k, v) = (three(&q), three(&k), three(&v));
    let probe = draw(&mut rng, &[12, 5, 4]);
    for which in 0..3 {
        let var = Var::from_tensor(&[&q, &k, &v][which].clone()).unwrap();
        let grad = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>| {
            let mut args = [q.clone(), k.clone(), v.clone()];
            args[which] = var.as_tensor().clone();
            let y = f(&args[0], &args[1], &args[2]).unwrap();
            let g = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(var.as_tensor()).cloned()
        };
        let (g, g0) = (grad(&attention), grad(&attention_chain));
        let (g, g0) = (g.expect("no gradient"), g0.unwrap());
        assert!(rel(&g, &g0) < 1e-5, "input {which}: {}", rel(&g, &g0));
    }

    // f16: the value and the gradients against the f32 chain, to f16's precision.
    let h = |t: &Tensor| Var::from_tensor(&t.to_dtype(DType::F16).unwrap()).unwrap();
    let (qh, kh, vh) = (h(&q), h(&k), h(&v));
    let yh = attention(qh.as_tensor(), kh.as_tensor(), vh.as_tensor()).unwrap();
    assert_eq!(yh.dtype(), DType::F16);
    let gh = (yh.to_dtype(DType::F32).unwrap() * &probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let (qv, kv, vv) = (
        Var::from_tensor(&q).unwrap(),
        Var::from_tensor(&k).unwrap(),
        Var::from_tensor(&v).unwrap(),
    );
    let y32 = attention_chain(qv.as_tensor(), kv.as_tensor(), vv.as_tensor()).unwrap();
    let g32 = (&y32 * &probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let f32_of = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    assert!(
        rel(&f32_of(&yh), &y32) < 5e-3,
        "f16 value {}",
        rel(&f32_of(&yh), &y32)
    );
    for (name, a, b) in [("q", &qh, &qv), ("k", &kh, &kv), ("v", &vh, &vv)] {
        let (ga, gb) = (
            f32_of(gh.get(a.as_tensor()).unwrap()),
            g32.get(b.as_tensor()).unwrap().clone(),
        );
        assert!(
            rel(&ga, &gb) < 1e-2,
            "f16 gradient of {name}: {}",
            rel(&ga, &gb)
        );
    }
}

/// The CPU layer norm's kept statistics (handed from the forward to the backward) are each row's (μ, r) in
/// `[rows, 2]`: the same bits as the backward's own computation, and μ and r = 1/√(σ² + ε) as f64 sums give
/// them; the value is the same with and without keeping them, and equals γ (x − μ) r + β in f64.
#[test]
fn a_layer_norms_kept_statistics_are_each_rows_mean_and_inverse_deviation() {
    let mut rng = NoiseRng::new(21);
    let eps = 1e-5f32;
    for (rows, n) in [(1, 1), (1, 7), (3, 5), (37, 64), (2100, 3)] {
        let draw = |rng: &mut NoiseRng, len: usize| {
            let t = rng.randn(&[len], &Device::Cpu).unwrap();
            t.to_vec1::<f32>().unwrap()
        };
        let x: Vec<f32> = draw(&mut rng, rows * n)
            .iter()
            .map(|v| 3.0 * v + 1.5)
            .collect();
        let (gain, bias) = (draw(&mut rng, n), draw(&mut rng, n));
        let (y, kept) = layer_norm_f32([&x, &gain, &bias], (rows, n), eps, true);
        let (y_plain, none) = layer_norm_f32([&x, &gain, &bias], (rows, n), eps, false);
        let case = format!("{rows} rows of {n}");
        assert!(none.is_none(), "{case}");
        assert_eq!(y, y_plain, "{case}");
        let kept = kept.unwrap_or_else(|| panic!("{case}: no statistics kept"));
        assert_eq!(kept, layer_norm_stats_f32(&x, (rows, n), eps), "{case}");
        for (i, row) in x.chunks_exact(n).enumerate() {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
            let r = 1.0 / (var + eps as f64).sqrt();
            let (km, kr) = (kept[2 * i] as f64, kept[2 * i + 1] as f64);
            assert!(
                (km - mean).abs() <= 1e-5 * (1.0 + mean.abs()),
                "{case} row {i}: μ {km} vs {mean}"
            );
            assert!((kr - r).abs() <= 1e-5 * r, "{case} row {i}: r {kr} vs {r}");
            for j in 0..n {
                let want = gain[j] as f64 * (row[j] as f64 - mean) * r + bias[j] as f64;
                let got = y[i * n + j] as f64;
                assert!(
                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "{case} ({i}, {j}): {got} vs {want}"
                );
            }
        }
    }
}

/// The CPU layer norm's backward over rows split into runs of any length (runs of 1, of 7 with a short last
/// one, and one run: many runs per worker task, where each task walks its runs) gives candle's f64 chain's
/// gradients dx, dγ and dβ to f32 rounding.
#[test]
fn a_layer_norm_backward_in_runs_of_any_length_matches_candles_chain() {
    let dev = Device::Cpu;
    let mut rng = NoiseRng::new(23);
    let (rows, n, eps) = (2000, 5, 1e-5);
    let draw = |rng: &mut NoiseRng, dims: &[usize], shift: f64| {
        (rng.randn(dims, &dev).unwrap() + shift)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
    };
    let x = Var::from_tensor(&draw(&mut rng, &[rows, n], 0.5)).unwrap();
    let gain = Var::from_tensor(&draw(&mut rng, &[n], 1.0)).unwrap();
    let bias = Var::from_tensor(&draw(&mut rng, &[n], 0.0)).unwrap();
    let dy = draw(&mut rng, &[rows, n], 0.0);
    let y = layer_norm_chain(x.as_tensor(), gain.as_tensor(), bias.as_tensor(), eps).unwrap();
    let g = (y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
    let want = [&x, &gain, &bias].map(|v| g.get(v.as_tensor()).unwrap().clone());
    let f32s = |t: &Tensor| {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (xs, gs, dys) = (f32s(x.as_tensor()), f32s(gain.as_tensor()), f32s(&dy));
    let stats = layer_norm_stats_f32(&xs, (rows, n), eps as f32);
    for run_rows in [1, 7, rows] {
        let (dx, dgain, dbias) =
            layer_norm_backward_f32([&xs, &gs, &dys], &stats, (rows, n), run_rows);
        let got = [dx, dgain, dbias].map(|v| {
            let len = v.len();
            Tensor::from_vec(v, len, &dev)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
        });
        for (name, (a, b)) in ["x", "gain", "bias"].iter().zip(got.iter().zip(&want)) {
            let b = b.flatten_all().unwrap();
            assert!(
                rel(a, &b) < 1e-5,
                "runs of {run_rows}: d{name} {}",
                rel(a, &b)
            );
        }
    }
}

/// The layer norm records its op when any one of x, γ and β is tracked (the others plain tensors): that
/// input's gradient is candle's chain's.
#[test]
fn a_layer_norm_with_one_tracked_input_records_its_gradient() {
    let dev = Device::Cpu;
    let mut rng = NoiseRng::new(24);
    let (x, gain, bias) = (
        rng.randn(&[4, 6], &dev).unwrap(),
        (rng.randn(&[6], &dev).unwrap() + 1.0).unwrap(),
        rng.randn(&[6], &dev).unwrap(),
    );
    let probe = rng.randn(&[4, 6], &dev).unwrap();
    for tracked in 0..3 {
        let var = Var::from_tensor([&x, &gain, &bias][tracked]).unwrap();
        let mut inputs = [x.clone(), gain.clone(), bias.clone()];
        inputs[tracked] = var.as_tensor().clone();
        let grad = |y: Tensor| {
            let g = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            g.get(var.as_tensor()).cloned()
        };
        let [a, b, c] = &inputs;
        let want = grad(layer_norm_chain(a, b, c, 1e-5).unwrap()).unwrap();
        let got = grad(layer_norm(a, b, c, 1e-5).unwrap());
        let got = got.unwrap_or_else(|| panic!("input {tracked}: no gradient recorded"));
        assert!(
            rel(&got, &want) < 1e-5,
            "input {tracked}: {}",
            rel(&got, &want)
        );
    }
}
