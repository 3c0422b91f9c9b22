//! The binary CIFAR-10 batches (`cifar-10-batches-bin`): records of 1 label byte followed by 3072 pixel bytes,
//! the red, green and blue planes in turn, each 32 rows of 32 values.

use std::path::{Path, PathBuf};

use super::{ImageSet, CIFAR10_CLASSES, IMAGE_BYTES};
use crate::error::{Error, Result};

/// Bytes of one record (label + image).
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;

/// Reads binary batch files and concatenates them in order. A file whose size is not a whole number of records,
/// or a label outside 0–9, is an error naming the file.
pub fn load_binary_files(paths: &[PathBuf]) -> Result<ImageSet> {
    let mut set = ImageSet {
        pixels: Vec::new(),
        labels: Vec::new(),
        classes: CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
    };
    for path in paths {
        let bytes = std::fs::read(path).map_err(Error::io(path))?;
        if bytes.is_empty() || bytes.len() % RECORD_BYTES != 0 {
            return Err(Error::bad_file(
                path,
                format!(
                    "{} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 records \
                     (a standard batch holds 10000 records, 30730000 bytes)",
                    bytes.len()
                ),
            ));
        }
        for (i, rec) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
            if rec[0] as usize >= CIFAR10_CLASSES.len() {
                return Err(Error::bad_file(
                    path,
                    format!("record {i} has label {}, expected 0–9", rec[0]),
                ));
            }
            set.labels.push(rec[0]);
            set.pixels.extend_from_slice(&rec[1..]);
        }
    }
    Ok(set)
}

/// Reads `data_batch_1.bin` … `data_batch_5.bin` (whichever exist, at least one) from a folder.
pub fn load_binary_dir(dir: &Path) -> Result<ImageSet> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(Error::io(dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().to_string());
            n.is_some_and(|n| n.starts_with("data_batch_") && n.ends_with(".bin"))
        })
        .collect();
    if paths.is_empty() {
        return Err(Error::bad_file(
            dir,
            "no data_batch_*.bin files in this folder",
        ));
    }
    paths.sort();
    load_binary_files(&paths)
}

/// Writes a set in the binary batch format (labels must be < 256).
pub fn write_binary(set: &ImageSet, path: &Path) -> Result<()> {
    let mut out = Vec::with_capacity(set.len() * RECORD_BYTES);
    for i in 0..set.len() {
        out.push(set.labels[i]);
        out.extend_from_slice(set.image(i));
    }
    std::fs::write(path, out).map_err(Error::io(path))
}
