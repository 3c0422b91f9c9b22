//! The score-network seam shared by every application (toy MLP, U-Net, time-series transformer).

use candle_core::{Result, Tensor};

/// A noise-prediction network ε_θ(x_t, t, cond).
///
/// * `x_t`: the noisy state, batch first. For the momentum process (VSMD/CLD) the position and velocity are
///   concatenated along dimension 1 (channels for images, the feature axis for vectors), so the input has twice
///   the channels of the data.
/// * `t`: diffusion time, shape `[batch]`, f32, in (0, T].
/// * `cond`: optional conditioning (class labels, observed context), batch first.
///
/// Returns the predicted noise with the shape of the *data* (for VSMD: the velocity noise ε_v, with the
/// channels of x only). The score follows from the process's Cholesky factor: s = −L^{-T} ε (VSDM) or
/// s_v = −ε_v / l_vv (VSMD).
pub trait ScoreModel {
    fn forward(&self, x_t: &Tensor, t: &Tensor, cond: Option<&Tensor>) -> Result<Tensor>;

    /// Seeds the network's own randomness (dropout) for the forward passes that follow, until the next call.
    /// The trainer calls it before each training forward with a seed derived from the run's seed and the
    /// update's number, so a run draws the same masks every time it is run, and a resumed run the masks of the
    /// uninterrupted one. Networks without randomness ignore it (the default).
    fn set_noise_seed(&self, _seed: u64) {}
}
