//! Hugging Face checkpoints: `config.json` plus `model.safetensors` or shards listed in
//! `model.safetensors.index.json`, read through memory maps.
//!
//! With `quantization_config.quant_method = "bitnet"`, a U8 `<x>.weight` of shape
//! `[out/4, in]` and its `<x>.weight_scale` (one element) form a packed ternary weight;
//! `linear_class` decides whether the scale multiplies or divides
//! ([`ScaleConvention`]). With `quantization_mode = "online"`, float weights of linear
//! layers are latent weights, ternarized with absmean as transformers does on the fly.
//! Every other tensor passes through.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use serde_json::{Map, Value};

use crate::codec;
use crate::io::{Bytes, map_file};
use crate::tensor::{Encoding, FloatDtype, ScaleConvention, TensorInfo, Ternary, TernaryScales};
use crate::{Error, Result};

/// Values decoded between two releases of a float tensor's mapped pages (16 MB of f32).
const DECODE_SLICE: usize = 1 << 22;

/// The single-file weights name.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The shard index name.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The config name.
pub const CONFIG_FILE: &str = "config.json";

/// transformers' BitNet linear classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum LinearClass {
    /// `"bitlinear"`, the default: `W = q / weight_scale`.
    BitLinear,
    /// `"autobitlinear"`: `W = q * weight_scale`.
    AutoBitLinear,
}

/// When weights are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum QuantizationMode {
    /// Stored packed (the default).
    Offline,
    /// Stored as latent floats, ternarized on every forward.
    Online,
}

/// The `quantization_config` of a BitNet checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BitnetQuantization {
    /// `linear_class` (default `bitlinear`).
    pub linear_class: LinearClass,
    /// `quantization_mode` (default `offline`).
    pub mode: QuantizationMode,
    /// `modules_to_not_convert` (default `["lm_head"]`): a module whose name contains one
    /// of these is never quantized.
    pub modules_to_not_convert: Vec<String>,
}

impl BitnetQuantization {
    /// Reads `quantization_config` from a parsed `config.json`; `None` when it is absent
    /// or not `bitnet`.
    pub fn from_config(config: &Map<String, Value>, path: &Path) -> Result<Option<Self>> {
        let Some(quant) = config.get("quantization_config") else {
            return Ok(None);
        };
        let Some(quant) = quant.as_object() else {
            return Err(Error::malformed(
                path,
                "quantization_config is not an object",
            ));
        };
        if quant.get("quant_method").and_then(Value::as_str) != Some("bitnet") {
            return Ok(None);
        }
        let text = |key: &str| -> Result<Option<&str>> {
            match quant.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(other) => Err(Error::malformed(
                    path,
                    format!("quantization_config.{key} is {other}, expected a string"),
                )),
            }
        };
        let linear_class = match text("linear_class")? {
            None | Some("bitlinear") => LinearClass::BitLinear,
            Some("autobitlinear") => LinearClass::AutoBitLinear,
            Some(other) => {
                return Err(Error::malformed(
                    path,
                    format!(
                        "quantization_config.linear_class is `{other}`, expected `bitlinear` or `autobitlinear`"
                    ),
                ));
            }
        };
        let mode = match text("quantization_mode")? {
            None | Some("offline") => QuantizationMode::Offline,
            Some("online") => QuantizationMode::Online,
            Some(other) => {
                return Err(Error::malformed(
                    path,
                    format!(
                        "quantization_config.quantization_mode is `{other}`, expected `offline` or `online`"
                    ),
                ));
            }
        };
        let modules_to_not_convert = match quant.get("modules_to_not_convert") {
            None | Some(Value::Null) => vec!["lm_head".to_owned()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str().map(str::to_owned).ok_or_else(|| {
                        Error::malformed(
                            path,
                            "quantization_config.modules_to_not_convert must hold strings",
                        )
                    })
                })
                .collect::<Result<_>>()?,
            Some(other) => {
                return Err(Error::malformed(
                    path,
                    format!(
                        "quantization_config.modules_to_not_convert is {other}, expected a list"
                    ),
                ));
            }
        };
        Ok(Some(Self {
            linear_class,
            mode,
            modules_to_not_convert,
        }))
    }

    /// How `weight_scale` applies.
    pub fn convention(&self) -> ScaleConvention {
        match self.linear_class {
            LinearClass::AutoBitLinear => ScaleConvention::Multiply,
            LinearClass::BitLinear => ScaleConvention::Divide,
        }
    }

    /// Whether a float tensor is the weight of a linear layer that transformers would
    /// quantize: 2-D, named `<module>.weight`, not an embedding, and its module not listed
    /// in `modules_to_not_convert`.
    pub fn quantizes(&self, name: &str, shape: &[usize]) -> bool {
        let Some(module) = name.strip_suffix(".weight") else {
            return false;
        };
        shape.len() == 2
            && !module.contains("embed")
            && !self
                .modules_to_not_convert
                .iter()
                .any(|skip| module.contains(skip.as_str()))
    }
}

