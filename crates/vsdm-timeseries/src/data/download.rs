//! Fetching data files into the cache: HTTP download with a progress bar and SHA-256 check, written to a
//! temporary file and renamed into place, and safe unpacking of `.tar.gz` archives.

use crate::error::{DataError, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Lower-case hex SHA-256 of a file's bytes.
pub fn sha256_file(path: &Path) -> Result<String> {
    let f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    sha256_read(f, path)
}

/// Lower-case hex SHA-256 of a gzip file's decompressed content: the digest of the file it was compressed
/// from, so one published checksum serves a cached `.csv` and a cached `.csv.gz`. A file that is not gzip, or
/// is cut short, is an error naming it.
pub fn sha256_gunzipped(path: &Path) -> Result<String> {
    let f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    sha256_read(flate2::read::GzDecoder::new(f), path)
}

/// SHA-256 of everything `r` yields; `path` names the source in a read error.
fn sha256_read(mut r: impl Read, path: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks `path` against an expected SHA-256 (no-op when `expected` is `None`). `url` names the file's origin
/// in the error.
pub fn verify_sha256(path: &Path, expected: Option<&str>, url: &str) -> Result<()> {
    verify_with(path, expected, url, sha256_file)
}

/// As [`verify_sha256`], for a gzip file whose decompressed content must have the expected SHA-256.
pub fn verify_sha256_gunzipped(path: &Path, expected: Option<&str>, url: &str) -> Result<()> {
    verify_with(path, expected, url, sha256_gunzipped)
}

fn verify_with(
    path: &Path,
    expected: Option<&str>,
    url: &str,
    digest: fn(&Path) -> Result<String>,
) -> Result<()> {
    if let Some(expected) = expected {
        let actual = digest(path)?;
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(DataError::Checksum {
                file: path.to_path_buf(),
                url: url.to_string(),
                expected: expected.to_string(),
                actual,
            });
        }
    }
    Ok(())
}

/// `dest` with `.part` appended: where a download is written before it is verified and renamed.
pub fn partial_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

/// Downloads `url` to `dest`: streams into `dest.part` with an indicatif progress bar while hashing, checks the
/// SHA-256 when `expected_sha256` is given, then renames into place. On any failure the partial file is
/// removed and `dest` is untouched; a transport or HTTP failure becomes [`DataError::Download`], which tells
/// the user where to put the file by hand.
pub fn download(url: &str, dest: &Path, expected_sha256: Option<&str>) -> Result<()> {
    let fail = |reason: String| DataError::Download {
        url: url.to_string(),
        reason,
        expected: dest.to_path_buf(),
    };
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    }
    tracing::info!(url, dest = %dest.display(), "downloading");
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(20))
        .timeout_read(Duration::from_secs(120))
        .build();
    let resp = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Status(code, r) => fail(format!("HTTP {code} {}", r.status_text())),
        ureq::Error::Transport(t) => fail(t.to_string()),
    })?;
    let total: Option<u64> = resp.header("Content-Length").and_then(|v| v.parse().ok());
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} {bar:30} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    ) {
        bar.set_style(style);
    }
    bar.set_message(
        dest.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    let part = partial_path(dest);
    let result = (|| -> Result<String> {
        let mut out = std::fs::File::create(&part).map_err(|e| DataError::io(&part, e))?;
        let mut reader = resp.into_reader();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut received = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| fail(format!("connection broke after {received} bytes: {e}")))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| DataError::io(&part, e))?;
            received += n as u64;
            bar.inc(n as u64);
        }
        out.sync_all().map_err(|e| DataError::io(&part, e))?;
        if let Some(t) = total.filter(|&t| t != received) {
            return Err(fail(format!("truncated: {received} of {t} bytes")));
        }
        Ok(hex(&h.finalize()))
    })();
    bar.finish_and_clear();
    let actual = match result {
        Ok(a) => a,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    if let Some(expected) = expected_sha256 {
        if !actual.eq_ignore_ascii_case(expected) {
            let _ = std::fs::remove_file(&part);
            return Err(DataError::Checksum {
                file: dest.to_path_buf(),
                url: url.to_string(),
                expected: expected.to_string(),
                actual,
            });
        }
    }
    std::fs::rename(&part, dest).map_err(|e| DataError::io(dest, e))?;
    tracing::info!(dest = %dest.display(), sha256 = %actual, "downloaded");
    Ok(())
}

/// Unpacks a `.tar.gz` into `into` (created if needed). Entries that would land outside `into` (absolute
/// paths, `..`) are refused by the `tar` crate's `unpack_in`.
pub fn unpack_tar_gz(archive: &Path, into: &Path) -> Result<()> {
    std::fs::create_dir_all(into).map_err(|e| DataError::io(into, e))?;
    let f = std::fs::File::open(archive).map_err(|e| DataError::io(archive, e))?;
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let entries = ar
        .entries()
        .map_err(|e| DataError::file(archive, format!("not a readable tar.gz: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| DataError::file(archive, format!("corrupt archive entry: {e}")))?;
        let ok = entry.unpack_in(into).map_err(|e| {
            DataError::file(
                archive,
                format!("cannot unpack into {}: {e}", into.display()),
            )
        })?;
        if !ok {
            let p = entry
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            return Err(DataError::file(
                archive,
                format!("entry `{p}` points outside the target folder"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FIPS 180-2's SHA-256 examples: "abc", and a million "a" (read through the 64 KiB buffer 16 times).
    #[test]
    fn file_digests_match_the_published_examples() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_file(&path).unwrap(), abc);
        verify_sha256(&path, Some(&abc.to_uppercase()), "http://x/f").unwrap();
        let e = verify_sha256(&path, Some(&"0".repeat(64)), "http://x/f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("http://x/f") && e.contains(abc), "{e}");
        std::fs::write(&path, "a".repeat(1_000_000)).unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
        let missing = dir.path().join("missing");
        verify_sha256(&missing, None, "http://x/f").unwrap();
        let e = sha256_file(&missing).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
    }

    /// A gzip file's digest is that of what it decompresses to (FIPS 180-2's "abc" again, at two compression
    /// levels, so the compressed bytes differ); a file that is not gzip, or is cut short, is an error naming it.
    #[test]
    fn gzip_digests_are_of_the_decompressed_content() {
        let dir = tempfile::tempdir().unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let gz = dir.path().join("f.gz");
        for level in [flate2::Compression::none(), flate2::Compression::best()] {
            let mut w = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), level);
            w.write_all(b"abc").unwrap();
            w.finish().unwrap();
            assert_ne!(sha256_file(&gz).unwrap(), abc);
            assert_eq!(sha256_gunzipped(&gz).unwrap(), abc);
            verify_sha256_gunzipped(&gz, Some(abc), "cache").unwrap();
        }
        let e = verify_sha256_gunzipped(&gz, Some(&"0".repeat(64)), "cache")
            .unwrap_err()
            .to_string();
        assert!(e.contains("f.gz") && e.contains(abc), "{e}");
        let plain = dir.path().join("plain.gz");
        std::fs::write(&plain, "abc").unwrap();
        let e = sha256_gunzipped(&plain).unwrap_err().to_string();
        assert!(e.contains("plain.gz"), "{e}");
        let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        w.write_all(&[7u8; 100_000]).unwrap();
        let whole = w.finish().unwrap();
        std::fs::write(&plain, &whole[..whole.len() - 6]).unwrap();
        let e = sha256_gunzipped(&plain).unwrap_err().to_string();
        assert!(e.contains("plain.gz"), "{e}");
    }
}
