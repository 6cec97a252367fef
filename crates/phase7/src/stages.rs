//! The stages, each reading and writing only run-directory files (and the model
//! folder), so each can also run as its own command.

use std::path::{Path, PathBuf};
use std::time::Instant;

use eudaimonia_gate::{Gate, GateConfig, ScoreConfig, Suite};
use self_eval::dispatch::{Router, evaluate_dispatch};
use self_eval::mixture::{ExpertRole, MixtureProblem, MixtureScores, SearchSet, derive_bounds};
use self_eval::planner::measure_domains;
use self_eval::profile::{Profile, distinct_problems, recorded_difficulties};
use self_eval::search::{CurvePoint, GuidanceRecord, Hooks, SearchOutcome, search};
use self_eval::selftest::{HeldOut, SelfTest, self_test};
use self_eval::validate::{ModelChecks, held_out_index, synth_candidates};
use self_eval::{
    Answerer, DataSizes, ExpertData, PlanRecord, ValidationConfig, build_dataset, dataset_specs,
    new_policy, plan, profile, train_expert_observed, write_json, write_text,
};
use svf::{Decomposition, Expert, Selection};
use synth_tasks::{Domain, Split};
use tch::{Kind, Tensor};

use crate::config::Config;
use crate::run::{RunDir, io_error};
use crate::{Error, Result};

/// Where progress lines go.
pub type Log<'a> = &'a mut dyn FnMut(&str);

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| io_error(path, e))?;
    serde_json::from_str(&text).map_err(|e| io_error(path, format!("unexpected content: {e}")))
}

/// The float model folder of the run (R2's output).
pub fn float_model_dir(run: &RunDir) -> PathBuf {
    run.stage_dir("dequantize").join("model")
}

/// The float model. A GGUF model is loaded from its file, which gives the float folder's
/// f32 weights bit for bit (both come from `bitnet_dequant`'s decoders) and, on the CPU,
/// keeps its blocks beside them for `lm`'s packed products (same results, faster
/// decoding).
fn load_float(run: &RunDir, config: &Config) -> Result<(lm::CausalLm, lm::Tokenizer)> {
    let dir = float_model_dir(run);
    let source = if bitnet_dequant::is_gguf(&config.model.path) {
        config.model.path.as_path()
    } else {
        dir.as_path()
    };
    let model = lm::CausalLm::load(source, config.device()?, Kind::Float)?;
    let tokenizer = lm::Tokenizer::from_dir(&dir)?;
    Ok((model, tokenizer))
}

/// R1: the Phase 6 handoff's fields, what is missing, and its numbers.
pub fn check_handoff(config: &Config, dir: &Path, log: Log<'_>) -> Result<()> {
    let path = match &config.model.handoff {
        Some(path) => path.clone(),
        None => {
            let beside = config.model.path.join("phase6_handoff.json");
            if !beside.is_file() {
                write_json(
                    &dir.join("check.json"),
                    &serde_json::json!({
                        "handoff": null,
                        "missing_required": ["the Phase 6 handoff file"],
                        "missing_optional": [],
                        "note": "no phase6_handoff.json beside the model and none configured (model.handoff): \
                                 the Phase 6 numbers are unknown; this run measures its own behaviour baselines",
                    }),
                )?;
                log(&format!(
                    "handoff: none beside {} (model.handoff unset): recorded as missing; behaviour baselines come from this run's own measurements",
                    config.model.path.display()
                ));
                return Ok(());
            }
            beside
        }
    };
    let value: serde_json::Value = read_json(&path)?;
    let required = [
        "/model",
        "/quantization",
        "/metrics/tool_use_rate",
        "/metrics/persona_consistency",
        "/baked_capabilities/eudaimonia_aligned",
    ];
    let optional = [
        "/size_mb",
        "/metrics/aggregate_benchmark",
        "/metrics/swe_bench_score",
    ];
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|p| value.pointer(p).is_none_or(serde_json::Value::is_null))
        .collect();
    let missing_optional: Vec<&str> = optional
        .iter()
        .copied()
        .filter(|p| value.pointer(p).is_none_or(serde_json::Value::is_null))
        .collect();
    write_json(
        &dir.join("check.json"),
        &serde_json::json!({
            "handoff": path,
            "missing_required": missing,
            "missing_optional": missing_optional,
            "handoff_values": value,
        }),
    )?;
    if !missing.is_empty() {
        return Err(Error::Input(format!(
            "{}: the Phase 6 handoff lacks {}",
            path.display(),
            missing.join(", ")
        )));
    }
    Ok(())
}

