//! Weights from the local Hugging Face hub cache, `hf:OWNER/NAME[@REV]`, offline.
//!
//! The cache has the layout of Python's `huggingface_hub` (and of `hf-hub`):
//! `$HF_HUB_CACHE` or `$HF_HOME/hub` or `~/.cache/huggingface/hub`, then
//! `models--OWNER--NAME/refs/REV` (a file holding a commit hash) and `models--OWNER--NAME/snapshots/COMMIT/FILE`
//! (links into `blobs/`). `REV` is a branch or tag name (default `main`) or a full 40-hex commit hash.
//! Nothing is downloaded: fetch the repository once with `huggingface-cli download OWNER/NAME` (or any client
//! that fills this cache).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The hub cache folder from the environment.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(p).join("hub"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
}

/// Splits `OWNER/NAME[@REV]`.
pub fn parse_repo(spec: &str) -> Result<(String, String, String)> {
    let (repo, rev) = match spec.split_once('@') {
        Some((r, v)) => (r, v),
        None => (spec, "main"),
    };
    let bad = |why: &str| Error::invalid("weights", format!("hf:{spec}"), why.to_string());
    let (owner, name) = repo
        .split_once('/')
        .ok_or_else(|| bad("expected hf:OWNER/NAME[@REV]"))?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !s.starts_with('.')
    };
    if !ok(owner) || !ok(name) || rev.is_empty() || rev.contains("..") {
        return Err(bad("expected hf:OWNER/NAME[@REV] with plain names"));
    }
    Ok((owner.to_string(), name.to_string(), rev.to_string()))
}

/// The snapshot folder of `OWNER/NAME[@REV]` in `cache`, checked to hold every file in `files`.
pub fn snapshot_in(cache: &Path, spec: &str, files: &[&str]) -> Result<PathBuf> {
    let (owner, name, rev) = parse_repo(spec)?;
    let repo_dir = cache.join(format!("models--{owner}--{name}"));
    if !repo_dir.is_dir() {
        return Err(Error::bad_file(
            &repo_dir,
            format!("hf:{spec} is not in the local Hugging Face cache (run `huggingface-cli download {owner}/{name}` first)"),
        ));
    }
    let is_commit = rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit());
    let commit = if is_commit {
        rev.clone()
    } else {
        let r = repo_dir.join("refs").join(&rev);
        std::fs::read_to_string(&r)
            .map_err(|e| Error::bad_file(&r, format!("revision {rev:?} is not cached: {e}")))?
            .trim()
            .to_string()
    };
    let snap = repo_dir.join("snapshots").join(&commit);
    for f in files {
        let p = snap.join(f);
        if !p.is_file() {
            return Err(Error::bad_file(
                &p,
                format!("hf:{spec}: {f} is not in the cached snapshot"),
            ));
        }
    }
    Ok(snap)
}

/// The local folder holding `files` of the model repository `OWNER/NAME[@REV]` in the default cache.
pub fn snapshot(spec: &str, files: &[&str]) -> Result<PathBuf> {
    let cache = cache_dir().ok_or_else(|| {
        Error::invalid(
            "weights",
            format!("hf:{spec}"),
            "no HF_HUB_CACHE, HF_HOME or HOME to find the cache",
        )
    })?;
    snapshot_in(&cache, spec, files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache folder built by hand in the `huggingface_hub` layout: blobs, a snapshot of symlinks, refs/main.
    fn fake_cache() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("models--someone--vsdm-cifar10");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        let snap = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(repo.join("blobs/aaaa"), b"{}").unwrap();
        std::os::unix::fs::symlink("../../blobs/aaaa", snap.join("config.json")).unwrap();
        std::fs::write(repo.join("refs/main"), format!("{commit}\n")).unwrap();
        d
    }

    #[test]
    fn resolves_refs_and_commits() {
        let d = fake_cache();
        let snap = snapshot_in(d.path(), "someone/vsdm-cifar10", &["config.json"]).unwrap();
        assert!(snap.ends_with("snapshots/0123456789abcdef0123456789abcdef01234567"));
        assert_eq!(std::fs::read(snap.join("config.json")).unwrap(), b"{}");
        let same = snapshot_in(
            d.path(),
            "someone/vsdm-cifar10@0123456789abcdef0123456789abcdef01234567",
            &["config.json"],
        )
        .unwrap();
        assert_eq!(same, snap);
    }

    #[test]
    fn misses_name_what_is_missing() {
        let d = fake_cache();
        let e = snapshot_in(d.path(), "someone/vsdm-cifar10", &["model.safetensors"]).unwrap_err();
        assert!(e.to_string().contains("model.safetensors"), "{e}");
        let e = snapshot_in(d.path(), "someone/vsdm-cifar10@v2", &[]).unwrap_err();
        assert!(e.to_string().contains("\"v2\""), "{e}");
        let e = snapshot_in(d.path(), "other/repo", &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("huggingface-cli download other/repo"),
            "{e}"
        );
        assert!(parse_repo("no-slash").is_err());
        assert!(parse_repo("a/../b").is_err());
    }
}
