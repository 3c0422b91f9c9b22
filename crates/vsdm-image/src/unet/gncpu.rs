//! Group normalisation (+ SiLU) and its analytic backward as direct loops over CPU f32 tensors, the formulas of
//! [`super::fastnorm`] (see there) in 3 passes over the activation for the value and 4 for the backward.
//!
//! On the CPU [`super::fastnorm`]'s value and backward are chains of candle's element-wise and reduction ops:
//! about 10 passes for the value (mean, subtract, square, mean, broadcast multiply, scale, shift, SiLU with the C
//! library's scalar `expf`) and about 20 for the backward, each writing an activation-sized tensor. Here each
//! (image, group) row is one task (on candle's worker pool, [`vsdm_core::fastmath::par_rows_mut`]): its mean and variance are summed in f64 lanes, then one pass writes
//! γ_c·x̂ + β_c (through SiLU with [`vsdm_core::fastmath`]'s vectorised logistic function when asked); the
//! backward recomputes the statistics, writes ∂L/∂y into the output buffer while summing the per-channel and
//! per-group terms, and rewrites it as ∂L/∂x. The loops are built for AVX2 + FMA as well and picked at run
//! time ([`vsdm_core::simd_fn!`]).

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use vsdm_core::fastmath::{avx2, f32_slice as slice, par_fill, par_rows_mut, sigmoid_f32};

use super::gnkernel::Spec;

/// Whether [`value`] and [`gradients`] take these tensors: CPU, f32 activations, scale and shift.
pub fn applies(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> bool {
    x.device().is_cpu() && [x.dtype(), gamma.dtype(), beta.dtype()] == [DType::F32; 3]
}

vsdm_core::simd_fn! {
    /// (mean, 1/√(variance + ε)) of one row: both sums in eight f64 lanes (the variance about the mean, a
    /// second pass, as candle_nn's `GroupNorm` computes it).
    fn row_stats(x: &[f32], eps: f64) -> (f32, f32) {
        let n = x.len().max(1) as f64;
        let mut lanes = [0f64; 8];
        let mut tail = 0f64;
        let chunks = x.chunks_exact(8);
        for v in chunks.remainder() {
            tail += *v as f64;
        }
        for c in chunks {
            for l in 0..8 {
                lanes[l] += c[l] as f64;
            }
        }
        let mean = lanes.iter().sum::<f64>() + tail;
        let mean = (mean / n) as f32;
        let mut lanes = [0f64; 8];
        let mut tail = 0f64;
        let chunks = x.chunks_exact(8);
        for v in chunks.remainder() {
            let d = (*v - mean) as f64;
            tail += d * d;
        }
        for c in chunks {
            for l in 0..8 {
                let d = (c[l] - mean) as f64;
                lanes[l] += d * d;
            }
        }
        let var = (lanes.iter().sum::<f64>() + tail) / n;
        (mean, (1.0 / (var + eps).sqrt()) as f32)
    }
}

vsdm_core::simd_fn! {
    /// out = a·x + b, through SiLU when `silu`, for one channel's values.
    fn scale_shift_row(x: &[f32], out: &mut [MaybeUninit<f32>], a: f32, b: f32, silu: bool) {
        if silu {
            for (o, x) in out.iter_mut().zip(x) {
                let y = x * a + b;
                o.write(y * sigmoid_f32(y));
            }
        } else {
            for (o, x) in out.iter_mut().zip(x) {
                o.write(x * a + b);
            }
        }
    }
}

/// For one channel's values: writes g = f(x, ∂L/∂u) and returns (Σ g·x̂, Σ g) with x̂ = (x − mean)·r, each
/// summed in eight f32 lanes (inlined into [`dy_row`]'s builds).
#[inline(always)]
fn dy_lanes(
    x: &[f32],
    du: &[f32],
    out: &mut [MaybeUninit<f32>],
    (mean, r): (f32, f32),
    f: impl Fn(f32, f32) -> f32,
) -> (f32, f32) {
    let (mut gx, mut g1) = ([0f32; 8], [0f32; 8]);
    let n8 = x.len() / 8 * 8;
    let (x, x_tail) = x.split_at(n8);
    let (du, du_tail) = du.split_at(n8);
    let (out, out_tail) = out.split_at_mut(n8);
    for ((xc, uc), oc) in x
        .chunks_exact(8)
        .zip(du.chunks_exact(8))
        .zip(out.chunks_exact_mut(8))
    {
        for l in 0..8 {
            let g = f(xc[l], uc[l]);
            oc[l].write(g);
            gx[l] += g * ((xc[l] - mean) * r);
            g1[l] += g;
        }
    }
    let (mut tx, mut t1) = (0f32, 0f32);
    for ((xv, uv), o) in x_tail.iter().zip(du_tail).zip(out_tail) {
        let g = f(*xv, *uv);
        o.write(g);
        tx += g * ((xv - mean) * r);
        t1 += g;
    }
    (gx.iter().sum::<f32>() + tx, g1.iter().sum::<f32>() + t1)
}

vsdm_core::simd_fn! {
    /// For one channel's values: writes g = ∂L/∂y (∂L/∂u·SiLU′(y) when `silu`, with y = a·x + b) and returns
    /// (Σ g·x̂, Σ g) ([`dy_lanes`]).
    fn dy_row(
        x: &[f32],
        du: &[f32],
        out: &mut [MaybeUninit<f32>],
        ab: (f32, f32),
        stats: (f32, f32),
        silu: bool,
    ) -> (f32, f32) {
        let (a, b) = ab;
        if silu {
            dy_lanes(x, du, out, stats, |x, u| {
                let y = x * a + b;
                let s = sigmoid_f32(y);
                u * s * (1.0 + y * (1.0 - s))
            })
        } else {
            dy_lanes(x, du, out, stats, |_, u| u)
        }
    }
}

vsdm_core::simd_fn! {
    /// Rewrites one channel's g (written by [`dy_row`]) as ∂L/∂x = r·(γ·g − m1 − x̂·m2), x̂ = (x − mean)·r.
    fn dx_row(x: &[f32], g: &mut [MaybeUninit<f32>], gamma: f32, stats: (f32, f32), m: (f32, f32)) {
        let ((mean, r), (m1, m2)) = (stats, m);
        for (g, x) in g.iter_mut().zip(x) {
            // SAFETY: dy_row wrote every element of the row before.
            let gv = unsafe { g.assume_init() };
            g.write(r * (gamma * gv - m1 - (x - mean) * r * m2));
        }
    }
}

/// The shape of a group-norm call: batch, channels, positions per channel, groups.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    c: usize,
    s: usize,
    groups: usize,
}

