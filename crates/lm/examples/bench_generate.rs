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
    let mut largest = (0.0f64, 0.0f64, 0.0f64);
    for (name, entry) in report["models"].as_object().expect("models") {
        // A real model's entry names its file (a GGUF); the random ones live in MODELS_DIR.
        let path = entry["path"]
            .as_str()
            .map_or_else(|| models.join(name), PathBuf::from);
        let mut model = CausalLm::load(&path, Device::Cpu, Kind::Float).expect("loads");
        let config = model.config().clone();
        let weights = model
            .linear_layers_mut()
            .iter()
            .map(|l| l.weight.numel())
            .sum::<usize>() as f64
            * 4.0
            + (config.vocab_size * config.hidden_size) as f64 * 4.0;
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
        if weights > largest.0 {
            largest = (weights + largest_batch_kv, peak, now);
        }
        println!(
            "{name:<20} {:>22} {:>28} {:>28} {:>11.1}%",
            columns[0],
            columns[1],
            columns[2],
            100.0 * same as f64 / total.max(1) as f64
        );
        println!(
            "{:<20} weights {:.1} MB, KV cache (batch 16) {:.1} MB; RSS now {:.1} MB, peak so far {:.1} MB",
            "",
            weights / 1e6,
            largest_batch_kv / 1e6,
            now / 1e6,
            peak / 1e6
        );
    }
    println!(
        "largest model: RSS after generating / (weights + KV) = {:.2}, or {:.2} without the \
         {:.0} MB the process held before loading (libtorch, and its CUDA libraries where a driver is present); \
         peak, loading included / (weights + KV) = {:.2}, or {:.2} without that runtime",
        largest.2 / largest.0,
        (largest.2 - baseline) / largest.0,
        baseline / 1e6,
        largest.1 / largest.0,
        (largest.1 - baseline) / largest.0
    );
}
