//! Whole-checkpoint conversion to a float Hugging Face checkpoint, and verification of
//! a conversion against its input.
//!
//! Conversion streams: one reusable f32 buffer the size of the largest tensor is all that
//! is held (bf16 output is rounded in place), besides the input's mapped pages.
//! The output is written into a temporary folder beside the target and renamed into
//! place only when complete, so a failed run leaves nothing at the output path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use crate::io::{self, StDtype, StEntry, StreamingSafetensors};
use crate::{Checkpoint, Encoding, Error, Format, Result, TensorInfo, reference};

/// Files copied beside the converted weights when the input has them.
pub const COMPANION_FILES: &[&str] = &[
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
];

/// The element type of converted weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum OutputDtype {
    /// f32: every ternary weight is exactly `code * scale`.
    F32,
    /// bf16: `code * scale` rounded to nearest-even bf16.
    Bf16,
}

impl OutputDtype {
    fn st(self) -> StDtype {
        match self {
            Self::F32 => StDtype::F32,
            Self::Bf16 => StDtype::Bf16,
        }
    }

    /// The value as stored in this dtype and read back as f32.
    pub fn round(self, value: f32) -> f32 {
        match self {
            Self::F32 => value,
            Self::Bf16 => half::bf16::from_f32(value).to_f32(),
        }
    }
}

/// Options of [`convert`].
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Output element type. Default: f32.
    pub dtype: OutputDtype,
    /// Largest shard in bytes before a new one starts. Default: 5 GB, as transformers.
    pub max_shard_bytes: u64,
    /// Replace an existing output folder (it is removed only after the new one is
    /// complete). Default: false.
    pub overwrite: bool,
    /// Dequantize on all of rayon's threads. Default: true.
    pub parallel: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        Self {
            dtype: OutputDtype::F32,
            max_shard_bytes: 5_000_000_000,
            overwrite: false,
            parallel: true,
        }
    }
}

/// What a conversion wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ConvertReport {
    /// Input format.
    pub format: Format,
    /// Tensors written.
    pub tensors: usize,
    /// Of which ternary (dequantized).
    pub ternary_tensors: usize,
    /// Tensors stored in one of llama.cpp's block types (Q4_0 ... Q6_K).
    pub quantized_tensors: usize,
    /// Elements written.
    pub parameters: usize,
    /// Bytes of tensor data written.
    pub bytes: u64,
    /// Shard files written.
    pub shards: usize,
    /// Companion files copied or rewritten.
    pub files: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

/// Progress of a conversion, for progress bars.
pub trait Progress {
    /// About to write `bytes_total` bytes of tensor data.
    fn start(&mut self, _bytes_total: u64) {}
    /// A tensor of `bytes` output bytes was written.
    fn tensor_done(&mut self, _name: &str, _bytes: u64) {}
}

/// A [`Progress`] that ignores everything.
pub struct NoProgress;

impl Progress for NoProgress {}

