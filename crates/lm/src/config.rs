//! Model configuration read from a Hugging Face `config.json`.

use std::path::Path;

use serde_json::{Map, Value};

use crate::{Error, Result};

/// The architectures this crate runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Architecture {
    /// `llama` (Llama 2/3, SmolLM, TinyLlama).
    Llama,
    /// `qwen2` (bias on the q, k and v projections).
    Qwen2,
    /// `mistral`.
    Mistral,
    /// `bitnet` (transformers' BitNetForCausalLM: squared-ReLU gated MLP, sub-norms,
    /// BitLinear layers).
    BitNet,
}

impl Architecture {
    /// The `model_type` values accepted, for error messages.
    pub const SUPPORTED: &'static str = "llama, qwen2, mistral, bitnet";
}

/// `rope_scaling` of type `llama3`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Llama3Scaling {
    /// `factor`.
    pub factor: f64,
    /// `low_freq_factor`.
    pub low_freq_factor: f64,
    /// `high_freq_factor`.
    pub high_freq_factor: f64,
    /// `original_max_position_embeddings`.
    pub original_max_position_embeddings: f64,
}

/// The activation of the gated MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Activation {
    /// SiLU (`silu`).
    Silu,
    /// Squared ReLU (`relu2`).
    Relu2,
}

/// Everything the forward pass needs from `config.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelConfig {
    /// The architecture.
    pub architecture: Architecture,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP inner size.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Llama 3 RoPE scaling, if configured.
    pub rope_scaling: Option<Llama3Scaling>,
    /// Whether the output projection shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Bias on q, k, v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection of attention.
    pub o_bias: bool,
    /// Bias on the MLP projections.
    pub mlp_bias: bool,
    /// MLP activation.
    pub activation: Activation,
    /// Largest position the model was trained for.
    pub max_position_embeddings: usize,
    /// Sliding attention window (Mistral), if any.
    pub sliding_window: Option<usize>,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<i64>,
    /// End-of-sequence tokens.
    pub eos_token_ids: Vec<i64>,
    /// Padding token.
    pub pad_token_id: Option<i64>,
    /// Standard deviation of freshly initialised weights (`initializer_range`, default
    /// 0.02); only [`crate::CausalLm::init`] uses it.
    pub initializer_range: f64,
}

fn get_usize(map: &Map<String, Value>, key: &str, path: &Path) -> Result<Option<usize>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(|v| Some(v as usize))
            .ok_or_else(|| Error::Config {
                path: path.to_path_buf(),
                message: format!("`{key}` is {value}, expected a non-negative integer"),
            }),
    }
}

fn get_f64(map: &Map<String, Value>, key: &str, path: &Path) -> Result<Option<f64>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_f64().map(Some).ok_or_else(|| Error::Config {
            path: path.to_path_buf(),
            message: format!("`{key}` is {value}, expected a number"),
        }),
    }
}

fn token_ids(value: Option<&Value>) -> Vec<i64> {
    match value {
        Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_i64).collect(),
        _ => Vec::new(),
    }
}

