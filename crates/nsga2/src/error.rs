//! The crate's error type.

use std::path::PathBuf;

/// Errors of `nsga2`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Settings or bounds that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An evaluation returned a NaN objective.
    #[error(
        "generation {generation}, individual {individual}: objective {objective} is NaN at x = {x:?}"
    )]
    NanObjective {
        /// The generation being evaluated (0: the initial population).
        generation: usize,
        /// Index of the individual in its batch.
        individual: usize,
        /// Which objective.
        objective: usize,
        /// Its decision vector.
        x: Vec<f64>,
    },
    /// The problem broke its own contract (wrong number of values, NaN constraint, ...).
    #[error("problem: {0}")]
    Problem(String),
    /// An observer failed.
    #[error("observer: {0}")]
    Observer(String),
    /// Reading or writing a checkpoint failed.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Writing a plot failed.
    #[error("plot {path}: {message}")]
    Plot {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