struct Shard {
    path: PathBuf,
    bytes: Bytes,
    data_start: usize,
}

#[derive(Clone)]
struct Location {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    range: (usize, usize),
}

/// An open HF checkpoint.
pub struct HfCheckpoint {
    root: PathBuf,
    config: Option<Map<String, Value>>,
    quantization: Option<BitnetQuantization>,
    shards: Vec<Shard>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    locations: HashMap<String, Location>,
}

impl HfCheckpoint {
    /// Opens a checkpoint folder (`config.json` + `model.safetensors` or an index with
    /// shards), or a single `.safetensors` file (with the `config.json` beside it, if any).
    pub fn open(path: &Path) -> Result<Self> {
        let (root, files) = if path.is_dir() {
            (path.to_path_buf(), shard_files(path)?)
        } else {
            let root = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            (root, vec![path.to_path_buf()])
        };
        let config_path = root.join(CONFIG_FILE);
        let config = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path)
                .map_err(|e| Error::io(&config_path, "cannot read", e))?;
            Some(text)
        } else {
            None
        };
        let mut shards = Vec::with_capacity(files.len());
        for file in files {
            let bytes = map_file(&file)?;
            shards.push((file, bytes));
        }
        Self::from_parts(root, config.as_deref(), shards)
    }

    /// Builds a checkpoint from a config text and shard bytes already in hand (tests,
    /// fuzzing, data that does not live in files). `root` names the checkpoint in errors.
    pub fn from_parts(
        root: PathBuf,
        config: Option<&str>,
        shards: Vec<(PathBuf, Bytes)>,
    ) -> Result<Self> {
        let config_path = root.join(CONFIG_FILE);
        let config = match config {
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(map)) => Some(map),
                Ok(_) => return Err(Error::malformed(&config_path, "is not a JSON object")),
                Err(e) => {
                    return Err(Error::malformed(&config_path, format!("invalid JSON: {e}")));
                }
            },
            None => None,
        };
        let quantization = match &config {
            Some(map) => BitnetQuantization::from_config(map, &config_path)?,
            None => None,
        };

        let mut locations: HashMap<String, Location> = HashMap::new();
        let mut parsed_shards = Vec::with_capacity(shards.len());
        for (index, (path, bytes)) in shards.into_iter().enumerate() {
            let (header_len, metadata) =
                safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
                    Error::malformed(&path, format!("not a valid safetensors file: {e}"))
                })?;
            for (name, info) in metadata.tensors() {
                let location = Location {
                    shard: index,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    range: info.data_offsets,
                };
                if locations.insert(name.clone(), location).is_some() {
                    return Err(Error::tensor(&path, name, "appears in more than one shard"));
                }
            }
            parsed_shards.push(Shard {
                path,
                bytes,
                data_start: 8 + header_len,
            });
        }

        let mut checkpoint = Self {
            root,
            config,
            quantization,
            shards: parsed_shards,
            tensors: Vec::new(),
            by_name: HashMap::new(),
            locations,
        };
        checkpoint.tensors = checkpoint.logical_tensors()?;
        checkpoint.by_name = checkpoint
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(checkpoint)
    }

    fn logical_tensors(&self) -> Result<Vec<TensorInfo>> {
        let names: BTreeSet<&String> = self.locations.keys().collect();
        let mut consumed_scales = BTreeSet::new();
        let mut tensors = Vec::new();
        for name in &names {
            let location = &self.locations[name.as_str()];
            let path = &self.shards[location.shard].path;
            let encoding = match location.dtype {
                Dtype::U8 => {
                    let Some(quant) = &self.quantization else {
                        return Err(Error::tensor(
                            path,
                            name.as_str(),
                            "is U8 but config.json has no quantization_config with \
                             quant_method \"bitnet\", so its packing and scale convention are unknown",
                        ));
                    };
                    let scale_name = format!("{name}_scale");
                    let stored_scale = self.read_scale(name, &scale_name)?;
                    consumed_scales.insert(scale_name.clone());
                    Encoding::HfPacked {
                        scale_tensor: scale_name,
                        stored_scale,
                        convention: quant.convention(),
                    }
                }
                Dtype::F32 | Dtype::F16 | Dtype::BF16 => {
                    let dtype = float_dtype(location.dtype);
                    match &self.quantization {
                        Some(quant)
                            if quant.mode == QuantizationMode::Online
                                && quant.quantizes(name, &location.shape) =>
                        {
                            Encoding::Latent { dtype }
                        }
                        _ => Encoding::Float { dtype },
                    }
                }
                other => {
                    return Err(Error::Unsupported {
                        path: path.clone(),
                        message: format!(
                            "tensor `{name}` has dtype {other:?}; bitnet-dequant reads F32, F16, BF16 and packed U8"
                        ),
                    });
                }
            };
            let shape = match &encoding {
                Encoding::HfPacked { .. } => self.unpacked_shape(name, &location.shape, path)?,
                _ => location.shape.clone(),
            };
            tensors.push(TensorInfo {
                name: (*name).clone(),
                shape,
                encoding,
            });
        }
        tensors.retain(|t| !consumed_scales.contains(&t.name));
        Ok(tensors)
    }

    /// Reads and checks `<weight>_scale`: one finite, non-zero float.
    fn read_scale(&self, weight: &str, scale_name: &str) -> Result<f32> {
        let weight_path = &self.shards[self.locations[weight].shard].path;
        let Some(location) = self.locations.get(scale_name) else {
            return Err(Error::tensor(
                weight_path,
                weight,
                format!("is packed U8 but has no `{scale_name}` tensor"),
            ));
        };
        let path = &self.shards[location.shard].path;
        let numel: usize = location.shape.iter().product();
        if numel != 1 {
            return Err(Error::tensor(
                path,
                scale_name,
                format!(
                    "has shape {:?}; a BitNet weight_scale is one element",
                    location.shape
                ),
            ));
        }
        let dtype = match location.dtype {
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => float_dtype(location.dtype),
            other => {
                return Err(Error::tensor(
                    path,
                    scale_name,
                    format!("has dtype {other:?}, expected BF16, F16 or F32"),
                ));
            }
        };
        let mut value = [0f32];
        dtype.decode(self.raw_bytes(scale_name), &mut value);
        codec::check_tensor_scale("the weight_scale", value[0])
            .map_err(|e| Error::codec(path, scale_name, e))?;
        Ok(value[0])
    }

    /// `[R, in]` packed -> `[4R, in]`, checked against the config where it names the layer.
    fn unpacked_shape(&self, name: &str, packed: &[usize], path: &Path) -> Result<Vec<usize>> {
        let [rows, cols] = packed else {
            return Err(Error::tensor(
                path,
                name,
                format!("packed weight has shape {packed:?}, expected 2 dimensions [out/4, in]"),
            ));
        };
        let shape = vec![rows * 4, *cols];
        if let Some(config) = &self.config
            && let Some((out_features, in_features)) = expected_linear_shape(config, name)
            && (out_features != shape[0] || in_features != shape[1])
        {
            return Err(Error::tensor(
                path,
                name,
                format!(
                    "packed shape {packed:?} unpacks to [{}, {}] but config.json implies \
                     [{out_features}, {in_features}]",
                    shape[0], shape[1]
                ),
            ));
        }
        Ok(shape)
    }

    fn raw_bytes(&self, name: &str) -> &[u8] {
        let location = &self.locations[name];
        let shard = &self.shards[location.shard];
        &shard.bytes[shard.data_start + location.range.0..shard.data_start + location.range.1]
    }

    fn info_of(&self, name: &str) -> Result<&TensorInfo> {
        self.by_name
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| Error::NoSuchTensor {
                path: self.root.clone(),
                tensor: name.to_owned(),
            })
    }

    /// A tensor's bytes as stored (packed codes for a packed weight).
    pub fn stored_bytes(&self, name: &str) -> Result<&[u8]> {
        if self.locations.contains_key(name) {
            Ok(self.raw_bytes(name))
        } else {
            Err(Error::NoSuchTensor {
                path: self.root.clone(),
                tensor: name.to_owned(),
            })
        }
    }

    /// Releases the mapped pages of a tensor (and of its scale) once read; see
    /// [`Bytes::release`].
    pub fn release(&self, name: &str) {
        for key in [name.to_owned(), format!("{name}_scale")] {
            if let Some(location) = self.locations.get(&key) {
                let shard = &self.shards[location.shard];
                shard.bytes.release(
                    shard.data_start + location.range.0..shard.data_start + location.range.1,
                );
            }
        }
    }

    /// The file a tensor lives in.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.locations
            .get(name)
            .map(|l| self.shards[l.shard].path.as_path())
    }

    /// The checkpoint folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The parsed `config.json`, if there was one.
    pub fn config(&self) -> Option<&Map<String, Value>> {
        self.config.as_ref()
    }

    /// The BitNet quantization settings, if the checkpoint has them.
    pub fn quantization(&self) -> Option<&BitnetQuantization> {
        self.quantization.as_ref()
    }

    /// Logical tensors, sorted by name (`weight_scale` tensors are folded into their
    /// weights).
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The shard files, in order.
    pub fn files(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// Dequantizes (or converts) a tensor into `out` (`numel` f32 values).
    pub fn dequantize_into(&self, name: &str, out: &mut [f32], parallel: bool) -> Result<()> {
        let info = self.info_of(name)?;
        let bytes = self.raw_bytes(name);
        let path = self.file_of(name).unwrap_or(&self.root).to_path_buf();
        if out.len() != info.numel() {
            return Err(Error::Invalid(format!(
                "output for `{name}` holds {} values, the tensor has {}",
                out.len(),
                info.numel()
            )));
        }
        match &info.encoding {
            Encoding::Float { dtype } => {
                // In slices, each slice's mapped pages released once decoded: a large
                // tensor (an embedding of a few hundred MB) then never has both its file
                // pages and its decoded copy resident at once.
                let location = &self.locations[name];
                let shard = &self.shards[location.shard];
                let start = shard.data_start + location.range.0;
                let size = dtype.size();
                for (index, chunk) in out.chunks_mut(DECODE_SLICE).enumerate() {
                    let begin = index * DECODE_SLICE * size;
                    let end = begin + chunk.len() * size;
                    dtype.decode(&bytes[begin..end], chunk);
                    shard.bytes.release(start + begin..start + end);
                }
            }
            Encoding::HfPacked {
                stored_scale,
                convention,
                ..
            } => {
                let multiplier = convention.multiplier(*stored_scale);
                let cols = info.shape[1];
                let result = if parallel {
                    codec::hf_dequantize_par(bytes, cols, multiplier, out)
                } else {
                    codec::hf_dequantize(bytes, cols, multiplier, out)
                };
                result.map_err(|e| Error::codec(&path, name, e))?;
            }
            Encoding::Latent { dtype } => {
                dtype.decode(bytes, out);
                check_finite(out, &path, name)?;
                codec::absmean_dequantize(out);
            }
            other => {
                return Err(Error::Unsupported {
                    path,
                    message: format!("encoding {other:?} in an HF checkpoint"),
                });
            }
        }
        Ok(())
    }

    /// The ternary codes and scales of a packed or latent weight; `None` for a float
    /// tensor that passes through.
    pub fn ternary(&self, name: &str) -> Result<Option<Ternary>> {
        let info = self.info_of(name)?;
        let bytes = self.raw_bytes(name);
        let path = self.file_of(name).unwrap_or(&self.root).to_path_buf();
        match &info.encoding {
            Encoding::HfPacked {
                stored_scale,
                convention,
                ..
            } => {
                let mut codes = vec![0i8; info.numel()];
                codec::hf_codes(bytes, &mut codes).map_err(|e| Error::codec(&path, name, e))?;
                Ok(Some(Ternary {
                    shape: info.shape.clone(),
                    codes,
                    scales: TernaryScales::PerTensor(convention.multiplier(*stored_scale)),
                }))
            }
            Encoding::Latent { dtype } => {
                let mut latent = vec![0f32; info.numel()];
                dtype.decode(bytes, &mut latent);
                check_finite(&latent, &path, name)?;
                let (codes, s) = codec::absmean_ternarize(&latent);
                Ok(Some(Ternary {
                    shape: info.shape.clone(),
                    codes,
                    scales: TernaryScales::PerTensor(1.0 / s),
                }))
            }
            _ => Ok(None),
        }
    }
}

