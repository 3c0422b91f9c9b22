//! CIFAR-10 loading: the standard binary batches, folders of class sub-folders of PNG/JPEG files, the Hugging
//! Face hub's parquet copy (`hf:uoft-cs/cifar10`, through [`vsdm_core::hub`]), and a training
//! [`DataSource`](vsdm_core::DataSource) with random horizontal flips and scaling to [−1, 1].
//!
//! Every loader returns an [`ImageSet`]: 8-bit images in channel-first (C, H, W) layout, row-major within a
//! channel (row 0 is the top of the picture, column 0 its left edge), with integer labels.

mod binary;
mod folder;
mod parquet;
mod source;

use std::path::Path;

pub use binary::{load_binary_dir, load_binary_files, write_binary, RECORD_BYTES};
pub use folder::load_folder;
pub use parquet::{
    load_parquet, load_parquet_files, open_hub, Split, CIFAR10_REPO, IMAGE_COLUMNS, LABEL_COLUMN,
};
pub use source::CifarSource;

use vsdm_core::hub::{Hub, HubRef};

use crate::error::{Error, Result};

/// CIFAR-10's class names, in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Side length of a CIFAR-10 image.
pub const SIDE: usize = 32;
/// Bytes of one 32×32 RGB image.
pub const IMAGE_BYTES: usize = 3 * SIDE * SIDE;

/// A set of 32×32 RGB images, 8 bits per value, channel-first, with labels.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    /// `len() × 3 × 32 × 32` bytes: image i, channel c (R, G, B), row y, column x at
    /// `i·3072 + c·1024 + y·32 + x`.
    pub pixels: Vec<u8>,
    /// One label per image, an index into `classes`.
    pub labels: Vec<u8>,
    /// Class names in label order.
    pub classes: Vec<String>,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The bytes of image `i` (3072, channel-first).
    pub fn image(&self, i: usize) -> &[u8] {
        &self.pixels[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }

    /// The first `n` images (all if fewer).
    pub fn take(&self, n: usize) -> ImageSet {
        let n = n.min(self.len());
        ImageSet {
            pixels: self.pixels[..n * IMAGE_BYTES].to_vec(),
            labels: self.labels[..n].to_vec(),
            classes: self.classes.clone(),
        }
    }

    /// Images `0..n` as a `[n, 3, 32, 32]` f32 tensor scaled to [−1, 1] (x / 127.5 − 1).
    pub fn to_tensor(&self, device: &candle_core::Device) -> Result<candle_core::Tensor> {
        let v: Vec<f32> = self.pixels.iter().map(|&p| to_unit(p)).collect();
        Ok(candle_core::Tensor::from_vec(
            v,
            (self.len(), 3, SIDE, SIDE),
            device,
        )?)
    }
}

/// A byte mapped to [−1, 1].
pub fn to_unit(p: u8) -> f32 {
    p as f32 / 127.5 - 1.0
}

/// Opens a `--data` argument: `hf:OWNER/NAME[@REV]`, a dataset repository in the hub's parquet layout, read
/// through `hub` (its `split`); anything else is a local path for [`open`].
pub fn open_source(arg: &str, hub: &Hub, split: Split) -> Result<ImageSet> {
    match HubRef::parse_arg(arg)? {
        Some(r) => open_hub(hub, &r, split),
        None => open(Path::new(arg)),
    }
}

/// Opens a CIFAR-10 copy, recognising its form:
/// * a `.parquet` file: the hub's parquet schema (`img` {bytes, path}, `label`);
/// * any other file: one binary batch;
/// * a folder with `data_batch_*.bin` (the extracted `cifar-10-batches-bin`): the five training batches;
/// * a folder with a `train/` sub-folder of class folders (the extracted JPEG set): its training images;
/// * a folder of class sub-folders of PNG/JPEG files.
pub fn open(path: &Path) -> Result<ImageSet> {
    if path.is_file() {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
        {
            return load_parquet(path);
        }
        return load_binary_files(&[path.to_path_buf()]);
    }
    if !path.is_dir() {
        return Err(Error::bad_file(path, "no such file or folder"));
    }
    let has_batches = std::fs::read_dir(path)
        .map_err(Error::io(path))?
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("data_batch_"));
    if has_batches {
        load_binary_dir(path)
    } else if path.join("train").is_dir() {
        load_folder(&path.join("train"))
    } else {
        load_folder(path)
    }
}

#[cfg(test)]
mod tests;
