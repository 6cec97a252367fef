//! GGUF models and chat templates against transformers 5.24 (fixtures from
//! `scripts/make_gguf_fixture.py`): a tiny llama written the way llama.cpp's converter
//! writes one (Q/K permuted, legacy quant types, byte-level BPE with merges and control
//! tokens, the `qwen2` pre-tokenizer, a chat template) loads with the same config, token
//! ids and logits (within 1e-4 in f32); SmolLM2's, a Llama 3 and a Qwen2.5 chat template
//! render exactly as transformers renders them.

use std::path::{Path, PathBuf};

use lm::{CausalLm, ChatTemplate, Message, ModelConfig, Tokenizer};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("gguf/expected.json")).unwrap()).unwrap()
}

fn ids(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// Max |ours - transformers| over the fixture's logits of every prompt.
fn logit_gap(model: &CausalLm, expected: &Value) -> f64 {
    let mut gap = 0f64;
    for (prompt, logits) in expected["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .zip(expected["logits"].as_array().unwrap())
    {
        let input = Tensor::from_slice(&ids(prompt)).unsqueeze(0);
        let ours = tch::no_grad(|| model.forward(&input, None, None).unwrap());
        let last = ours.get(0).get(-1);
        for (j, theirs) in floats(&logits["last"]).iter().enumerate() {
            gap = gap.max((last.double_value(&[j as i64]) - theirs).abs());
        }
        for (position, row) in logits["head"].as_array().unwrap().iter().enumerate() {
            for (j, theirs) in floats(row).iter().enumerate() {
                let value = ours.double_value(&[0, position as i64, j as i64]);
                gap = gap.max((value - theirs).abs());
            }
        }
    }
    gap
}

#[test]
fn a_gguf_model_loads_as_transformers_loads_it() {
    let expected = expected();
    let path = fixture("gguf/tiny.gguf");
    let model = CausalLm::load(&path, Device::Cpu, Kind::Float).unwrap();
    let config: &ModelConfig = model.config();
    let theirs = &expected["config"];
    assert_eq!(
        config.hidden_size as u64,
        theirs["hidden_size"].as_u64().unwrap()
    );
    assert_eq!(config.num_key_value_heads, 2);
    assert_eq!(config.head_dim, 16);
    assert_eq!(config.vocab_size, 300);
    assert!(!config.tie_word_embeddings);
    assert_eq!(
        config.rms_norm_eps,
        theirs["rms_norm_eps"].as_f64().unwrap()
    );
    let gap = logit_gap(&model, &expected);
    assert!(gap < 1e-4, "max |Δlogit| {gap}");

    // Greedy decoding gives transformers' continuation (its fixture blocked EOS; ours
    // stops only at EOS, which the continuation does not contain).
    let greedy = ids(&expected["greedy"]);
    assert!(!greedy.contains(&2));
    let prompt = ids(&expected["prompts"][0]);
    let generated = model
        .generate(
            &[prompt],
            &lm::GenerateConfig {
                max_new_tokens: greedy.len(),
                ..lm::GenerateConfig::default()
            },
        )
        .unwrap();
    assert_eq!(generated[0].tokens, greedy);
}

#[test]
fn a_gguf_tokenizer_and_template_equal_transformers() {
    let expected = expected();
    let tokenizer = Tokenizer::load(&fixture("gguf/tiny.gguf")).unwrap();
    assert_eq!((tokenizer.bos, tokenizer.pad), (Some(1), Some(0)));
    assert_eq!(tokenizer.eos, vec![2]);
    for (text, theirs) in expected["ids"].as_object().unwrap() {
        let ours = tokenizer.encode(text, true).unwrap();
        assert_eq!(ours, ids(theirs), "{text:?}");
        assert_eq!(&tokenizer.decode(&ours, false).unwrap(), text);
    }
    let template = tokenizer.chat_template().unwrap();
    let chat = template
        .render(&[Message::user("What is 47+25?")], true)
        .unwrap();
    assert_eq!(chat, expected["chat"].as_str().unwrap());
    assert_eq!(
        tokenizer.encode(&chat, true).unwrap(),
        ids(&expected["chat_ids"])
    );
}

#[test]
fn a_converted_gguf_is_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hf");
    let input = fixture("gguf/tiny.gguf");
    bitnet_dequant::convert::convert(
        &input,
        &out,
        &bitnet_dequant::convert::ConvertOptions::default(),
        &mut bitnet_dequant::convert::NoProgress,
    )
    .unwrap();
    let report = bitnet_dequant::convert::verify(&input, &out).unwrap();
    assert!(report.ok(), "{report:?}");
    for file in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(out.join(file).is_file(), "{file}");
    }
    let model = CausalLm::load(&out, Device::Cpu, Kind::Float).unwrap();
    let gap = logit_gap(&model, &expected());
    assert!(gap < 1e-4, "max |Δlogit| {gap}");
    let tokenizer = Tokenizer::load(&out).unwrap();
    let direct = Tokenizer::load(&input).unwrap();
    for text in expected()["ids"].as_object().unwrap().keys() {
        assert_eq!(
            tokenizer.encode(text, true).unwrap(),
            direct.encode(text, true).unwrap()
        );
    }
    assert_eq!(
        tokenizer.chat_template_source(),
        direct.chat_template_source()
    );
}

