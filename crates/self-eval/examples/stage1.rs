//! Stage 1 on a model folder: profile, expert plan, dataset specs and validated
//! datasets, written to `--out`; with `--ablation K`, expert K trained on its validated
//! dataset and on an unvalidated one of the same size (same seeds), compared.
//!
//! ```sh
//! cargo run --release -p self-eval --example stage1 -- --model assets/default-model --out /tmp/stage1
//! cargo run --release -p self-eval --example stage1 -- --model assets/default-model --out /tmp/stage1 --ablation 0
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use eudaimonia_gate::{Gate, GateConfig, ScoreConfig, Suite};
use self_eval::validate::{ModelChecks, held_out_index, synth_candidates};
use self_eval::{
    DatasetReport, ExpertConfig, ExpertData, PlannerConfig, ProfileConfig, SpecConfig,
    ValidationConfig, build_dataset, dataset_specs, new_policy, plan, profile, train_expert,
    write_json, write_text,
};
use svf::{Decomposition, Selection};
use synth_tasks::{Domain, Problem, Rng, Split};
use tch::{Device, Kind};

#[derive(Parser)]
struct Args {
    /// Model folder (config.json, weights, tokenizer.json; recipe.json gives each
    /// domain's difficulty when present).
    #[arg(long)]
    model: PathBuf,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Problems per domain behind the planner's gradients.
    #[arg(long, default_value_t = 32)]
    gradient_problems: usize,
    /// Train expert K on validated vs unvalidated data of the same size.
    #[arg(long)]
    ablation: Option<usize>,
    /// Pass-rate band of per-problem validation (the seed's 0.6-0.9 by default).
    #[arg(long, num_args = 2, default_values_t = [0.6, 0.9])]
    band: Vec<f64>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let tokenizer = lm::Tokenizer::from_dir(&args.model)?;
    let mut model = lm::CausalLm::load(&args.model, Device::Cpu, Kind::Float)?;
    let format = eudaimonia_gate::PromptFormat::Raw;

    let started = Instant::now();
    let profile_config = ProfileConfig {
        difficulties: self_eval::profile::recorded_difficulties(&args.model)?,
        seed: args.seed,
        ..ProfileConfig::default()
    };
    let answerer = self_eval::Answerer::new(&model, &tokenizer, format.clone())?;
    let measured = profile(&answerer, &profile_config)?;
    write_json(&args.out.join("profile.json"), &measured)?;
    write_text(&args.out.join("profile.md"), &measured.markdown())?;
    println!("{}", measured.markdown());

    let gate_suites: Vec<Suite> = Suite::synth_all(100, Split::HeldOut, args.seed ^ 0xa11);
    let gate = Gate::capture(
        &model,
        &tokenizer,
        gate_suites,
        &ScoreConfig::default(),
        GateConfig::default(),
    )?;
    write_json(&args.out.join("gate_baseline.json"), &gate.baseline)?;

    let decomposition = Decomposition::compute(&mut model, &Selection::mlp(), false)?;
    let expert_config = ExpertConfig::default();
    let mut policy = new_policy(model, &tokenizer, decomposition, "planner", &expert_config)?;
    let plan_started = Instant::now();
    let measurements = self_eval::planner::measure_domains(
        &mut policy,
        &tokenizer,
        &format,
        &measured,
        args.gradient_problems,
        8,
        args.seed,
    )?;
    let record = plan(&measurements, &PlannerConfig::default(), None)?;
    write_json(&args.out.join("plan.json"), &record)?;
    println!(
        "plan: N = {} in {:.1} s\n{}",
        record.plan.num_experts,
        plan_started.elapsed().as_secs_f64(),
        record.plan.reasoning
    );
    for e in &record.plan.expert_definitions {
        println!("  expert {} `{}`: {}", e.id, e.name, e.rationale);
    }

    let specs = dataset_specs(&record.plan, &measured, &SpecConfig::default())?;
    write_json(&args.out.join("specs.json"), &specs)?;

