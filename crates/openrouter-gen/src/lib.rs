//! Training problems from any OpenAI-compatible chat API (OpenRouter by default), with
//! the guarantees that make it safe to leave running: a hard USD cap (worst case
//! reserved before each request), a content-addressed cache (a re-run sends nothing
//! and costs $0; a killed run keeps every reply it received), retries that follow the
//! provider's error table, answers recomputed by the domain's solver, duplicates of
//! held-out evaluation prompts dropped, and a cost report. With no key, the same
//! [`source::ProblemSource`] trait is served offline by `synth-tasks`' procedural
//! generators or by a user's JSONL file.
//!
//! ```
//! use openrouter_gen::client::{ApiKey, Client, ClientConfig, Pricing};
//! use openrouter_gen::generate::{ApiSource, GeneratorConfig};
//! use openrouter_gen::mock::{MockServer, problem_writer};
//! use openrouter_gen::source::ProblemSource;
//! use openrouter_gen::spec::{GenerationSpec, Topic};
//! use synth_tasks::dedup::DuplicateIndex;
//!
//! // A loopback server that answers like a model writing arithmetic problems.
//! let price = Pricing { prompt: 1e-7, completion: 4e-7, request: 0.0 };
//! let server = MockServer::start(problem_writer("mock/model", price)).unwrap();
//! let cache = tempfile::tempdir().unwrap();
//! let config = GeneratorConfig {
//!     client: ClientConfig { base_url: server.base_url(), ..ClientConfig::default() },
//!     model: "mock/model".into(),
//!     budget_usd: 0.10,
//!     cache_dir: cache.path().into(),
//!     ..GeneratorConfig::default()
//! };
//! let client = Client::with_key(config.client.clone(), Some(ApiKey::new("sk-test"))).unwrap();
//! let mut source = ApiSource::with_client(config, client, DuplicateIndex::default()).unwrap();
//! let spec = GenerationSpec {
//!     expert_id: 0,
//!     expert_name: "arithmetic".into(),
//!     topics: vec![Topic { domain: "arithmetic".into(), description: "sums".into(), difficulty: 2 }],
//!     num_examples: 30,
//!     format: "prompt `47+25=`, answer `72`".into(),
//!     special_requirements: vec![],
//! };
//! let problems = source.problems(&spec, 30).unwrap();
//! assert_eq!(problems.len(), 30);
//! assert!(problems.iter().all(|p| p.source == "api:mock/model"));
//! let report = source.report();
//! assert!(report.total.usd > 0.0 && report.total.usd <= 0.10);
//! ```

pub mod budget;
pub mod cache;
pub mod client;
mod error;
pub mod generate;
pub mod mock;
pub mod report;
pub mod source;
pub mod spec;

pub use error::{Error, Result};