/// Held-out probe prompts, `per_domain` of each domain.
fn probe_prompts(tokenizer: &lm::Tokenizer, per_domain: usize, seed: u64) -> Result<Vec<Vec<i64>>> {
    let mut out = Vec::new();
    for d in Domain::ALL {
        for p in distinct_problems(d, 1, Split::HeldOut, per_domain, seed) {
            out.push(tokenizer.encode(&format!("{}{}", p.prompt, p.answer), false)?);
        }
    }
    Ok(out)
}

/// R2: dequantize to float32 and check top-1 agreement with the quantized forward.
pub fn dequantize(config: &Config, dir: &Path, log: Log<'_>) -> Result<()> {
    let out = dir.join("model");
    let report = bitnet_dequant::convert::convert(
        &config.model.path,
        &out,
        &bitnet_dequant::convert::ConvertOptions::default(),
        &mut bitnet_dequant::convert::NoProgress,
    )
    .map_err(|e| io_error(&config.model.path, e))?;
    copy_beside(&config.model.path, &out)?;
    let device = config.device()?;
    let quantized = lm::CausalLm::load(&config.model.path, device, Kind::Float)?;
    let float = lm::CausalLm::load(&out, device, Kind::Float)?;
    let tokenizer = lm::Tokenizer::from_dir(&out)?;
    let probes = probe_prompts(&tokenizer, config.dequantize.probe_prompts, config.seed)?;
    let (mut agree, mut positions) = (0usize, 0usize);
    let _guard = tch::no_grad_guard();
    for ids in &probes {
        let input = Tensor::from_slice(ids).view([1, ids.len() as i64]);
        let a = quantized.forward(&input, None, None)?.argmax(-1, false);
        let b = float.forward(&input, None, None)?.argmax(-1, false);
        agree += a.eq_tensor(&b).sum(Kind::Int64).int64_value(&[]) as usize;
        positions += ids.len();
    }
    let agreement = agree as f64 / positions.max(1) as f64;
    let passed = agreement >= config.dequantize.min_top1_agreement;
    log(&format!(
        "dequantize: {} tensors in {:.1} s; top-1 agreement {agreement:.4} over {positions} positions (need {:.2})",
        report.tensors, report.seconds, config.dequantize.min_top1_agreement
    ));
    let fallback = match (&config.model.fallback, passed) {
        (Some(fallback), false) => {
            // R2: the pre-quantization checkpoint replaces the failed float model.
            std::fs::remove_dir_all(&out).map_err(|e| io_error(&out, e))?;
            bitnet_dequant::convert::convert(
                fallback,
                &out,
                &bitnet_dequant::convert::ConvertOptions::default(),
                &mut bitnet_dequant::convert::NoProgress,
            )
            .map_err(|e| io_error(fallback, e))?;
            copy_beside(fallback, &out)?;
            log(&format!(
                "dequantize: agreement short of {:.2}: using the pre-quantization checkpoint {} (model.fallback)",
                config.dequantize.min_top1_agreement,
                fallback.display()
            ));
            Some(fallback.clone())
        }
        _ => None,
    };
    write_json(
        &dir.join("verify.json"),
        &serde_json::json!({
            "top1_agreement": agreement,
            "positions": positions,
            "prompts": probes.len(),
            "required": config.dequantize.min_top1_agreement,
            "passed": passed,
            "float_model": if fallback.is_some() { "fallback" } else { "dequantized" },
            "fallback": fallback,
        }),
    )?;
    if !passed && fallback.is_none() {
        return Err(Error::Input(format!(
            "{}: the dequantized model agrees with the quantized forward on {:.2}% of top-1 tokens, below {:.2}%; \
             check the checkpoint, or give a pre-quantization checkpoint as model.fallback",
            config.model.path.display(),
            100.0 * agreement,
            100.0 * config.dequantize.min_top1_agreement
        )));
    }
    Ok(())
}

