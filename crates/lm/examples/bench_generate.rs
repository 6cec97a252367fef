//! Prefill and greedy-generation throughput next to transformers' `generate` with the
//! KV cache, on the same random models, prompts and thread count (CPU, f32).
//!
//! ```sh
//! cargo xtask bench lm          # runs transformers first, then this
//! cargo run --release -p lm --example bench_generate -- MODELS_DIR PEER.json
//! ```
//!
//! Also reports the peak resident memory of this process against the weights plus the
//! KV cache of the largest batch.

use std::path::PathBuf;
use std::time::Instant;

use lm::{CausalLm, GenerateConfig};
use tch::{Device, Kind, Tensor};

fn median_seconds(mut run: impl FnMut()) -> f64 {
    run();
    let mut samples: Vec<f64> = (0..3)
        .map(|_| {
            let started = Instant::now();
            run();
            started.elapsed().as_secs_f64()
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[1]
}

fn status_bytes(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb * 1024.0)
}

fn ids(value: &serde_json::Value) -> Vec<Vec<i64>> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .map(|row| {
            row.as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_i64())
                .collect()
        })
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(models), Some(peer)) = (args.next().map(PathBuf::from), args.next()) else {
        eprintln!("usage: bench_generate MODELS_DIR PEER.json");
        std::process::exit(2);
    };
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&peer).expect("peer report"))
            .expect("peer JSON");
    let threads = report["threads"].as_i64().unwrap_or(2);
    tch::set_num_threads(threads as i32);
    // What the process holds before any model: libtorch's code and runtime, and the CUDA
    // libraries `device::runtime` loads where there is an NVIDIA driver (the first
    // `CausalLm::load` would otherwise count them as the model's).
    let _ = lm::device::runtime();
    let _ = Tensor::ones([8, 8], (Kind::Float, Device::Cpu))
        .matmul(&Tensor::ones([8, 8], (Kind::Float, Device::Cpu)));
    let baseline = status_bytes("VmRSS:");
    println!(
        "CPU, f32, {threads} threads; transformers 5.24 / torch 2.11 measured just before, same inputs"
    );
    println!(
        "{:<20} {:>22} {:>28} {:>28} {:>12}",
        "model",
        "prefill tok/s (ratio)",
        "generate b=1 tok/s (ratio)",
        "generate b=16 tok/s (ratio)",
        "same ids"
    );
    let mut memory_lines = Vec::new();
    let runs = report["models"]
        .as_object()
        .expect("models")
        .iter()
        .flat_map(|(name, entry)| {
            // A GGUF model runs twice: as its blocks alone (what inference wants) and as
            // f32 weights with the blocks beside them (what training loads).
            let modes: &[bool] = if entry["path"].is_string() {
                &[true, false]
            } else {
                &[false]
            };
            modes
                .iter()
                .map(move |&packed_only| (name, entry, packed_only))
        });
    for (name, entry, packed_only) in runs {
        // A real model's entry names its file (a GGUF); the random ones live in MODELS_DIR.
        let path = entry["path"]
            .as_str()
            .map_or_else(|| models.join(name), PathBuf::from);
        let label = match (entry["path"].is_string(), packed_only) {
            (false, _) => name.clone(),
            (true, true) => format!("{name} (blocks only)"),
            (true, false) => format!("{name} (f32 + blocks)"),
        };
        // This model's own peak: the kernel's high-water mark starts again here.
        lm::device::reset_peak_memory();
        let before = status_bytes("VmRSS:");
        let options = lm::LoadOptions { packed_only };
        let model = CausalLm::load_with(&path, Device::Cpu, Kind::Float, options).expect("loads");
        let loaded_peak = status_bytes("VmHWM:");
        let config = model.config().clone();
        // The f32 weights' size, from the shapes (a packed-only model holds no f32 copy).
        let (h, q, kv) = (
            config.hidden_size,
            config.num_attention_heads * config.head_dim,
            config.num_key_value_heads * config.head_dim,
        );
        let per_layer = 2 * h * q + 2 * h * kv + 3 * h * config.intermediate_size;
        let embeddings = if config.tie_word_embeddings { 1 } else { 2 };
        let weights = ((config.num_hidden_layers * per_layer + embeddings * config.vocab_size * h)
            as f64)
            * 4.0;
        let prefill = Tensor::from_slice(&ids(&entry["prefill_ids"]).concat()).view([1, -1]);
        let prefill_tokens = prefill.size()[1] as f64;
        let prefill_rate = prefill_tokens
            / median_seconds(|| {
                let _ = tch::no_grad(|| model.forward(&prefill, None, None).expect("forward"));
            });
        let peer_prefill = entry["prefill_tokens_per_second"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let mut columns = vec![format!(
            "{prefill_rate:>8.0} ({:>4.2}x)",
            prefill_rate / peer_prefill
        )];
        let (mut same, mut total) = (0usize, 0usize);
        let mut largest_batch_kv = 0.0;
        for batch in ["1", "16"] {
            let generation = &entry["generation"][batch];
            let prompts = ids(&generation["prompts"]);
            let expected = ids(&generation["generated"]);
            let new_tokens = expected[0].len();
            let settings = GenerateConfig {
                max_new_tokens: new_tokens,
                stop_tokens: Some(Vec::new()),
                ..GenerateConfig::default()
            };
            let mut produced = Vec::new();
            let seconds = median_seconds(|| {
                produced = model.generate(&prompts, &settings).expect("generates")
            });
            let rate = (prompts.len() * new_tokens) as f64 / seconds;
            let peer_rate = generation["tokens_per_second"].as_f64().unwrap_or(f64::NAN);
            columns.push(format!("{rate:>10.1} ({:>4.2}x)", rate / peer_rate));
            for (ours, theirs) in produced.iter().zip(&expected) {
                same += ours
                    .tokens
                    .iter()
                    .zip(theirs)
                    .filter(|(a, b)| a == b)
                    .count();
                total += theirs.len();
            }
            let positions = prompts[0].len() + new_tokens;
            largest_batch_kv = (2
                * config.num_hidden_layers
                * prompts.len()
                * config.num_key_value_heads
                * config.head_dim
                * positions
                * 4) as f64;
        }
        let peak = status_bytes("VmHWM:");
        let now = status_bytes("VmRSS:");
        println!(
            "{label:<20} {:>22} {:>28} {:>28} {:>11.1}%",
            columns[0],
            columns[1],
            columns[2],
            100.0 * same as f64 / total.max(1) as f64
        );
        println!(
            "{:<20} f32 weights {:.1} MB, KV cache (batch 16) {:.1} MB, blocks kept {:.1} MB; RSS now {:.1} MB, this model's peak {:.1} MB",
            "",
            weights / 1e6,
            largest_batch_kv / 1e6,
            model.packed_bytes() as f64 / 1e6,
            now / 1e6,
            peak / 1e6
        );
        if weights > 1e8 {
            memory_lines.push(format!(
                "{label}: loading peaks at {:.2}x the f32 weights ({:.1} MB over the {:.1} MB held before; {:.2}x with them); \
                 after generating, RSS / (f32 weights + KV) = {:.2} ({:.2} without the runtime)",
                (loaded_peak - before) / weights,
                (loaded_peak - before) / 1e6,
                before / 1e6,
                loaded_peak / weights,
                now / (weights + largest_batch_kv),
                (now - baseline) / (weights + largest_batch_kv),
            ));
        }
        drop(model);
        lm::device::release_free_memory();
    }
    println!(
        "memory (the process held {:.0} MB before any model: libtorch, and its CUDA libraries where a driver is present):",
        baseline / 1e6
    );
    for line in memory_lines {
        println!("  {line}");
    }
}
