//! Quantization-aware training of a freshly initialised BitNet model: gradients reach
//! every weight through both quantizers, and training lowers the loss.

use std::path::Path;

use lm::model::{quantize_activations, ternarize_weights};
use lm::{CausalLm, ModelConfig};
use tch::{Device, Kind, Tensor};

fn tiny_bitnet() -> ModelConfig {
    let config = serde_json::json!({
        "model_type": "bitnet", "vocab_size": 16, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "hidden_act": "relu2", "tie_word_embeddings": true,
        "rms_norm_eps": 1e-5, "initializer_range": 0.05, "pad_token_id": 0,
    });
    let serde_json::Value::Object(map) = config else {
        unreachable!()
    };
    ModelConfig::from_map(&map, Path::new("config.json")).unwrap()
}

#[test]
fn quantizers_are_exact_in_inference_and_straight_through_in_training() {
    let w = Tensor::from_slice(&[0.9f32, -0.05, 0.3, -0.6]);
    // mean |w| = 0.4625: codes round(w / 0.4625) clamped = [1, 0, 1, -1].
    let ternary = Vec::<f32>::try_from(ternarize_weights(&w)).unwrap();
    let gamma = 0.4625f32;
    for (got, code) in ternary.iter().zip([1.0f32, 0.0, 1.0, -1.0]) {
        assert!((got - code * gamma).abs() < 1e-6, "{ternary:?}");
    }
    let x = Tensor::from_slice(&[0.5f32, -1.0, 0.25]).set_requires_grad(true);
    let q = quantize_activations(&x);
    (&q * Tensor::from_slice(&[1.0f32, 2.0, 3.0]))
        .sum(Kind::Float)
        .backward();
    // Straight-through: the gradient is the upstream one, not zero.
    assert_eq!(Vec::<f32>::try_from(x.grad()).unwrap(), vec![1.0, 2.0, 3.0]);
    let detached = quantize_activations(&x.detach());
    assert!(!detached.requires_grad());
    // 127 / 1.0 scale: 0.5 -> round(63.5) = 64 -> 64/127.
    assert!((detached.double_value(&[0]) - 64.0 / 127.0).abs() < 1e-6);
}

#[test]
fn qat_reaches_every_weight_and_lowers_the_loss() {
    let mut model = CausalLm::init(tiny_bitnet(), 3, Device::Cpu, Kind::Float).unwrap();
    model.set_weight_quantization(true);
    let parameters = model.named_parameters();
    // Embedding (tied head), final norm, and per layer 7 linears + 4 norms.
    assert_eq!(parameters.len(), 2 + 2 * 11);
    assert!(
        parameters
            .iter()
            .any(|(n, _)| n == "model.layers.1.mlp.ffn_sub_norm.weight")
    );
    let sequence: Vec<i64> = vec![3, 5, 7, 9, 11, 13, 15, 2];
    let pairs = [(&sequence[..3], &sequence[3..])];
    let loss = |model: &CausalLm| -> Tensor {
        let out = model.completion_log_probs(&pairs, false).unwrap();
        -out.token_log_probs[0].mean(Kind::Float)
    };
    let first = loss(&model);
    first.backward();
    for (name, p) in &parameters {
        let norm = p.grad().norm().double_value(&[]);
        assert!(norm > 0.0, "{name} got no gradient");
    }
    let start = first.double_value(&[]);
    for _ in 0..60 {
        for (_, p) in &parameters {
            p.shallow_clone().zero_grad();
        }
        loss(&model).backward();
        tch::no_grad(|| {
            for (_, p) in &parameters {
                let _ = p.shallow_clone().f_sub_(&(p.grad() * 0.05)).unwrap();
            }
        });
    }
    let end = tch::no_grad(|| loss(&model).double_value(&[]));
    assert!(end < 0.5 * start, "loss {start} -> {end}");

    // The same seed gives the same weights.
    let again = CausalLm::init(tiny_bitnet(), 3, Device::Cpu, Kind::Float).unwrap();
    let other = CausalLm::init(tiny_bitnet(), 4, Device::Cpu, Kind::Float).unwrap();
    let embed = |m: &CausalLm| m.named_parameters()[0].1.detach();
    let fresh = CausalLm::init(tiny_bitnet(), 3, Device::Cpu, Kind::Float).unwrap();
    assert!(embed(&again).equal(&embed(&fresh)));
    assert!(!embed(&again).equal(&embed(&other)));
}
