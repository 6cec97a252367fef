//! The crate's error type.

use std::path::PathBuf;

/// Errors of the `lm` crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A device string that is not `auto`, `cpu`, `cuda` or `cuda:N`.
    #[error("invalid device `{spec}`: {reason} (expected auto, cpu, cuda or cuda:N)")]
    InvalidDevice {
        /// The string as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// CUDA was asked for explicitly but libtorch cannot use it here.
    #[error("device {requested} was requested but CUDA is not usable here: {reason}")]
    CudaUnavailable {
        /// The device that was asked for, e.g. `cuda:0`.
        requested: String,
        /// Why CUDA is not usable (no CUDA library in this libtorch, no driver, ...).
        reason: String,
    },
    /// A CUDA device index beyond the visible devices.
    #[error("device cuda:{index} was requested but only {count} CUDA device(s) are visible")]
    CudaDeviceOutOfRange {
        /// The index asked for.
        index: usize,
        /// How many devices libtorch sees.
        count: usize,
    },
    /// A file that cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A `config.json` the crate cannot run.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what is supported.
        message: String,
    },
    /// A weight that is missing, unexpected or mis-shaped.
    #[error("{path}: tensor `{tensor}`: {message}")]
    Weights {
        /// The checkpoint.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What is wrong.
        message: String,
    },
    /// Reading the checkpoint failed (format, packing, scales).
    #[error(transparent)]
    Checkpoint(#[from] bitnet_dequant::Error),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// Inputs of the wrong shape or kind.
    #[error("{0}")]
    Input(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
