//! A seeded, checkpointable noise source.
//!
//! candle's CPU device cannot be seeded (CUDA.md), so every random number of a run — data order, times, the
//! Gaussian noise of losses and samplers — comes from one ChaCha stream whose position is saved in checkpoints.
//! Resuming from a checkpoint therefore continues exactly as an uninterrupted run would.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// splitmix64's output function: a bijective mix of 64 bits, each output bit depending on every input bit.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// splitmix64's increment (2⁶⁴/φ, odd): element i of the stream of `seed` is mix64(seed + (i + 1)·γ).
const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// Element `i` of splitmix64's stream from `seed`: a seed derived from another without drawing from any
/// generator (so deriving one changes no other random stream).
pub fn derive_seed(seed: u64, i: u64) -> u64 {
    mix64(seed.wrapping_add(i.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA)))
}

/// The seeded generator.
#[derive(Debug, Clone)]
pub struct NoiseRng {
    rng: ChaCha12Rng,
}

/// The serialisable position of a [`NoiseRng`]: seed, stream and word position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub seed: [u8; 32],
    pub stream: u64,
    /// Word position, as a decimal string-safe pair of u64 (high, low).
    pub word_pos: (u64, u64),
}

impl NoiseRng {
    /// A generator from a 64-bit seed.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha12Rng::seed_from_u64(seed),
        }
    }

    /// The current position, to be stored in a checkpoint.
    pub fn state(&self) -> RngState {
        let w = self.rng.get_word_pos();
        RngState {
            seed: self.rng.get_seed(),
            stream: self.rng.get_stream(),
            word_pos: ((w >> 64) as u64, w as u64),
        }
    }

    /// A generator positioned exactly at `state`.
    pub fn from_state(state: &RngState) -> Self {
        let mut rng = ChaCha12Rng::from_seed(state.seed);
        rng.set_stream(state.stream);
        rng.set_word_pos(((state.word_pos.0 as u128) << 64) | state.word_pos.1 as u128);
        Self { rng }
    }

    /// The underlying generator, for callers that draw their own numbers.
    pub fn inner(&mut self) -> &mut ChaCha12Rng {
        &mut self.rng
    }

    /// A standard-normal f32 tensor of the given shape, drawn on the host and moved to `device`.
    pub fn randn(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| StandardNormal.sample(&mut self.rng))
            .collect();
        Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_device(device)?)
    }

    /// `n` uniform indices in 0..upper as a u32 tensor; `upper` must lie in 1..=u32::MAX.
    pub fn indices(&mut self, n: usize, upper: usize, device: &Device) -> Result<Tensor> {
        let upper = u32::try_from(upper)
            .ok()
            .filter(|&u| u > 0)
            .ok_or_else(|| {
                crate::error::Error::invalid("index range", upper, "must lie in 1..=u32::MAX")
            })? as usize;
        let v: Vec<u32> = (0..n)
            .map(|_| self.rng.random_range(0..upper as u32))
            .collect();
        Ok(Tensor::from_vec(v, n, device)?)
    }

    /// A uniform f64 in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.rng.random()
    }

    /// A uniform index in 0..upper.
    ///
    /// # Panics
    /// If `upper` is 0 (an empty range).
    pub fn index(&mut self, upper: usize) -> usize {
        self.rng.random_range(0..upper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `derive_seed(0, i)` is splitmix64's stream from state 0 (the first outputs published with the reference
    /// implementation and Java's `SplittableRandom`); another seed's stream is the same one shifted: element
    /// i + 1 of seed s is element i of seed s + γ.
    #[test]
    fn derived_seeds_are_splitmix64s_stream() {
        let published = [
            0xE220_A839_7B1D_CDAF,
            0x6E78_9E6A_A1B9_65F4,
            0x06C4_5D18_8009_454F,
            0xF88B_B8A8_724C_81EC,
        ];
        for (i, &want) in published.iter().enumerate() {
            assert_eq!(derive_seed(0, i as u64), want, "element {i}");
        }
        for s in [1u64, 12_345, u64::MAX] {
            for i in [0u64, 1, 7, u64::MAX - 1] {
                assert_eq!(
                    derive_seed(s, i + 1),
                    derive_seed(s.wrapping_add(GOLDEN_GAMMA), i),
                    "seed {s}, element {i}"
                );
            }
        }
    }

    /// A position past 2⁶⁴ words (ChaCha's counter has 68 bits) keeps its high part through the state: the
    /// restored generator draws what rand_chacha's own generator set to that position draws.
    #[test]
    fn a_position_past_two_to_the_64_words_round_trips() {
        let st = RngState {
            seed: [7; 32],
            stream: 3,
            word_pos: (2, 40),
        };
        let mut ours = NoiseRng::from_state(&st);
        assert_eq!(ours.state(), st);
        let mut theirs = ChaCha12Rng::from_seed([7; 32]);
        theirs.set_stream(3);
        theirs.set_word_pos((2u128 << 64) | 40);
        let a: Vec<u64> = (0..4).map(|_| ours.inner().random()).collect();
        let b: Vec<u64> = (0..4).map(|_| theirs.random()).collect();
        assert_eq!(a, b);
    }

    /// `indices` and `index` stay in their range and reach all of it; a range of 0 or beyond u32 is refused
    /// by name; `uniform` lies in [0, 1) with mean ½.
    #[test]
    fn uniform_draws_cover_their_ranges() {
        let mut r = NoiseRng::new(3);
        let v: Vec<u32> = r.indices(2000, 7, &Device::Cpu).unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|&k| k < 7));
        assert!((0..7).all(|k| v.contains(&k)));
        let w: Vec<usize> = (0..2000).map(|_| r.index(5)).collect();
        assert!(w.iter().all(|&k| k < 5) && (0..5).all(|k| w.contains(&k)));
        for bad in [0usize, u32::MAX as usize + 1] {
            let e = r.indices(3, bad, &Device::Cpu).unwrap_err().to_string();
            assert!(
                e.contains("index range") && e.contains(&bad.to_string()),
                "{e}"
            );
        }
        let u: Vec<f64> = (0..20_000).map(|_| r.uniform()).collect();
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = u.iter().sum::<f64>() / u.len() as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
    }

    #[test]
    fn restored_state_continues_the_same_stream() {
        let mut a = NoiseRng::new(7);
        let _ = a.randn(&[101], &Device::Cpu).unwrap();
        let st = a.state();
        let x = a
            .randn(&[33], &Device::Cpu)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut b = NoiseRng::from_state(&st);
        let y = b
            .randn(&[33], &Device::Cpu)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(x, y);
        let json = serde_json::to_string(&st).unwrap();
        let back: RngState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, st);
    }
}
