//! Element-wise pieces of the network as single CPU ops: the gated activation σ(a) ⊙ tanh(b) of each residual
//! block and SiLU, each with its analytic backward, on vectorisable f32 transcendentals ([`exp_f32`],
//! [`tanh_f32`]) built twice, plainly and for AVX2 + FMA, the build picked at run time.
//!
//! candle computes them with the C library's scalar `expf`/`tanhf` (a sixth of a forecasting run's profile on
//! the exchange rate), reads the two halves of the gate through strided copies, and records three ops for the
//! gate. Elsewhere than on the CPU in f32 the functions here are candle's ops.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};

/// e^x in f32 for x ≤ 88 (below −87, where e^x is under f32's smallest normal number, e^−87 is returned):
/// x = n ln 2 + r with |r| ≤ ln 2 / 2 (ln 2 in two parts, Cody–Waite), e^r by Cephes' degree-6 polynomial,
/// times 2ⁿ built in the exponent bits. Branch-free, so a loop of it compiles to vector instructions; within
/// 2 ulp of the true value (tested against f64's exp).
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    // n = round(x / ln 2): adding 1.5 · 2²³ rounds to the nearest integer and leaves n in the low bits of
    // the sum (read as integers, no float-to-int conversion, which would not vectorise).
    let shifted = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = shifted - 12_582_912.0;
    let n_bits = shifted.to_bits().wrapping_sub(0x4B40_0000);
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_2e-4;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    er * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// tanh in f32: for |x| ≥ 0.625, 1 − 2/(e^{2|x|} + 1) with the sign of x; below, Cephes' odd polynomial
/// x + x³ P(x²) (where the first form would cancel). Both are computed and one selected, so it vectorises.
#[inline(always)]
pub(crate) fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    let big = (1.0 - 2.0 / (exp_f32(2.0 * a) + 1.0)).copysign(x);
    let z = x * x;
    let mut p = -5.704_988_7e-3;
    p = p * z + 2.063_909e-2;
    p = p * z - 5.373_971_6e-2;
    p = p * z + 1.333_144_2e-1;
    p = p * z - 3.333_328e-1;
    let small = p * z * x + x;
    if a >= 0.625 {
        big
    } else {
        small
    }
}

/// The logistic function 1 / (1 + e^−x) in f32.
#[inline(always)]
pub(crate) fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

/// Whether this CPU runs the AVX2 + FMA builds.
pub(crate) fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A row kernel `fn(a, b, out, width)` compiled plainly (`$plain`) and for AVX2 + FMA (`$avx`), and `$best`,
/// which calls the AVX2 build when the CPU has it.
macro_rules! row_kernel {
    ($plain:ident, $avx:ident, $best:ident, |$a:ident, $b:ident, $out:ident, $w:ident| $body:block) => {
        #[inline(always)]
        fn $plain($a: &[f32], $b: &[f32], $out: &mut [MaybeUninit<f32>], $w: usize) $body

        /// # Safety
        /// The CPU must support AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx(a: &[f32], b: &[f32], out: &mut [MaybeUninit<f32>], w: usize) {
            $plain(a, b, out, w)
        }

        fn $best(a: &[f32], b: &[f32], out: &mut [MaybeUninit<f32>], w: usize, avx2: bool) {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the caller detected AVX2 and FMA.
                return unsafe { $avx(a, b, out, w) };
            }
            let _ = avx2;
            $plain(a, b, out, w)
        }
    };
}

// Gate: a row of y = [a | b] (2h) → σ(a) ⊙ tanh(b) (h); `w` is h, the second input unused.
row_kernel!(
    gate_rows,
    gate_rows_avx2,
    gate_rows_best,
    |y, _unused, out, h| {
        for (y, o) in y.chunks_exact(2 * h).zip(out.chunks_exact_mut(h)) {
            let (a, b) = y.split_at(h);
            for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                o.write(sigmoid_f32(*a) * tanh_f32(*b));
            }
        }
    }
);

// Gate backward: rows of y (2h) and dz (h) → dy (2h): dy_a = dz tanh(b) σ(a)(1 − σ(a)),
// dy_b = dz σ(a)(1 − tanh²(b)).
row_kernel!(
    gate_grad_rows,
    gate_grad_rows_avx2,
    gate_grad_rows_best,
    |y, dz, out, h| {
        for ((y, dz), o) in y
            .chunks_exact(2 * h)
            .zip(dz.chunks_exact(h))
            .zip(out.chunks_exact_mut(2 * h))
        {
            let (a, b) = y.split_at(h);
            let (oa, ob) = o.split_at_mut(h);
            for ((((oa, ob), a), b), g) in oa.iter_mut().zip(ob).zip(a).zip(b).zip(dz) {
                let s = sigmoid_f32(*a);
                let t = tanh_f32(*b);
                oa.write(g * t * s * (1.0 - s));
                ob.write(g * s * (1.0 - t * t));
            }
        }
    }
);