#[test]
fn chat_templates_render_as_transformers_renders_them() {
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("chat_templates.json")).unwrap())
            .unwrap();
    let specials = &fixture["specials"];
    let mut checked = 0;
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["template"].as_str().unwrap();
        let template = ChatTemplate::new(
            fixture["templates"][name].as_str().unwrap(),
            specials["bos_token"].as_str(),
            specials["eos_token"].as_str(),
        )
        .unwrap();
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let generation = case["add_generation_prompt"].as_bool().unwrap();
        assert_eq!(
            template.render(&messages, generation).unwrap(),
            case["rendered"].as_str().unwrap(),
            "{name}, generation prompt {generation}, {messages:?}"
        );
        checked += 1;
    }
    assert_eq!(checked, 24);
}

#[test]
fn bad_gguf_models_are_named() {
    // A GGUF of loose tensors is not a model.
    let loose =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../bitnet-dequant/tests/fixtures/quants.gguf");
    let message = CausalLm::load(&loose, Device::Cpu, Kind::Float)
        .err()
        .unwrap()
        .to_string();
    assert!(
        message.contains("quants.gguf") && message.contains("architecture"),
        "{message}"
    );
    // A truncated model file names the file and the tensor.
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("gguf/tiny.gguf")).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    let message = CausalLm::load(&cut, Device::Cpu, Kind::Float)
        .err()
        .unwrap()
        .to_string();
    assert!(
        message.contains("cut.gguf") && message.contains("truncated"),
        "{message}"
    );
}

#[test]
fn a_sentencepiece_gguf_vocabulary_equals_transformers() {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("gguf/expected-spm.json")).unwrap())
            .unwrap();
    let path = fixture("gguf/tiny-spm.gguf");
    let tokenizer = Tokenizer::load(&path).unwrap();
    assert_eq!(tokenizer.bos, Some(1));
    for (text, theirs) in expected["ids"].as_object().unwrap() {
        let ours = tokenizer.encode(text, false).unwrap();
        assert_eq!(ours, ids(theirs), "{text:?}");
        assert_eq!(
            tokenizer.decode(&ours, false).unwrap(),
            expected["decoded"][text].as_str().unwrap(),
            "{text:?}"
        );
    }
    // No add_bos_token key: BOS is added, as llama.cpp and transformers do.
    for (text, theirs) in expected["with_bos"].as_object().unwrap() {
        assert_eq!(
            tokenizer.encode(text, true).unwrap(),
            ids(theirs),
            "{text:?}"
        );
    }
    let model = CausalLm::load(&path, Device::Cpu, Kind::Float).unwrap();
    let input = Tensor::from_slice(&ids(&expected["prompt"])).unsqueeze(0);
    let logits = tch::no_grad(|| model.forward(&input, None, None).unwrap());
    let mut gap = 0f64;
    for (j, theirs) in floats(&expected["logits"]["last"]).iter().enumerate() {
        gap = gap.max((logits.double_value(&[0, -1, j as i64]) - theirs).abs());
    }
    assert!(gap < 1e-4, "max |Δlogit| {gap}");
}

