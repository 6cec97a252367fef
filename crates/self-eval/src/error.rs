//! Errors of this crate.

use std::path::PathBuf;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// Settings that cannot work.
    #[error("invalid settings: {0}")]
    Config(String),
    /// Inputs that cannot be measured (no problems, a domain without problems, ...).
    #[error("{0}")]
    Data(String),
    /// The language model failed.
    #[error(transparent)]
    Lm(#[from] lm::Error),
    /// SVF failed.
    #[error(transparent)]
    Svf(#[from] svf::Error),
    /// Training failed.
    #[error(transparent)]
    Train(#[from] reinforce_kl::Error),
    /// A behaviour gate failed.
    #[error(transparent)]
    Gate(#[from] eudaimonia_gate::Error),
    /// The search failed.
    #[error(transparent)]
    Search(#[from] nsga2::Error),
    /// libtorch failed.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// This crate's result.
pub type Result<T> = std::result::Result<T, Error>;

/// Writes `value` as pretty JSON to `path`, atomically (temporary file, fsync, rename).
pub fn write_json<T: serde::Serialize>(path: &std::path::Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Data(e.to_string()))?;
    write_text(path, &text)
}

/// Writes `text` to `path`, atomically.
pub fn write_text(path: &std::path::Path, text: &str) -> Result<()> {
    bitnet_dequant::io::write_atomic(path, text.as_bytes()).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
