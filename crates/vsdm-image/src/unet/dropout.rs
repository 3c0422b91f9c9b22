//! Inverted dropout whose mask is a function of a seed and the element's index (a counter-based hash), so that
//! it needs no random tensor and nothing stored for the backward pass.
//!
//! The residual blocks drop before their second convolution (`fastconv::residual`). The mask used to be drawn
//! as a uniform f32 tensor, compared into a U8 tensor kept in the graph, and turned into f32 factors in the
//! forward pass and again in the backward (about 65 bytes of memory traffic per element and step in bf16, in
//! six passes). Here the value is one pass, y = x·f with f = 1/(1 − p) where kept and 0 where dropped, and the
//! backward recomputes the same mask from the seed; on CUDA the pass is `dropout_f32`/`dropout_bf16` in
//! `gn.cu`, on the CPU the loop below, the same hash and the same f32 product (the host build of the CUDA source
//! gives the loop's bits, tested below).
//!
//! The hash: element i (of the contiguous tensor) is kept when the upper 32 bits of splitmix64's output
//! function of seed + (i + 1)·γ (γ = 0x9E3779B97F4A7C15, splitmix64's own sequence of states) are at least
//! round(p·2³²). splitmix64's outputs pass BigCrush; the tests below check the drop rate, the independence of
//! neighbours and of consecutive seeds.

use candle_core::{DType, Device, Result, Tensor};

use vsdm_core::rng::derive_seed;

use super::gnkernel::{self, Backend};

/// Whether element `i` is kept under `seed` with `threshold` ([`DropMask::threshold`]).
fn kept(seed: u64, threshold: u32, i: usize) -> bool {
    (derive_seed(seed, i as u64) >> 32) as u32 >= threshold
}

/// Inverted dropout with drop probability `p` and the mask of `seed`: kept values are scaled by 1/(1 − p).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropMask {
    pub seed: u64,
    pub p: f64,
}

impl DropMask {
    /// A mask with the given seed, or a fresh random one; None when `p` is 0.
    pub fn draw(p: f64, seed: Option<u64>) -> Option<Self> {
        (p > 0.0).then(|| Self {
            seed: seed.unwrap_or_else(rand::random),
            p,
        })
    }

    /// Hash values at or above this keep their element.
    fn threshold(&self) -> u32 {
        (self.p * 4_294_967_296.0).round().min(u32::MAX as f64) as u32
    }

    /// The kept elements' factor, 1/(1 − p), in f32.
    fn scale(&self) -> f32 {
        (1.0 / (1.0 - self.p)) as f32
    }

    /// Whether element `i` is kept.
    pub fn keeps(&self, i: usize) -> bool {
        kept(self.seed, self.threshold(), i)
    }