/// Copies the files the later stages read from beside a model folder (the recipe's
/// difficulties, the Phase 6 handoff) into the float model's folder.
fn copy_beside(model: &Path, out: &Path) -> Result<()> {
    for name in ["recipe.json", "phase6_handoff.json"] {
        let source = model.join(name);
        if source.is_file() {
            std::fs::copy(&source, out.join(name)).map_err(|e| io_error(&source, e))?;
        }
    }
    Ok(())
}

/// The expert-training settings with the run's prompt format.
fn expert_config(config: &Config) -> self_eval::ExpertConfig {
    self_eval::ExpertConfig {
        format: config.model.prompt.format(),
        ..config.training.expert.clone()
    }
}

/// Stage 1: the capability profile of the float model.
pub fn profile_stage(run: &RunDir, config: &Config, dir: &Path, log: Log<'_>) -> Result<()> {
    let (model, tokenizer) = load_float(run, config)?;
    let mut profile_config = config.profile.clone();
    if profile_config.difficulties.is_empty() {
        profile_config.difficulties = recorded_difficulties(&config.model.path)?;
    }
    profile_config.seed = config.seed;
    let answerer = Answerer::new(&model, &tokenizer, config.model.prompt.format())?;
    let mut measured = profile(&answerer, &profile_config)?;
    let seconds = measured.seconds;
    // The wall time is a measurement of this execution, kept apart from the results.
    write_json(
        &dir.join("measurements.json"),
        &serde_json::json!({ "seconds": seconds }),
    )?;
    measured.seconds = 0.0;
    write_json(&dir.join("profile.json"), &measured)?;
    write_text(&dir.join("profile.md"), &measured.markdown())?;
    log(&format!(
        "profile: mean accuracy {:.3} over {} domains in {:.1} s",
        measured.mean_accuracy,
        measured.domains.len(),
        seconds
    ));
    Ok(())
}

/// Stage 1: the expert plan from policy gradients.
pub fn plan_stage(run: &RunDir, config: &Config, dir: &Path, log: Log<'_>) -> Result<()> {
    let (mut model, tokenizer) = load_float(run, config)?;
    let profile: Profile = read_json(&run.stage_dir("profile").join("profile.json"))?;
    let decomposition = Decomposition::compute(&mut model, &Selection::mlp(), false)?;
    let mut policy = new_policy(
        model,
        &tokenizer,
        decomposition,
        "planner",
        &expert_config(config),
    )?;
    let measurements = measure_domains(
        &mut policy,
        &tokenizer,
        &config.model.prompt.format(),
        &profile,
        config.planner.gradient_problems,
        config.planner.samples,
        config.seed,
    )?;
    let record = plan(&measurements, &config.planner.planner, None)?;
    write_json(&dir.join("plan.json"), &record)?;
    log(&format!(
        "plan: N = {}: {}",
        record.plan.num_experts, record.plan.reasoning
    ));
    Ok(())
}

/// The file of expert `k`'s validated problems (JSON lines).
pub fn dataset_path(run: &RunDir, k: usize) -> PathBuf {
    run.stage_dir("data").join(format!("dataset_{k}.jsonl"))
}

