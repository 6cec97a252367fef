//! A llama-family GGUF model (`llama`, `mistral`, `qwen2`) seen as the Hugging Face
//! checkpoint transformers makes of it: `config.json` from the metadata, HF tensor names,
//! llama's Q/K rows un-permuted, tied embeddings detected, and the tokenizer files
//! (`tokenizer.json`, `tokenizer_config.json` with the chat template,
//! `generation_config.json`) rebuilt from the GGUF vocabulary.
//!
//! The rules follow transformers 5.24's GGUF loader (`../shared/research/gguf-llama.md`
//! §2-4), so a model read here and one read by `from_pretrained(dir, gguf_file=...)` have
//! the same config values, the same f32 weights bit for bit and the same token ids:
//!
//! * **Q/K permutation.** llama.cpp's converter reorders the rows of `q_proj` and
//!   `k_proj` (weights and biases) per head for its adjacent-pair RoPE; for `llama` and
//!   `mistral` files they are put back (`HF row h*hd + j*hd/2 + i = GGUF row h*hd + 2i +
//!   j`, with the key/value head count for K). `qwen2` files are not permuted.
//! * **Tied embeddings**: when the file has no `output.weight`.
//! * **Skipped**: `rope_freqs.weight` (Llama 3.1/3.2's RoPE scaling), which transformers
//!   skips too: such a model runs with plain RoPE, as it does in transformers. The skipped
//!   names are listed by [`GgufModel::skipped`].
//! * **Tokenizer**, rebuilt with transformers' rules:
//!   * `tokenizer.ggml.model = gpt2` (byte-level BPE: SmolLM, Llama 3, Qwen2,
//!     Mistral-Nemo...), including transformers' pre-tokenizer split for the
//!     `tokenizer.ggml.pre` values it knows (`llama-bpe`, `qwen2`, ...);
//!   * `llama` (SentencePiece-style BPE: Llama 2, Mistral 7B, TinyLlama...): Metaspace
//!     with the prefix on the first piece, byte fallback, merges from the file or, when
//!     absent, derived from the scores as transformers' `generate_merges` does; BOS added
//!     unless `tokenizer.ggml.add_bos_token` says otherwise.
//!
//!   Other vocabularies (`t5`, `gemma4`) are refused by [`GgufModel::tokenizer_json`]
//!   with a clear error; the weights and config still load.
//!
//! A GGUF file is read as a model when its `general.architecture` is one of
//! [`ARCHITECTURES`] and it has that architecture's `block_count`: a file of loose
//! tensors keeps its GGUF names ([`crate::Checkpoint::Gguf`]).

use std::path::Path;

use serde_json::{Map, Value as Json, json};

use crate::gguf::{GgufFile, Value};
use crate::tensor::TensorInfo;
use crate::{Error, Result};

/// The `general.architecture` values read as a model.
pub const ARCHITECTURES: &[&str] = &["llama", "mistral", "qwen2"];

/// A GGUF model file with Hugging Face names, config and tokenizer files.
pub struct GgufModel {
    file: GgufFile,
    architecture: String,
    config: Map<String, Json>,
    tensors: Vec<TensorInfo>,
    sources: Vec<Source>,
    skipped: Vec<String>,
}

/// Where an HF tensor comes from.
struct Source {
    gguf_name: String,
    /// For permuted Q/K tensors: the number of heads the rows are grouped in.
    unpermute_heads: Option<usize>,
}

impl GgufModel {
    /// Whether `file` describes a model this module reads (see the module docs).
    pub fn is_model(file: &GgufFile) -> bool {
        let architecture = file
            .get("general.architecture")
            .and_then(Value::as_str)
            .unwrap_or("");
        ARCHITECTURES.contains(&architecture)
            && file.get(&format!("{architecture}.block_count")).is_some()
    }

