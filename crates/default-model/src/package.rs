//! Writing the model: the Hugging Face BitNet checkpoint (packed ternary linears with
//! `weight_scale`, float embeddings and norms), tokenizer files, and JSON helpers.

use std::path::Path;

use bitnet_dequant::FloatDtype;
use bitnet_dequant::hf::{BitnetWriteOptions, HfTensor, ternarize, write_bitnet_checkpoint};
use lm::CausalLm;
use serde_json::{Map, Value, json};

use crate::recipe::ModelShape;
use crate::tokenizer::{self, BOS, EOS, PAD};
use crate::{Error, Result};

/// `config.json` of the shape (before `quantization_config`, which the checkpoint
/// writer adds): transformers' `BitNetForCausalLM`.
pub fn config_json(shape: &ModelShape) -> Map<String, Value> {
    let head_dim = shape.hidden_size / shape.num_attention_heads;
    let value = json!({
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
        "dtype": "float32",
        "head_dim": head_dim,
        "hidden_act": "relu2",
        "hidden_size": shape.hidden_size,
        "initializer_range": shape.initializer_range,
        "intermediate_size": shape.intermediate_size,
        "max_position_embeddings": shape.max_position_embeddings,
        "num_attention_heads": shape.num_attention_heads,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_key_value_heads": shape.num_key_value_heads,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "tie_word_embeddings": true,
        "use_cache": true,
        "vocab_size": tokenizer::vocab_size(),
    });
    match value {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::Data(format!("{}: {e}", path.display())))?;
    text.push(b'\n');
    Ok(bitnet_dequant::io::write_atomic(path, &text)?)
}

/// Writes the tokenizer files into `dir`.
pub fn write_tokenizer(dir: &Path, max_length: usize) -> Result<()> {
    write_json(&dir.join("tokenizer.json"), &tokenizer::tokenizer_json())?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &tokenizer::tokenizer_config_json(max_length),
    )?;
    write_json(
        &dir.join("generation_config.json"),
        &tokenizer::generation_config_json(),
    )
}

/// Whether a parameter is the weight of a BitLinear layer (every attention and MLP
/// projection; embeddings, norms and the tied head stay float).
fn is_bitlinear(name: &str) -> bool {
    name.ends_with("_proj.weight")
}

/// Packs the model's latent weights: linears ternarized (absmean) and packed, the rest
/// as f32; `config.json` and `model.safetensors` in `dir`.
pub fn write_checkpoint(model: &CausalLm, config: &Map<String, Value>, dir: &Path) -> Result<()> {
    let mut owned = Vec::new();
    for (name, tensor) in model.named_parameters() {
        let tensor = tensor
            .detach()
            .to_device(tch::Device::Cpu)
            .to_kind(tch::Kind::Float)
            .contiguous();
        let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
        let values = Vec::<f32>::try_from(tensor.flatten(0, -1))?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::Training(format!(
                "parameter {name} holds a non-finite value"
            )));
        }
        let ternary = is_bitlinear(&name).then(|| ternarize(&values));
        owned.push((name, shape, values, ternary));
    }
    let tensors: Vec<HfTensor<'_>> = owned
        .iter()
        .map(|(name, shape, values, ternary)| match ternary {
            Some((codes, gamma)) => HfTensor::Ternary {
                name,
                shape: [shape[0], shape[1]],
                codes,
                gamma: *gamma,
            },
            None => HfTensor::Float {
                name,
                shape,
                values,
                dtype: FloatDtype::F32,
            },
        })
        .collect();
    let options = BitnetWriteOptions {
        // f32 scales: the packed model is exactly what was trained (bf16 would round
        // each layer's scale by up to 0.4%).
        scale_dtype: FloatDtype::F32,
        ..BitnetWriteOptions::default()
    };
    write_bitnet_checkpoint(dir, config, &tensors, &options)?;
    Ok(())
}

/// Total size of the files in `dir`, bytes.
pub fn folder_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let metadata = entry.metadata().map_err(|source| Error::Io {
            path: entry.path(),
            source,
        })?;
        if metadata.is_file() {
            total += metadata.len();
        }
    }
    Ok(total)
}
