//! The crate's error type.

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
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
