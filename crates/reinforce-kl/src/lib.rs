//! Policy-gradient training for any set of libtorch parameters: REINFORCE with a
//! baseline and a KL penalty to a frozen reference policy, as Transformer² trains its
//! z-vectors, with the interventions the Phase 7 specification asks for.
//!
//! * [`objective`]: baselines (none, batch mean, leave-one-out, group-normalised) and
//!   KL estimators (exact forward or reverse over the vocabulary, k1, k3).
//! * [`optim`]: AdamW with a Grokfast EMA filter for 1-D parameters, gradient clipping,
//!   constant or cosine learning rate.
//! * [`train`]: the loop. Every epoch ends with validation: alignment below a warning
//!   level raises the KL coefficient, below a stop level ends the run (restoring the best
//!   state, optionally restarting from scratch with a higher coefficient); no improvement
//!   for `patience` epochs stops early; the best parameters are kept. Non-finite steps
//!   are skipped and logged. Checkpoints resume to the same bits.
//!
//! A policy implements [`Policy`]: sample completions, score them differentiably, and
//! score them under the frozen reference.
#![doc(test(attr(deny(warnings))))]

mod checkpoint;
mod error;
pub mod objective;
pub mod optim;
mod trainer;

pub use error::{Error, Result};
pub use objective::{Baseline, KlEstimator};
pub use optim::{AdamW, Grokfast, OptimizerConfig, Schedule};
pub use trainer::{
    Event, Policy, Reduction, Report, Scores, TrainerConfig, TrainingState, Validation, train,
};
