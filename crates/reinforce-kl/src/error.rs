//! The crate's error type.

use std::path::PathBuf;

/// Errors of `reinforce-kl`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Settings or inputs that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Training produced non-finite values too often.
    #[error("training diverged: {0}")]
    Diverged(String),
    /// A checkpoint could not be read or written.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The policy failed.
    #[error("policy: {0}")]
    Policy(String),
    /// The language model failed.
    #[error(transparent)]
    Model(#[from] lm::Error),
    /// SVF failed.
    #[error(transparent)]
    Svf(#[from] svf::Error),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