fn check_finite(values: &[f32], path: &Path, name: &str) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(Error::tensor(
            path,
            name,
            format!("latent weight element {index} is {}", values[index]),
        )),
    }
}

fn float_dtype(dtype: Dtype) -> FloatDtype {
    match dtype {
        Dtype::F16 => FloatDtype::F16,
        Dtype::BF16 => FloatDtype::Bf16,
        _ => FloatDtype::F32,
    }
}

/// The shard files of a checkpoint folder: the index's files, else `model.safetensors`.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index_path = dir.join(INDEX_FILE);
    if index_path.is_file() {
        let text = std::fs::read_to_string(&index_path)
            .map_err(|e| Error::io(&index_path, "cannot read", e))?;
        let index: Value = serde_json::from_str(&text)
            .map_err(|e| Error::malformed(&index_path, format!("invalid JSON: {e}")))?;
        let Some(weight_map) = index.get("weight_map").and_then(Value::as_object) else {
            return Err(Error::malformed(&index_path, "has no `weight_map` object"));
        };
        let mut files = BTreeMap::new();
        for (tensor, file) in weight_map {
            let Some(file) = file.as_str() else {
                return Err(Error::malformed(
                    &index_path,
                    format!("weight_map entry for `{tensor}` is not a file name"),
                ));
            };
            if file.contains('/') || file.contains("..") {
                return Err(Error::malformed(
                    &index_path,
                    format!("weight_map names `{file}`, which is not a file in the folder"),
                ));
            }
            files.insert(file.to_owned(), ());
        }
        return Ok(files.into_keys().map(|f| dir.join(f)).collect());
    }
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(Error::malformed(
        dir,
        format!("has neither {SINGLE_FILE} nor {INDEX_FILE}"),
    ))
}