/// Stage 1: a dataset spec per planned expert and its problems, each validated
/// (solver, duplicates, held-out overlap, pass rate in the band, alignment direction);
/// too few accepted problems stop the run with the report named.
pub fn data_stage(run: &RunDir, config: &Config, dir: &Path, log: Log<'_>) -> Result<()> {
    let (mut model, tokenizer) = load_float(run, config)?;
    let profile: Profile = read_json(&run.stage_dir("profile").join("profile.json"))?;
    let record: PlanRecord = read_json(&run.stage_dir("plan").join("plan.json"))?;
    let d = &config.data;
    let specs = dataset_specs(&record.plan, &profile, &d.spec)?;
    write_json(&dir.join("specs.json"), &specs)?;
    let decomposition = Decomposition::compute(&mut model, &Selection::mlp(), false)?;
    let mut policy = new_policy(
        model,
        &tokenizer,
        decomposition,
        "validator",
        &expert_config(config),
    )?;
    let format = config.model.prompt.format();
    // The alignment pairs are shown raw, as the behaviour suites are everywhere.
    let alignment_gradient = self_eval::gradients::alignment_gradient(
        &mut policy,
        &tokenizer,
        &eudaimonia_gate::PromptFormat::Raw,
        d.alignment_items,
        config.seed ^ 0xa1,
    )?;
    let held_out = held_out_index(
        &|domain| {
            profile
                .domain(domain)
                .map_or(vec![1], |p| vec![p.difficulty, p.learning_zone_difficulty])
        },
        d.held_out_per_domain,
        config.seed,
    );
    let validation = ValidationConfig {
        band: d.spec.confidence_band,
        learning_zone: d.spec.learning_zone,
        seed: config.seed,
        ..d.validation.clone()
    };
    let mut checks = ModelChecks {
        policy: &mut policy,
        tokenizer: &tokenizer,
        format,
        alignment_gradient,
    };
    let mut external = external_source(config, &held_out, log)?;
    for (k, spec) in specs.iter().enumerate() {
        let started = Instant::now();
        let mut rng = synth_tasks::Rng::new(config.seed ^ 0xda7a ^ spec.expert_id as u64);
        let generation_spec: openrouter_gen::spec::GenerationSpec = serde_json::to_value(spec)
            .and_then(serde_json::from_value)
            .map_err(|e| Error::Input(format!("spec of expert {k} as a generation spec: {e}")))?;
        let mut source = |n: usize| -> self_eval::Result<Vec<self_eval::validate::Candidate>> {
            match external.as_mut() {
                None => synth_candidates(spec, n, &mut rng),
                Some(source) => {
                    let problems = source
                        .problems(&generation_spec, n)
                        .map_err(|e| self_eval::Error::Data(e.to_string()))?;
                    Ok(problems
                        .into_iter()
                        .filter_map(|p| {
                            let source = p.source.clone();
                            p.to_problem()
                                .map(|problem| self_eval::validate::Candidate { problem, source })
                        })
                        .collect())
                }
            }
        };
        let built = build_dataset(&mut checks, spec, &mut source, &held_out, &validation);
        if let Some(source) = &external {
            write_generation_report(dir, source.as_ref())?;
        }
        let (kept, report) = built?;
        if let Some(source) = &external {
            let generation = source.report();
            log(&format!(
                "data {k} `{}`: {} problems from {}, {} requests ({} from the cache), ${:.4} of ${:.2} spent{}",
                spec.expert_name,
                generation
                    .per_expert
                    .get(&spec.expert_name)
                    .map_or(0, |t| t.accepted),
                source.name(),
                generation.total.requests,
                generation.total.cache_hits,
                generation.total.usd,
                config.budget.usd,
                generation
                    .stopped
                    .as_ref()
                    .map(|s| format!("; stopped: {s}"))
                    .unwrap_or_default()
            ));
            if let Some(stopped) = &generation.stopped
                && !stopped.starts_with("budget")
            {
                return Err(Error::Input(format!(
                    "{}: problem generation stopped: {stopped}",
                    dir.join("generation_report.md").display()
                )));
            }
        }
        let report_path = dir.join(format!("dataset_{k}.report.json"));
        write_json(&report_path, &report)?;
        let lines: Vec<String> = kept
            .iter()
            .map(serde_json::to_string)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Input(e.to_string()))?;
        write_text(&dataset_path(run, k), &(lines.join("\n") + "\n"))?;
        let mut reasons: Vec<(&String, &usize)> = report.rejections.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let reasons: Vec<String> = reasons
            .iter()
            .take(3)
            .map(|(r, n)| format!("{r}: {n}"))
            .collect();
        log(&format!(
            "data {k} `{}`: {} of {} wanted accepted from {} candidates (first batch {:.2}), expected accuracy {:.3}{}; rejected: {} ({:.1} s)",
            spec.expert_name,
            report.accepted,
            report.wanted,
            report.validated,
            report.initial_acceptance_rate,
            report.expected_accuracy,
            if report.in_learning_zone {
                " (in the zone)"
            } else {
                ""
            },
            if reasons.is_empty() {
                "none".to_owned()
            } else {
                reasons.join(", ")
            },
            started.elapsed().as_secs_f64()
        ));
        log(&crate::console::progress_line("data", k + 1, specs.len()));
        if report.accepted < d.min_problems {
            return Err(Error::Input(format!(
                "{}: only {} problems of expert {k} `{}` passed validation, fewer than data.min_problems = {}; \
                 the model solves too few of them within data.spec.confidence_band {:?} (rejections: {})",
                report_path.display(),
                report.accepted,
                spec.expert_name,
                d.min_problems,
                d.spec.confidence_band,
                reasons.join(", ")
            )));
        }
    }
    Ok(())
}

