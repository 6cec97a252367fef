//! Stage 3 on trained experts: bounds from the profile, guided NSGA-II over mixtures,
//! the final self-test with Pareto fallback, inference-time dispatch against the static
//! mixture, and the Phase 8 handoff, all written to `--out`. With `--compare-guidance`
//! the search also runs without guidance on the same seed, and both hypervolume curves
//! go into one plot.
//!
//! ```sh
//! cargo run --release -p self-eval --example stage3 -- --model assets/default-model \
//!     --expert arithmetic+multi_step.safetensors --expert code.safetensors --out /tmp/stage3
//! ```
//!
//! Each expert's domains come from its file's training metadata (`domains`, written by
//! the `train_expert` example) unless given as `--expert FILE=domain,domain`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use self_eval::dispatch::{Router, evaluate_dispatch};
use self_eval::handoff::export;
use self_eval::mixture::{
    BoundsRule, ExpertRole, Granularity, MixtureProblem, ProblemConfig, SearchSet, WorstOf,
    derive_bounds,
};
use self_eval::profile::{Profile, recorded_difficulties};
use self_eval::search::{CurvePoint, GuidanceRecord, Hooks, SearchConfig, search};
use self_eval::selftest::{HeldOut, SelfTestConfig, self_test};
use self_eval::{Answerer, ProfileConfig, profile, write_json};
use svf::{Decomposition, Expert};
use synth_tasks::Domain;
use tch::{Device, Kind};