/// `[out_features, in_features]` of a Llama-style projection as config.json implies it.
fn expected_linear_shape(config: &Map<String, Value>, name: &str) -> Option<(usize, usize)> {
    let get = |key: &str| config.get(key).and_then(Value::as_u64).map(|v| v as usize);
    let hidden = get("hidden_size")?;
    let heads = get("num_attention_heads")?;
    let kv_heads = get("num_key_value_heads").unwrap_or(heads);
    let head_dim = get("head_dim").unwrap_or(hidden / heads.max(1));
    let intermediate = get("intermediate_size");
    let module = name.strip_suffix(".weight")?;
    let projection = module.rsplit('.').next()?;
    match projection {
        "q_proj" => Some((heads * head_dim, hidden)),
        "k_proj" | "v_proj" => Some((kv_heads * head_dim, hidden)),
        "o_proj" => Some((hidden, heads * head_dim)),
        "gate_proj" | "up_proj" => Some((intermediate?, hidden)),
        "down_proj" => Some((hidden, intermediate?)),
        _ => None,
    }
}

/// A tensor to write into an HF BitNet checkpoint with [`write_bitnet_checkpoint`].
#[derive(Debug, Clone, Copy)]
pub enum HfTensor<'a> {
    /// A ternary linear weight `[out, in]` (out a multiple of 4): `weight = code * gamma`.
    /// Written packed, with `weight_scale` = gamma (`autobitlinear`) or 1/gamma
    /// (`bitlinear`) in the chosen scale dtype.
    Ternary {
        /// Tensor name (`<module>.weight`).
        name: &'a str,
        /// `[out_features, in_features]`.
        shape: [usize; 2],
        /// Codes in {-1, 0, 1}, row-major.
        codes: &'a [i8],
        /// The per-tensor weight magnitude.
        gamma: f32,
    },
    /// Any other tensor, stored as `dtype`.
    Float {
        /// Tensor name.
        name: &'a str,
        /// Shape.
        shape: &'a [usize],
        /// Values, row-major.
        values: &'a [f32],
        /// Stored element type.
        dtype: FloatDtype,
    },
}