/// Converts the checkpoint at `input` into a float HF checkpoint folder `output`.
///
/// HF input keeps its tensor names (without `weight_scale` tensors); `config.json` loses
/// `quantization_config`; tokenizer and generation files are copied. A llama-family GGUF
/// model ([`crate::gguf_model`]) becomes the equivalent HF folder: HF names, Q/K rows
/// un-permuted, `config.json`, `generation_config.json` and, for byte-level BPE
/// vocabularies, `tokenizer.json` and `tokenizer_config.json` (with the chat template).
/// Any other GGUF keeps its tensor names with shapes in row-major order, and its metadata
/// goes to `gguf_metadata.json`.
pub fn convert(
    input: &Path,
    output: &Path,
    options: &ConvertOptions,
    progress: &mut dyn Progress,
) -> Result<ConvertReport> {
    let started = Instant::now();
    let checkpoint = Checkpoint::open(input)?;
    if output.exists() && !options.overwrite {
        return Err(Error::Invalid(format!(
            "{} already exists; choose another output or allow overwriting",
            output.display()
        )));
    }
    let staging = staging_dir(output);
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| Error::io(output, "cannot create", e))?;
    let guard = RemoveOnDrop(staging.clone());

    let tensors = checkpoint.tensors().to_vec();
    let shards = plan_shards(&tensors, options);
    let total: u64 = tensors
        .iter()
        .map(|t| (t.numel() * options.dtype.st().size()) as u64)
        .sum();
    progress.start(total);

    let mut weight_map = serde_json::Map::new();
    let mut buffer: Vec<f32> = Vec::new();
    let shard_count = shards.len();
    let metadata = BTreeMap::from([("format".to_owned(), "pt".to_owned())]);
    for (index, shard) in shards.iter().enumerate() {
        let file_name = if shard_count == 1 {
            crate::hf::SINGLE_FILE.to_owned()
        } else {
            format!("model-{:05}-of-{shard_count:05}.safetensors", index + 1)
        };
        let entries = shard
            .iter()
            .map(|t| StEntry {
                name: t.name.clone(),
                dtype: options.dtype.st(),
                shape: t.shape.clone(),
            })
            .collect();
        let mut writer =
            StreamingSafetensors::create(&staging.join(&file_name), entries, &metadata)?;
        for tensor in shard {
            buffer.clear();
            buffer.resize(tensor.numel(), 0.0);
            checkpoint.dequantize_into(&tensor.name, &mut buffer, options.parallel)?;
            checkpoint.release(&tensor.name);
            let bytes = match options.dtype {
                OutputDtype::F32 => io::f32_bytes(&buffer),
                OutputDtype::Bf16 => io::bf16_in_place(&mut buffer),
            };
            writer.write_tensor(&tensor.name, bytes)?;
            progress.tensor_done(&tensor.name, bytes.len() as u64);
            weight_map.insert(tensor.name.clone(), Value::String(file_name.clone()));
        }
        writer.finish()?;
    }
    drop(buffer);
    if shard_count > 1 {
        let index = serde_json::json!({
            "metadata": { "total_size": total },
            "weight_map": weight_map,
        });
        write_json(&staging.join(crate::hf::INDEX_FILE), &index)?;
    }
    let files = write_companions(&checkpoint, &staging)?;

    io::sync_dir(&staging)?;
    if output.exists() {
        let old = output.with_file_name(format!(
            ".{}.old-{}",
            output.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        std::fs::rename(output, &old).map_err(|e| Error::io(output, "cannot move aside", e))?;
        std::fs::rename(&staging, output)
            .map_err(|e| Error::io(output, "cannot rename into place", e))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&staging, output)
            .map_err(|e| Error::io(output, "cannot rename into place", e))?;
    }
    std::mem::forget(guard);
    if let Some(parent) = output.parent() {
        io::sync_dir(parent)?;
    }
    Ok(ConvertReport {
        format: checkpoint.format(),
        tensors: tensors.len(),
        ternary_tensors: tensors.iter().filter(|t| t.encoding.is_ternary()).count(),
        quantized_tensors: tensors
            .iter()
            .filter(|t| matches!(t.encoding, Encoding::Quant { .. }))
            .count(),
        parameters: tensors.iter().map(TensorInfo::numel).sum(),
        bytes: total,
        shards: shard_count,
        files,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn staging_dir(output: &Path) -> PathBuf {
    output.with_file_name(format!(
        ".{}.partial-{}",
        output.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Splits tensors into shards of at most `max_shard_bytes` (a larger tensor gets a
/// shard of its own).
fn plan_shards<'a>(
    tensors: &'a [TensorInfo],
    options: &ConvertOptions,
) -> Vec<Vec<&'a TensorInfo>> {
    let mut shards: Vec<Vec<&TensorInfo>> = vec![Vec::new()];
    let mut size = 0u64;
    for tensor in tensors {
        let bytes = (tensor.numel() * options.dtype.st().size()) as u64;
        if size > 0 && size + bytes > options.max_shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        shards.last_mut().expect("one shard at least").push(tensor);
    }
    shards
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(value).map_err(|e| Error::Invalid(e.to_string()))?;
    text.push(b'\n');
    io::write_atomic(path, &text)
}

/// config.json without quantization_config, companion files copied (HF); the metadata
/// as JSON (GGUF).
fn write_companions(checkpoint: &Checkpoint, staging: &Path) -> Result<Vec<String>> {
    let mut written = Vec::new();
    match checkpoint {
        Checkpoint::Hf(hf) => {
            if let Some(config) = hf.config() {
                let mut config = config.clone();
                config.remove("quantization_config");
                write_json(
                    &staging.join(crate::hf::CONFIG_FILE),
                    &Value::Object(config),
                )?;
                written.push(crate::hf::CONFIG_FILE.to_owned());
            }
            for name in COMPANION_FILES {
                let source = hf.root().join(name);
                if source.is_file() {
                    let bytes =
                        std::fs::read(&source).map_err(|e| Error::io(&source, "cannot read", e))?;
                    io::write_atomic(&staging.join(name), &bytes)?;
                    written.push((*name).to_owned());
                }
            }
        }
        Checkpoint::Gguf(file) => {
            let metadata: serde_json::Map<String, Value> = file
                .metadata()
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or(Value::Null)))
                .collect();
            write_json(
                &staging.join("gguf_metadata.json"),
                &Value::Object(metadata),
            )?;
            written.push("gguf_metadata.json".to_owned());
        }
        Checkpoint::GgufModel(model) => {
            for (name, value) in model.hf_files()? {
                write_json(&staging.join(name), &value)?;
                written.push(name.to_owned());
            }
        }
    }
    Ok(written)
}

/// The verification of one tensor.
#[derive(Debug, Clone, Serialize)]
pub struct TensorCheck {
    /// Tensor name.
    pub name: String,
    /// How the input stores it.
    pub encoding: String,
    /// Elements compared.
    pub elements: usize,
    /// Elements whose output differs from the expected value (bitwise).
    pub mismatches: usize,
    /// The first differing element: index, expected, found.
    pub first_mismatch: Option<(usize, f32, f32)>,
    /// A problem that prevented comparison (missing in the output, other shape, ...).
    pub problem: Option<String>,
}

impl TensorCheck {
    /// Whether the tensor verified.
    pub fn ok(&self) -> bool {
        self.mismatches == 0 && self.problem.is_none()
    }
}

/// The verification of a whole conversion.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// One entry per input tensor.
    pub tensors: Vec<TensorCheck>,
    /// Output tensors with no input counterpart.
    pub unexpected: Vec<String>,
}

impl VerifyReport {
    /// Whether everything verified.
    pub fn ok(&self) -> bool {
        self.unexpected.is_empty() && self.tensors.iter().all(TensorCheck::ok)
    }
}

/// Checks that every output weight is exactly what its input encodes: `code * scale`
/// decoded element by element with [`crate::reference`] (independently of the decoders
/// conversion uses), or the float value for pass-through tensors, rounded to the output's
/// dtype; compared bitwise.
pub fn verify(input: &Path, output: &Path) -> Result<VerifyReport> {
    let input = Checkpoint::open(input)?;
    let output = Checkpoint::open(output)?;
    let mut tensors = Vec::new();
    for info in input.tensors() {
        tensors.push(verify_tensor(&input, &output, info)?);
    }
    let unexpected = output
        .tensors()
        .iter()
        .filter(|t| input.tensors().iter().all(|i| i.name != t.name))
        .map(|t| t.name.clone())
        .collect();
    Ok(VerifyReport {
        tensors,
        unexpected,
    })
}

fn verify_tensor(
    input: &Checkpoint,
    output: &Checkpoint,
    info: &TensorInfo,
) -> Result<TensorCheck> {
    let mut check = TensorCheck {
        name: info.name.clone(),
        encoding: info.encoding.label(),
        elements: info.numel(),
        mismatches: 0,
        first_mismatch: None,
        problem: None,
    };
    let Ok(out_info) = output.tensor(&info.name) else {
        check.problem = Some("missing from the output".to_owned());
        return Ok(check);
    };
    if out_info.shape != info.shape {
        check.problem = Some(format!(
            "output shape {:?}, input shape {:?}",
            out_info.shape, info.shape
        ));
        return Ok(check);
    }
    let out_dtype = match out_info.encoding {
        Encoding::Float {
            dtype: crate::FloatDtype::F32,
        } => OutputDtype::F32,
        Encoding::Float {
            dtype: crate::FloatDtype::Bf16,
        } => OutputDtype::Bf16,
        ref other => {
            check.problem = Some(format!(
                "output is stored as {}, expected F32 or BF16",
                other.label()
            ));
            return Ok(check);
        }
    };
    let found = output.dequantize(&info.name)?;
    let expected = expected_values(input, info)?;
    for (index, (&want, &got)) in expected.iter().zip(&found).enumerate() {
        let want = out_dtype.round(want);
        if want.to_bits() != got.to_bits() {
            check.mismatches += 1;
            check.first_mismatch.get_or_insert((index, want, got));
        }
    }
    Ok(check)
}

/// The f32 value of every element, from the format definitions.
fn expected_values(input: &Checkpoint, info: &TensorInfo) -> Result<Vec<f32>> {
    let stored = stored_order_values(input, info)?;
    match input {
        Checkpoint::GgufModel(model) => {
            let mut arranged = vec![0f32; stored.len()];
            model.arrange_into(&info.name, &stored, &mut arranged)?;
            Ok(arranged)
        }
        _ => Ok(stored),
    }
}

/// The f32 value of every element in stored order, from the format definitions.
fn stored_order_values(input: &Checkpoint, info: &TensorInfo) -> Result<Vec<f32>> {
    let bytes = input.stored_bytes(&info.name)?;
    let n = info.numel();
    let path = input.path();
    let code_error = |index: usize| {
        Error::tensor(
            &path,
            info.name.clone(),
            format!("element {index} has the unused code 3"),
        )
    };
    let decode = |element: &dyn Fn(usize) -> reference::CodeAndScale| -> Result<Vec<f32>> {
        (0..n)
            .map(|e| {
                let (code, scale) = element(e);
                if code == 3 {
                    return Err(code_error(e));
                }
                Ok((i32::from(code) - 1) as f32 * scale)
            })
            .collect()
    };
    match &info.encoding {
        Encoding::Float { dtype } => {
            let mut values = vec![0f32; n];
            dtype.decode(bytes, &mut values);
            Ok(values)
        }
        Encoding::Latent { dtype } => {
            let mut latent = vec![0f32; n];
            dtype.decode(bytes, &mut latent);
            Ok(reference::absmean(&latent))
        }
        Encoding::HfPacked {
            stored_scale,
            convention,
            ..
        } => {
            let cols = info.shape[1];
            let multiplier = convention.multiplier(*stored_scale);
            decode(&|e| reference::hf_packed(bytes, cols, multiplier, e))
        }
        Encoding::Tq1_0 => decode(&|e| reference::tq1_0(bytes, e)),
        Encoding::Tq2_0 => decode(&|e| reference::tq2_0(bytes, e)),
        Encoding::I2s => decode(&|e| reference::i2s(bytes, n, e)),
        Encoding::Quant { format } => Ok((0..n)
            .map(|e| reference::quant(*format, bytes, e))
            .collect()),
    }
}