impl ModelConfig {
    /// Reads `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: format!("invalid JSON: {e}"),
        })?;
        let Value::Object(map) = value else {
            return Err(Error::Config {
                path: path.to_path_buf(),
                message: "is not a JSON object".into(),
            });
        };
        Self::from_map(&map, path)
    }

    /// Reads a parsed `config.json`; `path` names it in errors.
    pub fn from_map(map: &Map<String, Value>, path: &Path) -> Result<Self> {
        let error = |message: String| Error::Config {
            path: path.to_path_buf(),
            message,
        };
        let model_type = map.get("model_type").and_then(Value::as_str).unwrap_or("");
        let architecture = match model_type {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            "mistral" => Architecture::Mistral,
            "bitnet" => Architecture::BitNet,
            other => {
                return Err(error(format!(
                    "model_type `{other}` is not supported; supported: {}",
                    Architecture::SUPPORTED
                )));
            }
        };
        let required = |key: &str| -> Result<usize> {
            get_usize(map, key, path)?.ok_or_else(|| error(format!("`{key}` is missing")))
        };
        let hidden_size = required("hidden_size")?;
        let num_attention_heads = required("num_attention_heads")?;
        if num_attention_heads == 0 || hidden_size == 0 {
            return Err(error(
                "hidden_size and num_attention_heads must be positive".into(),
            ));
        }
        let num_key_value_heads =
            get_usize(map, "num_key_value_heads", path)?.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(error(format!(
                "num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}"
            )));
        }
        let head_dim =
            get_usize(map, "head_dim", path)?.unwrap_or(hidden_size / num_attention_heads);
        if head_dim % 2 != 0 {
            return Err(error(format!("head_dim {head_dim} must be even for RoPE")));
        }
        // transformers 5 writes `rope_parameters` ({rope_theta, rope_type, ...}); earlier
        // versions `rope_theta` and `rope_scaling` at the top level.
        let rope_parameters = map.get("rope_parameters").and_then(Value::as_object);
        let rope_theta = match rope_parameters {
            Some(parameters) => get_f64(parameters, "rope_theta", path)?,
            None => None,
        }
        .or(get_f64(map, "rope_theta", path)?)
        .unwrap_or(10_000.0);
        let scaling_value = match rope_parameters {
            Some(parameters) => Some(Value::Object(parameters.clone())),
            None => map.get("rope_scaling").cloned(),
        };
        let rope_scaling = match scaling_value.as_ref() {
            None | Some(Value::Null) => None,
            Some(Value::Object(scaling)) => {
                let kind = scaling
                    .get("rope_type")
                    .or_else(|| scaling.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                match kind {
                    "llama3" => {
                        let number = |key: &str| -> Result<f64> {
                            get_f64(scaling, key, path)?
                                .ok_or_else(|| error(format!("rope_scaling.{key} is missing")))
                        };
                        Some(Llama3Scaling {
                            factor: number("factor")?,
                            low_freq_factor: number("low_freq_factor")?,
                            high_freq_factor: number("high_freq_factor")?,
                            original_max_position_embeddings: number(
                                "original_max_position_embeddings",
                            )?,
                        })
                    }
                    "default" => None,
                    other => {
                        return Err(error(format!(
                            "rope_scaling type `{other}` is not supported; supported: llama3"
                        )));
                    }
                }
            }
            Some(other) => {
                return Err(error(format!(
                    "rope_scaling is {other}, expected an object"
                )));
            }
        };
        let activation = match map.get("hidden_act").and_then(Value::as_str) {
            Some("silu") | Some("swish") | None if architecture != Architecture::BitNet => {
                Activation::Silu
            }
            Some("relu2") | None if architecture == Architecture::BitNet => Activation::Relu2,
            Some("silu") => Activation::Silu,
            Some("relu2") => Activation::Relu2,
            Some(other) => {
                return Err(error(format!(
                    "hidden_act `{other}` is not supported; supported: silu, relu2"
                )));
            }
            None => Activation::Silu,
        };
        let flag =
            |key: &str, default: bool| map.get(key).and_then(Value::as_bool).unwrap_or(default);
        let qkv_bias = match architecture {
            Architecture::Qwen2 => true,
            _ => flag("attention_bias", false),
        };
        let o_bias = match architecture {
            Architecture::Qwen2 => false,
            _ => flag("attention_bias", false),
        };
        let sliding_window = match architecture {
            Architecture::Mistral => get_usize(map, "sliding_window", path)?,
            Architecture::Qwen2 if flag("use_sliding_window", false) => {
                return Err(error(
                    "Qwen2 with use_sliding_window (per-layer windows) is not supported".into(),
                ));
            }
            _ => None,
        };
        Ok(Self {
            architecture,
            vocab_size: required("vocab_size")?,
            hidden_size,
            intermediate_size: required("intermediate_size")?,
            num_hidden_layers: required("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: get_f64(map, "rms_norm_eps", path)?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: flag("tie_word_embeddings", false),
            qkv_bias,
            o_bias,
            mlp_bias: flag("mlp_bias", false),
            activation,
            max_position_embeddings: get_usize(map, "max_position_embeddings", path)?
                .unwrap_or(2048),
            sliding_window,
            bos_token_id: map.get("bos_token_id").and_then(Value::as_i64),
            eos_token_ids: token_ids(map.get("eos_token_id")),
            pad_token_id: map.get("pad_token_id").and_then(Value::as_i64),
            initializer_range: get_f64(map, "initializer_range", path)?.unwrap_or(0.02),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<ModelConfig> {
        let Value::Object(map) = value else {
            unreachable!()
        };
        ModelConfig::from_map(&map, Path::new("config.json"))
    }

    fn base(model_type: &str) -> Value {
        json!({
            "model_type": model_type, "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        })
    }

    #[test]
    fn defaults_and_architecture_specifics() {
        let llama = parse(base("llama")).unwrap();
        assert_eq!(llama.head_dim, 16);
        assert_eq!(
            (llama.qkv_bias, llama.activation),
            (false, Activation::Silu)
        );
        let qwen = parse(base("qwen2")).unwrap();
        assert!(qwen.qkv_bias && !qwen.o_bias);
        let bitnet = parse(base("bitnet")).unwrap();
        assert_eq!(bitnet.activation, Activation::Relu2);
        let mut scaled = base("llama");
        scaled["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        scaled["eos_token_id"] = json!([1, 2]);
        let scaled = parse(scaled).unwrap();
        assert_eq!(scaled.rope_scaling.unwrap().factor, 8.0);
        assert_eq!(scaled.eos_token_ids, vec![1, 2]);
    }

    #[test]
    fn unsupported_and_missing_fields_are_named() {
        let message = parse(base("gpt2")).unwrap_err().to_string();
        assert!(
            message.contains("`gpt2`") && message.contains("llama, qwen2, mistral, bitnet"),
            "{message}"
        );
        let mut missing = base("llama");
        missing.as_object_mut().unwrap().remove("vocab_size");
        assert!(
            parse(missing)
                .unwrap_err()
                .to_string()
                .contains("`vocab_size` is missing")
        );
        let mut gqa = base("llama");
        gqa["num_key_value_heads"] = json!(3);
        assert!(
            parse(gqa)
                .unwrap_err()
                .to_string()
                .contains("not a multiple")
        );
        let mut scaling = base("llama");
        scaling["rope_scaling"] = json!({"type": "yarn", "factor": 2.0});
        assert!(parse(scaling).unwrap_err().to_string().contains("`yarn`"));
        let mut v5 = base("qwen2");
        v5["rope_parameters"] = json!({"rope_theta": 1e6, "rope_type": "default"});
        assert_eq!(parse(v5).unwrap().rope_theta, 1e6);
    }
}
