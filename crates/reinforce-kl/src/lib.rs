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
//! score them under the frozen reference. [`SvfPolicy`] is one: a causal language model
//! ([`lm`]) with one trainable SVF expert ([`svf`]), the reference being the same model
//! with its base singular values.
//!
//! ```
//! use reinforce_kl::objective::advantages;
//! use reinforce_kl::{Baseline, KlEstimator};
//! use tch::{Kind, Tensor};
//!
//! // Two prompts, samples rewarded +1 / -1: leave-one-out centres each sample on the
//! // mean of the other samples of its prompt.
//! let rewards = vec![vec![1.0, -1.0, 1.0], vec![-1.0, -1.0]];
//! let a = advantages(&rewards, Baseline::LeaveOneOut);
//! assert_eq!(a[0], vec![1.0, -2.0, 1.0]);
//! assert_eq!(a[1], vec![0.0, 0.0]);
//!
//! // k3 is never negative and is zero when the policies agree on the sampled tokens.
//! let log_p = Tensor::from_slice(&[-0.5f32, -1.2]);
//! let kl = KlEstimator::K3.sequence_kl(&log_p, &log_p, None, None);
//! assert_eq!(kl.double_value(&[]), 0.0);
//! let other = Tensor::from_slice(&[-0.7f32, -1.0]);
//! assert!(KlEstimator::K3.sequence_kl(&log_p, &other, None, None).double_value(&[]) > 0.0);
//! # let _ = Kind::Float;
//! ```
#![doc(test(attr(deny(warnings))))]

mod checkpoint;
mod error;
pub mod objective;
pub mod optim;
pub mod svf_policy;
mod trainer;

pub use error::{Error, Result};
pub use objective::{Baseline, KlEstimator};
pub use optim::{AdamW, Grokfast, OptimizerConfig, Schedule};
pub use svf_policy::{RolloutConfig, SvfPolicy};
pub use trainer::{
    Event, GateDecision, Policy, Reduction, Report, Scores, StepMetrics, TrainerConfig,
    TrainingState, Validation, train, train_observed,
};
