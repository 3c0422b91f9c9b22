//! Folders of class sub-folders of PNG or JPEG files (`root/<class>/<name>.{png,jpg,jpeg}`), the layout of the
//! extracted JPEG copy of CIFAR-10 and of torchvision's `ImageFolder`. Classes are the sub-folder names in
//! sorted order; files within a class are read in sorted order.

use std::path::{Path, PathBuf};

use super::{ImageSet, IMAGE_BYTES, SIDE};
use crate::error::{Error, Result};

fn is_image(p: &Path) -> bool {
    p.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| matches!(e.as_str(), "png" | "jpg" | "jpeg"))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(Error::io(dir))?
        .map(|e| e.map(|e| e.path()).map_err(Error::io(dir)))
        .collect::<Result<_>>()?;
    v.sort();
    Ok(v)
}

/// Decodes one 32×32 image file into channel-first RGB bytes. Grey or RGBA images are converted to RGB; any
/// other size, or a file that does not decode, is an error naming the file.
pub fn decode_image(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    jpeg_complete(&bytes).map_err(|why| Error::bad_file(path, why))?;
    let img = image::load_from_memory(&bytes)
        .map_err(|e| Error::bad_file(path, format!("not a decodable image: {e}")))?;
    channel_first(&img).map_err(|why| Error::bad_file(path, why))
}

/// For JPEG data (starting with the SOI marker FF D8): an error unless its end-of-image marker FF D9 closes it
/// (within the last 64 bytes, which allows padding after it). The `image` crate's decoder fills a truncated
/// scan with grey and returns no error, so a cut-off file would train as a damaged picture.
pub(crate) fn jpeg_complete(bytes: &[u8]) -> std::result::Result<(), String> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Ok(());
    }
    let tail = &bytes[bytes.len().saturating_sub(64)..];
    if tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
        Ok(())
    } else {
        Err(format!(
            "truncated JPEG: no end-of-image marker (FF D9) at the end of its {} bytes",
            bytes.len()
        ))
    }
}

/// The channel-first RGB bytes of a decoded 32×32 image (grey or RGBA converted to RGB; row 0 is the top,
/// column 0 the left edge); another size is an error saying which.
pub(crate) fn channel_first(img: &image::DynamicImage) -> std::result::Result<Vec<u8>, String> {
    if img.width() as usize != SIDE || img.height() as usize != SIDE {
        return Err(format!(
            "image is {}×{}, expected {SIDE}×{SIDE}",
            img.width(),
            img.height()
        ));
    }
    let rgb = img.to_rgb8();
    let mut out = vec![0u8; IMAGE_BYTES];
    for (x, y, p) in rgb.enumerate_pixels() {
        for c in 0..3 {
            out[c * SIDE * SIDE + y as usize * SIDE + x as usize] = p.0[c];
        }
    }
    Ok(out)
}

/// Reads every PNG/JPEG under `root/<class>/`. Files with other extensions are skipped; a link named like an
/// image whose target is missing, and a folder without any class sub-folder holding images, are errors.
pub fn load_folder(root: &Path) -> Result<ImageSet> {
    let mut set = ImageSet {
        pixels: Vec::new(),
        labels: Vec::new(),
        classes: Vec::new(),
    };
    for class_dir in sorted_entries(root)?.into_iter().filter(|p| p.is_dir()) {
        let mut files = Vec::new();
        for p in sorted_entries(&class_dir)?
            .into_iter()
            .filter(|p| is_image(p))
        {
            if p.is_file() {
                files.push(p);
            } else if p.symlink_metadata().is_ok_and(|m| m.is_symlink()) {
                // A link whose target is gone would otherwise drop an image without a word.
                return Err(Error::bad_file(
                    &p,
                    "a broken link: its target does not exist",
                ));
            }
        }
        if files.is_empty() {
            continue;
        }
        if set.classes.len() == 256 {
            return Err(Error::bad_file(root, "more than 256 class folders"));
        }
        let label = set.classes.len() as u8;
        set.classes.push(
            class_dir
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
        );
        for f in files {
            set.pixels.extend(decode_image(&f)?);
            set.labels.push(label);
        }
    }
    if set.is_empty() {
        return Err(Error::bad_file(
            root,
            "no class sub-folders with .png/.jpg/.jpeg images",
        ));
    }
    tracing::info!(
        root = %root.display(),
        images = set.len(),
        classes = set.classes.len(),
        "image folder loaded"
    );
    Ok(set)
}
