//! Hugging Face tokenizers (`tokenizer.json`) with the special tokens and chat template
//! of the model's config files, or rebuilt from a GGUF file's vocabulary.

use std::path::Path;

use serde_json::Value;

use crate::{Error, Result};

/// A tokenizer and the model's special tokens.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Beginning-of-sequence token id.
    pub bos: Option<i64>,
    /// End-of-sequence token ids (generation stops at any of them).
    pub eos: Vec<i64>,
    /// Padding token id.
    pub pad: Option<i64>,
    add_bos: bool,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: format!("invalid JSON: {e}"),
        })
}

/// A special token in `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Object(map) => map
            .get("content")
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    }
}

fn ids(value: Option<&Value>) -> Vec<i64> {
    match value {
        Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_i64).collect(),
        _ => Vec::new(),
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` from a model folder. Special tokens come from
    /// `generation_config.json` (EOS ids), `config.json` (BOS, EOS, pad ids) and
    /// `tokenizer_config.json` (token strings and `add_bos_token`), in that order of
    /// precedence.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::Io {
                path,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::Config {
            path: path.clone(),
            message: format!("not a usable tokenizer: {e}"),
        })?;
        let tokenizer_config =
            read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
        let config = read_json(&dir.join("config.json"))?.unwrap_or(Value::Null);
        let generation = read_json(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);
        // Newer checkpoints keep the template in its own file.
        let template_file = dir.join("chat_template.jinja");
        let template = if template_file.is_file() {
            Some(
                std::fs::read_to_string(&template_file).map_err(|source| Error::Io {
                    path: template_file,
                    source,
                })?,
            )
        } else {
            None
        };
        Ok(Self::assemble(
            inner,
            &tokenizer_config,
            &config,
            &generation,
            template,
        ))
    }

    /// Loads the tokenizer of a model folder or of a `.gguf` file (recognised by its
    /// magic bytes).
    pub fn load(path: &Path) -> Result<Self> {
        if bitnet_dequant::is_gguf(path) {
            Self::from_gguf(path)
        } else {
            Self::from_dir(path)
        }
    }

    /// Rebuilds the tokenizer of a llama-family GGUF model from its vocabulary, merges,
    /// token types, scores and special ids, as transformers does (byte-level and
    /// SentencePiece-style BPE; see `bitnet_dequant::gguf_model`), with the chat template.
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let model = bitnet_dequant::gguf_model::GgufModel::open(path)?;
        let json = model.tokenizer_json()?;
        let inner: tokenizers::Tokenizer =
            serde_json::from_value(json).map_err(|e| Error::Config {
                path: path.to_path_buf(),
                message: format!("the vocabulary does not make a usable tokenizer: {e}"),
            })?;
        let tokenizer_config = model.tokenizer_config()?;
        let config = Value::Object(model.config().clone());
        Ok(Self::assemble(
            inner,
            &tokenizer_config,
            &config,
            &model.generation_config(),
            None,
        ))
    }

    fn assemble(
        inner: tokenizers::Tokenizer,
        tokenizer_config: &Value,
        config: &Value,
        generation: &Value,
        template_file: Option<String>,
    ) -> Self {
        let id_of = |key: &str| {
            token_text(tokenizer_config.get(key))
                .and_then(|text| inner.token_to_id(&text))
                .map(i64::from)
        };
        let bos = config
            .get("bos_token_id")
            .and_then(Value::as_i64)
            .or_else(|| id_of("bos_token"));
        let mut eos = ids(generation.get("eos_token_id"));
        if eos.is_empty() {
            eos = ids(config.get("eos_token_id"));
        }
        if eos.is_empty() {
            eos = id_of("eos_token").into_iter().collect();
        }
        let pad = config
            .get("pad_token_id")
            .and_then(Value::as_i64)
            .or_else(|| id_of("pad_token"));
        let add_bos = tokenizer_config
            .get("add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        // A string, or a list of named templates of which `default` is the chat one.
        let chat_template = template_file.or_else(|| match tokenizer_config.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            _ => None,
        });
        let text_of = |key: &str, id: Option<i64>| {
            token_text(tokenizer_config.get(key)).or_else(|| {
                id.and_then(|id| u32::try_from(id).ok())
                    .and_then(|id| inner.id_to_token(id))
            })
        };
        let bos_token = text_of("bos_token", bos);
        let eos_token = text_of("eos_token", eos.first().copied());
        Self {
            inner,
            bos,
            eos,
            pad,
            add_bos,
            chat_template,
            bos_token,
            eos_token,
        }
    }

    /// The model's chat template source, if it has one.
    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The model's chat template, compiled with its BOS and EOS strings; an error names
    /// what is missing when the model has none.
    pub fn chat_template(&self) -> Result<crate::prompt::ChatTemplate> {
        let source = self.chat_template.as_deref().ok_or_else(|| {
            Error::Input(
                "this model has no chat template (no `chat_template` in \
                 tokenizer_config.json, no chat_template.jinja, none in the GGUF)"
                    .into(),
            )
        })?;
        crate::prompt::ChatTemplate::new(
            source,
            self.bos_token.as_deref(),
            self.eos_token.as_deref(),
        )
    }

    /// Token ids of `text`. With `special`, the tokenizer's template applies, and BOS is
    /// prepended when `add_bos_token` asks for it and the template did not add it.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<i64>> {
        let encoding = self
            .inner
            .encode(text, special)
            .map_err(|e| Error::Input(format!("cannot tokenize {text:?}: {e}")))?;
        let mut ids: Vec<i64> = encoding.get_ids().iter().map(|&i| i64::from(i)).collect();
        if special
            && self.add_bos
            && let Some(bos) = self.bos
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Text of token ids, optionally without special tokens.
    pub fn decode(&self, ids: &[i64], skip_special: bool) -> Result<String> {
        let ids: Vec<u32> = ids
            .iter()
            .map(|&i| {
                u32::try_from(i).map_err(|_| Error::Input(format!("token id {i} is negative")))
            })
            .collect::<Result<_>>()?;
        self.inner
            .decode(&ids, skip_special)
            .map_err(|e| Error::Input(format!("cannot decode {ids:?}: {e}")))
    }

    /// Vocabulary size, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer")
    }

    #[test]
    fn encodes_and_decodes_like_transformers() {
        let tokenizer = Tokenizer::from_dir(&fixture()).unwrap();
        assert_eq!((tokenizer.bos, tokenizer.pad), (Some(1), Some(0)));
        assert_eq!(tokenizer.eos, vec![2]);
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture().join("expected.json")).unwrap(),
        )
        .unwrap();
        for case in expected.as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let ids: Vec<i64> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            assert_eq!(tokenizer.encode(text, true).unwrap(), ids, "{text}");
            assert_eq!(tokenizer.encode(text, false).unwrap(), ids[1..], "{text}");
            assert_eq!(
                tokenizer.decode(&ids, true).unwrap(),
                case["decoded"].as_str().unwrap()
            );
        }
    }

    #[test]
    fn a_missing_tokenizer_names_the_file() {
        let message = Tokenizer::from_dir(Path::new("/nonexistent"))
            .err()
            .unwrap()
            .to_string();
        assert!(message.contains("/nonexistent/tokenizer.json"), "{message}");
    }
}
