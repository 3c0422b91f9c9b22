//! Files from the Hugging Face hub cache.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// The local folder holding `files` of the model repository `OWNER/NAME[@REV]`.
pub fn snapshot(repo: &str, _files: &[&str]) -> Result<PathBuf> {
    Err(Error::invalid(
        "weights",
        format!("hf:{repo}"),
        "Hugging Face references are not supported by this build",
    ))
}
