//! Errors of the data layer: every one names the file (and, where there is one, the line and field) at fault.

use std::path::PathBuf;

/// Result alias of this crate's library code.
pub type Result<T> = std::result::Result<T, DataError>;

/// What went wrong while reading, downloading or preparing a data set.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A value in a file could not be accepted (unparsable number or date, NaN, wrong frequency, ragged row...).
    #[error("{}:{line}: field `{field}`: {reason}", file.display())]
    Parse {
        /// The file being read.
        file: PathBuf,
        /// 1-based line number in that file.
        line: usize,
        /// The field (JSON key, CSV column, or column index) at fault.
        field: String,
        /// What was wrong.
        reason: String,
    },
    /// A file as a whole is unusable (missing, empty, wrong layout, inconsistent with its siblings).
    #[error("{}: {reason}", file.display())]
    File {
        /// The file or folder at fault.
        file: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// An operating-system error while touching a file.
    #[error("{}: {source}", file.display())]
    Io {
        /// The file being read or written.
        file: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A download failed; the message tells the user which file to put where to work offline.
    #[error(
        "could not download {url}: {reason}. To work offline, fetch that URL on a machine with network access \
         and put the file at {}",
        expected.display()
    )]
    Download {
        /// The URL that failed.
        url: String,
        /// Why (transport error, HTTP status...).
        reason: String,
        /// Where the file is looked for in the cache.
        expected: PathBuf,
    },
    /// A downloaded or cached archive does not have the published SHA-256.
    #[error("{}: sha256 mismatch (from {url}): expected {expected}, got {actual}", file.display())]
    Checksum {
        /// The file checked.
        file: PathBuf,
        /// Where it came from.
        url: String,
        /// The recorded checksum.
        expected: String,
        /// The checksum of the bytes received.
        actual: String,
    },
    /// A data set name that the registry does not know.
    #[error("unknown dataset `{name}`; known datasets: {known}")]
    UnknownDataset {
        /// The name asked for.
        name: String,
        /// Comma-separated list of the registry's names.
        known: String,
    },
    /// A request that does not fit the data (window longer than the series, bad protocol parameter...).
    #[error("{0}")]
    Invalid(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl DataError {
    /// Shorthand for [`DataError::Parse`].
    pub fn parse(
        file: impl Into<PathBuf>,
        line: usize,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        DataError::Parse {
            file: file.into(),
            line,
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`DataError::File`].
    pub fn file(file: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        DataError::File {
            file: file.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`DataError::Io`].
    pub fn io(file: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            file: file.into(),
            source,
        }
    }
}
