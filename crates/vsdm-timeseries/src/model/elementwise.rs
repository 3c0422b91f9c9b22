//! Element-wise pieces of the network as single CPU ops: the gated activation σ(a) ⊙ tanh(b) of each residual
//! block and SiLU, each with its analytic backward, on vectorisable f32 transcendentals
//! ([`vsdm_core::fastmath`]'s `exp_f32`, `tanh_f32`) built twice, plainly and for AVX2 + FMA, the build picked at run time.
//!
//! candle computes them with the C library's scalar `expf`/`tanhf` (a sixth of a forecasting run's profile on
//! the exchange rate), reads the two halves of the gate through strided copies, and records three ops for the
//! gate. Elsewhere than on the CPU in f32 the functions here are candle's ops.

use std::mem::MaybeUninit;

use vsdm_core::fastmath::{avx2, f32_slice, par_rows, sigmoid_f32, tanh_f32};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};

vsdm_core::simd_fn! {
    /// Gate: a row of y = [a | b] (2h) → σ(a) ⊙ tanh(b) (h); `w` is h, the second input unused.
    fn gate_rows(y: &[f32], _unused: &[f32], out: &mut [MaybeUninit<f32>], h: usize) {
        for (y, o) in y.chunks_exact(2 * h).zip(out.chunks_exact_mut(h)) {
            let (a, b) = y.split_at(h);
            for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                o.write(sigmoid_f32(*a) * tanh_f32(*b));
            }
        }
    }
}

vsdm_core::simd_fn! {
    /// Gate backward: rows of y (2h) and dz (h) → dy (2h): dy_a = dz tanh(b) σ(a)(1 − σ(a)),
    /// dy_b = dz σ(a)(1 − tanh²(b)).
    fn gate_grad_rows(y: &[f32], dz: &[f32], out: &mut [MaybeUninit<f32>], h: usize) {
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
}

vsdm_core::simd_fn! {
    /// SiLU: x σ(x), element by element (`w` unused).
    fn silu_rows(x: &[f32], _unused: &[f32], out: &mut [MaybeUninit<f32>], _w: usize) {
        for (o, x) in out.iter_mut().zip(x) {
            o.write(x * sigmoid_f32(*x));
        }
    }
}

vsdm_core::simd_fn! {
    /// SiLU backward: dx = dz σ(x) (1 + x (1 − σ(x))).
    fn silu_grad_rows(x: &[f32], dz: &[f32], out: &mut [MaybeUninit<f32>], _w: usize) {
        for ((o, x), g) in out.iter_mut().zip(x).zip(dz) {
            let s = sigmoid_f32(*x);
            o.write(g * s * (1.0 + x * (1.0 - s)));
        }
    }
}

/// A row kernel of this module: (AVX2 available, a rows, b rows, output rows, width).
type RowKernel = fn(bool, &[f32], &[f32], &mut [MaybeUninit<f32>], usize);

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
            Kind::Gate => gate_rows,
            Kind::Silu => silu_rows,
        };
        if let (Kind::Gate, Some(last)) = (self.0, dims.last_mut()) {
            *last = wo;
        }
        let fast = avx2();
        let out = par_rows((x, wi), (&[], 0), wo, rows, |a, b, o| {
            kernel(fast, a, b, o, wo)
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
            Kind::Gate => gate_grad_rows,
            Kind::Silu => silu_grad_rows,
        };
        let fast = avx2();
        let out = par_rows((x, wi), (dz, wo), wi, rows, |a, b, o| {
            kernel(fast, a, b, o, wo)
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