impl Dims {
    fn of(shape: &Shape, groups: usize) -> Result<Self> {
        let d = shape.dims();
        if d.len() < 2 || groups == 0 || !d[1].is_multiple_of(groups) {
            candle_core::bail!("group norm: input {d:?} with {groups} groups");
        }
        Ok(Self {
            b: d[0],
            c: d[1],
            s: d[2..].iter().product(),
            groups,
        })
    }

    /// Channels per group.
    fn cg(self) -> usize {
        self.c / self.groups
    }

    /// Values per (image, group) row.
    fn row(self) -> usize {
        self.cg() * self.s
    }
}

/// The value op on (x, γ, β).
struct Value(Spec);

impl CustomOp3 for Value {
    fn name(&self) -> &'static str {
        "group-norm-cpu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let Spec { groups, eps, silu } = self.0;
        let d = Dims::of(l1.shape(), groups)?;
        let (x, gamma, beta) = (
            slice(s1, l1, "group norm (CPU): x")?,
            slice(s2, l2, "group norm (CPU): the scale")?,
            slice(s3, l3, "group norm (CPU): the shift")?,
        );
        if gamma.len() != d.c || beta.len() != d.c {
            candle_core::bail!(
                "group norm: scale {:?} and shift {:?} for {} channels",
                l2.dims(),
                l3.dims(),
                d.c
            );
        }
        let (fast, n) = (avx2(), d.row());
        // SAFETY: scale_shift_row writes every value of its channel, so each (image, group) row is written whole.
        let out = unsafe {
            par_fill(x.len().checked_div(n).unwrap_or(0), n, |r0, run| {
                for (i, o) in run.chunks_mut(n).enumerate() {
                    let row = r0 + i;
                    let xr = &x[row * n..(row + 1) * n];
                    let (mean, r) = row_stats(fast, xr, eps);
                    let c0 = (row % d.groups) * d.cg();
                    for (j, (xc, oc)) in xr.chunks(d.s).zip(o.chunks_mut(d.s)).enumerate() {
                        let a = gamma[c0 + j] * r;
                        scale_shift_row(fast, xc, oc, a, beta[c0 + j] - mean * a, silu);
                    }
                }
            })
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// The backward op on (x, ∂L/∂out, [γ | β]): one vector [∂L/∂x (x's length) | ∂L/∂γ (C) | ∂L/∂β (C)].
struct Gradients(Spec);

impl CustomOp3 for Gradients {
    fn name(&self) -> &'static str {
        "group-norm-cpu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let Spec { groups, eps, silu } = self.0;
        let d = Dims::of(l1.shape(), groups)?;
        let (x, du, gb) = (
            slice(s1, l1, "group norm (CPU): x")?,
            slice(s2, l2, "group norm (CPU): the output's gradient")?,
            slice(s3, l3, "group norm (CPU): the scale and shift")?,
        );
        if du.len() != x.len() || gb.len() != 2 * d.c {
            candle_core::bail!(
                "group norm backward: gradient {:?} for input {:?}, {} parameters for {} channels",
                l2.dims(),
                l1.dims(),
                gb.len(),
                d.c
            );
        }
        let (gamma, beta) = gb.split_at(d.c);
        let (n, cg, s) = (d.row(), d.cg(), d.s);
        let fast = avx2();
        // Per (image, channel): Σ g·x̂ and Σ g, written by the row's task.
        let mut partial = vec![(0f32, 0f32); d.b * d.c];
        let mut dx: Vec<f32> = Vec::with_capacity(x.len());
        par_rows_mut(
            (&mut dx.spare_capacity_mut()[..x.len()], n.max(1)),
            (&mut partial, cg),
            // No rows when the channels hold no positions (then ∂L/∂γ = ∂L/∂β = 0).
            if n == 0 { 0 } else { d.b * d.groups },
            |r0, o, part| {
                for (i, (o, part)) in o.chunks_mut(n).zip(part.chunks_mut(cg)).enumerate() {
                    let row = r0 + i;
                    let xr = &x[row * n..(row + 1) * n];
                    let ur = &du[row * n..(row + 1) * n];
                    let stats @ (mean, r) = row_stats(fast, xr, eps);
                    let c0 = (row % d.groups) * cg;
                    let (mut m1, mut m2) = (0f64, 0f64);
                    for (j, ((xc, uc), oc)) in xr
                        .chunks(s)
                        .zip(ur.chunks(s))
                        .zip(o.chunks_mut(s))
                        .enumerate()
                    {
                        let g = gamma[c0 + j];
                        let a = g * r;
                        let ab = (a, beta[c0 + j] - mean * a);
                        let (gx, g1) = dy_row(fast, xc, uc, oc, ab, stats, silu);
                        part[j] = (gx, g1);
                        m1 += (g * g1) as f64;
                        m2 += (g * gx) as f64;
                    }
                    let m = ((m1 / n as f64) as f32, (m2 / n as f64) as f32);
                    for (j, (xc, oc)) in xr.chunks(s).zip(o.chunks_mut(s)).enumerate() {
                        dx_row(fast, xc, oc, gamma[c0 + j], stats, m);
                    }
                }
            },
        );
        // SAFETY: the rows cover all of x's length and dy_row wrote every element (dx_row rewrote them).
        unsafe { dx.set_len(x.len()) };
        let mut sums = vec![0f64; 2 * d.c];
        for (i, (gx, g1)) in partial.iter().enumerate() {
            sums[i % d.c] += *gx as f64;
            sums[d.c + i % d.c] += *g1 as f64;
        }
        dx.extend(sums.iter().map(|v| *v as f32));
        let len = dx.len();
        Ok((CpuStorage::F32(dx), Shape::from(len)))
    }
}

/// The value of the group norm (+ SiLU) of `x` `[B, C, …]` on the CPU in f32 (see [`applies`]); no graph.
pub fn value(x: &Tensor, gamma: &Tensor, beta: &Tensor, spec: Spec) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3_no_bwd(&gamma.contiguous()?, &beta.contiguous()?, &Value(spec))
}

