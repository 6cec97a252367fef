//! The crate's error type: every variant names the file, and the tensor where one is
//! involved.

use std::path::PathBuf;

use crate::codec::CodecError;

/// Errors of `bitnet-dequant`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading, writing or mapping a file failed.
    #[error("{path}: {action}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done ("cannot open", "cannot write", ...).
        action: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A file whose structure is broken (truncated, inconsistent header, bad JSON).
    #[error("{path}: {message}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what was expected.
        message: String,
    },
    /// A tensor whose bytes or metadata are wrong.
    #[error("{path}: tensor `{tensor}`: {message}")]
    Tensor {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What is wrong, and what was expected.
        message: String,
    },
    /// A tensor whose packed data is invalid (code 3, bad scale, wrong size).
    #[error("{path}: tensor `{tensor}`: {source}")]
    Codec {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What the codec found.
        source: CodecError,
    },
    /// A tensor name that the checkpoint does not have.
    #[error("{path}: no tensor named `{tensor}`")]
    NoSuchTensor {
        /// The checkpoint.
        path: PathBuf,
        /// The name asked for.
        tensor: String,
    },
    /// Something this crate deliberately does not read (another quantization type, ...).
    #[error("{path}: {message}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is not supported and what is.
        message: String,
    },
    /// A caller-side mistake (shapes that do not fit, an output that already exists, ...).
    #[error("{0}")]
    Invalid(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            path: path.into(),
            action,
            source,
        }
    }

    pub(crate) fn malformed(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Malformed {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn tensor(
        path: impl Into<PathBuf>,
        tensor: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Tensor {
            path: path.into(),
            tensor: tensor.into(),
            message: message.into(),
        }
    }

    pub(crate) fn codec(
        path: impl Into<PathBuf>,
        tensor: impl Into<String>,
        source: CodecError,
    ) -> Self {
        Self::Codec {
            path: path.into(),
            tensor: tensor.into(),
            source,
        }
    }
}