    /// `x` with the mask applied, in x's type (f32 and bf16 through the f32 product, f16 and f64 in their own
    /// arithmetic), without recording an op: the residual tail applies it to detached values, in its forward
    /// value and in its backward.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        self.apply_on(x, Backend::Cuda)
    }

    /// [`Self::apply`] with CUDA tensors on `cuda` (the kernels, or their host build for tests).
    pub(super) fn apply_on(&self, x: &Tensor, cuda: Backend) -> Result<Tensor> {
        let x = x.contiguous()?;
        let n = x.elem_count();
        if n >= 1 << 31 {
            candle_core::bail!("dropout: {n} values, more than the kernel's 2³¹");
        }
        let on_kernels = match x.device() {
            Device::Cuda(_) => true,
            _ => cuda == Backend::Emulated,
        };
        if on_kernels && matches!(x.dtype(), DType::F32 | DType::BF16) {
            let dev = x.device();
            let scale = Tensor::new(&[self.scale()], dev)?;
            let threads = 256;
            let rows = n.div_ceil(threads).clamp(1, 65_535);
            let y = gnkernel::launch(
                if dev.is_cuda() {
                    Backend::Cuda
                } else {
                    Backend::Emulated
                },
                "dropout",
                x.dtype(),
                (rows, threads),
                &[&x.flatten_all()?, &scale],
                &[(n, x.dtype())],
                &[
                    n,
                    (self.seed & 0xFFFF_FFFF) as usize,
                    (self.seed >> 32) as usize,
                    self.threshold() as usize,
                ],
                false,
            )?;
            return y[0].reshape(x.shape());
        }
        if !x.device().is_cpu() {
            candle_core::bail!(
                "dropout: {:?} tensors on {:?} (the kernels take f32 and bf16)",
                x.dtype(),
                x.device().location()
            );
        }
        let f = self.scale();
        // The threshold once, not per element.
        let (seed, thr) = (self.seed, self.threshold());
        let keeps = |i: usize| kept(seed, thr, i);
        let factor = |i: usize| if keeps(i) { f } else { 0.0 };
        let y = match x.dtype() {
            DType::F32 => {
                let v = x.flatten_all()?.to_vec1::<f32>()?;
                Tensor::from_iter(
                    v.iter().enumerate().map(|(i, x)| x * factor(i)),
                    &Device::Cpu,
                )?
            }
            DType::BF16 => {
                let v = x.flatten_all()?.to_vec1::<half::bf16>()?;
                let it = v
                    .iter()
                    .enumerate()
                    .map(|(i, x)| half::bf16::from_f32(x.to_f32() * factor(i)));
                Tensor::from_iter(it, &Device::Cpu)?
            }
            DType::F16 => {
                let v = x.flatten_all()?.to_vec1::<half::f16>()?;
                let fh = half::f16::from_f32(f);
                let it = v
                    .iter()
                    .enumerate()
                    .map(|(i, x)| *x * if keeps(i) { fh } else { half::f16::ZERO });
                Tensor::from_iter(it, &Device::Cpu)?
            }
            DType::F64 => {
                let v = x.flatten_all()?.to_vec1::<f64>()?;
                let f64s = 1.0 / (1.0 - self.p);
                let it = v
                    .iter()
                    .enumerate()
                    .map(|(i, x)| x * if keeps(i) { f64s } else { 0.0 });
                Tensor::from_iter(it, &Device::Cpu)?
            }
            other => candle_core::bail!("dropout: {other:?} tensors (expected a float type)"),
        };
        y.reshape(x.shape())
    }

    /// The factors (0 or 1/(1 − p)) as a tensor of `x`'s shape, type and device: the mask for candle's own
    /// op chain (`--conv candle`, the reference), which multiplies by it.
    pub fn factors(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(&x.ones_like()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(m: &DropMask, n: usize) -> Vec<bool> {
        (0..n).map(|i| m.keeps(i)).collect()
    }

    /// The fraction dropped is p within 5 binomial standard deviations, for several p and seeds; the same
    /// seed gives the same mask and p = 0 no mask.
    #[test]
    fn drops_a_fraction_p() {
        let n = 200_000;
        for (p, seed) in [(0.1, 1u64), (0.13, u64::MAX), (0.5, 0), (0.9, 12345)] {
            let m = DropMask { seed, p };
            let dropped = kept(&m, n).iter().filter(|k| !**k).count() as f64;
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (dropped - p * n as f64).abs() < 5.0 * sd,
                "p {p}: {dropped} of {n} dropped"
            );
            assert_eq!(kept(&m, 1000), kept(&DropMask { seed, p }, 1000));
        }
        assert!(DropMask::draw(0.0, None).is_none());
        assert_ne!(
            DropMask::draw(0.1, None).unwrap().seed,
            DropMask::draw(0.1, None).unwrap().seed
        );
        assert_eq!(DropMask::draw(0.1, Some(9)).unwrap().seed, 9);
    }

    /// Neighbouring elements, elements a row apart, and the same element under consecutive seeds are
    /// independent: each pair's four keep/drop combinations occur at their product frequencies (a χ² test with
    /// three degrees of freedom, below 16.3, its 0.1% point).
    #[test]
    fn neighbours_and_consecutive_seeds_are_independent() {
        let n = 100_000;
        let p = 0.3;
        let chi2 = |pairs: &[(bool, bool)]| -> f64 {
            let mut c = [[0f64; 2]; 2];
            for &(a, b) in pairs {
                c[a as usize][b as usize] += 1.0;
            }
            let q = [p, 1.0 - p];
            let total = pairs.len() as f64;
            let mut s = 0.0;
            for a in 0..2 {
                for b in 0..2 {
                    let e = total * q[a] * q[b];
                    s += (c[a][b] - e).powi(2) / e;
                }
            }
            s
        };
        for seed in [0u64, 7, 1 << 40] {
            let m = DropMask { seed, p };
            let k = kept(&m, n + 1024);
            for lag in [1, 32, 1024] {
                let pairs: Vec<_> = (0..n).map(|i| (k[i], k[i + lag])).collect();
                let s = chi2(&pairs);
                assert!(s < 16.3, "seed {seed}, lag {lag}: χ² {s}");
            }
            let next = kept(&DropMask { seed: seed + 1, p }, n);
            let pairs: Vec<_> = (0..n).map(|i| (k[i], next[i])).collect();
            let s = chi2(&pairs);
            assert!(s < 16.3, "seeds {seed}, {}: χ² {s}", seed + 1);
        }
    }

    /// The CUDA source (`gn.cu`'s dropout kernels, compiled for the host) computes the CPU loop's bits in f32
    /// and bf16, on a tensor longer than one launch's threads; kept values are x·1/(1 − p) and a NaN stays NaN.
    #[test]
    fn the_cuda_source_on_the_host_equals_the_cpu_loop() {
        let dev = Device::Cpu;
        let mut rng = vsdm_core::NoiseRng::new(5);
        let m = DropMask {
            seed: 0xDEAD_BEEF_0123_4567,
            p: 0.13,
        };
        let n = 65_535 * 256 + 77;
        let x = rng.randn(&[n], &dev).unwrap();
        for dt in [DType::F32, DType::BF16] {
            let x = x.to_dtype(dt).unwrap();
            let a = m.apply(&x).unwrap().to_dtype(DType::F32).unwrap();
            let b = m.apply_on(&x, Backend::Emulated).unwrap();
            let b = b.to_dtype(DType::F32).unwrap();
            let (a, b) = (a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
            assert!(
                a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{dt:?}"
            );
        }
        let x = Tensor::new(&[f32::NAN, 2.0, -3.0, 0.5], &dev).unwrap();
        let y = m.apply(&x).unwrap().to_vec1::<f32>().unwrap();
        assert!(y[0].is_nan());
        let s = (1.0 / (1.0 - m.p)) as f32;
        for (i, (x, y)) in [2f32, -3.0, 0.5].iter().zip(&y[1..]).enumerate() {
            let want = if m.keeps(i + 1) { x * s } else { 0.0 };
            assert_eq!(*y, want);
        }
    }

    /// The mask keeps the shape and the type of the input, and in every float type the values are x/(1 − p)
    /// where [`DropMask::keeps`] says so and 0 elsewhere, within the type's rounding (one rounding of the
    /// factor and one of the product: 2⁻⁸ relative in bf16, 2⁻¹¹ in f16).
    #[test]
    fn keeps_shape_type_and_values() {
        let dev = Device::Cpu;
        let m = DropMask { seed: 3, p: 0.3 };
        let x = vsdm_core::NoiseRng::new(8)
            .randn(&[2, 3, 4, 5], &dev)
            .unwrap();
        for (dt, tol) in [
            (DType::F32, 1e-6),
            (DType::BF16, 8e-3),
            (DType::F16, 1e-3),
            (DType::F64, 1e-15),
        ] {
            let x = x.to_dtype(dt).unwrap();
            let y = m.apply(&x).unwrap();
            assert_eq!((y.dims(), y.dtype()), (x.dims(), dt));
            let f64s = |t: &Tensor| {
                let t = t.flatten_all().unwrap().to_dtype(DType::F64).unwrap();
                t.to_vec1::<f64>().unwrap()
            };
            let (xs, ys) = (f64s(&x), f64s(&y));
            let mut kept = 0;
            for (i, (x, y)) in xs.iter().zip(&ys).enumerate() {
                let want = if m.keeps(i) { x / 0.7 } else { 0.0 };
                kept += usize::from(m.keeps(i));
                assert!(
                    (y - want).abs() <= tol * want.abs(),
                    "{dt:?} [{i}]: {y} for {want}"
                );
            }
            assert!((60..110).contains(&kept), "{kept} of 120 kept");
        }
        let bad = Tensor::ones(4, DType::U8, &dev).unwrap();
        let e = m.apply(&bad).unwrap_err().to_string();
        assert!(e.contains("U8"), "{e}");
    }
}
