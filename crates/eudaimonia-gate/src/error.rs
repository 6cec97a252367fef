//! Errors of this crate.

use std::path::PathBuf;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A suite or baseline file is malformed.
    #[error("{path}:{line}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// 1-based line (0 for a whole-file problem).
        line: usize,
        /// What was expected.
        message: String,
    },
    /// Settings that cannot work.
    #[error("invalid gate settings: {0}")]
    Config(String),
    /// Nothing to measure, or a measurement that is not a number.
    #[error("{0}")]
    Data(String),
    /// The language model failed.
    #[error(transparent)]
    Lm(#[from] lm::Error),
    /// libtorch failed.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// This crate's result.
pub type Result<T> = std::result::Result<T, Error>;
