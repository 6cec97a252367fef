//! A first look at a real instruct model: greedy accuracy per `synth-tasks` domain at
//! difficulties 1-3, each problem sent as a chat message through the model's own chat
//! template, answers read with free-form extraction (`synth_tasks::Extraction::FreeForm`).
//!
//! ```text
//! cargo run --release -p self-eval --example first_look -- \
//!     $(cargo xtask fetch-model smollm2-135m-instruct) --per-cell 16
//! ```
//!
//! The user message is the problem followed by "Give only the final answer." Problems
//! are drawn from the held-out split with a fixed seed, so runs are comparable.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use lm::{CausalLm, GenerateConfig, PromptFormat, Tokenizer};
use synth_tasks::{Domain, Extraction, Rng, Split, generate_in, verify_with};
use tch::{Device, Kind};

#[derive(Parser)]
struct Args {
    /// A model folder or `.gguf` file with a chat template.
    model: PathBuf,
    /// Problems per domain and difficulty.
    #[arg(long, default_value_t = 16)]
    per_cell: usize,
    /// Most new tokens per answer.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Seed of the problem draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// `chat` (the model's template, free-form extraction) or `few-shot` (raw text: one
    /// solved train-split problem of every domain, a line each, before the problem;
    /// the answer is the first line of the completion).
    #[arg(long, default_value = "chat")]
    format: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let model = CausalLm::load(&args.model, Device::Cpu, Kind::Float)?;
    let tokenizer = Tokenizer::load(&args.model)?;
    let template = tokenizer.chat_template()?;
    let format = PromptFormat::Chat {
        system: None,
        shots: 0,
    };
    let config = GenerateConfig {
        max_new_tokens: args.max_new_tokens,
        ..GenerateConfig::default()
    };
    println!(
        "domain       d1     d2     d3   (greedy accuracy, {} problems each)",
        args.per_cell
    );
    let mut total = (0usize, 0usize);
    for domain in Domain::ALL {
        let mut row = format!("{:<11}", domain.name());
        for difficulty in 1..=3u32 {
            let mut rng = Rng::new(args.seed ^ (u64::from(difficulty) << 32) ^ domain as u64);
            let problems: Vec<_> = (0..args.per_cell)
                .map(|_| generate_in(domain, difficulty, Split::HeldOut, &mut rng))
                .collect();
            let prompts: Vec<String> = problems
                .iter()
                .map(|p| {
                    if args.format == "few-shot" {
                        return Ok(format!("{}{}", few_shot_prefix(args.seed), p.prompt));
                    }
                    let question = format!("{}\nGive only the final answer.", p.prompt);
                    format.render(&question, &[], Some(&template))
                })
                .collect::<lm::Result<_>>()?;
            let extraction = if args.format == "few-shot" {
                Extraction::FirstLine
            } else {
                Extraction::FreeForm
            };
            let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
            let outputs = model.generate_text(&tokenizer, &prompts, &config, &[])?;
            let correct = problems
                .iter()
                .zip(&outputs)
                .filter(|(p, (text, _))| verify_with(p, text, extraction))
                .count();
            total.0 += correct;
            total.1 += problems.len();
            row.push_str(&format!(" {:>6.3}", correct as f64 / problems.len() as f64));
            if difficulty == 1 {
                let (text, _) = &outputs[0];
                eprintln!(
                    "  e.g. {:?} -> {:?} (reference {:?})",
                    problems[0].prompt,
                    text.lines().next().unwrap_or(""),
                    problems[0].answer
                );
            }
        }
        println!("{row}");
    }
    println!(
        "overall {:.3} ({} of {}), {:.0} s",
        total.0 as f64 / total.1 as f64,
        total.0,
        total.1,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One solved train-split problem of every domain at difficulty 1, a line each.
fn few_shot_prefix(seed: u64) -> String {
    let mut rng = Rng::new(seed ^ 0x5407);
    Domain::ALL
        .iter()
        .map(|&d| {
            let p = generate_in(d, 1, Split::Train, &mut rng);
            format!("{}{}\n", p.prompt, p.answer)
        })
        .collect()
}
