//! Causal language models on libtorch through [`tch`]: Llama, Qwen2, Mistral and BitNet
//! b1.58 checkpoints in the Hugging Face layout.
//!
//! * [`device`] finds the libtorch this process runs on, makes its CUDA backend visible
//!   and turns `auto|cpu|cuda|cuda:N` into a checked [`tch::Device`].
//! * [`CausalLm::load`] reads `config.json` and the weights (float, or BitNet packed /
//!   online-quantized through `bitnet-dequant`); BitNet layers run as BitLinear (8-bit
//!   activations) unless switched off.
//! * [`CausalLm::generate`] decodes a left-padded batch with a KV cache, greedy or
//!   seeded temperature / top-p sampling, with stop tokens or stop strings.
//! * [`CausalLm::score`] scores completions in one teacher-forced pass (and tells
//!   whether greedy decoding would produce them); [`CausalLm::completion_log_probs`]
//!   does the same differentiably, for training.
//! * [`LinearAdapter`] lets another crate replace a linear layer's forward (SVF does).
//! * [`Tokenizer`] wraps `tokenizer.json`, or rebuilds it from a GGUF vocabulary.
//! * [`prompt`] turns problems into input text: raw, few-shot, or chat through the
//!   model's own Jinja chat template (rendered as transformers renders it).
//! * A `.gguf` file of a llama-family model (llama, mistral, qwen2; any common llama.cpp
//!   quantization) loads directly: `CausalLm::load(Path::new("model.gguf"), ...)` and
//!   `Tokenizer::load` on the same path.
//! * [`cpu::linear`] multiplies f32 matrices on x86 CPUs faster than libtorch's MKL
//!   does there (the model's linear layers and output projection use it).
//!
//! ```
//! use lm::{CausalLm, GenerateConfig};
//! use tch::{Device, Kind};
//!
//! let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama");
//! let model = CausalLm::load(&dir, Device::Cpu, Kind::Float)?;
//! let prompts = vec![vec![5, 9, 14], vec![3, 27]];
//! let config = GenerateConfig { max_new_tokens: 4, ..GenerateConfig::default() };
//! let generated = model.generate(&prompts, &config)?;
//! // Greedy decoding reproduces itself when scored.
//! let pairs = vec![(prompts[0].clone(), generated[0].tokens.clone())];
//! assert!(model.score(&pairs)?[0].greedy_exact);
//!
//! // Load libtorch's CUDA backend (when present) and report what this process can use.
//! println!("{}", lm::device::runtime());
//! # Ok::<(), lm::Error>(())
//! ```
#![doc(test(attr(deny(warnings))))]

pub mod config;
pub mod cpu;
pub mod device;
mod error;
pub mod generate;
pub mod model;
pub mod prompt;
pub mod tokenizer;

pub use config::{Architecture, ModelConfig};
pub use error::{Error, Result};
pub use generate::{
    CompletionLogProbs, Finish, GenerateConfig, Generated, Sampling, Score, next_token_loss,
};
pub use model::{CausalLm, KvCache, Linear, LinearAdapter, LoadOptions};
pub use prompt::{ChatTemplate, Message, PromptFormat};
pub use tokenizer::Tokenizer;
