//! A real pretrained model from GGUF (SmolLM2-135M-Instruct, Q4_1) against transformers.
//!
//! Opt-in: these tests need the model file and the transformers peer's output, which
//! `cargo xtask test --real-models` fetches, makes and passes in:
//!
//! * `PHASE7_REAL_GGUF`: the `.gguf` file;
//! * `PHASE7_REAL_PEER`: the JSON `scripts/gguf_parity.py` wrote for it (token ids,
//!   chat renderings, logits and the greedy continuation transformers computed).
//!
//! Run by hand: `cargo test -p lm --test real_models -- --ignored`.

use std::path::PathBuf;

use lm::{CausalLm, GenerateConfig, Message, Tokenizer};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn inputs() -> (PathBuf, Value) {
    let gguf = std::env::var_os("PHASE7_REAL_GGUF")
        .map(PathBuf::from)
        .expect("PHASE7_REAL_GGUF names the .gguf file (see `cargo xtask test --real-models`)");
    let peer = std::env::var_os("PHASE7_REAL_PEER")
        .map(PathBuf::from)
        .expect("PHASE7_REAL_PEER names the transformers peer's JSON");
    let peer: Value = serde_json::from_str(&std::fs::read_to_string(&peer).unwrap()).unwrap();
    (gguf, peer)
}

fn ids(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

#[test]
#[ignore = "needs the real model: cargo xtask test --real-models"]
fn tokenizer_and_chat_template_equal_transformers() {
    let (gguf, peer) = inputs();
    let tokenizer = Tokenizer::load(&gguf).unwrap();
    for (text, expected) in peer["ids"].as_object().unwrap() {
        let ours = tokenizer.encode(text, false).unwrap();
        assert_eq!(ours, ids(expected), "{text:?}");
        assert_eq!(&tokenizer.decode(&ours, false).unwrap(), text);
    }
    let template = tokenizer.chat_template().unwrap();
    let conversations = peer["conversations"].as_array().unwrap();
    let rendered = peer["rendered"].as_array().unwrap();
    for (conversation, expected) in conversations.iter().zip(rendered) {
        let messages: Vec<Message> = serde_json::from_value(conversation.clone()).unwrap();
        assert_eq!(
            template.render(&messages, true).unwrap(),
            expected.as_str().unwrap()
        );
    }
    let prompt = rendered[0].as_str().unwrap();
    assert_eq!(
        tokenizer.encode(prompt, true).unwrap(),
        ids(&peer["prompt_ids"])
    );
}

#[test]
#[ignore = "needs the real model: cargo xtask test --real-models"]
fn logits_and_greedy_answer_equal_transformers() {
    let (gguf, peer) = inputs();
    let model = CausalLm::load(&gguf, Device::Cpu, Kind::Float).unwrap();
    let tokenizer = Tokenizer::load(&gguf).unwrap();
    let prompt = ids(&peer["prompt_ids"]);
    let input = Tensor::from_slice(&prompt).unsqueeze(0);
    let logits = tch::no_grad(|| model.forward(&input, None, None).unwrap());
    let last: Vec<f32> = Vec::try_from(logits.get(0).get(-1)).unwrap();
    let theirs: Vec<f32> = peer["last_logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let max_diff = last
        .iter()
        .zip(&theirs)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("last-position logits: max |ours - transformers| = {max_diff:.3e}");
    assert!(max_diff < 1e-4, "max |Δlogit| {max_diff}");
    let head = peer["head_logits"].as_array().unwrap();
    for (position, row) in head.iter().enumerate() {
        for (j, value) in row.as_array().unwrap().iter().enumerate() {
            let ours = logits.double_value(&[0, position as i64, j as i64]);
            assert!(
                (ours - value.as_f64().unwrap()).abs() < 1e-4,
                "position {position}"
            );
        }
    }
    let generated = model
        .generate(
            &[prompt],
            &GenerateConfig {
                max_new_tokens: 20,
                ..GenerateConfig::default()
            },
        )
        .unwrap();
    let expected = ids(&peer["greedy"]);
    assert_eq!(generated[0].tokens, expected[..generated[0].tokens.len()]);
    let text = tokenizer.decode(&generated[0].tokens, true).unwrap();
    println!("greedy answer: {text:?}");
    assert_eq!(text.trim(), "The capital of France is Paris.");
}
