//! Trains one SVF expert on a `synth-tasks` domain with REINFORCE + KL, the behaviour
//! gate as the per-epoch validator, and reports what changed: held-out greedy accuracy
//! on every domain and the behaviour suites, before and after, with throughput. All the
//! work is `self_eval::train_expert`; this is its command line.
//!
//! ```sh
//! cargo run --release -p self-eval --example train_expert -- \
//!     --model assets/default-model --domain arithmetic,multi_step [--attention] [--out expert.safetensors]
//! ```
//!
//! Each domain's difficulty comes from the model's `recipe.json` when it has one.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use eudaimonia_gate::{Gate, GateConfig, ScoreConfig, Suite};
use reinforce_kl::{Event, OptimizerConfig, TrainerConfig};
use self_eval::profile::recorded_difficulties;
use self_eval::{DataSizes, ExpertConfig, ExpertData, new_policy, train_expert};
use svf::{Decomposition, Selection};
use synth_tasks::{Domain, Split};

#[derive(Parser)]
struct Args {
    /// Model folder (config.json, weights, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Domains to train on, comma-separated snake-case names (e.g. `arithmetic,multi_step`):
    /// the training and validation problems are split evenly between them.
    #[arg(long)]
    domain: String,
    /// The expert's name; by default the domains joined with `+`.
    #[arg(long)]
    name: Option<String>,
    /// Difficulty of every domain; by default the model's `recipe.json`, else 1.
    #[arg(long)]
    difficulty: Option<u32>,
    /// Decompose the attention matrices too (MLP only by default).
    #[arg(long)]
    attention: bool,
    /// Training problems.
    #[arg(long, default_value_t = 512)]
    train_problems: usize,
    /// Held-out problems per domain (the before/after report).
    #[arg(long, default_value_t = 300)]
    held_out: usize,
    /// Validation problems: train-split problems outside the training set.
    #[arg(long, default_value_t = 200)]
    validation: usize,
    /// Items per behaviour suite in the gate.
    #[arg(long, default_value_t = 64)]
    suite_items: usize,
    /// Epochs.
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Steps per epoch.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Epochs without a better validation score before stopping.
    #[arg(long, default_value_t = 10)]
    patience: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 3e-3)]
    learning_rate: f64,
    /// KL coefficient.
    #[arg(long, default_value_t = 0.1)]
    kl: f64,
    /// Seed of data, initialisation and sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to save the trained expert (its metadata records the outcome).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Training checkpoint: an interrupted run started again resumes from it.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let domains: Vec<Domain> = args
        .domain
        .split(',')
        .map(|name| {
            Domain::from_name(name.trim()).with_context(|| {
                let names: Vec<&str> = Domain::ALL.iter().map(|d| d.name()).collect();
                format!("unknown domain `{name}`; expected one of {names:?}")
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let name = args.name.clone().unwrap_or_else(|| {
        let names: Vec<&str> = domains.iter().map(|d| d.name()).collect();
        names.join("+")
    });
    let recorded = recorded_difficulties(&args.model)?;
    let difficulty_of = |d: Domain| args.difficulty.or(recorded.get(&d).copied()).unwrap_or(1);
    let tokenizer = lm::Tokenizer::from_dir(&args.model)?;
    let mut model = lm::CausalLm::load(&args.model, tch::Device::Cpu, tch::Kind::Float)?;

    let data = ExpertData::synth(
        &domains,
        &Domain::ALL,
        &difficulty_of,
        DataSizes {
            train: args.train_problems,
            validation: args.validation,
            held_out: args.held_out,
        },
        args.seed,
        args.seed ^ 0x4e1d,
    );
    let suites: Vec<Suite> = Suite::synth_all(args.suite_items, Split::HeldOut, args.seed ^ 0x5u64);
    let gate = Gate::capture(
        &model,
        &tokenizer,
        suites,
        &ScoreConfig::default(),
        GateConfig::default(),
    )?;
    let selection = if args.attention {
        Selection::mlp_and_attention()
    } else {
        Selection::mlp()
    };
    let decomposition = Decomposition::compute(&mut model, &selection, false)?;
    let config = ExpertConfig {
        trainer: TrainerConfig {
            epochs: args.epochs,
            steps_per_epoch: args.steps,
            patience: args.patience,
            kl_coefficient: args.kl,
            optimizer: OptimizerConfig {
                learning_rate: args.learning_rate,
                ..OptimizerConfig::default()
            },
            score_chunk: Some(32),
            seed: args.seed,
            ..TrainerConfig::default()
        },
        ..ExpertConfig::default()
    };
    let mut policy = new_policy(model, &tokenizer, decomposition, &name, &config)?;
    let outcome = train_expert(
        &mut policy,
        &tokenizer,
        &data,
        &gate,
        &config,
        args.checkpoint.as_deref(),
    )?;
    let step_seconds = outcome.seconds - outcome.validation_seconds;
    println!(
        "expert `{}` ({}): {} steps here ({} in all) in {:.1} s ({:.1} s outside validation): \
         {:.1} optimiser steps/min, {:.1} rollout tokens/s",
        name,
        if args.attention {
            "MLP + attention"
        } else {
            "MLP"
        },
        outcome.steps_here,
        outcome.training.step,
        outcome.seconds,
        step_seconds,
        outcome.steps_here as f64 * 60.0 / step_seconds.max(1e-9),
        outcome.rollout_tokens as f64 / step_seconds.max(1e-9)
    );
    for event in &outcome.training.events {
        if !matches!(event, Event::Validated { .. }) {
            println!("  event: {}", serde_json::to_string(event)?);
        }
    }
    println!("domain        before  after  change");
    for (name, before) in &outcome.accuracy_before {
        let after = outcome.accuracy_after[name];
        println!(
            "{name:<12}  {before:6.3}  {after:5.3}  {:+.3}",
            after - before
        );
    }
    let names: BTreeSet<&String> = outcome.gate_before.keys().collect();
    for name in names {
        let (b, a) = (&outcome.gate_before[name], &outcome.gate_after[name]);
        println!(
            "suite {name:<9} preference {:.3} -> {:.3}, behaviour {} -> {}",
            b.preference,
            a.preference,
            b.behaviour_rate.map_or("-".into(), |r| format!("{r:.3}")),
            a.behaviour_rate.map_or("-".into(), |r| format!("{r:.3}"))
        );
    }
    println!(
        "gate: {:?} ({})",
        outcome.gate_report.verdict,
        outcome.gate_report.reasons()
    );
    let (_, mut expert) = policy.into_parts()?;
    expert.training = serde_json::json!({
        "domains": domains.iter().map(|d| d.name()).collect::<Vec<_>>(),
        "difficulties": domains.iter().map(|&d| difficulty_of(d)).collect::<Vec<_>>(),
        "config": config,
        "outcome": outcome,
    });
    if let Some(out) = &args.out {
        expert.save(out)?;
        println!("saved {}", out.display());
    }
    Ok(())
}
