//! NumPy `.npy` arrays and `.npz` archives, the exchange format of FID tools: pytorch-fid and clean-fid store
//! statistics as `mu` (float64, D) and `sigma` (float64, D×D); sample archives carry `arr_0`, uint8 NHWC.
//!
//! Format: NEP 1 (`.npy` version 1.0, 2.0, 3.0). We write version 1.0 with the header padded to a multiple of 64
//! bytes, as NumPy does; `.npz` is a zip of `KEY.npy` members (written uncompressed, as `np.savez`; deflated
//! members, as `np.savez_compressed` writes them, are read too).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// What went wrong reading or writing an `.npy`/`.npz` file.
#[derive(Debug, thiserror::Error)]
pub enum NpzError {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a valid zip archive.
    #[error("{path}: not a readable .npz (zip) archive: {source}")]
    Zip {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: zip::result::ZipError,
    },
    /// A member is not a valid `.npy` array, or has a type we do not read.
    #[error("{path}: array `{key}`: {reason}")]
    Npy {
        /// The archive.
        path: PathBuf,
        /// The array name (member without `.npy`).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A requested array is absent.
    #[error("{path}: no array `{key}` (the archive holds: {available})")]
    MissingKey {
        /// The archive.
        path: PathBuf,
        /// The missing array name.
        key: String,
        /// The names it does hold, comma-separated.
        available: String,
    },
}

/// The element data of an array, in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    /// `|u1`
    U8(Vec<u8>),
    /// `<f4`
    F32(Vec<f32>),
    /// `<f8`
    F64(Vec<f64>),
}

impl NpyData {
    fn len(&self) -> usize {
        match self {
            NpyData::U8(v) => v.len(),
            NpyData::F32(v) => v.len(),
            NpyData::F64(v) => v.len(),
        }
    }

    fn descr(&self) -> &'static str {
        match self {
            NpyData::U8(_) => "|u1",
            NpyData::F32(_) => "<f4",
            NpyData::F64(_) => "<f8",
        }
    }

    /// The NumPy type string (`uint8`, `float32`, `float64`).
    pub fn type_name(&self) -> &'static str {
        match self {
            NpyData::U8(_) => "uint8",
            NpyData::F32(_) => "float32",
            NpyData::F64(_) => "float64",
        }
    }
}

/// An n-dimensional array: shape and C-order data.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Dimensions; empty for a scalar.
    pub shape: Vec<usize>,
    /// Elements, `shape.iter().product()` of them.
    pub data: NpyData,
}

impl NpyArray {
    /// Builds an array, checking that the data fill the shape.
    pub fn new(shape: Vec<usize>, data: NpyData) -> Result<Self, String> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(format!(
                "shape {shape:?} needs {n} elements, got {}",
                data.len()
            ));
        }
        Ok(Self { shape, data })
    }

    /// The data as f64 (any element type is widened).
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            NpyData::U8(v) => v.iter().map(|&x| x as f64).collect(),
            NpyData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            NpyData::F64(v) => v.clone(),
        }
    }
}

/// Serialises one array as `.npy` version 1.0 bytes.
pub fn encode_npy(a: &NpyArray) -> Vec<u8> {
    let shape = match a.shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", a.shape[0]),
        _ => format!(
            "({})",
            a.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}",
        a.data.descr(),
        shape
    );
    // magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + a.data.len() * 8);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    match &a.data {
        NpyData::U8(v) => out.extend_from_slice(v),
        NpyData::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        NpyData::F64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
    }
    out
}

/// Parses `.npy` bytes (versions 1–3; little-endian `u1`, `f4`, `f8`; C or Fortran order).
pub fn decode_npy(bytes: &[u8]) -> Result<NpyArray, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not an .npy array (bad magic)".into());
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + hlen)
        .ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let descr = dict_value(header, "descr").ok_or("header lacks 'descr'")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let fortran = dict_value(header, "fortran_order").ok_or("header lacks 'fortran_order'")?;
    let fortran = match fortran {
        "True" => true,
        "False" => false,
        other => return Err(format!("bad fortran_order {other}")),
    };
    let shape_s = dict_value(header, "shape").ok_or("header lacks 'shape'")?;
    let shape: Vec<usize> = shape_s
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape {shape_s}"))
        })
        .collect::<Result<_, _>>()?;
    let n: usize = shape.iter().product();
    let body = &bytes[start + hlen..];
    let take = |size: usize| -> Result<&[u8], String> {
        body.get(..n * size).ok_or_else(|| {
            format!(
                "data truncated: shape {shape:?} of {descr} needs {} bytes, has {}",
                n * size,
                body.len()
            )
        })
    };
    let data = match descr {
        "|u1" | "<u1" | "u1" | "|b1" => NpyData::U8(take(1)?.to_vec()),
        "<f4" => NpyData::F32(
            take(4)?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        "<f8" => NpyData::F64(
            take(8)?
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("chunk of 8")))
                .collect(),
        ),
        other => {
            return Err(format!(
                "unsupported dtype {other} (expected uint8, <f4 or <f8)"
            ))
        }
    };
    let data = if fortran && shape.len() > 1 {
        fortran_to_c(&shape, data)
    } else {
        data
    };
    Ok(NpyArray { shape, data })
}

