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
    let strings = peer["ids"].as_object().unwrap();
    for (text, expected) in strings {
        let ours = tokenizer.encode(text, false).unwrap();
        assert_eq!(ours, ids(expected), "{text:?}");
        assert_eq!(&tokenizer.decode(&ours, false).unwrap(), text);
    }
    println!("token ids identical on {} test strings", strings.len());
    assert!(strings.len() >= 200);
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
fn logits_and_greedy_answers_equal_transformers() {
    let (gguf, peer) = inputs();
    let model = CausalLm::load(&gguf, Device::Cpu, Kind::Float).unwrap();
    let tokenizer = Tokenizer::load(&gguf).unwrap();
    // Logits of three prompts: max |ours - transformers| against the logit scale (the
    // largest |logit| compared).
    let (mut gap, mut scale) = (0f64, 0f64);
    for case in peer["logit_prompts"].as_array().unwrap() {
        let input = Tensor::from_slice(&ids(&case["ids"])).unsqueeze(0);
        let logits = tch::no_grad(|| model.forward(&input, None, None).unwrap());
        let last = logits.get(0).get(-1);
        for (j, theirs) in case["last"].as_array().unwrap().iter().enumerate() {
            let theirs = theirs.as_f64().unwrap();
            gap = gap.max((last.double_value(&[j as i64]) - theirs).abs());
            scale = scale.max(theirs.abs());
        }
        for (position, row) in case["head"].as_array().unwrap().iter().enumerate() {
            for (j, theirs) in row.as_array().unwrap().iter().enumerate() {
                let ours = logits.double_value(&[0, position as i64, j as i64]);
                gap = gap.max((ours - theirs.as_f64().unwrap()).abs());
            }
        }
    }
    println!(
        "logits of 3 prompts: max |ours - transformers| = {gap:.3e}, logit scale {scale:.2}, \
         ratio {:.3e}",
        gap / scale
    );
    assert!(
        gap <= 1e-4 * scale,
        "max |Δlogit| {gap} against scale {scale}"
    );

    // 32-token greedy continuations of 20 chat prompts, one batch (left-padded).
    let chats = peer["greedy_chats"].as_array().unwrap();
    let prompts: Vec<Vec<i64>> = chats.iter().map(|c| ids(&c["prompt_ids"])).collect();
    for (chat, prompt) in chats.iter().zip(&prompts) {
        let text = chat["prompt"].as_str().unwrap();
        assert_eq!(&tokenizer.encode(text, true).unwrap(), prompt);
    }
    let generated = model
        .generate(
            &prompts,
            &GenerateConfig {
                max_new_tokens: 32,
                ..GenerateConfig::default()
            },
        )
        .unwrap();
    let mut identical = 0;
    for (chat, ours) in chats.iter().zip(&generated) {
        let theirs = ids(&chat["greedy"]);
        if ours.tokens == theirs {
            identical += 1;
        } else {
            println!(
                "differs: {:?}\n  ours:   {:?}\n  theirs: {:?}",
                chat["question"],
                tokenizer.decode(&ours.tokens, false).unwrap(),
                tokenizer.decode(&theirs, false).unwrap()
            );
        }
    }
    println!(
        "greedy continuations identical: {identical}/{}",
        chats.len()
    );
    assert_eq!(identical, chats.len());
    let first = tokenizer.decode(&generated[0].tokens, true).unwrap();
    println!("greedy answer to {:?}: {first:?}", chats[0]["question"]);
    assert_eq!(first.trim(), "The capital of France is Paris.");

    // Loaded as its blocks alone (inference), the same model bit for bit.
    let options = lm::LoadOptions { packed_only: true };
    let small = CausalLm::load_with(&gguf, Device::Cpu, Kind::Float, options).unwrap();
    if lm::cpu::packing_enabled() {
        assert!(
            small.packed_bytes() > 90_000_000,
            "{}",
            small.packed_bytes()
        );
    }
    for case in peer["logit_prompts"].as_array().unwrap() {
        let input = Tensor::from_slice(&ids(&case["ids"])).unsqueeze(0);
        let ours = tch::no_grad(|| small.forward(&input, None, None).unwrap());
        let f32s = tch::no_grad(|| model.forward(&input, None, None).unwrap());
        assert!(ours.equal(&f32s));
    }
    let config = GenerateConfig {
        max_new_tokens: 32,
        ..GenerateConfig::default()
    };
    let from_blocks = small.generate(&prompts, &config).unwrap();
    assert!(
        from_blocks
            .iter()
            .zip(&generated)
            .all(|(a, b)| a.tokens == b.tokens)
    );
    println!(
        "blocks only ({:.1} MB of blocks, no f32 copy): the same logits bit for bit and the same 20 continuations",
        small.packed_bytes() as f64 / 1e6
    );
}
