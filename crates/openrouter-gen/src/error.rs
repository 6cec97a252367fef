//! Errors of this crate. None of them ever holds an API key: the key lives only in
//! [`crate::client::ApiKey`], whose `Debug` hides it, and request bodies never carry it.

use std::path::PathBuf;

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is missing or out of range.
    #[error("configuration: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The API refused in a way retrying cannot fix (401, 402, 403, 400), or retries
    /// ran out.
    #[error("{0}")]
    Api(#[from] crate::client::ApiError),
    /// The budget cannot cover another request.
    #[error("budget: {0}")]
    Budget(String),
}

pub(crate) fn file_error(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.into(),
        message: message.to_string(),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder, synced and
/// renamed, so a reader (or a killed process) never sees a half-written file.
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| file_error(parent, e))?;
    }
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let unique = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temporary = path.with_extension(format!("tmp{}-{unique}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        file_error(path, e)
    })
}