/// The text value of `'key': value` in a NumPy header dict (up to the next top-level comma).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("'{key}':");
    let i = header.find(&pat)? + pat.len();
    let rest = header[i..].trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}

fn fortran_to_c(shape: &[usize], data: NpyData) -> NpyData {
    let n: usize = shape.iter().product();
    // Fortran strides (in elements): stride[0] = 1, stride[k] = stride[k-1] * shape[k-1].
    let mut fstride = vec![1usize; shape.len()];
    for k in 1..shape.len() {
        fstride[k] = fstride[k - 1] * shape[k - 1];
    }
    let perm: Vec<usize> = (0..n)
        .map(|c| {
            let mut rem = c;
            let mut f = 0;
            for k in (0..shape.len()).rev() {
                f += (rem % shape[k]) * fstride[k];
                rem /= shape[k];
            }
            f
        })
        .collect();
    match data {
        NpyData::U8(v) => NpyData::U8(perm.iter().map(|&i| v[i]).collect()),
        NpyData::F32(v) => NpyData::F32(perm.iter().map(|&i| v[i]).collect()),
        NpyData::F64(v) => NpyData::F64(perm.iter().map(|&i| v[i]).collect()),
    }
}

/// Writes `arrays` into an uncompressed `.npz` archive (as `np.savez` does).
pub fn write_npz(path: &Path, arrays: &[(&str, &NpyArray)]) -> Result<(), NpzError> {
    let io = |source| NpzError::Io {
        path: path.to_path_buf(),
        source,
    };
    let zip_err = |source| NpzError::Zip {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut w = zip::ZipWriter::new(std::io::BufWriter::new(file));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(
            arrays
                .iter()
                .any(|(_, a)| a.data.len() * 8 > u32::MAX as usize / 2),
        );
    for (key, a) in arrays {
        w.start_file(format!("{key}.npy"), opts).map_err(zip_err)?;
        w.write_all(&encode_npy(a)).map_err(io)?;
    }
    let mut inner = w.finish().map_err(zip_err)?;
    inner.flush().map_err(io)?;
    Ok(())
}

/// Reads every array of an `.npz` archive, keyed by name (member name without `.npy`).
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, NpyArray>, NpzError> {
    let io = |source| NpzError::Io {
        path: path.to_path_buf(),
        source,
    };
    let zip_err = |source| NpzError::Zip {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut z = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(zip_err)?;
    let mut out = BTreeMap::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i).map_err(zip_err)?;
        let name = f.name().to_string();
        let Some(key) = name.strip_suffix(".npy") else {
            continue;
        };
        let mut bytes = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut bytes).map_err(io)?;
        let a = decode_npy(&bytes).map_err(|reason| NpzError::Npy {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason,
        })?;
        out.insert(key.to_string(), a);
    }
    Ok(out)
}

/// The array names in an `.npz` archive, without reading the arrays.
pub fn read_npz_keys(path: &Path) -> Result<Vec<String>, NpzError> {
    let io = |source| NpzError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let z =
        zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|source| NpzError::Zip {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(z.file_names()
        .filter_map(|n| n.strip_suffix(".npy"))
        .map(String::from)
        .collect())
}

/// Takes array `key` out of a map read by [`read_npz`], or names what the archive holds instead.
pub fn take_array(
    arrays: &mut BTreeMap<String, NpyArray>,
    path: &Path,
    key: &str,
) -> Result<NpyArray, NpzError> {
    arrays.remove(key).ok_or_else(|| NpzError::MissingKey {
        path: path.to_path_buf(),
        key: key.to_string(),
        available: if arrays.is_empty() {
            "none".into()
        } else {
            arrays.keys().cloned().collect::<Vec<_>>().join(", ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_64_aligned_and_round_trips() {
        let a =
            NpyArray::new(vec![2, 3], NpyData::F64(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5])).unwrap();
        let b = encode_npy(&a);
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        assert_eq!(decode_npy(&b).unwrap(), a);
    }

    #[test]
    fn reads_fortran_order() {
        // np.asfortranarray([[1, 2, 3], [4, 5, 6]], dtype=np.uint8) stores 1 4 2 5 3 6.
        let header = "{'descr': '|u1', 'fortran_order': True, 'shape': (2, 3), }";
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(&[1, 4, 2, 5, 3, 6]);
        let a = decode_npy(&b).unwrap();
        assert_eq!(a.data, NpyData::U8(vec![1, 2, 3, 4, 5, 6]));
    }

    #[test]
    fn rejects_big_endian_and_truncation() {
        let a = NpyArray::new(vec![4], NpyData::F32(vec![0.0; 4])).unwrap();
        let mut b = encode_npy(&a);
        let mut be = b.clone();
        let at = be.windows(3).position(|w| w == b"<f4").unwrap();
        be[at] = b'>';
        let e = decode_npy(&be).unwrap_err();
        assert!(e.contains(">f4"), "{e}");
        b.truncate(b.len() - 1);
        assert!(decode_npy(&b).unwrap_err().contains("truncated"));
    }
}
