//! Writes a synthetic HF BitNet checkpoint (random ternary codes, Llama layer shapes) for
//! benchmarks and memory measurements of conversion.
//!
//! ```sh
//! cargo run --release -p bitnet-dequant --example synthetic_checkpoint -- OUT \
//!     [--hidden 4096] [--intermediate 11008] [--layers 2] [--vocab 1024] [--seed 1]
//! ```

use std::path::PathBuf;

use bitnet_dequant::FloatDtype;
use bitnet_dequant::hf::{BitnetWriteOptions, HfTensor, write_bitnet_checkpoint};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(out) = args.next().map(PathBuf::from) else {
        eprintln!(
            "usage: synthetic_checkpoint OUT [--hidden N] [--intermediate N] [--layers N] [--vocab N] [--seed N]"
        );
        std::process::exit(2);
    };
    let mut settings = [
        ("--hidden", 4096usize),
        ("--intermediate", 11008),
        ("--layers", 2),
        ("--vocab", 1024),
        ("--seed", 1),
    ];
    while let Some(flag) = args.next() {
        let value: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            eprintln!("{flag} needs a number");
            std::process::exit(2);
        });
        match settings.iter_mut().find(|(name, _)| *name == flag) {
            Some(slot) => slot.1 = value,
            None => {
                eprintln!("unknown option {flag}");
                std::process::exit(2);
            }
        }
    }
    let [hidden, intermediate, layers, vocab, seed] = settings.map(|(_, v)| v);
    let mut state = seed as u64 | 1;
    let mut codes = |n: usize| -> Vec<i8> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 3) as i8 - 1
            })
            .collect()
    };
    let mut names = Vec::new();
    let mut shapes = Vec::new();
    for layer in 0..layers {
        for (module, out_features, in_features) in [
            ("self_attn.q_proj", hidden, hidden),
            ("self_attn.k_proj", hidden, hidden),
            ("self_attn.v_proj", hidden, hidden),
            ("self_attn.o_proj", hidden, hidden),
            ("mlp.gate_proj", intermediate, hidden),
            ("mlp.up_proj", intermediate, hidden),
            ("mlp.down_proj", hidden, intermediate),
        ] {
            names.push(format!("model.layers.{layer}.{module}.weight"));
            shapes.push([out_features, in_features]);
        }
    }
    let all_codes: Vec<Vec<i8>> = shapes.iter().map(|s| codes(s[0] * s[1])).collect();
    let embedding: Vec<f32> = (0..vocab * hidden)
        .map(|i| ((i % 97) as f32 - 48.0) * 0.01)
        .collect();
    let norm = vec![1.0f32; hidden];
    let mut tensors: Vec<HfTensor<'_>> = names
        .iter()
        .zip(&shapes)
        .zip(&all_codes)
        .map(|((name, shape), codes)| HfTensor::Ternary {
            name,
            shape: *shape,
            codes,
            gamma: 1.5546875,
        })
        .collect();
    let embedding_shape = [vocab, hidden];
    let norm_shape = [hidden];
    tensors.push(HfTensor::Float {
        name: "model.embed_tokens.weight",
        shape: &embedding_shape,
        values: &embedding,
        dtype: FloatDtype::Bf16,
    });
    tensors.push(HfTensor::Float {
        name: "model.norm.weight",
        shape: &norm_shape,
        values: &norm,
        dtype: FloatDtype::Bf16,
    });
    let config = serde_json::json!({
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": vocab,
    });
    let serde_json::Value::Object(config) = config else {
        unreachable!()
    };
    if let Err(error) =
        write_bitnet_checkpoint(&out, &config, &tensors, &BitnetWriteOptions::default())
    {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
    let largest = shapes
        .iter()
        .map(|s| s[0] * s[1])
        .max()
        .unwrap_or(0)
        .max(vocab * hidden);
    println!(
        "wrote {}: {layers} layers, hidden {hidden}, intermediate {intermediate}; largest tensor {} elements ({:.1} MB as f32)",
        out.display(),
        largest,
        largest as f64 * 4.0 / 1e6
    );
}