/// The source of candidate problems other than the built-in procedural one, as
/// `data.source` and `budget.usd` choose.
fn external_source(
    config: &Config,
    held_out: &self_eval::validate::DuplicateIndex,
    log: Log<'_>,
) -> Result<Option<Box<dyn openrouter_gen::source::ProblemSource>>> {
    use crate::config::DataSource;
    let d = &config.data;
    let has_key = openrouter_gen::client::ApiKey::from_env(&d.api.client.api_key_env).is_some();
    let source = match d.source {
        DataSource::Auto if has_key && config.budget.usd > 0.0 => DataSource::Api,
        DataSource::Auto => {
            if has_key {
                log(&format!(
                    "data: ${} is set but budget.usd is 0: problems come from synth-tasks (set budget.usd to use the API)",
                    d.api.client.api_key_env
                ));
            }
            DataSource::Procedural
        }
        other => other,
    };
    let near = d.validation.near_duplicate;
    Ok(match source {
        DataSource::Procedural | DataSource::Auto => None,
        DataSource::File => {
            let path = d.file.as_ref().ok_or_else(|| {
                Error::Config("data.source is \"file\" but data.file is not set".into())
            })?;
            let file = openrouter_gen::source::FileSource::open(path, held_out.clone(), near)
                .map_err(|e| Error::Input(e.to_string()))?;
            Some(Box::new(file))
        }
        DataSource::Api => {
            let api_config = openrouter_gen::generate::GeneratorConfig {
                budget_usd: config.budget.usd,
                seed: config.seed,
                ..d.api.clone()
            };
            let api = openrouter_gen::generate::ApiSource::new(api_config, held_out.clone())
                .map_err(|e| Error::Input(format!("data.api: {e}")))?;
            Some(Box::new(api))
        }
    })
}

/// `data/generation_report.{json,md}`: what the external source did and cost.
fn write_generation_report(
    dir: &Path,
    source: &dyn openrouter_gen::source::ProblemSource,
) -> Result<()> {
    let report = source.report();
    write_json(&dir.join("generation_report.json"), &report)?;
    write_text(&dir.join("generation_report.md"), &report.to_markdown())?;
    Ok(())
}

/// Expert `k`'s validated training problems.
pub fn read_dataset(run: &RunDir, k: usize) -> Result<Vec<synth_tasks::Problem>> {
    let path = dataset_path(run, k);
    let text = std::fs::read_to_string(&path).map_err(|e| io_error(&path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| io_error(&path, format!("line {}: not a problem: {e}", i + 1)))
        })
        .collect()
}

/// The plan's experts as the search sees them.
pub fn roles(run: &RunDir) -> Result<Vec<ExpertRole>> {
    let record: PlanRecord = read_json(&run.stage_dir("plan").join("plan.json"))?;
    Ok(record
        .plan
        .expert_definitions
        .iter()
        .map(|e| ExpertRole {
            name: e.name.clone(),
            domains: e.domains.clone(),
            general: e.name == "general",
        })
        .collect())
}

