//! Forward time of a model as is, with factorized SVF and with merged SVF, side by side;
//! the cost of switching a mixture both ways; the decomposition time; and the parameter
//! accounting (z against LoRA rank 16). MLP-only selection, CPU, f32.
//!
//! ```sh
//! cargo xtask bench svf        # the default model and the models of `xtask bench lm`
//! cargo run --release -p svf-experts --example bench_svf -- MODEL_DIR [MODEL_DIR ...]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use lm::CausalLm;
use svf::{Composition, Decomposition, Expert, Mixture, Selection, Svf};
use tch::{Device, Kind, Tensor};

/// Timings of `run` in seconds, after a warm-up: as many as fit in about a second, at
/// least `at_least`.
fn samples(at_least: usize, mut run: impl FnMut()) -> Vec<f64> {
    let started = Instant::now();
    run();
    let once = started.elapsed().as_secs_f64().max(1e-6);
    let repeats = ((1.0 / once) as usize).clamp(at_least, 101);
    (0..repeats)
        .map(|_| {
            let started = Instant::now();
            run();
            started.elapsed().as_secs_f64()
        })
        .collect()
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn median_seconds(at_least: usize, run: impl FnMut()) -> f64 {
    median(samples(at_least, run))
}

fn main() {
    let dirs: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    if dirs.is_empty() {
        eprintln!("usage: bench_svf MODEL_DIR [MODEL_DIR ...]");
        std::process::exit(2);
    }
    tch::set_num_threads(2);
    println!(
        "CPU, f32, 2 threads, MLP-only selection; forward of a [4, 64] batch, medians of at least \
         7 runs (as many as fit in a second); the base is measured before and after the \
         adapted runs and the ratios use the median of both sets"
    );
    for dir in dirs {
        let mut model = CausalLm::load(&dir, Device::Cpu, Kind::Float).expect("loads");
        let vocab = model.config().vocab_size as i64;
        let ids = Tensor::randint_low(3, vocab, [4, 64], (Kind::Int64, Device::Cpu));
        let forward = |model: &CausalLm| {
            let _ = tch::no_grad(|| model.forward(&ids, None, None).expect("forward"));
        };
        let base_samples = samples(7, || forward(&model));

        let started = Instant::now();
        let decomposition =
            Decomposition::compute(&mut model, &Selection::mlp(), false).expect("svd");
        let decompose = started.elapsed().as_secs_f64();
        let (z_params, lora_params) = svf::parameter_counts(&decomposition, 16);
        let a = Expert::random(&decomposition, "a", 0.1, 1.0, 1);
        let b = Expert::random(&decomposition, "b", 0.1, 1.0, 2);
        let matrices = decomposition.factors().len();
        let mut svf =
            Svf::install(&mut model, decomposition, Composition::Reference).expect("installs");
        svf.set_experts(&[&a, &b], &Mixture::per_expert(&[0.5, 0.5]))
            .expect("experts");
        svf.refresh().expect("refresh");
        let factorized = median_seconds(7, || forward(&model));
        let switch_factorized = median_seconds(7, || {
            svf.set_experts(&[&a, &b], &Mixture::per_expert(&[0.3, 0.7]))
                .expect("experts");
            tch::no_grad(|| svf.refresh()).expect("refresh");
        });
        svf.merge(&mut model).expect("merge");
        let merged = median_seconds(7, || forward(&model));
        let switch_merged = median_seconds(3, || {
            svf.unmerge(&mut model).expect("unmerge");
            svf.set_experts(&[&a, &b], &Mixture::per_expert(&[0.6, 0.4]))
                .expect("experts");
            svf.merge(&mut model).expect("merge");
        });
        let base_again_samples = {
            svf.uninstall(&mut model).expect("uninstall");
            samples(7, || forward(&model))
        };
        let base_first = median(base_samples.clone());
        let base_again = median(base_again_samples.clone());
        let base = median([base_samples, base_again_samples].concat());
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        println!(
            "{name}: base {:.1} ms (first {:.1} ms, at the end {:.1} ms), factorized {:.1} ms = {:.2}x, merged {:.1} ms = {:.2}x",
            base * 1e3,
            base_first * 1e3,
            base_again * 1e3,
            factorized * 1e3,
            factorized / base,
            merged * 1e3,
            merged / base
        );
        println!(
            "  switch mixture: factorized {:.3} ms, recompose and merge {:.1} ms; SVD of {matrices} matrices {:.2} s",
            switch_factorized * 1e3,
            switch_merged * 1e3,
            decompose
        );
        println!(
            "  parameters: z {z_params}, LoRA rank 16 {lora_params} ({:.1}x more)",
            lora_params as f64 / z_params as f64
        );
    }
}
