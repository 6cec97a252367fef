//! Small SVF workflows on a model folder:
//!
//! ```sh
//! # parameters of z-vectors against LoRA rank 16, for MLP-only and MLP+attention
//! cargo run --release -p svf-experts --example svf_tool -- accounting MODEL_DIR
//! # apply an expert file (or a random one with a seed) and export the merged model
//! cargo run --release -p svf-experts --example svf_tool -- export MODEL_DIR OUT_DIR [EXPERT.safetensors | --random SEED]
//! ```

use std::path::PathBuf;

use lm::CausalLm;
use svf::{Decomposition, Expert, Mixture, Selection, Svf};
use tch::{Device, Kind};

fn main() -> Result<(), svf::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("accounting") if args.len() == 2 => {
            let mut model = CausalLm::load(&PathBuf::from(&args[1]), Device::Cpu, Kind::Float)?;
            for (label, selection) in [
                ("MLP", Selection::mlp()),
                ("MLP + attention", Selection::mlp_and_attention()),
            ] {
                let decomposition = Decomposition::compute(&mut model, &selection, false)?;
                let (z, lora) = svf::parameter_counts(&decomposition, 16);
                println!(
                    "{label}: {} matrices, z parameters {z}, LoRA rank-16 parameters {lora} ({:.1}x more)",
                    decomposition.factors().len(),
                    lora as f64 / z as f64
                );
            }
            Ok(())
        }
        Some("export") if args.len() >= 3 => {
            let base = PathBuf::from(&args[1]);
            let mut model = CausalLm::load(&base, Device::Cpu, Kind::Float)?;
            let decomposition = Decomposition::compute(&mut model, &Selection::mlp(), false)?;
            let expert = match args.get(3).map(String::as_str) {
                Some("--random") => {
                    let seed = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(0);
                    Expert::random(&decomposition, "random", 0.1, 1.0, seed)
                }
                Some(path) => Expert::load(path.as_ref())?,
                None => Expert::constant(&decomposition, "identity", 0.1),
            };
            let mut svf = Svf::install(&mut model, decomposition, expert.composition)?;
            svf.set_experts(&[&expert], &Mixture::uniform(1))?;
            svf.export_merged(&base, &PathBuf::from(&args[2]))?;
            println!("wrote {} with expert `{}` merged", args[2], expert.name);
            Ok(())
        }
        _ => {
            eprintln!(
                "usage: svf_tool accounting MODEL_DIR | export MODEL_DIR OUT_DIR [EXPERT | --random SEED]"
            );
            std::process::exit(2);
        }
    }
}
