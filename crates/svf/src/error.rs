//! The crate's error type.

use std::path::PathBuf;

/// Errors of `svf`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file that cannot be read or written.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// An expert or cache that belongs to another model, selection or shape.
    #[error("{0}")]
    Mismatch(String),
    /// A selection, mixture or composition that cannot work.
    #[error("{0}")]
    Invalid(String),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] lm::Error),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
