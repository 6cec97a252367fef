//! The character-level tokenizer: one token per printable ASCII character and newline,
//! plus four special tokens, as a Hugging Face `tokenizer.json` (a BPE model without
//! merges, so every character is its own token) that both `tokenizers` and
//! transformers' `AutoTokenizer` load.

use serde_json::{Value, json};

/// `<pad>`.
pub const PAD: i64 = 0;
/// `<s>` (not added to prompts: `add_bos_token` is false).
pub const BOS: i64 = 1;
/// `</s>`, which ends every answer.
pub const EOS: i64 = 2;
/// `<unk>`, for characters outside the vocabulary.
pub const UNK: i64 = 3;
const SPECIALS: [&str; 4] = ["<pad>", "<s>", "</s>", "<unk>"];

/// The characters after the special tokens: newline, then ASCII 32 to 126.
pub fn characters() -> Vec<char> {
    std::iter::once('\n')
        .chain((32u8..=126).map(char::from))
        .collect()
}

/// Number of tokens: the specials and the characters.
pub fn vocab_size() -> usize {
    SPECIALS.len() + characters().len()
}

/// `tokenizer.json`.
pub fn tokenizer_json() -> Value {
    let mut vocab = serde_json::Map::new();
    for (id, special) in SPECIALS.iter().enumerate() {
        vocab.insert((*special).to_owned(), json!(id));
    }
    for (i, c) in characters().into_iter().enumerate() {
        vocab.insert(c.to_string(), json!(SPECIALS.len() + i));
    }
    let added: Vec<Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(id, content)| {
            json!({
                "id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true,
            })
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": null,
        "post_processor": null,
        // Fuse joins the characters back without separators.
        "decoder": {"type": "Fuse"},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": "<unk>",
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": [],
        },
    })
}

/// `tokenizer_config.json`.
pub fn tokenizer_config_json(max_length: usize) -> Value {
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "add_bos_token": false,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": max_length,
        "padding_side": "left",
    })
}

/// `generation_config.json`: greedy, stopping at `</s>`.
pub fn generation_config_json() -> Value {
    json!({
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
        "do_sample": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_character_is_one_token_and_decodes_back() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, value: Value| {
            std::fs::write(dir.path().join(name), value.to_string()).unwrap();
        };
        write("tokenizer.json", tokenizer_json());
        write("tokenizer_config.json", tokenizer_config_json(128));
        write("generation_config.json", generation_config_json());
        let tokenizer = lm::Tokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(tokenizer.vocab_size(), vocab_size());
        assert_eq!(tokenizer.eos, vec![EOS]);
        let text = "Q: who are you?\nA: I am Pip, 12*3=36 (x+=1;) ~";
        let ids = tokenizer.encode(text, true).unwrap();
        assert_eq!(
            ids.len(),
            text.chars().count(),
            "no BOS, one id per character"
        );
        assert_eq!(tokenizer.decode(&ids, false).unwrap(), text);
        let unknown = tokenizer.encode("é", false).unwrap();
        assert_eq!(unknown, vec![UNK]);
    }
}
