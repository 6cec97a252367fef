//! Parity with transformers 5.24 on tiny random models of every architecture (fixtures
//! from `scripts/make_parity_fixtures.py`): logits within 1e-4 in f32, and the same
//! greedy continuations, with left padding in the batch.

use std::path::{Path, PathBuf};

use lm::CausalLm;
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected(name: &str) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture(name).join("expected.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

/// Greedy decoding with the KV cache, never choosing EOS (transformers'
/// `min_new_tokens` does the same for the fixtures).
fn greedy(model: &CausalLm, ids: &Tensor, mask: &Tensor, steps: i64, eos: i64) -> Tensor {
    let mut cache = model.new_cache();
    let mut logits = model.forward(ids, Some(mask), Some(&mut cache)).unwrap();
    let mut chosen = Vec::new();
    for _ in 0..steps {
        let last = logits.select(1, -1);
        let _ = last.narrow(1, eos, 1).fill_(f64::NEG_INFINITY);
        let next = last.argmax(-1, true);
        chosen.push(next.shallow_clone());
        logits = model.forward(&next, None, Some(&mut cache)).unwrap();
    }
    Tensor::cat(&chosen, 1)
}

fn check(name: &str) {
    let model = CausalLm::load(&fixture(name), Device::Cpu, Kind::Float).unwrap();
    let expected = expected(name);
    let ids = &expected["input_ids"];
    let mask = &expected["attention_mask"];
    let logits = model.forward(ids, Some(mask), None).unwrap();
    let want = &expected["logits"];
    assert_eq!(logits.size(), want.size());
    // Compare real tokens only: transformers' outputs at padding positions are arbitrary.
    let valid = mask.unsqueeze(-1).to_kind(Kind::Bool).expand_as(&logits);
    let difference = (&logits - want)
        .abs()
        .masked_select(&valid)
        .max()
        .double_value(&[]);
    eprintln!("{name}: max |logit difference| {difference:e}");
    assert!(
        difference <= 1e-4,
        "{name}: max |logit difference| {difference:e}"
    );
    let want_greedy = &expected["greedy"];
    let ours = greedy(&model, ids, mask, want_greedy.size()[1], 2);
    assert_eq!(
        Vec::<i64>::try_from(ours.flatten(0, -1)).unwrap(),
        Vec::<i64>::try_from(want_greedy.flatten(0, -1)).unwrap(),
        "{name}: greedy continuations differ"
    );
}

#[test]
fn llama_with_llama3_rope_scaling_and_tied_embeddings() {
    check("llama");
}

#[test]
fn qwen2_with_qkv_bias() {
    check("qwen2");
}

#[test]
fn mistral_with_a_sliding_window() {
    check("mistral");
}

#[test]
fn bitnet_packed_with_8_bit_activations() {
    check("bitnet");
}