    /// Opens a GGUF model file.
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_file(GgufFile::open(path)?)
    }

    /// Reads a parsed GGUF file as a model.
    pub fn from_file(file: GgufFile) -> Result<Self> {
        let path = file.path().to_path_buf();
        let architecture = file
            .get("general.architecture")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::malformed(&path, "has no `general.architecture` string"))?
            .to_owned();
        if !ARCHITECTURES.contains(&architecture.as_str()) {
            return Err(Error::Unsupported {
                path,
                message: format!(
                    "GGUF architecture `{architecture}` is not read as a model; supported: {}",
                    ARCHITECTURES.join(", ")
                ),
            });
        }
        let config = hf_config(&file, &architecture)?;
        let heads = config["num_attention_heads"].as_u64().unwrap_or(1) as usize;
        let kv_heads = config["num_key_value_heads"].as_u64().unwrap_or(1) as usize;
        let permuted = architecture != "qwen2";
        let mut tensors = Vec::new();
        let mut sources = Vec::new();
        let mut skipped = Vec::new();
        for info in file.tensors() {
            if info.name == "rope_freqs.weight" {
                skipped.push(info.name.clone());
                continue;
            }
            let hf_name = hf_name(&info.name).ok_or_else(|| {
                Error::tensor(
                    &path,
                    info.name.clone(),
                    format!("has no Hugging Face counterpart in a `{architecture}` model"),
                )
            })?;
            let unpermute_heads = if !permuted {
                None
            } else if info.name.contains(".attn_q.") {
                Some(heads)
            } else if info.name.contains(".attn_k.") {
                Some(kv_heads)
            } else {
                None
            };
            if let Some(n) = unpermute_heads {
                let rows = info.shape[0];
                if n == 0 || rows % n != 0 || (rows / n) % 2 != 0 {
                    return Err(Error::tensor(
                        &path,
                        info.name.clone(),
                        format!(
                            "has {rows} rows, which do not split into {n} heads of an even size"
                        ),
                    ));
                }
            }
            tensors.push(TensorInfo {
                name: hf_name,
                shape: info.shape.clone(),
                encoding: info.encoding.clone(),
            });
            sources.push(Source {
                gguf_name: info.name.clone(),
                unpermute_heads,
            });
        }
        Ok(Self {
            file,
            architecture,
            config,
            tensors,
            sources,
            skipped,
        })
    }

    /// The underlying GGUF file.
    pub fn gguf(&self) -> &GgufFile {
        &self.file
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// The Hugging Face `config.json`.
    pub fn config(&self) -> &Map<String, Json> {
        &self.config
    }

    /// Tensors with HF names, in file order (shapes row-major, encodings as stored).
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// GGUF tensors left out on purpose (see the module docs).
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    fn index(&self, name: &str) -> Result<usize> {
        self.tensors
            .iter()
            .position(|t| t.name == name)
            .ok_or_else(|| Error::NoSuchTensor {
                path: self.file.path().to_path_buf(),
                tensor: name.to_owned(),
            })
    }

    fn source(&self, name: &str) -> Result<&Source> {
        Ok(&self.sources[self.index(name)?])
    }

    /// The HF tensor named `name`.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        Ok(&self.tensors[self.index(name)?])
    }

    /// The GGUF name of an HF tensor.
    pub fn gguf_name(&self, name: &str) -> Result<&str> {
        Ok(&self.source(name)?.gguf_name)
    }

    /// Dequantizes an HF tensor into `out` (`numel` values, rows in HF order).
    pub fn dequantize_into(&self, name: &str, out: &mut [f32], parallel: bool) -> Result<()> {
        let source = self.source(name)?;
        match source.unpermute_heads {
            None => self.file.dequantize_into(&source.gguf_name, out, parallel),
            Some(_) => {
                let mut stored = vec![0f32; out.len()];
                self.file
                    .dequantize_into(&source.gguf_name, &mut stored, parallel)?;
                self.arrange_into(name, &stored, out)
            }
        }
    }

    /// Puts rows in GGUF order into HF row order (a copy for every tensor but llama's Q
    /// and K): decoded values, or the stored bytes of a block type whose rows are whole
    /// blocks.
    pub fn arrange_into<T: Copy>(&self, name: &str, stored: &[T], out: &mut [T]) -> Result<()> {
        let index = self.index(name)?;
        if stored.len() != out.len() {
            return Err(Error::Invalid(format!(
                "`{name}`: {} values to arrange into {}",
                stored.len(),
                out.len()
            )));
        }
        let Some(heads) = self.sources[index].unpermute_heads else {
            out.copy_from_slice(stored);
            return Ok(());
        };
        let rows = self.tensors[index].shape[0];
        let width = stored.len() / rows;
        let head_dim = rows / heads;
        let half = head_dim / 2;
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..half {
                    let hf_row = h * head_dim + j * half + i;
                    let gguf_row = h * head_dim + 2 * i + j;
                    out[hf_row * width..(hf_row + 1) * width]
                        .copy_from_slice(&stored[gguf_row * width..(gguf_row + 1) * width]);
                }
            }
        }
        Ok(())
    }

    /// The ggml type an HF tensor is stored as.
    pub fn ggml_type(&self, name: &str) -> Result<crate::gguf::GgmlType> {
        let gguf_name = &self.source(name)?.gguf_name;
        self.file
            .ggml_type(gguf_name)
            .ok_or_else(|| Error::Invalid(format!("`{gguf_name}` has no ggml type")))
    }

    /// The stored bytes of an HF tensor's GGUF source (in GGUF row order).
    pub fn raw_bytes(&self, name: &str) -> Result<&[u8]> {
        self.file.raw_bytes(&self.source(name)?.gguf_name)
    }

    /// Releases a tensor's mapped pages once read.
    pub fn release(&self, name: &str) {
        if let Ok(source) = self.source(name) {
            self.file.release(&source.gguf_name);
        }
    }

    /// The chat template (`tokenizer.chat_template`), if the file has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.file
            .get("tokenizer.chat_template")
            .and_then(Value::as_str)
    }

    fn token_strings(&self) -> Result<Vec<&str>> {
        let path = self.file.path();
        let Some(Value::Array(tokens)) = self.file.get("tokenizer.ggml.tokens") else {
            return Err(Error::malformed(
                path,
                "has no `tokenizer.ggml.tokens` array: it carries no tokenizer",
            ));
        };
        tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                t.as_str().ok_or_else(|| {
                    Error::malformed(path, format!("tokenizer.ggml.tokens[{i}] is not a string"))
                })
            })
            .collect()
    }

    fn token_id(&self, key: &str) -> Option<u64> {
        self.file
            .get(&format!("tokenizer.ggml.{key}"))
            .and_then(Value::as_u64)
    }

    /// `tokenizer.ggml.model` (`gpt2`, `llama`, ...), empty when absent.
    pub fn tokenizer_model(&self) -> &str {
        self.file
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// The `tokenizer.json` transformers builds from the file's vocabulary: byte-level BPE
    /// (`gpt2`) or SentencePiece-style BPE (`llama`); see the module docs.
    pub fn tokenizer_json(&self) -> Result<Json> {
        let path = self.file.path();
        let model = self.tokenizer_model();
        if model != "gpt2" && model != "llama" {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                message: format!(
                    "tokenizer.ggml.model `{model}`: byte-level BPE (`gpt2`) and SentencePiece \
                     BPE (`llama`) vocabularies are rebuilt; others (`t5`, `gemma4`) are not yet"
                ),
            });
        }
        let tokens = self.token_strings()?;
        let types: Vec<i64> = match self.file.get("tokenizer.ggml.token_type") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::I32(x) => i64::from(*x),
                    other => other.as_u64().map_or(-1, |x| x as i64),
                })
                .collect(),
            _ => Vec::new(),
        };
        let file_merges: Option<Vec<(String, String)>> = match self
            .file
            .get("tokenizer.ggml.merges")
        {
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        let text = m.as_str().unwrap_or("");
                        match text.split_once(' ') {
                            Some((a, b)) => Ok((a.to_owned(), b.to_owned())),
                            None => Err(Error::malformed(
                                path,
                                format!("tokenizer.ggml.merges[{i}] is {text:?}, expected \"A B\""),
                            )),
                        }
                    })
                    .collect::<Result<_>>()?,
            ),
            _ => None,
        };
        let byte_level = model == "gpt2";
        let alphabet = byte_alphabet();
        let in_alphabet = |token: &str| token.chars().all(|c| alphabet.contains(&c));
        // The vocabulary as the tokenizer spells it: byte-level tokens outside GPT-2's
        // alphabet are re-spelled from their UTF-8 bytes; SentencePiece keeps the file's.
        let spell = |token: &str| -> String {
            if !byte_level || in_alphabet(token) {
                token.to_owned()
            } else {
                token.bytes().map(|b| alphabet[usize::from(b)]).collect()
            }
        };
        let mut vocab = Map::new();
        for (id, token) in tokens.iter().enumerate() {
            vocab.insert(spell(token), json!(id));
        }
        let merges = match file_merges {
            Some(merges) => merges,
            None if byte_level => {
                return Err(Error::malformed(
                    path,
                    "a `gpt2` vocabulary without `tokenizer.ggml.merges`",
                ));
            }
            None => {
                let Some(Value::Array(scores)) = self.file.get("tokenizer.ggml.scores") else {
                    return Err(Error::malformed(
                        path,
                        "a `llama` vocabulary without `tokenizer.ggml.merges` needs \
                         `tokenizer.ggml.scores` to derive them",
                    ));
                };
                let scores: Vec<f64> = scores
                    .iter()
                    .map(|v| match v {
                        Value::F32(x) => f64::from(*x),
                        Value::F64(x) => *x,
                        other => other.as_u64().map_or(f64::NAN, |x| x as f64),
                    })
                    .collect();
                if scores.len() != tokens.len() {
                    return Err(Error::malformed(
                        path,
                        format!(
                            "tokenizer.ggml.scores has {} entries for {} tokens",
                            scores.len(),
                            tokens.len()
                        ),
                    ));
                }
                merges_from_scores(&tokens, &scores)
            }
        };
        let merges: Vec<Json> = merges.into_iter().map(|(a, b)| json!([a, b])).collect();

        // Added tokens, matched whole before pre-tokenization: control tokens (type 3; a
        // byte-level one outside the alphabet is a mislabel and skipped) and the special
        // tokens' strings as special; user-defined ones (type 4) in the vocabulary as
        // plain added tokens.
        let special_ids: Vec<u64> = [
            "bos_token_id",
            "eos_token_id",
            "unknown_token_id",
            "padding_token_id",
        ]
        .iter()
        .filter_map(|key| self.token_id(key))
        .collect();
        let mut added = Vec::new();
        for (id, token) in tokens.iter().enumerate() {
            let kind = types.get(id).copied().unwrap_or(1);
            let special = match kind {
                3 if !byte_level || in_alphabet(token) => true,
                4 if !byte_level || in_alphabet(token) => false,
                _ if special_ids.contains(&(id as u64)) && (!byte_level || in_alphabet(token)) => {
                    true
                }
                _ => continue,
            };
            added.push(json!({
                "id": id,
                "content": token,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": special,
            }));
        }
        if !byte_level {
            return Ok(json!({
                "version": "1.0",
                "truncation": null,
                "padding": null,
                "added_tokens": added,
                "normalizer": null,
                "pre_tokenizer": {
                    "type": "Metaspace",
                    "replacement": "\u{2581}",
                    "prepend_scheme": "first",
                    "split": false,
                },
                "post_processor": null,
                "decoder": {
                    "type": "Sequence",
                    "decoders": [
                        { "type": "Replace", "pattern": { "String": "\u{2581}" }, "content": " " },
                        { "type": "ByteFallback" },
                        { "type": "Fuse" },
                        { "type": "Strip", "content": " ", "start": 1, "stop": 0 },
                    ],
                },
                "model": {
                    "type": "BPE",
                    "dropout": null,
                    "unk_token": null,
                    "continuing_subword_prefix": null,
                    "end_of_word_suffix": null,
                    "fuse_unk": true,
                    "byte_fallback": true,
                    "ignore_merges": false,
                    "vocab": vocab,
                    "merges": merges,
                },
            }));
        }
        let pre = self
            .file
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("");
        let byte_level = |use_regex: bool| {
            json!({
                "type": "ByteLevel",
                "add_prefix_space": false,
                "trim_offsets": true,
                "use_regex": use_regex,
            })
        };
        let pre_tokenizer = match split_regex(pre) {
            Some(regex) => json!({
                "type": "Sequence",
                "pretokenizers": [
                    {
                        "type": "Split",
                        "pattern": { "Regex": regex },
                        "behavior": "Isolated",
                        "invert": false,
                    },
                    byte_level(false),
                ],
            }),
            None => byte_level(true),
        };
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": null,
            "decoder": {
                "type": "ByteLevel",
                "add_prefix_space": true,
                "trim_offsets": true,
                "use_regex": true,
            },
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": null,
                "continuing_subword_prefix": "",
                "end_of_word_suffix": "",
                "fuse_unk": false,
                "byte_fallback": false,
                "ignore_merges": false,
                "vocab": vocab,
                "merges": merges,
            },
        }))
    }

    /// `tokenizer_config.json`: special token strings, `add_bos_token`, the chat template.
    pub fn tokenizer_config(&self) -> Result<Json> {
        let tokens = self.token_strings()?;
        let mut config = Map::new();
        for (name, key) in [
            ("bos_token", "bos_token_id"),
            ("eos_token", "eos_token_id"),
            ("unk_token", "unknown_token_id"),
            ("pad_token", "padding_token_id"),
        ] {
            if let Some(token) = self
                .token_id(key)
                .and_then(|id| tokens.get(id as usize).copied())
            {
                config.insert(name.to_owned(), json!(token));
            }
        }
        let flag = |key: &str| {
            self.file
                .get(&format!("tokenizer.ggml.{key}"))
                .and_then(|v| match v {
                    Value::Bool(b) => Some(*b),
                    _ => None,
                })
        };
        // llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise.
        let spm = self.tokenizer_model() == "llama";
        config.insert(
            "add_bos_token".into(),
            json!(flag("add_bos_token").unwrap_or(spm)),
        );
        config.insert(
            "add_eos_token".into(),
            json!(flag("add_eos_token").unwrap_or(false)),
        );
        if let Some(template) = self.chat_template() {
            config.insert("chat_template".into(), json!(template));
        }
        if let Some(context) = self.config.get("max_position_embeddings") {
            config.insert("model_max_length".into(), context.clone());
        }
        config.insert(
            "tokenizer_class".into(),
            json!(if spm {
                "LlamaTokenizer"
            } else {
                "GPT2Tokenizer"
            }),
        );
        Ok(Json::Object(config))
    }

    /// `generation_config.json`: BOS, EOS (with the end-of-turn ids, if any) and padding.
    pub fn generation_config(&self) -> Json {
        let mut config = Map::new();
        if let Some(bos) = self.token_id("bos_token_id") {
            config.insert("bos_token_id".into(), json!(bos));
        }
        let mut eos: Vec<u64> = Vec::new();
        for key in ["eos_token_id", "eot_token_id", "eom_token_id"] {
            if let Some(id) = self.token_id(key)
                && !eos.contains(&id)
            {
                eos.push(id);
            }
        }
        match eos.as_slice() {
            [] => {}
            [one] => {
                config.insert("eos_token_id".into(), json!(one));
            }
            many => {
                config.insert("eos_token_id".into(), json!(many));
            }
        }
        if let Some(pad) = self.token_id("padding_token_id") {
            config.insert("pad_token_id".into(), json!(pad));
        }
        Json::Object(config)
    }

    /// Every companion file of the equivalent HF folder, by file name; the tokenizer files
    /// only when the vocabulary can be rebuilt.
    pub fn hf_files(&self) -> Result<Vec<(&'static str, Json)>> {
        let mut files = vec![
            ("config.json", Json::Object(self.config.clone())),
            ("generation_config.json", self.generation_config()),
        ];
        if self.file.get("tokenizer.ggml.tokens").is_some() {
            match self.tokenizer_json() {
                Ok(tokenizer) => {
                    files.push(("tokenizer.json", tokenizer));
                    files.push(("tokenizer_config.json", self.tokenizer_config()?));
                }
                Err(Error::Unsupported { .. }) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(files)
    }
}

/// The merges a SentencePiece BPE vocabulary implies, as transformers derives them
/// (`generate_merges`): every split of every token into two tokens of the vocabulary,
/// ranked by the whole token's score (best first), then by the longer left and right
/// parts; ties keep vocabulary order.
fn merges_from_scores(tokens: &[&str], scores: &[f64]) -> Vec<(String, String)> {
    // Python dict semantics: an id map where a repeated token keeps its last id, and a
    // score map that keeps a repeated token's first position with its last score.
    let mut id: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    let mut score: std::collections::HashMap<&str, f64> = std::collections::HashMap::new();
    for (i, (&token, &s)) in tokens.iter().zip(scores).enumerate() {
        id.insert(token, i);
        if score.insert(token, s).is_none() {
            order.push(token);
        }
    }
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for &token in &order {
        let mut local: Vec<(&str, &str, f64)> = token
            .char_indices()
            .skip(1)
            .map(|(at, _)| token.split_at(at))
            .filter(|(left, right)| id.contains_key(left) && id.contains_key(right))
            .map(|(left, right)| (left, right, score[token]))
            .collect();
        local.sort_by_key(|(left, right, _)| (id[left], id[right]));
        merges.extend(local);
    }
    let key =
        |(left, right, s): &(&str, &str, f64)| (*s, left.chars().count(), right.chars().count());
    merges.sort_by(|a, b| {
        let (a, b) = (key(a), key(b));
        b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2))
    });
    merges
        .into_iter()
        .map(|(left, right, _)| (left.to_owned(), right.to_owned()))
        .collect()
}