/// How [`write_bitnet_checkpoint`] stores scales.
#[derive(Debug, Clone, Copy)]
pub struct BitnetWriteOptions {
    /// `linear_class` written to the config (default `autobitlinear`, as the official
    /// 2B-4T checkpoint).
    pub linear_class: LinearClass,
    /// Element type of `weight_scale` (default bf16, as transformers writes it).
    pub scale_dtype: FloatDtype,
}

impl Default for BitnetWriteOptions {
    fn default() -> Self {
        Self {
            linear_class: LinearClass::AutoBitLinear,
            scale_dtype: FloatDtype::Bf16,
        }
    }
}

/// Ternarizes a latent weight with absmean (as [`codec::absmean_ternarize`]) and returns
/// the codes and gamma (`1/s`), ready for [`HfTensor::Ternary`].
pub fn ternarize(values: &[f32]) -> (Vec<i8>, f32) {
    let (codes, s) = codec::absmean_ternarize(values);
    (codes, 1.0 / s)
}

fn encode_float(values: &[f32], dtype: FloatDtype) -> Vec<u8> {
    match dtype {
        FloatDtype::F32 => crate::io::f32_bytes(values).to_vec(),
        FloatDtype::Bf16 => crate::io::bf16_bytes(values),
        FloatDtype::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
    }
}

