//! Causal language models on libtorch through [`tch`].
//!
//! This crate will hold the Llama-family and BitNet models of the phase7 workspace
//! (loading HF checkpoints, batched generation, one-pass scoring). Today it provides
//! the part every other piece stands on: [`device`], which finds the libtorch this
//! process runs on, makes its CUDA backend visible, and turns `auto|cpu|cuda|cuda:N`
//! into a checked [`tch::Device`].
//!
//! ```
//! use lm::device::{self, DeviceRequest};
//!
//! // Load libtorch's CUDA backend (when present) and report what this process can use.
//! let runtime = device::runtime();
//! println!("{runtime}");
//! let device = device::resolve(DeviceRequest::Auto)?;
//! let x = tch::Tensor::ones([2, 2], (tch::Kind::Float, device));
//! assert_eq!(x.sum(tch::Kind::Float).double_value(&[]), 4.0);
//! # Ok::<(), lm::Error>(())
//! ```
#![doc(test(attr(deny(warnings))))]

pub mod config;
pub mod device;
mod error;
pub mod generate;
pub mod model;
pub mod tokenizer;

pub use config::{Architecture, ModelConfig};
pub use error::{Error, Result};
pub use generate::{
    CompletionLogProbs, Finish, GenerateConfig, Generated, Sampling, Score, next_token_loss,
};
pub use model::{CausalLm, KvCache, Linear, LinearAdapter};
pub use tokenizer::Tokenizer;