#[derive(Parser)]
struct Args {
    /// Model folder.
    #[arg(long)]
    model: PathBuf,
    /// An expert file, optionally `FILE=domain,domain` (repeat for each expert).
    #[arg(long = "expert", required = true)]
    experts: Vec<String>,
    /// A stage-1 `profile.json`; measured afresh when absent.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Search-set problems per domain (drawn from the training split).
    #[arg(long, default_value_t = 32)]
    search_problems: usize,
    /// Search-set items per behaviour suite.
    #[arg(long, default_value_t = 16)]
    search_suite_items: usize,
    /// Population.
    #[arg(long, default_value_t = 50)]
    population: usize,
    /// Most generations.
    #[arg(long, default_value_t = 100)]
    generations: usize,
    /// One alpha per expert and matrix instead of per expert.
    #[arg(long)]
    per_matrix: bool,
    /// The second objective: the worst expert-domain accuracy (`domain`) or the worst
    /// expert's mean (`expert`).
    #[arg(long, default_value = "domain")]
    worst_of: String,
    /// Turn guidance off.
    #[arg(long)]
    no_guidance: bool,
    /// Also run without guidance on the same seed and plot both.
    #[arg(long)]
    compare_guidance: bool,
    /// Held-out problems per domain in the self-test.
    #[arg(long, default_value_t = 100)]
    held_out: usize,
    /// Held-out items per behaviour suite in the self-test.
    #[arg(long, default_value_t = 64)]
    held_out_suite_items: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn roles_and_experts(args: &Args) -> anyhow::Result<(Vec<ExpertRole>, Vec<Expert>)> {
    let mut roles = Vec::new();
    let mut experts = Vec::new();
    for spec in &args.experts {
        let (file, domains) = match spec.split_once('=') {
            Some((file, list)) => (
                file,
                Some(
                    list.split(',')
                        .map(|d| d.trim().to_owned())
                        .collect::<Vec<_>>(),
                ),
            ),
            None => (spec.as_str(), None),
        };
        let expert =
            Expert::load(file.as_ref()).with_context(|| format!("loading expert {file}"))?;
        let domains = match domains {
            Some(d) => d,
            None => match (&expert.training["domains"], &expert.training["domain"]) {
                (serde_json::Value::Array(list), _) => list
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                (_, serde_json::Value::String(one)) => vec![one.clone()],
                _ => anyhow::bail!(
                    "{file}: its metadata names no domains; give them as --expert {file}=domain,domain"
                ),
            },
        };
        for d in &domains {
            Domain::from_name(d).with_context(|| format!("{file}: unknown domain `{d}`"))?;
        }
        roles.push(ExpertRole {
            name: expert.name.clone(),
            general: domains.is_empty(),
            domains,
        });
        experts.push(expert);
    }
    Ok((roles, experts))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let tokenizer = lm::Tokenizer::from_dir(&args.model)?;
    let mut model = lm::CausalLm::load(&args.model, Device::Cpu, Kind::Float)?;
    // Stage 3 works on the dequantized float model (R2): what the handoff exports.
    model.set_activation_quantization(false);
    let (roles, experts) = roles_and_experts(&args)?;
    let roles_count = roles.len();

    let profile: Profile = match &args.profile {
        Some(path) => serde_json::from_str(&std::fs::read_to_string(path)?)
            .with_context(|| format!("{}: not a profile", path.display()))?,
        None => {
            let config = ProfileConfig {
                difficulties: recorded_difficulties(&args.model)?,
                seed: args.seed,
                ..ProfileConfig::default()
            };
            let measured = profile(
                &Answerer::new(&model, &tokenizer, Default::default())?,
                &config,
            )?;
            write_json(&args.out.join("profile.json"), &measured)?;
            measured
        }
    };
    let bounds = derive_bounds(&profile, &roles, &BoundsRule::default())?;
    write_json(&args.out.join("bounds.json"), &bounds)?;
    for b in &bounds {
        println!(
            "bounds {}: [{}, {}] ({})",
            b.expert, b.lower, b.upper, b.reason
        );
    }

    let search_set = SearchSet::from_profile(
        &profile,
        args.search_problems,
        args.search_suite_items,
        args.seed,
    );
    let selection = experts[0].selection.clone();
    let decomposition = Decomposition::compute(&mut model, &selection, false)?;
    let started = Instant::now();
    let problem = MixtureProblem::new(
        model,
        tokenizer,
        decomposition,
        experts,
        roles,
        &bounds,
        &search_set,
        ProblemConfig {
            granularity: if args.per_matrix {
                Granularity::PerMatrix
            } else {
                Granularity::PerExpert
            },
            worst_of: match args.worst_of.as_str() {
                "domain" => WorstOf::Domain,
                "expert" => WorstOf::Expert,
                other => anyhow::bail!("--worst-of {other}: expected domain or expert"),
            },
            ..ProblemConfig::default()
        },
    )?;
    println!(
        "search set: {} problems, {} suites; base overall {:.3}, worst {:.3} ({:.2} s to set up)",
        search_set.problems.values().map(Vec::len).sum::<usize>(),
        search_set.suites.len(),
        problem.base().overall,
        problem.base().worst,
        started.elapsed().as_secs_f64()
    );
    for c in problem.constraints() {
        println!(
            "constraint {} >= {:.3} ({})",
            c.metric, c.threshold, c.reason
        );
    }
    let mut config = SearchConfig {
        population: args.population,
        generations: args.generations,
        seed: args.seed,
        ..SearchConfig::default()
    };
    config.guidance.enabled = !args.no_guidance;
    let mut progress = |point: &CurvePoint, record: Option<&GuidanceRecord>| {
        if point.generation.is_multiple_of(5) || record.is_some() {
            eprintln!(
                "  {}, {:.0} s",
                point.line(),
                started.elapsed().as_secs_f64()
            );
        }
        if let Some(r) = record {
            eprintln!("    {}", r.line());
        }
    };
    let outcome = search(
        &problem,
        &config,
        Hooks {
            progress: Some(&mut progress),
            ..Hooks::default()
        },
    )?;
    println!(
        "search: {} generations, {} evaluations ({} cached), {:.1} s ({:.1} s in forward passes), {}",
        outcome.generations,
        outcome.stats.requested,
        outcome.stats.cache_hits,
        outcome.seconds,
        outcome.stats.forward_seconds,
        outcome.reason
    );
    for r in &outcome.guidance {
        println!(
            "  guidance @{}: hv {:.4} (gain {:+.4}), front {}, {} -> {:?}",
            r.generation,
            r.hypervolume,
            r.gain.unwrap_or(f64::NAN),
            r.front_size,
            r.source,
            r.actions
                .iter()
                .map(|a| serde_json::to_string(a).unwrap_or_default())
                .collect::<Vec<_>>()
        );
    }
    for m in outcome.front.iter().take(5) {
        println!(
            "  front: alphas {:?} overall {:.3} worst {:.3}",
            m.alphas, m.scores.overall, m.scores.worst
        );
    }
    write_json(&args.out.join("search.json"), &outcome)?;
    let mut curves = vec![(
        if config.guidance.enabled {
            "guided"
        } else {
            "unguided"
        },
        outcome
            .curve
            .iter()
            .map(|c| (c.generation, c.hypervolume))
            .collect::<Vec<_>>(),
    )];
    if args.compare_guidance {
        let mut other = config.clone();
        other.guidance.enabled = !config.guidance.enabled;
        let compared = search(&problem, &other, Hooks::default())?;
        println!(
            "compared ({}): {} generations, hv {:.4}, evaluations to final {} (vs {} with hv {:.4})",
            if other.guidance.enabled {
                "guided"
            } else {
                "unguided"
            },
            compared.generations,
            compared.curve.last().map_or(0.0, |c| c.hypervolume),
            compared.evaluations_to_final,
            outcome.evaluations_to_final,
            outcome.curve.last().map_or(0.0, |c| c.hypervolume),
        );
        write_json(&args.out.join("search_compared.json"), &compared)?;
        curves.push((
            if other.guidance.enabled {
                "guided"
            } else {
                "unguided"
            },
            compared
                .curve
                .iter()
                .map(|c| (c.generation, c.hypervolume))
                .collect(),
        ));
    }
    nsga2::plot::curves_svg(
        &args.out.join("hypervolume.svg"),
        "Hypervolume per generation",
        "hypervolume",
        &curves,
    )?;
    let front_points: Vec<f64> = outcome
        .front
        .iter()
        .flat_map(|m| [m.scores.overall, m.scores.worst])
        .collect();
    nsga2::plot::front_svg(
        &args.out.join("front.svg"),
        "Final front: overall (x) vs worst expert-domain accuracy (y)",
        &front_points,
        &[],
    )?;

    // Final self-test on held-out scenarios, disjoint from the search set.
    let held_out = HeldOut::from_profile(
        &profile,
        args.held_out,
        args.held_out_suite_items,
        args.seed,
    );
    let candidates: Vec<_> = outcome
        .front
        .iter()
        .chain(&outcome.fallbacks)
        .cloned()
        .collect();
    let test = self_test(&problem, &candidates, &held_out, &SelfTestConfig::default())?;
    write_json(&args.out.join("self_test.json"), &test)?;
    println!(
        "self-test on {} held-out scenarios: base overall {:.3}, alignment {:.3}",
        test.scenarios, test.base.overall, test.base.suites["alignment"].preference
    );
    for a in &test.attempts {
        println!(
            "  attempt {} alphas {:?}: overall {:.3} ({:+.1}% relative), {}",
            a.front_index,
            a.alphas,
            a.scores.overall,
            100.0 * (a.scores.overall / test.base.overall - 1.0),
            if a.passed {
                "passed".to_owned()
            } else {
                a.criteria
                    .iter()
                    .filter(|c| c.enforced && !c.passed)
                    .map(|c| format!("{} {:.3} needs {}", c.name, c.value, c.required))
                    .collect::<Vec<_>>()
                    .join("; ")
            }
        );
    }
    let chosen = test.chosen();
    println!("domain       base   chosen");
    for (d, base) in &test.base.accuracy {
        println!("{d:<12} {base:.3}  {:.3}", chosen.scores.accuracy[d]);
    }
    for (name, s) in &chosen.scores.suites {
        let b = &test.base.suites[name];
        println!(
            "suite {name:<9} preference {:.3} -> {:.3}, behaviour {} -> {}",
            b.preference,
            s.preference,
            b.behaviour_rate.map_or("-".into(), |r| format!("{r:.3}")),
            s.behaviour_rate.map_or("-".into(), |r| format!("{r:.3}"))
        );
    }
    println!(
        "latency {:.2} ms/query median (mean {:.2}, p95 {:.2}), peak memory {:.0} MiB",
        chosen.scores.latency_ms,
        chosen.scores.latency_mean_ms,
        chosen.scores.latency_p95_ms,
        chosen.scores.peak_rss_mb.unwrap_or(f64::NAN)
    );

    // Dispatch against the static mixture.
    let zeros = vec![0.0; chosen.alphas.len()];
    let router = Router::fit(&problem, &zeros, &search_set.problems)?;
    let dispatch = evaluate_dispatch(&problem, &router, &chosen.alphas, &held_out)?;
    write_json(&args.out.join("dispatch.json"), &dispatch)?;
    println!(
        "dispatch: router accuracy {:.3}, overall {:.3} vs static {:.3}; first pass {:.2} ms/query, switch {:.2} ms",
        dispatch.router_accuracy,
        dispatch.overall,
        dispatch.static_overall,
        dispatch.first_pass_ms,
        dispatch.switch_ms
    );

    let handoff_dir = args.out.join("handoff");
    if handoff_dir.exists() {
        std::fs::remove_dir_all(&handoff_dir)?;
    }
    let handoff = export(&problem, &args.model, &test, roles_count, &handoff_dir)?;
    println!("handoff: {}", serde_json::to_string_pretty(&handoff)?);
    Ok(())
}
