//! Errors of the image crate: each names the file, field or value that was wrong.

use std::path::{Path, PathBuf};

/// Errors raised by `vsdm-image`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder that cannot be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A data file whose content is not what its format promises (a truncated batch, an undecodable image).
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    /// A configuration or command-line value outside its domain.
    #[error("invalid {name} = {value}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
    /// A hub reference that is malformed, or files that are neither cached nor downloadable.
    #[error(transparent)]
    Hub(#[from] vsdm_core::hub::HubError),
    #[error(transparent)]
    Core(#[from] vsdm_core::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error at `path`.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A file with bad content.
    pub fn bad_file(path: &Path, reason: impl Into<String>) -> Self {
        Error::BadFile {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// A bad value.
    pub fn invalid(
        name: &'static str,
        value: impl std::fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            name,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}