/// Bytes of a `[rows, cols]` matrix in 32-element blocks of `bytes` each.
fn block_bytes(rows: usize, cols: usize, bytes: usize) -> usize {
    rows * cols / 32 * bytes
}

/// Bytes of the fixture's linear layers the CPU kernel reads from their blocks: q
/// (Q4_0), v and down (Q8_0) and o (Q4_1) in both layers (k, gate and up are Q5 types).
fn linear_block_bytes() -> usize {
    2 * (block_bytes(64, 64, 18)
        + block_bytes(32, 64, 34)
        + block_bytes(64, 64, 20)
        + block_bytes(64, 128, 34))
}

/// The fixture as an HF float folder (no blocks to keep), converted into `dir`.
fn float_folder(dir: &Path) -> PathBuf {
    let out = dir.join("hf");
    bitnet_dequant::convert::convert(
        &fixture("gguf/tiny.gguf"),
        &out,
        &bitnet_dequant::convert::ConvertOptions::default(),
        &mut bitnet_dequant::convert::NoProgress,
    )
    .unwrap();
    out
}

/// Q4_0 (with llama's permuted rows), Q4_1 and Q8_0 layers of the fixture are computed
/// from their blocks on the CPU: the same bits as from the f32 weights, and only while
/// the blocks stand for the weights (replaced or written in place, they are checked
/// again).
#[test]
fn packed_blocks_give_the_f32_weights_results_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let mut packed = CausalLm::load(&fixture("gguf/tiny.gguf"), Device::Cpu, Kind::Float).unwrap();
    let mut plain = CausalLm::load(&float_folder(dir.path()), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(plain.packed_bytes(), 0);
    if !lm::cpu::packing_enabled() {
        assert_eq!(packed.packed_bytes(), 0);
        return;
    }
    let total = linear_block_bytes();
    assert_eq!(packed.packed_bytes(), total);

    let input = Tensor::from_slice(&ids(&expected()["prompts"][0])).unsqueeze(0);
    let logits = |model: &CausalLm| tch::no_grad(|| model.forward(&input, None, None).unwrap());
    let before = logits(&packed);
    assert!(before.equal(&logits(&plain)));

    let q_proj = |model: &mut CausalLm| {
        let mut layers = model.linear_layers_mut();
        let at = layers
            .iter()
            .position(|l| l.name.ends_with("0.self_attn.q_proj"))
            .unwrap();
        layers.swap_remove(at).weight.shallow_clone()
    };
    // Written in place (through a clone, as an optimizer would): checked again, not used.
    let (ours, theirs) = (q_proj(&mut packed), q_proj(&mut plain));
    for weight in [&ours, &theirs] {
        let _ = tch::no_grad(|| weight.shallow_clone().g_mul_scalar_(2.0));
    }
    let changed = logits(&packed);
    assert!(!changed.equal(&before));
    assert!(changed.equal(&logits(&plain)));
    assert_eq!(packed.packed_bytes(), total - block_bytes(64, 64, 18));
    // Written back: the blocks stand for it again.
    for weight in [&ours, &theirs] {
        let _ = tch::no_grad(|| weight.shallow_clone().g_div_scalar_(2.0));
    }
    assert!(logits(&packed).equal(&before));
    assert_eq!(packed.packed_bytes(), total);

    // Replaced (an SVF merge does this) and put back.
    let mut layers = packed.linear_layers_mut();
    let o = layers
        .iter_mut()
        .find(|l| l.name.ends_with("1.self_attn.o_proj"))
        .unwrap();
    let halved = &o.weight * 0.5;
    let original = std::mem::replace(&mut o.weight, halved.shallow_clone());
    drop(layers);
    let mut layers = plain.linear_layers_mut();
    let o = layers
        .iter_mut()
        .find(|l| l.name.ends_with("1.self_attn.o_proj"))
        .unwrap();
    let plain_original = std::mem::replace(&mut o.weight, halved);
    drop(layers);
    let changed = logits(&packed);
    assert!(!changed.equal(&before));
    assert!(changed.equal(&logits(&plain)));
    for (model, weight) in [(&mut packed, original), (&mut plain, plain_original)] {
        let mut layers = model.linear_layers_mut();
        let o = layers
            .iter_mut()
            .find(|l| l.name.ends_with("1.self_attn.o_proj"))
            .unwrap();
        o.weight = weight;
    }
    assert!(logits(&packed).equal(&before));
    assert_eq!(packed.packed_bytes(), total);
}