/// GPT-2's `bytes_to_unicode`: the printable character standing for each byte.
fn byte_alphabet() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut next = 256u32;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).expect("a Latin-1 character")
            } else {
                let c = char::from_u32(next).expect("a character below U+0200");
                next += 1;
                c
            }
        })
        .collect()
}

/// transformers' pre-tokenizer split for the `tokenizer.ggml.pre` values it knows (others
/// keep GPT-2's own regex inside ByteLevel).
fn split_regex(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" => Some(LLAMA3),
        "qwen2" | "deepseek-r1-qwen" => Some(QWEN2),
        _ => None,
    }
}

/// The HF name of a llama-family GGUF tensor.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_owned());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// `config.json` from the metadata, with transformers' key map.
fn hf_config(file: &GgufFile, architecture: &str) -> Result<Map<String, Json>> {
    let path = file.path();
    let key = |name: &str| format!("{architecture}.{name}");
    let integer = |name: &str| -> Result<Option<u64>> {
        match file.get(&key(name)) {
            None => Ok(None),
            Some(value) => value.as_u64().map(Some).ok_or_else(|| {
                Error::malformed(
                    path,
                    format!("`{}` is {value:?}, expected an unsigned integer", key(name)),
                )
            }),
        }
    };
    let required = |name: &str| -> Result<u64> {
        integer(name)?.ok_or_else(|| {
            Error::malformed(
                path,
                format!(
                    "`{}` is missing: a `{architecture}` model needs it",
                    key(name)
                ),
            )
        })
    };
    let float = |name: &str| -> Result<Option<f64>> {
        match file.get(&key(name)) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(f64::from(*v))),
            Some(Value::F64(v)) => Ok(Some(*v)),
            Some(other) => Err(Error::malformed(
                path,
                format!("`{}` is {other:?}, expected a float", key(name)),
            )),
        }
    };
    let hidden = required("embedding_length")?;
    let heads = required("attention.head_count")?;
    let kv_heads = integer("attention.head_count_kv")?.unwrap_or(heads);
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(Error::malformed(
            path,
            format!("{heads} attention heads do not group into {kv_heads} key/value heads"),
        ));
    }
    let head_dim = match architecture {
        "qwen2" => None,
        _ => integer("rope.dimension_count")?,
    }
    .unwrap_or(hidden / heads);
    let vocab_size = match integer("vocab_size")? {
        Some(v) => v,
        None => match file.get("tokenizer.ggml.tokens") {
            Some(Value::Array(tokens)) => tokens.len() as u64,
            _ => {
                return Err(Error::malformed(
                    path,
                    format!(
                        "neither `{}` nor `tokenizer.ggml.tokens` gives the vocabulary size",
                        key("vocab_size")
                    ),
                ));
            }
        },
    };
    let tied = !file.tensors().iter().any(|t| t.name == "output.weight");
    let bias = file
        .tensors()
        .iter()
        .any(|t| t.name.ends_with("attn_q.bias"));
    let (model_type, class) = match architecture {
        "qwen2" => ("qwen2", "Qwen2ForCausalLM"),
        "mistral" => ("mistral", "MistralForCausalLM"),
        _ => ("llama", "LlamaForCausalLM"),
    };
    let mut config = Map::new();
    config.insert("architectures".into(), json!([class]));
    config.insert("model_type".into(), json!(model_type));
    config.insert("hidden_size".into(), json!(hidden));
    config.insert(
        "intermediate_size".into(),
        json!(required("feed_forward_length")?),
    );
    config.insert("num_hidden_layers".into(), json!(required("block_count")?));
    config.insert("num_attention_heads".into(), json!(heads));
    config.insert("num_key_value_heads".into(), json!(kv_heads));
    config.insert("head_dim".into(), json!(head_dim));
    if let Some(context) = integer("context_length")? {
        config.insert("max_position_embeddings".into(), json!(context));
    }
    config.insert(
        "rms_norm_eps".into(),
        json!(float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-6)),
    );
    config.insert(
        "rope_parameters".into(),
        json!({
            "rope_theta": float("rope.freq_base")?.unwrap_or(10_000.0),
            "rope_type": "default",
        }),
    );
    config.insert("vocab_size".into(), json!(vocab_size));
    config.insert("tie_word_embeddings".into(), json!(tied));
    if model_type != "qwen2" {
        config.insert("attention_bias".into(), json!(bias));
    }
    config.insert("hidden_act".into(), json!("silu"));
    for (hf, gguf) in [
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("unk_token_id", "unknown_token_id"),
        ("pad_token_id", "padding_token_id"),
    ] {
        if let Some(id) = file
            .get(&format!("tokenizer.ggml.{gguf}"))
            .and_then(Value::as_u64)
        {
            config.insert(hf.into(), json!(id));
        }
    }
    config.insert("dtype".into(), json!("float32"));
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(
            hf_name("blk.12.attn_k.weight").as_deref(),
            Some("model.layers.12.self_attn.k_proj.weight")
        );
        assert_eq!(
            hf_name("blk.0.attn_q.bias").as_deref(),
            Some("model.layers.0.self_attn.q_proj.bias")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("blk.0.ffn_gate_inp.weight"), None);
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
    }

    #[test]
    fn byte_alphabet_is_gpt2s() {
        let alphabet = byte_alphabet();
        assert_eq!(alphabet[usize::from(b' ')], 'Ġ');
        assert_eq!(alphabet[usize::from(b'\n')], 'Ċ');
        assert_eq!(alphabet[usize::from(b'a')], 'a');
        let distinct: std::collections::HashSet<_> = alphabet.iter().collect();
        assert_eq!(distinct.len(), 256);
    }
}
