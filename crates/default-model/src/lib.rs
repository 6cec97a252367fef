//! The embedded default model: a tiny Llama-architecture BitNet b1.58 model trained
//! here, from a seed, with real and uneven skills and baked-in behaviours, so the whole
//! phase7 pipeline has something honest to work on.
//!
//! [`build`] runs a [`Recipe`]:
//! 1. a fresh model ([`lm::CausalLm::init`]) with a character-level tokenizer
//!    ([`tokenizer`]);
//! 2. training stages ([`train`]): quantization-aware (ternary absmean weights and
//!    8-bit absmax activations, both through straight-through estimators) next-token
//!    training of answers drawn from a mixture of `synth-tasks` domains and behaviour
//!    suites. The default recipe trains broadly, then bakes in the behaviour suites with
//!    some favoured domains, which erodes the others as later tuning erodes real models;
//! 3. packing as a Hugging Face BitNet checkpoint ([`package`]) and measuring *the
//!    packed checkpoint as loaded back*: held-out greedy accuracy per domain,
//!    likelihood preference per suite, greedy behaviour rates, top-1 agreement between
//!    the 8-bit-activation and the float forward ([`evaluate`]);
//! 4. for each weak domain, how far supervised z-only SVF training lifts it: the room
//!    experts have ([`headroom`]);
//! 5. `phase6_handoff.json` (the seed's Phase 6 output schema, every metric measured),
//!    `report.json`, `recipe.json` and a model card `README.md`, all in the output
//!    folder, which appears only once complete.
//!
//! ```no_run
//! use default_model::{Recipe, build};
//!
//! let summary = build(&Recipe::test_model(), std::path::Path::new("/tmp/test-model"))?;
//! println!("{:.3}", summary.report.final_evaluation.aggregate_accuracy);
//! # Ok::<(), default_model::Error>(())
//! ```
#![doc(test(attr(deny(warnings))))]

pub mod evaluate;
pub mod headroom;
pub mod package;
pub mod recipe;
pub mod tokenizer;
pub mod train;

mod pipeline;

pub use pipeline::{BuildOptions, BuildReport, Summary, build, build_with};
pub use recipe::Recipe;

use std::path::PathBuf;

/// Errors of `default-model`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The recipe cannot work.
    #[error("invalid recipe: {0}")]
    Recipe(String),
    /// Training data could not be made.
    #[error("data: {0}")]
    Data(String),
    /// Training went wrong (non-finite loss or gradients).
    #[error("training: {0}")]
    Training(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The language model failed.
    #[error(transparent)]
    Model(#[from] lm::Error),
    /// Packing failed.
    #[error(transparent)]
    Pack(#[from] bitnet_dequant::Error),
    /// SVF failed.
    #[error(transparent)]
    Svf(#[from] svf::Error),
    /// Expert training failed.
    #[error(transparent)]
    Expert(#[from] reinforce_kl::Error),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