/// (∂L/∂x, ∂L/∂γ, ∂L/∂β) of the group norm (+ SiLU) from ∂L/∂out `du`, on the CPU in f32.
pub fn gradients(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    du: &Tensor,
    spec: Spec,
) -> Result<(Tensor, Tensor, Tensor)> {
    let c = gamma.elem_count();
    let gb = Tensor::cat(&[gamma.flatten_all()?, beta.flatten_all()?], 0)?;
    let all = x
        .contiguous()?
        .apply_op3_no_bwd(&du.contiguous()?, &gb, &Gradients(spec))?;
    let len = x.elem_count();
    Ok((
        all.narrow(0, 0, len)?.reshape(x.shape())?,
        all.narrow(0, len, c)?,
        all.narrow(0, len + c, c)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module, Var};
    use candle_nn::VarBuilder;
    use vsdm_core::NoiseRng;

    use crate::unet::testutil::rel;

    /// The f32 loops against candle_nn's `GroupNorm` (then candle's SiLU) evaluated and differentiated in f64 on
    /// the same values: value and the three gradients within 1e-5 relative, on rows with whole lanes of eight
    /// and tails (positions 1, 63, 1024), one row per task and many, inputs far from zero mean.
    #[test]
    fn f32_loops_match_candle_nn_in_f64() {
        let dev = Device::Cpu;
        let mut rng = NoiseRng::new(11);
        for (shape, groups, silu) in [
            (vec![3usize, 64, 32, 32], 32usize, true),
            (vec![3, 64, 32, 32], 32, false),
            (vec![2, 12, 7, 9], 3, true),
            (vec![1, 32, 1, 1], 8, true),
            (vec![4, 6, 5], 6, false),
        ] {
            let c = shape[1];
            let x = ((rng.randn(&shape, &dev).unwrap() * 2.0).unwrap() + 4.0).unwrap();
            let gamma = (rng.randn(&[c], &dev).unwrap() + 1.0).unwrap();
            let beta = rng.randn(&[c], &dev).unwrap();
            let probe = rng.randn(&shape, &dev).unwrap();
            // The reference in f64.
            let f64v = |t: &Tensor| Var::from_tensor(&t.to_dtype(DType::F64).unwrap()).unwrap();
            let (x64, probe64) = (f64v(&x), probe.to_dtype(DType::F64).unwrap());
            let vm = candle_nn::VarMap::new();
            let gn = candle_nn::group_norm(
                groups,
                c,
                1e-5,
                VarBuilder::from_varmap(&vm, DType::F64, &dev),
            )
            .unwrap();
            let (w, b) = {
                let d = vm.data().lock().unwrap();
                d["weight"]
                    .set(&gamma.to_dtype(DType::F64).unwrap())
                    .unwrap();
                d["bias"].set(&beta.to_dtype(DType::F64).unwrap()).unwrap();
                (d["weight"].clone(), d["bias"].clone())
            };
            let mut y64 = gn.forward(x64.as_tensor()).unwrap();
            if silu {
                y64 = candle_nn::ops::silu(&y64).unwrap();
            }
            let g64 = (&y64 * &probe64)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            // The loops.
            let spec = Spec {
                groups,
                eps: 1e-5,
                silu,
            };
            assert!(applies(&x, &gamma, &beta));
            let y = value(&x, &gamma, &beta, spec).unwrap();
            let (dx, dg, db) = gradients(&x, &gamma, &beta, &probe, spec).unwrap();
            let case = format!("{shape:?} / {groups} groups / SiLU {silu}");
            let to64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
            for (what, ours, want) in [
                ("value", to64(&y), y64.clone()),
                ("dx", to64(&dx), g64.get(x64.as_tensor()).unwrap().clone()),
                ("dγ", to64(&dg), g64.get(w.as_tensor()).unwrap().clone()),
                ("dβ", to64(&db), g64.get(b.as_tensor()).unwrap().clone()),
            ] {
                assert_eq!(ours.dims(), want.dims(), "{case}: {what} shape");
                let e = rel(&ours, &want);
                assert!(e < 1e-5, "{case}: {what} off by {e}");
            }
        }
    }

    /// Scale and shift of the wrong length, a channel count the groups do not divide, and a gradient of another
    /// shape are errors, not panics.
    #[test]
    fn mismatched_inputs_are_errors() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 4, 3), DType::F32, &dev).unwrap();
        let (g4, g3) = (
            Tensor::ones(4, DType::F32, &dev).unwrap(),
            Tensor::ones(3, DType::F32, &dev).unwrap(),
        );
        let spec = |groups| Spec {
            groups,
            eps: 1e-5,
            silu: true,
        };
        assert!(value(&x, &g3, &g4, spec(2)).is_err());
        // Channels without positions: empty value and ∂L/∂x, zero ∂L/∂γ and ∂L/∂β (no panic).
        let e = Tensor::zeros((2, 4, 0), DType::F32, &dev).unwrap();
        assert_eq!(value(&e, &g4, &g4, spec(2)).unwrap().dims(), [2, 4, 0]);
        let (dx, dg, db) = gradients(&e, &g4, &g4, &e, spec(2)).unwrap();
        assert_eq!(dx.dims(), [2, 4, 0]);
        for t in [dg, db] {
            assert_eq!(t.to_vec1::<f32>().unwrap(), [0.0; 4]);
        }
        assert!(value(&x, &g4, &g4, spec(3)).is_err());
        assert!(value(&x, &g4, &g4, spec(0)).is_err());
        // A vector has no channel axis; [B, C] is [B, C, 1] (one position a channel), as in PyTorch.
        assert!(value(&g4, &g4, &g4, spec(2)).is_err());
        let flat = NoiseRng::new(4).randn(&[3, 4], &dev).unwrap();
        let shift = g3.pad_with_zeros(0, 0, 1).unwrap();
        let normed = |x: &Tensor| {
            let y = value(x, &g4, &shift, spec(2)).unwrap();
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert_eq!(normed(&flat), normed(&flat.reshape((3, 4, 1)).unwrap()));
        let du = Tensor::zeros((2, 4, 2), DType::F32, &dev).unwrap();
        assert!(gradients(&x, &g4, &g4, &du, spec(2)).is_err());
        assert!(gradients(&x, &g4, &g3, &x, spec(2)).is_err());
    }
}