/// The stage name of expert `k`.
pub fn expert_stage(k: usize) -> String {
    format!("expert-{k}")
}

fn domain_of(name: &str) -> Result<Domain> {
    Domain::from_name(name)
        .ok_or_else(|| Error::Input(format!("unknown domain `{name}` in the plan")))
}

/// Stage 2: expert `k` of the plan, trained with the behaviour gate.
pub fn train_stage(
    run: &RunDir,
    config: &Config,
    k: usize,
    dir: &Path,
    log: Log<'_>,
    on_step: &mut dyn FnMut(&reinforce_kl::StepMetrics),
) -> Result<()> {
    let roles = roles(run)?;
    let role = roles.get(k).ok_or_else(|| {
        Error::Input(format!(
            "the plan has {} experts, not {}",
            roles.len(),
            k + 1
        ))
    })?;
    let profile: Profile = read_json(&run.stage_dir("profile").join("profile.json"))?;
    let difficulty = |d: Domain| profile.domain(d).map_or(1, |p| p.difficulty);
    let (mut model, tokenizer) = load_float(run, config)?;
    let t = &config.training;
    let domains: Vec<Domain> = role
        .domains
        .iter()
        .map(|d| domain_of(d))
        .collect::<Result<_>>()?;
    let reported: Vec<Domain> = profile.domains.iter().map(|p| p.domain).collect();
    // Validation and held-out problems come straight from the generators (train and
    // held-out splits); training problems are stage 1's validated dataset.
    let mut data = ExpertData::synth(
        &domains,
        &reported,
        &difficulty,
        DataSizes {
            train: 0,
            validation: t.validation_problems,
            held_out: t.held_out,
        },
        config.seed ^ k as u64,
        config.seed ^ 0x4e1d,
    );
    data.train = read_dataset(run, k)?;
    let train_prompts: std::collections::HashSet<&str> =
        data.train.iter().map(|p| p.prompt.as_str()).collect();
    data.validation
        .retain(|p| !train_prompts.contains(p.prompt.as_str()));
    let suites: Vec<Suite> = Suite::synth_all(t.suite_items, Split::HeldOut, config.seed ^ 0x5);
    let gate = Gate::capture(
        &model,
        &tokenizer,
        suites,
        &ScoreConfig::default(),
        GateConfig::default(),
    )?;
    let decomposition = Decomposition::compute(&mut model, &Selection::mlp(), false)?;
    let mut expert_config = expert_config(config);
    expert_config.trainer.seed = config.seed ^ (k as u64 + 1);
    let mut policy = new_policy(model, &tokenizer, decomposition, &role.name, &expert_config)?;
    // Beside the stage's folder, which is emptied when the stage starts again: a run
    // killed during training resumes from the last checkpoint.
    let checkpoint = dir.with_file_name(format!(
        ".{}.checkpoint",
        dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    let outcome = train_expert_observed(
        &mut policy,
        &tokenizer,
        &data,
        &gate,
        &expert_config,
        Some(&checkpoint),
        on_step,
    )?;
    let (_, mut expert) = policy.into_parts().map_err(self_eval::Error::from)?;
    expert.training = serde_json::json!({ "domains": role.domains });
    expert.save(&dir.join("expert.safetensors"))?;
    let mut outcome_json =
        serde_json::to_value(&outcome).map_err(|e| Error::Input(e.to_string()))?;
    // Wall times, and the counts of work done by this process (fewer after a resume
    // from the checkpoint), are measurements of this execution: `measurements.json`,
    // apart from the deterministic record.
    let mut measured = serde_json::Map::new();
    if let Some(map) = outcome_json.as_object_mut() {
        for key in [
            "seconds",
            "validation_seconds",
            "steps_here",
            "rollouts",
            "rollout_tokens",
        ] {
            if let Some(value) = map.remove(key) {
                measured.insert(key.to_owned(), value);
            }
        }
    }
    write_json(&dir.join("outcome.json"), &outcome_json)?;
    write_json(&dir.join("measurements.json"), &measured)?;
    let _ = std::fs::remove_file(&checkpoint);
    let lift: Vec<String> = role
        .domains
        .iter()
        .map(|d| {
            format!(
                "{d} {:.3} -> {:.3}",
                outcome.accuracy_before[d], outcome.accuracy_after[d]
            )
        })
        .collect();
    log(&format!(
        "expert {k} `{}`: {} in {:.0} s; gate {:?}",
        role.name,
        lift.join(", "),
        outcome.seconds,
        outcome.gate_report.verdict
    ));
    Ok(())
}

/// Builds stage 3's problem from the run's files.
fn mixture_problem(run: &RunDir, config: &Config) -> Result<(MixtureProblem, Profile, SearchSet)> {
    let (mut model, tokenizer) = load_float(run, config)?;
    let profile: Profile = read_json(&run.stage_dir("profile").join("profile.json"))?;
    let roles = roles(run)?;
    let experts: Vec<Expert> = (0..roles.len())
        .map(|k| Expert::load(&run.stage_dir(&expert_stage(k)).join("expert.safetensors")))
        .collect::<std::result::Result<_, _>>()?;
    let bounds = derive_bounds(&profile, &roles, &config.search.bounds)?;
    let s = &config.search;
    let set = SearchSet::from_profile(&profile, s.problems, s.suite_items, config.seed);
    let selection = experts
        .first()
        .map_or_else(Selection::mlp, |e| e.selection.clone());
    let decomposition = Decomposition::compute(&mut model, &selection, false)?;
    let problem = MixtureProblem::new(
        model,
        tokenizer,
        decomposition,
        experts,
        roles,
        &bounds,
        &set,
        self_eval::mixture::ProblemConfig {
            format: config.model.prompt.format(),
            ..s.problem.clone()
        },
    )?;
    Ok((problem, profile, set))
}

/// Stage 3: guided NSGA-II over mixtures.
pub fn search_stage(run: &RunDir, config: &Config, dir: &Path, log: Log<'_>) -> Result<()> {
    let (problem, profile, _) = mixture_problem(run, config)?;
    let bounds = derive_bounds(&profile, problem.roles(), &config.search.bounds)?;
    write_json(&dir.join("bounds.json"), &bounds)?;
    for b in &bounds {
        log(&format!(
            "bounds {}: [{}, {}] ({})",
            b.expert, b.lower, b.upper, b.reason
        ));
    }
    let mut search_config = config.search.search.clone();
    search_config.seed = config.seed;
    let started = Instant::now();
    let generations = search_config.generations;
    let mut progress = |point: &CurvePoint, record: Option<&GuidanceRecord>| {
        log(&crate::console::progress_line(
            "search",
            point.generation,
            generations,
        ));
        if point.generation.is_multiple_of(5) || record.is_some() {
            log(&format!(
                "search: {}, {:.0} s",
                point.line(),
                started.elapsed().as_secs_f64()
            ));
        }
        if let Some(r) = record {
            log(&format!("search: {}", r.line()));
        }
    };
    let mut outcome = search(
        &problem,
        &search_config,
        Hooks {
            progress: Some(&mut progress),
            ..Hooks::default()
        },
    )?;
    outcome.seconds = 0.0;
    outcome.stats.forward_seconds = 0.0;
    write_json(&dir.join("search.json"), &outcome)?;
    write_json(&dir.join("archive.json"), &problem.archive())?;
    write_json(&dir.join("base_scores.json"), problem.base())?;
    nsga2::plot::curve_svg(
        &dir.join("hypervolume.svg"),
        "Hypervolume per generation",
        "hypervolume",
        &outcome
            .curve
            .iter()
            .map(|c| (c.generation, c.hypervolume))
            .collect::<Vec<_>>(),
    )?;
    let front: Vec<f64> = outcome
        .front
        .iter()
        .flat_map(|m| [m.scores.overall, m.scores.worst])
        .collect();
    nsga2::plot::front_svg(
        &dir.join("front.svg"),
        "Final front: overall (x) vs worst (y)",
        &front,
        &[],
    )?;
    log(&format!(
        "search: {} generations, {} evaluations ({} cached), {}",
        outcome.generations, outcome.stats.requested, outcome.stats.cache_hits, outcome.reason
    ));
    Ok(())
}

fn held_out(config: &Config, profile: &Profile) -> HeldOut {
    let t = &config.self_test;
    HeldOut::from_profile(profile, t.problems, t.suite_items, config.seed)
}

/// Zeroes wall-clock fields so the stage's files depend only on inputs and seeds.
fn without_timings(test: &mut SelfTest) {
    for s in std::iter::once(&mut test.base).chain(test.attempts.iter_mut().map(|a| &mut a.scores))
    {
        s.seconds = 0.0;
    }
}

/// Stage 3: the final self-test (R17) and dispatch against the static mixture.
pub fn validate_stage(run: &RunDir, config: &Config, dir: &Path, log: Log<'_>) -> Result<()> {
    let (problem, profile, set) = mixture_problem(run, config)?;
    let search_dir = run.stage_dir("search");
    let archive: Vec<(Vec<f64>, MixtureScores)> = read_json(&search_dir.join("archive.json"))?;
    problem.import_archive(archive)?;
    let outcome: SearchOutcome = read_json(&search_dir.join("search.json"))?;
    let candidates: Vec<_> = outcome
        .front
        .iter()
        .chain(&outcome.fallbacks)
        .cloned()
        .collect();
    let held_out = held_out(config, &profile);
    let mut test = self_test(&problem, &candidates, &held_out, &config.self_test.criteria)?;
    let chosen = test.chosen().clone();
    log(&format!(
        "self-test on {} scenarios: base overall {:.3}, chosen {:?} overall {:.3} ({:+.1}%), {} after {} attempt(s)",
        test.scenarios,
        test.base.overall,
        chosen.alphas,
        chosen.scores.overall,
        100.0 * (chosen.scores.overall / test.base.overall - 1.0),
        if test.passed { "passed" } else { "FAILED" },
        test.attempts.len()
    ));
    // Latency and memory are measurements of this process and this moment: kept in
    // `measurements.json`, apart from the deterministic record.
    let timings: Vec<_> = std::iter::once(&test.base)
        .chain(test.attempts.iter().map(|a| &a.scores))
        .map(|s| serde_json::json!({"latency_ms": s.latency_ms, "latency_p95_ms": s.latency_p95_ms, "peak_rss_mb": s.peak_rss_mb, "seconds": s.seconds}))
        .collect();
    write_json(&dir.join("measurements.json"), &timings)?;
    without_timings(&mut test);
    write_json(&dir.join("self_test.json"), &test)?;
    let zeros = vec![0.0; chosen.alphas.len()];
    let router = Router::fit(&problem, &zeros, &set.problems)?;
    let mut dispatch = evaluate_dispatch(&problem, &router, &chosen.alphas, &held_out)?;
    log(&format!(
        "dispatch: router accuracy {:.3}, overall {:.3} vs static {:.3}, first pass {:.2} ms/query",
        dispatch.router_accuracy, dispatch.overall, dispatch.static_overall, dispatch.first_pass_ms
    ));
    dispatch.seconds = 0.0;
    write_json(&dir.join("dispatch.json"), &dispatch)?;
    Ok(())
}

/// Stage 3: the Phase 8 handoff (R18).
pub fn export_stage(run: &RunDir, config: &Config, dir: &Path, log: Log<'_>) -> Result<()> {
    let (problem, _, _) = mixture_problem(run, config)?;
    let test: SelfTest = read_json(&run.stage_dir("validate").join("self_test.json"))?;
    let n = problem.roles().len();
    let handoff = self_eval::handoff::export(
        &problem,
        &float_model_dir(run),
        &test,
        n,
        &dir.join("handoff"),
    )?;
    log(&format!(
        "export: {} experts, mixture {:?}, overall accuracy {:.3}, {:.2} MiB merged model",
        handoff.expert_library.len(),
        handoff.optimal_mixture,
        handoff.performance.overall_accuracy,
        handoff.size_mb
    ));
    Ok(())
}