// SiLU: x σ(x), element by element (`w` unused).
row_kernel!(
    silu_rows,
    silu_rows_avx2,
    silu_rows_best,
    |x, _unused, out, _w| {
        for (o, x) in out.iter_mut().zip(x) {
            o.write(x * sigmoid_f32(*x));
        }
    }
);

// SiLU backward: dx = dz σ(x) (1 + x (1 − σ(x))).
row_kernel!(
    silu_grad_rows,
    silu_grad_rows_avx2,
    silu_grad_rows_best,
    |x, dz, out, _w| {
        for ((o, x), g) in out.iter_mut().zip(x).zip(dz) {
            let s = sigmoid_f32(*x);
            o.write(g * s * (1.0 + x * (1.0 - s)));
        }
    }
);

/// A row kernel's dispatcher: (a, b, out, width, AVX2 available).
type RowKernel = fn(&[f32], &[f32], &mut [MaybeUninit<f32>], usize, bool);

/// Runs `kernel(a_rows, b_rows, out_rows)` over `rows` rows in parallel, in tasks of about 64 Ki output
/// elements, and returns the output: `a` has rows of `wa`, `b` rows of `wb` (or is empty, `wb` = 0), the
/// output rows of `wo`; the kernel must write every element of its output rows.
pub(crate) fn par_rows<T: Copy + Send + Sync>(
    (a, wa): (&[T], usize),
    (b, wb): (&[T], usize),
    wo: usize,
    rows: usize,
    kernel: impl Fn(&[T], &[T], &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    use rayon::prelude::*;
    let len = rows * wo;
    let mut out: Vec<T> = Vec::with_capacity(len);
    if len == 0 {
        return out;
    }
    let per_task = (65_536 / wo).max(1);
    out.spare_capacity_mut()
        .par_chunks_mut(per_task * wo)
        .enumerate()
        .for_each(|(i, o)| {
            let (r0, n) = (i * per_task, o.len() / wo);
            let b = if wb == 0 {
                &[][..]
            } else {
                &b[r0 * wb..(r0 + n) * wb]
            };
            kernel(&a[r0 * wa..(r0 + n) * wa], b, o)
        });
    // SAFETY: the tasks cover all `len` elements (whole rows of `wo`) and every kernel writes each one.
    unsafe { out.set_len(len) };
    out
}

/// The f32 slice of a contiguous CPU storage.
fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("{op}: a contiguous f32 input only"),
    }
}

/// Whether `t` takes the CPU kernels here.
fn on_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous()
}

/// σ(a) ⊙ tanh(b) for y = [a | b] split in halves along the last axis (`[…, 2h]` → `[…, h]`), the gated
/// activation of WaveNet and CSDI, one op with its backward on the CPU in f32.
pub fn gate(y: &Tensor) -> Result<Tensor> {
    let w = y.dim(D::Minus1)?;
    if w % 2 != 0 {
        candle_core::bail!("gate: the last axis of {:?} is odd", y.shape());
    }
    if on_cpu_f32(y) {
        return y.apply_op1(Op(Kind::Gate));
    }
    let h = w / 2;
    candle_nn::ops::sigmoid(&y.narrow(D::Minus1, 0, h)?)? * y.narrow(D::Minus1, h, h)?.tanh()?
}

/// x σ(x), one op with its backward on the CPU in f32; candle's `silu` elsewhere.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    if on_cpu_f32(x) {
        return x.apply_op1(Op(Kind::Silu));
    }
    x.silu()
}

/// The element-wise functions of this module, as ops.
#[derive(Clone, Copy)]
enum Kind {
    /// `[…, 2h]` → `[…, h]`: σ(first half) ⊙ tanh(second half).
    Gate,
    /// x σ(x), shape kept.
    Silu,
}

impl Kind {
    /// (input row width, output row width) for an input whose last axis is `last`; SiLU works on rows of one.
    fn widths(self, last: usize) -> (usize, usize) {
        match self {
            Kind::Gate => (last, last / 2),
            Kind::Silu => (1, 1),
        }
    }
}

/// The value of a [`Kind`], recording [`Grad`] as its backward.
struct Op(Kind);