    // Alignment direction at the initial z, from train-split alignment items.
    let alignment_gradient = self_eval::gradients::alignment_gradient(
        &mut policy,
        &tokenizer,
        &format,
        64,
        args.seed ^ 0xa1,
    )?;
    let held_out = held_out_index(
        &|d| vec![profile_config.difficulties.get(&d).copied().unwrap_or(1)],
        300,
        args.seed,
    );
    let validation_config = ValidationConfig {
        band: [args.band[0], args.band[1]],
        seed: args.seed,
        ..ValidationConfig::default()
    };
    let mut datasets: Vec<(Vec<Problem>, DatasetReport)> = Vec::new();
    let mut checks = ModelChecks {
        policy: &mut policy,
        tokenizer: &tokenizer,
        format: format.clone(),
        alignment_gradient,
    };
    println!(
        "\n| expert | wanted | validated | accepted | first-batch acceptance | overall | expected accuracy | rejections |\n|---|---|---|---|---|---|---|---|"
    );
    for spec in &specs {
        let mut rng = Rng::new(args.seed ^ 0xda7a ^ spec.expert_id as u64);
        let mut source = |n: usize| synth_candidates(spec, n, &mut rng);
        let dataset_started = Instant::now();
        let (kept, report) = build_dataset(
            &mut checks,
            spec,
            &mut source,
            &held_out,
            &validation_config,
        )?;
        let name = spec.expert_name.replace('+', "_");
        write_json(
            &args.out.join(format!("dataset_{name}.report.json")),
            &report,
        )?;
        let lines: Vec<String> = kept
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<_, _>>()?;
        write_text(
            &args.out.join(format!("dataset_{name}.jsonl")),
            &(lines.join("\n") + "\n"),
        )?;
        println!(
            "| {} | {} | {} | {} | {:.3} | {:.3} | {:.3}{} | {} ({:.1} s) |",
            spec.expert_name,
            report.wanted,
            report.validated,
            report.accepted,
            report.initial_acceptance_rate,
            report.acceptance_rate,
            report.expected_accuracy,
            if report.in_learning_zone {
                " (in zone)"
            } else {
                ""
            },
            report
                .rejections
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            dataset_started.elapsed().as_secs_f64()
        );
        datasets.push((kept, report));
    }
    println!(
        "\nstage 1 in {:.1} s (profile {:.1} s)",
        started.elapsed().as_secs_f64(),
        measured.seconds
    );

    if let Some(k) = args.ablation {
        let (validated, report) = datasets.get(k).context("no such expert")?;
        let spec = &specs[k];
        // Unvalidated: the same source and seed, the first candidates, same size.
        let mut rng = Rng::new(args.seed ^ 0xda7a ^ spec.expert_id as u64);
        let unvalidated: Vec<Problem> = synth_candidates(spec, validated.len(), &mut rng)?
            .into_iter()
            .map(|c| c.problem)
            .collect();
        let domains: Vec<Domain> = spec
            .topics
            .iter()
            .filter_map(|t| Domain::from_name(&t.domain))
            .collect();
        let mut held_out_sets = BTreeMap::new();
        let mut validation = Vec::new();
        for t in &spec.topics {
            let d = Domain::from_name(&t.domain).context("domain")?;
            held_out_sets.insert(
                format!("{}@d{}", d.name(), t.difficulty),
                self_eval::profile::distinct_problems(
                    d,
                    t.difficulty,
                    Split::HeldOut,
                    300,
                    args.seed ^ 0xab,
                ),
            );
            let mut rng = Rng::new(args.seed ^ 0x7a1);
            let used: std::collections::HashSet<&str> = validated
                .iter()
                .chain(&unvalidated)
                .map(|p| p.prompt.as_str())
                .collect();
            let mut count = 0;
            while count < 100 {
                let p = synth_tasks::generate_in(d, t.difficulty, Split::Train, &mut rng);
                if !used.contains(p.prompt.as_str()) {
                    validation.push(p);
                    count += 1;
                }
            }
        }
        println!(
            "\nablation on expert `{}` ({:?}): {} problems each; validated set's expected accuracy {:.3}",
            spec.expert_name,
            domains.iter().map(|d| d.name()).collect::<Vec<_>>(),
            validated.len(),
            report.expected_accuracy
        );
        let (model, _) = policy.into_parts()?;
        let mut model = Some(model);
        for (label, train) in [
            ("validated", validated.clone()),
            ("unvalidated", unvalidated),
        ] {
            let mut m = match model.take() {
                Some(m) => m,
                None => lm::CausalLm::load(&args.model, Device::Cpu, Kind::Float)?,
            };
            let decomposition = Decomposition::compute(&mut m, &Selection::mlp(), false)?;
            let mut p = new_policy(m, &tokenizer, decomposition, label, &expert_config)?;
            let data = ExpertData {
                train,
                validation: validation.clone(),
                held_out: held_out_sets.clone(),
            };
            let outcome = train_expert(&mut p, &tokenizer, &data, &gate, &expert_config, None)?;
            write_json(&args.out.join(format!("ablation_{label}.json")), &outcome)?;
            for (set, before) in &outcome.accuracy_before {
                println!(
                    "  {label:<11} {set:<14} {before:.3} -> {:.3} ({:+.3})",
                    outcome.accuracy_after[set],
                    outcome.accuracy_after[set] - before
                );
            }
            println!(
                "  {label:<11} alignment {:.3} -> {:.3}; gate {:?}; {} steps in {:.1} s",
                outcome.gate_before["alignment"].preference,
                outcome.gate_after["alignment"].preference,
                outcome.gate_report.verdict,
                outcome.training.step,
                outcome.seconds
            );
        }
    }
    Ok(())
}
