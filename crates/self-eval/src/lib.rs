//! A language model measuring itself, for the decisions of stage 1 of the phase7
//! pipeline. Every decision here is a measurement of the model, kept with its numbers.
//!
//! * [`profile()`] (R3): per domain, greedy accuracy with a Wilson 95% interval, the
//!   reference answer's mean probability and the pass rate over k samples, calibration
//!   (ECE over equal-width bins, Brier score) and a difficulty sweep that finds each
//!   domain's learning zone. Accuracy comes from one batched teacher-forced pass
//!   ([`Answerer::one_pass`]: greedy decoding emits the reference iff every answer token
//!   and the following stop token are argmaxes), which agrees exactly with generation
//!   ([`Answerer::generate_exact`]) and is many times faster.
//! * [`planner`] (R4): per weak domain, REINFORCE policy gradients with respect to z
//!   ([`gradients::policy_gradients`]); their cosine-similarity matrix; average-linkage
//!   clustering; N chosen by silhouette with a bootstrap over problems (the fewest
//!   clusters within one standard deviation of the best); a general expert when the
//!   gradients share a direction; an optional [`planner::PlanAdvisor`] whose plan is used
//!   only when it validates. `plan.json` is a [`planner::PlanRecord`].
//! * [`spec`] (R5): dataset specs per expert from the profile.
//! * [`validate`] (R7): per-problem verdicts (solver, tokenizer, context, duplicates and
//!   held-out overlap, pass-rate band, alignment-gradient cosine) and datasets built to
//!   size with augmentation.
//! * [`expert`]: one expert's training with the behaviour gate as validator (R10, R11).
//!
//! ```
//! use std::path::Path;
//! use self_eval::{Answerer, ProfileConfig, profile};
//! use synth_tasks::Domain;
//!
//! let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/test-model");
//! let model = lm::CausalLm::load(&dir, tch::Device::Cpu, tch::Kind::Float)?;
//! let tokenizer = lm::Tokenizer::from_dir(&dir)?;
//! let answerer = Answerer::new(&model, &tokenizer, Default::default())?;
//! let config = ProfileConfig {
//!     domains: vec![Domain::Counting, Domain::Code],
//!     problems: 40,
//!     samples: 2,
//!     sweep: vec![1, 2],
//!     sweep_problems: 16,
//!     ..ProfileConfig::default()
//! };
//! let profile = profile(&answerer, &config)?;
//! let counting = profile.domain(Domain::Counting).unwrap();
//! assert!(counting.accuracy_ci95[0] <= counting.accuracy && counting.accuracy <= counting.accuracy_ci95[1]);
//! assert!(profile.markdown().contains("| counting |"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![doc(test(attr(deny(warnings))))]

pub mod answer;
pub mod dispatch;
mod error;
pub mod expert;
pub mod gradients;
pub mod handoff;
pub mod mixture;
pub mod planner;
pub mod profile;
pub mod search;
pub mod selftest;
pub mod spec;
pub mod validate;

pub use answer::{Answerer, Check, Encoded, Forced, ForcedRow, OnePass};
pub use error::{Error, Result, write_json, write_text};
pub use expert::{
    DataSizes, ExpertConfig, ExpertData, ExpertOutcome, new_policy, train_expert,
    train_expert_observed,
};
pub use planner::{Plan, PlanRecord, PlannerConfig, plan};
pub use profile::{Profile, ProfileConfig, profile};
pub use spec::{DatasetSpec, SpecConfig, dataset_specs};
pub use validate::{Candidate, DatasetReport, ValidationConfig, build_dataset};