impl CustomOp1 for Op {
    fn name(&self) -> &'static str {
        match self.0 {
            Kind::Gate => "gate",
            Kind::Silu => "silu-fast",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let mut dims = l.shape().dims().to_vec();
        let (wi, wo) = self.0.widths(dims.last().copied().unwrap_or(0));
        let rows = x.len().checked_div(wi).unwrap_or(0);
        let kernel: RowKernel = match self.0 {
            Kind::Gate => gate_rows_best,
            Kind::Silu => silu_rows_best,
        };
        if let (Kind::Gate, Some(last)) = (self.0, dims.last_mut()) {
            *last = wo;
        }
        let fast = avx2();
        let out = par_rows((x, wi), (&[], 0), wo, rows, |a, b, o| {
            kernel(a, b, o, wo, fast)
        });
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(&self, x: &Tensor, _z: &Tensor, dz: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&dz.contiguous()?, &Grad(self.0))?))
    }
}

/// The gradient of a [`Kind`]'s input from its input and its output's gradient (both contiguous f32).
struct Grad(Kind);

impl CustomOp2 for Grad {
    fn name(&self) -> &'static str {
        match self.0 {
            Kind::Gate => "gate-grad",
            Kind::Silu => "silu-fast-grad",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, dz) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
        );
        let (wi, wo) = self
            .0
            .widths(l1.shape().dims().last().copied().unwrap_or(0));
        let rows = x.len().checked_div(wi).unwrap_or(0);
        if dz.len() != rows * wo {
            candle_core::bail!(
                "{}: gradient {:?} does not match the input {:?}",
                self.name(),
                l2.shape(),
                l1.shape()
            );
        }
        let kernel: RowKernel = match self.0 {
            Kind::Gate => gate_grad_rows_best,
            Kind::Silu => silu_grad_rows_best,
        };
        let fast = avx2();
        let out = par_rows((x, wi), (dz, wo), wi, rows, |a, b, o| {
            kernel(a, b, o, wo, fast)
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use vsdm_core::NoiseRng;

    /// ‖a − b‖∞ / ‖b‖∞.
    fn rel(a: &Tensor, b: &Tensor) -> f64 {
        let inf = |t: &Tensor| {
            t.abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        inf(&(a - b).unwrap()) / inf(b).max(1e-300)
    }

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

    /// The gate and SiLU ops equal candle's chains in value and gradient (f32, 1e-6 relative; ⟨z, probe⟩
    /// with a random probe, the output reached through a transpose so that the incoming gradient is strided),
    /// on sizes below and above one parallel task and with odd widths (all the lane remainders); f64 and
    /// untracked inputs take candle's path.
    #[test]
    fn gate_and_silu_match_candles_chains() {
        let dev = Device::Cpu;
        let mut rng = NoiseRng::new(17);
        for dims in [
            vec![3usize, 5, 2 * 7],
            vec![2, 3, 40, 2 * 33],
            vec![4, 300, 2 * 64],
        ] {
            let x = Var::from_tensor(&(rng.randn(&dims, &dev).unwrap() * 3.0).unwrap()).unwrap();
            let last = dims.len() - 1;
            let h = dims[last] / 2;
            let reference = |y: &Tensor| {
                (candle_nn::ops::sigmoid(&y.narrow(last, 0, h).unwrap()).unwrap()
                    * y.narrow(last, h, h).unwrap().tanh().unwrap())
                .unwrap()
            };
            type Op<'a> = &'a dyn Fn(&Tensor) -> Tensor;
            let ours_gate = |y: &Tensor| gate(y).unwrap();
            let ours_silu = |y: &Tensor| silu(y).unwrap();
            let theirs_silu = |y: &Tensor| y.silu().unwrap();
            let pairs: [(&str, Op, Op); 2] = [
                ("gate", &ours_gate, &reference),
                ("silu", &ours_silu, &theirs_silu),
            ];
            for (name, ours, theirs) in pairs {
                let z0 = theirs(x.as_tensor());
                let probe = rng.randn(z0.transpose(0, 1).unwrap().dims(), &dev).unwrap();
                let grad = |z: &Tensor| {
                    let loss = (z.transpose(0, 1).unwrap() * &probe)
                        .unwrap()
                        .sum_all()
                        .unwrap();
                    loss.backward().unwrap().get(x.as_tensor()).unwrap().clone()
                };
                let z1 = ours(x.as_tensor());
                let case = format!("{name} {dims:?}");
                assert!(rel(&z1, &z0) < 1e-6, "{case}: value {}", rel(&z1, &z0));
                let (g1, g0) = (grad(&z1), grad(&z0));
                assert!(rel(&g1, &g0) < 1e-6, "{case}: gradient {}", rel(&g1, &g0));
            }
        }
        let y64 = rng
            .randn(&[2, 6], &dev)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let want = (candle_nn::ops::sigmoid(&y64.narrow(1, 0, 3).unwrap()).unwrap()
            * y64.narrow(1, 3, 3).unwrap().tanh().unwrap())
        .unwrap();
        assert!(rel(&gate(&y64).unwrap(), &want) < 1e-15);
        assert!(gate(&Tensor::zeros((2, 3), DType::F32, &dev).unwrap()).is_err());
    }
}
