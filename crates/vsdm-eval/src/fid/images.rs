//! Image sets for FID: a folder of PNG/JPEG files (searched recursively, sorted by path) or an `.npz` of
//! uint8 NHWC images under `arr_0` (the layout of guided-diffusion / EDM sample archives). All images of a set
//! must share one size; they are resized to 299×299 by the network's preprocessing.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::error::{FidError, Result};
use crate::export::images::{read_npz_u8, U8Images};

/// File extensions read from folders (lower-case comparison).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

/// A set of same-sized RGB images, read batch by batch.
#[derive(Debug, Clone)]
pub enum ImageSet {
    /// Files under a folder, decoded on demand.
    Folder {
        /// The folder.
        root: PathBuf,
        /// The image files, sorted by path relative to `root`.
        files: Vec<PathBuf>,
        /// Common width.
        width: u32,
        /// Common height.
        height: u32,
    },
    /// Images held in memory (uint8 NHWC, 3 channels).
    Array {
        /// Where they came from (for messages).
        origin: PathBuf,
        /// The images.
        images: U8Images,
    },
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let io = |source| FidError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let p = entry.map_err(io)?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(p);
        }
    }
    Ok(())
}

impl ImageSet {
    /// Lists a folder's images and checks that they all have the size of the first.
    pub fn folder(root: &Path) -> Result<Self> {
        let mut files = Vec::new();
        walk(root, &mut files)?;
        files.sort_by(|a, b| {
            let ra = a
                .strip_prefix(root)
                .unwrap_or(a)
                .as_os_str()
                .as_encoded_bytes();
            let rb = b
                .strip_prefix(root)
                .unwrap_or(b)
                .as_os_str()
                .as_encoded_bytes();
            ra.cmp(rb)
        });
        let first = files.first().ok_or_else(|| FidError::EmptyFolder {
            path: root.to_path_buf(),
        })?;
        let dims = |p: &Path| {
            image::image_dimensions(p).map_err(|source| FidError::Image {
                path: p.to_path_buf(),
                source,
            })
        };
        let (width, height) = dims(first)?;
        for f in &files[1..] {
            let (w, h) = dims(f)?;
            if (w, h) != (width, height) {
                return Err(FidError::MixedSizes {
                    first: first.clone(),
                    first_w: width,
                    first_h: height,
                    other: f.clone(),
                    other_w: w,
                    other_h: h,
                });
            }
        }
        Ok(Self::Folder {
            root: root.to_path_buf(),
            files,
            width,
            height,
        })
    }

    /// Reads `arr_0` (uint8, `[N, H, W, 3]`) from a sample archive.
    pub fn npz(path: &Path) -> Result<Self> {
        let images = read_npz_u8(path)?;
        Self::from_u8(&path.display().to_string(), images)
    }

    /// Wraps 8-bit RGB images already in memory.
    pub fn from_u8(origin: &str, images: U8Images) -> Result<Self> {
        if images.channels != 3 {
            return Err(FidError::ArrayShape {
                path: PathBuf::from(origin),
                key: "images".into(),
                expected: "3 (RGB) channels".into(),
                actual: format!("{} channels", images.channels),
            });
        }
        Ok(Self::Array {
            origin: PathBuf::from(origin),
            images,
        })
    }

    /// Samples as a tensor `[N, 3, H, W]`: u8, or float in `[-1, 1]` (quantised to 8 bits as a PNG of the sample
    /// would be, see [`crate::export::images`]).
    pub fn from_tensor(origin: &str, images: &Tensor) -> Result<Self> {
        Self::from_u8(origin, U8Images::from_tensor(images, origin)?)
    }

    /// Every `every`-th image (from the first), at most `limit` of them: a class-balanced subset of a folder
    /// sorted by class, e.g. every 50th of CIFAR-10's 50,000 training images.
    pub fn select(&self, every: usize, limit: Option<usize>) -> Self {
        let every = every.max(1);
        let limit = limit.unwrap_or(usize::MAX);
        match self {
            Self::Folder {
                root,
                files,
                width,
                height,
            } => Self::Folder {
                root: root.clone(),
                files: files.iter().step_by(every).take(limit).cloned().collect(),
                width: *width,
                height: *height,
            },
            Self::Array { origin, images } => {
                let idx: Vec<usize> = (0..images.n).step_by(every).take(limit).collect();
                let data = idx
                    .iter()
                    .flat_map(|&i| images.image(i).iter().copied())
                    .collect();
                Self::Array {
                    origin: origin.clone(),
                    images: U8Images {
                        data,
                        n: idx.len(),
                        ..*images
                    },
                }
            }
        }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        match self {
            Self::Folder { files, .. } => files.len(),
            Self::Array { images, .. } => images.n,
        }
    }

    /// Whether the set is empty (never, for a constructed set).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the set comes from.
    pub fn origin(&self) -> &Path {
        match self {
            Self::Folder { root, .. } => root,
            Self::Array { origin, .. } => origin,
        }
    }

    /// Images `start..end` as uint8 NHWC bytes with their (height, width).
    pub fn batch_nhwc(&self, start: usize, end: usize) -> Result<(Vec<u8>, usize, usize)> {
        match self {
            Self::Folder {
                files,
                width,
                height,
                ..
            } => {
                let (w, h) = (*width as usize, *height as usize);
                let mut out = Vec::with_capacity((end - start) * h * w * 3);
                for f in &files[start..end] {
                    let img = image::open(f).map_err(|source| FidError::Image {
                        path: f.clone(),
                        source,
                    })?;
                    let rgb = img.to_rgb8();
                    if rgb.dimensions() != (*width, *height) {
                        return Err(FidError::MixedSizes {
                            first: files[0].clone(),
                            first_w: *width,
                            first_h: *height,
                            other: f.clone(),
                            other_w: rgb.width(),
                            other_h: rgb.height(),
                        });
                    }
                    out.extend_from_slice(rgb.as_raw());
                }
                Ok((out, h, w))
            }
            Self::Array { images, .. } => {
                let per = images.height * images.width * 3;
                Ok((
                    images.data[start * per..end * per].to_vec(),
                    images.height,
                    images.width,
                ))
            }
        }
    }

    /// Images `start..end` as a u8 tensor `[n, 3, H, W]` on `device`.
    pub fn batch(&self, start: usize, end: usize, device: &Device) -> Result<Tensor> {
        let (bytes, h, w) = self.batch_nhwc(start, end)?;
        let t = Tensor::from_vec(bytes, (end - start, h, w, 3), device)?.permute((0, 3, 1, 2))?;
        Ok(t.contiguous()?)
    }
}