fn st_dtype(dtype: FloatDtype) -> crate::io::StDtype {
    match dtype {
        FloatDtype::F32 => crate::io::StDtype::F32,
        FloatDtype::Bf16 => crate::io::StDtype::Bf16,
        FloatDtype::F16 => crate::io::StDtype::F16,
    }
}

/// Writes an HF BitNet checkpoint folder: `config.json` (the given config plus a
/// `quantization_config`) and `model.safetensors` with packed ternary weights, their
/// `weight_scale` tensors and every other tensor as given. Files are written atomically;
/// the folder is created if needed.
pub fn write_bitnet_checkpoint(
    dir: &Path,
    config: &Map<String, Value>,
    tensors: &[HfTensor<'_>],
    options: &BitnetWriteOptions,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "cannot create", e))?;
    let mut blobs: Vec<(crate::io::StEntry, Vec<u8>)> = Vec::new();
    for tensor in tensors {
        match *tensor {
            HfTensor::Ternary {
                name,
                shape,
                codes,
                gamma,
            } => {
                let invalid =
                    |e: codec::CodecError| Error::Invalid(format!("tensor `{name}`: {e}"));
                codec::check_tensor_scale("gamma", gamma).map_err(invalid)?;
                let packed = codec::hf_pack(codes, shape[0], shape[1]).map_err(invalid)?;
                let stored = match options.linear_class {
                    LinearClass::AutoBitLinear => gamma,
                    LinearClass::BitLinear => 1.0 / gamma,
                };
                blobs.push((
                    crate::io::StEntry {
                        name: name.to_owned(),
                        dtype: crate::io::StDtype::U8,
                        shape: vec![shape[0] / 4, shape[1]],
                    },
                    packed,
                ));
                blobs.push((
                    crate::io::StEntry {
                        name: format!("{name}_scale"),
                        dtype: st_dtype(options.scale_dtype),
                        shape: vec![1],
                    },
                    encode_float(&[stored], options.scale_dtype),
                ));
            }
            HfTensor::Float {
                name,
                shape,
                values,
                dtype,
            } => {
                if shape.iter().product::<usize>() != values.len() {
                    return Err(Error::Invalid(format!(
                        "tensor `{name}`: shape {shape:?} does not hold {} values",
                        values.len()
                    )));
                }
                blobs.push((
                    crate::io::StEntry {
                        name: name.to_owned(),
                        dtype: st_dtype(dtype),
                        shape: shape.to_vec(),
                    },
                    encode_float(values, dtype),
                ));
            }
        }
    }
    blobs.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let entries = blobs.iter().map(|(entry, _)| entry.clone()).collect();
    let metadata = BTreeMap::from([("format".to_owned(), "pt".to_owned())]);
    let mut writer =
        crate::io::StreamingSafetensors::create(&dir.join(SINGLE_FILE), entries, &metadata)?;
    for (entry, bytes) in &blobs {
        writer.write_tensor(&entry.name, bytes)?;
    }
    writer.finish()?;

    let mut config = config.clone();
    config.insert(
        "quantization_config".to_owned(),
        serde_json::json!({
            "quant_method": "bitnet",
            "linear_class": match options.linear_class {
                LinearClass::AutoBitLinear => "autobitlinear",
                LinearClass::BitLinear => "bitlinear",
            },
            "quantization_mode": "offline",
            "modules_to_not_convert": ["lm_head"],
        }),
    );
    let mut text = serde_json::to_vec_pretty(&Value::Object(config))
        .map_err(|e| Error::Invalid(e.to_string()))?;
    text.push(b'\n');
    crate::io::write_atomic(&dir.join(CONFIG_FILE), &text)
}