/// Loaded with only its blocks, the fixture's packable layers and embeddings hold no
/// f32 copy and give the same logits and generations, bit for bit, as the f32 model.
#[test]
fn a_packed_only_model_is_the_same_model_in_less_memory() {
    let path = fixture("gguf/tiny.gguf");
    let options = lm::LoadOptions { packed_only: true };
    let mut small = CausalLm::load_with(&path, Device::Cpu, Kind::Float, options).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut full = CausalLm::load(&float_folder(dir.path()), Device::Cpu, Kind::Float).unwrap();
    if !lm::cpu::packing_enabled() {
        assert_eq!(small.packed_bytes(), 0);
        return;
    }
    // The linear layers' blocks and the Q8_0 embeddings.
    assert_eq!(
        small.packed_bytes(),
        linear_block_bytes() + block_bytes(300, 64, 34)
    );
    let input = Tensor::from_slice(&ids(&expected()["prompts"][0])).unsqueeze(0);
    let logits = |model: &CausalLm| tch::no_grad(|| model.forward(&input, None, None).unwrap());
    assert!(logits(&small).equal(&logits(&full)));
    let settings = lm::GenerateConfig {
        max_new_tokens: 8,
        ..lm::GenerateConfig::default()
    };
    let prompts = [
        ids(&expected()["prompts"][0]),
        ids(&expected()["prompts"][1]),
    ];
    let ours = small.generate(&prompts, &settings).unwrap();
    let theirs = full.generate(&prompts, &settings).unwrap();
    assert_eq!(ours[0].tokens, theirs[0].tokens);
    assert_eq!(ours[1].tokens, theirs[1].tokens);

    // Weights on demand: decoded, equal to the f32 model's.
    let empty: Vec<String> = small
        .linear_layers_mut()
        .iter()
        .filter(|l| l.weight.numel() == 0)
        .map(|l| l.name.clone())
        .collect();
    assert_eq!(
        empty.len(),
        2 * 4,
        "q, v, o and down of both layers: {empty:?}"
    );
    let decoded: Vec<(String, Tensor)> = small.named_parameters();
    for ((name, ours), (_, theirs)) in decoded.iter().zip(full.named_parameters()) {
        assert!(ours.equal(&theirs), "{name}");
    }
    // A weight put in an empty one's place is used as given.
    for model in [&mut small, &mut full] {
        let mut layers = model.linear_layers_mut();
        let o = layers
            .iter_mut()
            .find(|l| l.name.ends_with("1.self_attn.o_proj"))
            .unwrap();
        o.weight = o.dense_weight() * 0.5;
    }
    assert!(logits(&small).equal(&logits(&full)));
    // A token outside the vocabulary is a clear error, not a crash.
    let outside = Tensor::from_slice(&[1i64, 300]).unsqueeze(0);
    let message = tch::no_grad(|| small.forward(&outside, None, None))
        .unwrap_err()
        .to_string();
    assert!(message.contains("outside the vocabulary"), "{message}");
}
