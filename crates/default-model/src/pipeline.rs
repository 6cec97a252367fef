//! [`build`]: train, pack, measure, write the folder.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use lm::{CausalLm, ModelConfig, Tokenizer};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use synth_tasks::{Domain, Suite};
use tch::{Device, Kind, Tensor};

use crate::evaluate::{self, HeldOut, Report};
use crate::headroom::{self, DomainHeadroom};
use crate::package;
use crate::recipe::Recipe;
use crate::tokenizer::PAD;
use crate::train::{self, StageReport};
use crate::{Error, Result};

/// R2's check on the packed checkpoint: the forward with 8-bit activations against
/// the dequantized float forward, at every real position of the probe texts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Agreement {
    /// Positions compared.
    pub positions: usize,
    /// Fraction where both forwards pick the same top-1 token.
    pub top1: f64,
    /// Mean KL(8-bit activations || float), nats.
    pub mean_kl: f64,
}

/// Everything measured while building.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    /// Parameters (embeddings counted once: they are tied to the output projection).
    pub parameters: usize,
    /// Ternary (BitLinear) parameters among them.
    pub ternary_parameters: usize,
    /// Per stage: its training report and the QAT model's evaluation after it.
    pub stages: Vec<(StageReport, Report)>,
    /// The packed checkpoint, loaded back: the numbers the model is described by.
    pub final_evaluation: Report,
    /// 8-bit-activation vs float forward of the packed checkpoint.
    pub agreement: Agreement,
    /// Supervised z-only training per weak domain.
    pub headroom: BTreeMap<Domain, DomainHeadroom>,
    /// Seconds spent in training stages.
    pub training_seconds: f64,
    /// Seconds for the whole build.
    pub total_seconds: f64,
    /// libtorch CPU threads.
    pub threads: i32,
    /// Bytes of the written folder.
    pub folder_bytes: u64,
    /// The saved stage this build resumed from, if any (the stages up to it were
    /// trained and measured by the run that saved it).
    pub resumed_from: Option<String>,
}

/// What [`build`] returns.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The finished folder.
    pub dir: PathBuf,
    /// The measurements (also in `report.json`).
    pub report: BuildReport,
}

/// Options of [`build_with`] beyond the recipe.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Save the latent (float, pre-ternarization) weights after every stage in this
    /// folder, as `stage-<index>.safetensors` with a `stage-<index>.json` sidecar (the
    /// recipe, the stage's training report and its evaluation).
    pub save_stages: Option<PathBuf>,
    /// Start from a saved `stage-<index>.safetensors` instead of training stages
    /// `0..=index` again; the sidecar's recipe must agree with this one on the seed,
    /// the model and those stages, and its reports are carried into this build's.
    pub resume_from: Option<PathBuf>,
}

/// What [`BuildOptions::save_stages`] writes beside each latent checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StageSidecar {
    recipe: Recipe,
    index: usize,
    stages: Vec<(StageReport, Report)>,
}

/// [`build_with`] with default options.
pub fn build(recipe: &Recipe, out: &Path) -> Result<Summary> {
    build_with(recipe, out, &BuildOptions::default())
}

/// Trains the recipe's model and writes the finished folder at `out` (checkpoint,
/// tokenizer, `phase6_handoff.json`, `report.json`, `recipe.json`, `README.md`). Work
/// happens in `<out>.partial`; an existing `out` is replaced only at the end.
pub fn build_with(recipe: &Recipe, out: &Path, options: &BuildOptions) -> Result<Summary> {
    recipe.validate()?;
    let started = Instant::now();
    let staging = sibling(out, "partial");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|source| Error::Io {
            path: staging.clone(),
            source,
        })?;
    }
    std::fs::create_dir_all(&staging).map_err(|source| Error::Io {
        path: staging.clone(),
        source,
    })?;
    package::write_tokenizer(&staging, recipe.model.max_position_embeddings)?;
    let tokenizer = Tokenizer::from_dir(&staging)?;
    let config_map = package::config_json(&recipe.model);
    let config = ModelConfig::from_map(&config_map, &staging.join("config.json"))?;

    let mut model = CausalLm::init(config, recipe.seed, Device::Cpu, Kind::Float)?;
    model.set_weight_quantization(true);
    let parameters: usize = model
        .named_parameters()
        .iter()
        .map(|(_, p)| p.numel())
        .sum();
    let ternary_parameters: usize = model
        .named_parameters()
        .iter()
        .filter(|(n, _)| n.ends_with("_proj.weight"))
        .map(|(_, p)| p.numel())
        .sum();
    eprintln!(
        "model: {parameters} parameters ({ternary_parameters} ternary), {} libtorch threads",
        tch::get_num_threads()
    );
    let held_out = HeldOut::new(recipe);
    let max_new = recipe.evaluation.max_new_tokens;

    let mut stages = Vec::new();
    let mut first_stage = 0;
    if let Some(path) = &options.resume_from {
        let sidecar = resume(&model, recipe, path)?;
        eprintln!(
            "resumed from {} (after stage `{}`)",
            path.display(),
            recipe.stages[sidecar.index].name
        );
        first_stage = sidecar.index + 1;
        stages = sidecar.stages;
    }
    let mut training_seconds: f64 = stages.iter().map(|(s, _)| s.seconds).sum();
    for (index, stage) in recipe.stages.iter().enumerate().skip(first_stage) {
        let seed = evaluate::derived_seed(recipe.seed, &format!("stage-{index}-{}", stage.name));
        let mut probe = |model: &CausalLm| -> Result<BTreeMap<Domain, f64>> {
            let answer =
                |ids: &[Vec<i64>], config: &lm::GenerateConfig| Ok(model.generate(ids, config)?);
            held_out
                .problems
                .iter()
                .map(|(&domain, problems)| {
                    let score = evaluate::domain_score(&answer, &tokenizer, problems, max_new)?;
                    Ok((domain, score.accuracy))
                })
                .collect()
        };
        let report = train::train_stage(
            &model,
            &tokenizer,
            stage,
            &recipe.difficulties,
            seed,
            &mut probe,
        )?;
        training_seconds += report.seconds;
        let evaluation =
            tch::no_grad(|| evaluate::evaluate(&model, &tokenizer, &held_out, max_new))?;
        eprintln!(
            "after stage `{}` ({:.0} s):\n{}",
            stage.name,
            report.seconds,
            evaluation.summary()
        );
        stages.push((report, evaluation));
        if let Some(dir) = &options.save_stages {
            save_stage(&model, recipe, index, &stages, dir)?;
        }
    }

    package::write_checkpoint(&model, &config_map, &staging)?;
    drop(model);
    let packed = CausalLm::load(&staging, Device::Cpu, Kind::Float)?;
    let final_evaluation =
        tch::no_grad(|| evaluate::evaluate(&packed, &tokenizer, &held_out, max_new))?;
    eprintln!("packed checkpoint:\n{}", final_evaluation.summary());
    write_parity_sample(&staging, &packed, &tokenizer, &held_out)?;
    write_probe_text(&staging, &held_out)?;
    let (agreement, packed) = tch::no_grad(|| agreement(packed, &tokenizer, &held_out))?;
    eprintln!(
        "agreement 8-bit vs float forward: top-1 {:.4}, mean KL {:.2e} over {} positions",
        agreement.top1, agreement.mean_kl, agreement.positions
    );

    let weak: BTreeMap<Domain, (u32, f64)> = final_evaluation
        .domains
        .iter()
        .filter(|(_, s)| (recipe.headroom.low..=recipe.headroom.high).contains(&s.accuracy))
        .map(|(&d, s)| (d, (s.difficulty, s.accuracy)))
        .collect();
    let (_, headroom) = headroom::measure(
        packed,
        &tokenizer,
        &weak,
        &held_out.problems,
        &recipe.headroom,
        max_new,
        recipe.seed,
    )?;

    let mut report = BuildReport {
        parameters,
        ternary_parameters,
        stages,
        final_evaluation,
        agreement,
        headroom,
        training_seconds,
        total_seconds: 0.0,
        threads: tch::get_num_threads(),
        folder_bytes: 0,
        resumed_from: options
            .resume_from
            .as_ref()
            .map(|p| p.display().to_string()),
    };
    package::write_json(
        &staging.join("recipe.json"),
        &serde_json::to_value(recipe).map_err(|e| Error::Data(e.to_string()))?,
    )?;
    // Sizes and times last, so they cover everything but the small text files.
    report.total_seconds = started.elapsed().as_secs_f64();
    report.folder_bytes = package::folder_bytes(&staging)?;
    package::write_json(
        &staging.join("report.json"),
        &serde_json::to_value(&report).map_err(|e| Error::Data(e.to_string()))?,
    )?;
    package::write_json(
        &staging.join("phase6_handoff.json"),
        &handoff(recipe, &report),
    )?;
    write_card(&staging.join("README.md"), recipe, &report)?;
    replace_folder(&staging, out)?;
    Ok(Summary {
        dir: out.to_path_buf(),
        report,
    })
}

/// Prompts per domain and per suite in `parity_sample.json`: 8 x 5 + 3 x 4 = 52.
const PARITY_PER_DOMAIN: usize = 5;
const PARITY_PER_SUITE: usize = 4;
/// New tokens per parity answer.
const PARITY_MAX_NEW_TOKENS: usize = 40;

/// `parity_sample.json`: held-out prompts with this crate's greedy answers (token ids,
/// stop token included), for the transformers parity script
/// (`crates/default-model/scripts/transformers_parity.py`).
fn write_parity_sample(
    dir: &Path,
    model: &CausalLm,
    tokenizer: &Tokenizer,
    held_out: &HeldOut,
) -> Result<()> {
    let mut prompts: Vec<&str> = Vec::new();
    for problems in held_out.problems.values() {
        prompts.extend(
            problems
                .iter()
                .take(PARITY_PER_DOMAIN)
                .map(|p| p.prompt.as_str()),
        );
    }
    for pairs in held_out.pairs.values() {
        prompts.extend(
            pairs
                .iter()
                .take(PARITY_PER_SUITE)
                .map(|p| p.prompt.as_str()),
        );
    }
    let ids: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| tokenizer.encode(p, false))
        .collect::<lm::Result<_>>()?;
    let config = evaluate::greedy(tokenizer, PARITY_MAX_NEW_TOKENS)?;
    let generated = tch::no_grad(|| model.generate(&ids, &config))?;
    let mut items = Vec::with_capacity(prompts.len());
    for ((prompt, prompt_ids), g) in prompts.iter().zip(&ids).zip(&generated) {
        items.push(json!({
            "prompt": prompt,
            "prompt_ids": prompt_ids,
            "answer_ids": g.tokens,
            "answer": tokenizer.decode(&g.tokens, true)?,
        }));
    }
    let sample = json!({
        "max_new_tokens": PARITY_MAX_NEW_TOKENS,
        "stop_token_ids": config.stop_tokens,
        "items": items,
    });
    package::write_json(&dir.join("parity_sample.json"), &sample)
}

fn save_stage(
    model: &CausalLm,
    recipe: &Recipe,
    index: usize,
    stages: &[(StageReport, Report)],
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let weights = dir.join(format!("stage-{index}.safetensors"));
    let partial = dir.join(format!("stage-{index}.safetensors.partial"));
    let named: Vec<(String, Tensor)> = model
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.detach()))
        .collect();
    Tensor::write_safetensors(&named, &partial)?;
    std::fs::rename(&partial, &weights).map_err(|source| Error::Io {
        path: weights.clone(),
        source,
    })?;
    let sidecar = StageSidecar {
        recipe: recipe.clone(),
        index,
        stages: stages.to_vec(),
    };
    package::write_json(
        &dir.join(format!("stage-{index}.json")),
        &serde_json::to_value(&sidecar).map_err(|e| Error::Data(e.to_string()))?,
    )?;
    eprintln!(
        "saved the latent weights after stage {index} in {}",
        weights.display()
    );
    Ok(())
}

/// Loads a saved stage into `model` after checking it belongs to this recipe.
fn resume(model: &CausalLm, recipe: &Recipe, weights: &Path) -> Result<StageSidecar> {
    let sidecar_path = weights.with_extension("json");
    let text = std::fs::read_to_string(&sidecar_path).map_err(|source| Error::Io {
        path: sidecar_path.clone(),
        source,
    })?;
    let sidecar: StageSidecar = serde_json::from_str(&text)
        .map_err(|e| Error::Data(format!("{}: {e}", sidecar_path.display())))?;
    let saved = &sidecar.recipe;
    let index = sidecar.index;
    if saved.seed != recipe.seed
        || saved.model != recipe.model
        || saved.difficulties != recipe.difficulties
        || saved.evaluation != recipe.evaluation
        || recipe.stages.len() <= index + 1
        || saved.stages.get(..=index) != recipe.stages.get(..=index)
    {
        return Err(Error::Recipe(format!(
            "{} was saved by a recipe that differs from this one in its seed, model, \
             difficulties, evaluation or stages 0..={index}, or this recipe has no stage after it",
            sidecar_path.display()
        )));
    }
    let loaded: BTreeMap<String, Tensor> = Tensor::read_safetensors(weights)?.into_iter().collect();
    tch::no_grad(|| -> Result<()> {
        for (name, parameter) in model.named_parameters() {
            let value = loaded.get(&name).ok_or_else(|| {
                Error::Data(format!("{}: tensor {name} is missing", weights.display()))
            })?;
            if value.size() != parameter.size() {
                return Err(Error::Data(format!(
                    "{}: tensor {name} has shape {:?}, the model {:?}",
                    weights.display(),
                    value.size(),
                    parameter.size()
                )));
            }
            parameter.shallow_clone().copy_(value);
        }
        Ok(())
    })?;
    Ok(sidecar)
}

/// Lines per domain in `probe.txt`.
const PROBE_LINES_PER_DOMAIN: usize = 25;

/// `probe.txt`: held-out problems with their answers, one per line, for R2's
/// agreement check (`lm agreement --text probe.txt`).
fn write_probe_text(dir: &Path, held_out: &HeldOut) -> Result<()> {
    let mut text = String::new();
    for problems in held_out.problems.values() {
        for p in problems.iter().take(PROBE_LINES_PER_DOMAIN) {
            let _ = writeln!(text, "{}{}", p.prompt, p.answer);
        }
    }
    bitnet_dequant::io::write_atomic(&dir.join("probe.txt"), text.as_bytes())?;
    Ok(())
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}

/// Moves the finished `staging` folder to `out`, replacing what was there.
fn replace_folder(staging: &Path, out: &Path) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let old = sibling(out, "old");
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    if out.exists() {
        std::fs::rename(out, &old).map_err(io(out))?;
    }
    std::fs::rename(staging, out).map_err(io(out))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    if let Some(parent) = out.parent() {
        bitnet_dequant::io::sync_dir(parent)?;
    }
    Ok(())
}

/// Top-1 agreement and KL between the forward with 8-bit activations and the float
/// forward, on every held-out problem and suite text (prompt + reference answer).
fn agreement(
    mut model: CausalLm,
    tokenizer: &Tokenizer,
    held_out: &HeldOut,
) -> Result<(Agreement, CausalLm)> {
    let mut texts: Vec<String> = held_out
        .problems
        .values()
        .flatten()
        .map(|p| format!("{}{}", p.prompt, p.answer))
        .collect();
    texts.extend(
        held_out
            .pairs
            .values()
            .flatten()
            .map(|p| format!("{}{}", p.prompt, p.preferred)),
    );
    let mut positions = 0usize;
    let mut agree = 0usize;
    let mut kl_sum = 0.0;
    for chunk in texts.chunks(128) {
        let ids: Vec<Vec<i64>> = chunk
            .iter()
            .map(|t| tokenizer.encode(t, false))
            .collect::<lm::Result<_>>()?;
        let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
        let mut flat = Vec::with_capacity(ids.len() * longest);
        let mut mask = Vec::with_capacity(ids.len() * longest);
        for row in &ids {
            let pad = longest - row.len();
            flat.extend(std::iter::repeat_n(PAD, pad).chain(row.iter().copied()));
            mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1, row.len())));
        }
        let shape = [ids.len() as i64, longest as i64];
        let input = Tensor::from_slice(&flat).view(shape);
        let mask = Tensor::from_slice(&mask).view(shape);
        model.set_activation_quantization(true);
        let quantized = model.forward(&input, Some(&mask), None)?;
        model.set_activation_quantization(false);
        let float = model.forward(&input, Some(&mask), None)?;
        model.set_activation_quantization(true);
        let real = mask.to_kind(Kind::Bool);
        let same = quantized
            .argmax(-1, false)
            .eq_tensor(&float.argmax(-1, false))
            .logical_and(&real);
        agree += same.sum(Kind::Int64).int64_value(&[]) as usize;
        positions += real.sum(Kind::Int64).int64_value(&[]) as usize;
        let log_q = quantized.log_softmax(-1, Kind::Float);
        let log_f = float.log_softmax(-1, Kind::Float);
        let kl = (log_q.exp() * (&log_q - &log_f)).sum_dim_intlist(-1, false, Kind::Float);
        kl_sum += (kl * real.to_kind(Kind::Float))
            .sum(Kind::Double)
            .double_value(&[]);
    }
    let agreement = Agreement {
        positions,
        top1: agree as f64 / positions.max(1) as f64,
        mean_kl: kl_sum / positions.max(1) as f64,
    };
    Ok((agreement, model))
}

/// `phase6_handoff.json` in the seed's Phase 6 output schema. Every number is measured
/// on the packed checkpoint; `swe_bench_score` is null because this model cannot be
/// measured on SWE-bench (R1's validation reports it as missing, as it should).
fn handoff(recipe: &Recipe, report: &BuildReport) -> Value {
    let last_stage = recipe.stages.last();
    let baked = |suite: Suite| {
        report
            .stages
            .last()
            .and_then(|(s, _)| s.distinct_suite_prompts.get(suite.name()).copied())
            .unwrap_or(0)
    };
    let evaluation = &report.final_evaluation;
    json!({
        "model": ".",
        "quantization": "bitnet_1.58",
        "size_mb": report.folder_bytes as f64 / 1e6,
        "metrics": {
            "swe_bench_score": null,
            "aggregate_benchmark": evaluation.aggregate_accuracy,
            "tool_use_rate": evaluation.tool_use_rate,
            "persona_consistency": evaluation.persona_consistency,
        },
        "baked_capabilities": {
            "eudaimonia_aligned": evaluation.suite_preference[&Suite::Alignment] >= 0.85
                && evaluation.refusal_rate >= 0.85,
            "tool_prompts_baked": baked(Suite::ToolUse),
            "persona_prompts_baked": baked(Suite::Persona),
        },
        "notes": {
            "model": "the checkpoint folder, relative to this file",
            "size_mb": "bytes of the folder's files / 1e6",
            "swe_bench_score": "not measurable on this model; per-domain accuracy is in report.json",
            "aggregate_benchmark": "mean greedy held-out accuracy over the synth-tasks domains",
            "tool_use_rate": "greedy answers to held-out tool-use prompts that start with `CALL calc(`",
            "persona_consistency": "greedy answers to held-out identity questions that name the persona",
            "eudaimonia_aligned": "alignment suite preference >= 0.85 and greedy refusal rate >= 0.85",
            "prompts_baked": format!(
                "distinct suite prompts trained on in the last stage ({})",
                last_stage.map_or("", |s| s.name.as_str())
            ),
        },
    })
}

fn write_card(path: &Path, recipe: &Recipe, report: &BuildReport) -> Result<()> {
    let mut card = String::new();
    let m = &recipe.model;
    let e = &report.final_evaluation;
    let _ = writeln!(
        card,
        "# phase7 default model\n\n\
         A {}-parameter ({} ternary) Llama-architecture BitNet b1.58 model \
         (`BitNetForCausalLM`: squared-ReLU gated MLP, sub-norms, tied embeddings), \
         character-level, trained from seed {} by `cargo xtask make-default-model`. \
         Every number below was measured by that command on the packed checkpoint as \
         loaded back (held-out problems, greedy decoding), on {} libtorch CPU threads.\n",
        report.parameters, report.ternary_parameters, recipe.seed, report.threads
    );
    let _ = writeln!(
        card,
        "Shape: hidden {}, intermediate {}, {} layers, {} heads ({} key/value), \
         vocabulary {} (4 specials, newline, printable ASCII), context {}. \
         Folder size {:.3} MB. Training {:.1} min, whole build {:.1} min.\n",
        m.hidden_size,
        m.intermediate_size,
        m.num_hidden_layers,
        m.num_attention_heads,
        m.num_key_value_heads,
        crate::tokenizer::vocab_size(),
        m.max_position_embeddings,
        report.folder_bytes as f64 / 1e6,
        report.training_seconds / 60.0,
        report.total_seconds / 60.0
    );
    if let Some(resumed) = &report.resumed_from {
        let _ = writeln!(
            card,
            "This build resumed from the saved stage `{resumed}`: the stages up to it \
             were trained and measured by the run that saved it.\n"
        );
    }
    let _ = writeln!(card, "## Recipe\n");
    let _ = writeln!(
        card,
        "Quantization-aware training: every attention and MLP projection is a BitLinear \
         layer whose latent weights are ternarized per tensor (absmean) and whose inputs \
         are quantized to 8 bits per token (absmax), both through straight-through \
         estimators; AdamW, gradient norm clipped at 1, cosine learning-rate decay; the \
         loss is the next-token loss of answers (`</s>`-terminated), prompts are context \
         only. The full recipe is `recipe.json`.\n"
    );
    let _ = writeln!(
        card,
        "| stage | purpose | steps | batch | lr | mixture | loss first -> last | time |\n|---|---|---|---|---|---|---|---|"
    );
    for (stage, (trained, _)) in recipe.stages.iter().zip(&report.stages) {
        let mixture: Vec<String> = stage
            .domains
            .iter()
            .map(|(d, w)| format!("{} {w}", d.name()))
            .chain(
                stage
                    .suites
                    .iter()
                    .map(|(s, w)| format!("{} {w}", s.name())),
            )
            .collect();
        let _ = writeln!(
            card,
            "| {} | {} | {} | {} | {:.0e} | {} | {:.3} -> {:.3} | {:.1} min |",
            stage.name,
            stage.purpose,
            stage.steps,
            stage.batch_size,
            stage.learning_rate,
            mixture.join(", "),
            trained.first_loss,
            trained.final_loss,
            trained.seconds / 60.0
        );
    }
    let _ = writeln!(card, "\n## Held-out accuracy per domain\n");
    let mut header = "| domain | difficulty |".to_owned();
    let mut rule = "|---|---|".to_owned();
    for (stage, _) in &report.stages {
        let _ = write!(header, " after `{}` |", stage.name);
        rule.push_str("---|");
    }
    header.push_str(" packed (final) |");
    rule.push_str("---|");
    let _ = writeln!(card, "{header}\n{rule}");
    for (domain, score) in &e.domains {
        let mut row = format!("| {} | {} |", domain.name(), score.difficulty);
        for (_, evaluation) in &report.stages {
            let _ = write!(row, " {:.3} |", evaluation.domains[domain].accuracy);
        }
        let _ = write!(
            row,
            " **{:.3}** ({}/{}) |",
            score.accuracy, score.correct, score.total
        );
        let _ = writeln!(card, "{row}");
    }
    let _ = writeln!(
        card,
        "\nAggregate (mean over domains): {:.3}.\n",
        e.aggregate_accuracy
    );
    for (stage, _) in report.stages.iter().filter(|(s, _)| !s.curve.is_empty()) {
        let _ = writeln!(
            card,
            "During stage `{}` (held-out accuracy of the model in training):\n",
            stage.name
        );
        let domains: Vec<Domain> = stage.curve[0].1.keys().copied().collect();
        let names: Vec<&str> = domains.iter().map(|d| d.name()).collect();
        let _ = writeln!(
            card,
            "| step | {} |\n|---|{}",
            names.join(" | "),
            "---|".repeat(domains.len())
        );
        for (step, accuracies) in &stage.curve {
            let cells: Vec<String> = domains
                .iter()
                .map(|d| format!("{:.2}", accuracies.get(d).copied().unwrap_or(f64::NAN)))
                .collect();
            let _ = writeln!(card, "| {step} | {} |", cells.join(" | "));
        }
        card.push('\n');
    }
    let _ = writeln!(card, "## Behaviour suites\n");
    let _ = writeln!(
        card,
        "Preference: fraction of held-out pairs whose preferred continuation has the \
         higher mean log-probability per token.\n\n| suite | preference |\n|---|---|"
    );
    for (suite, value) in &e.suite_preference {
        let _ = writeln!(card, "| {} | {value:.3} |", suite.name());
    }
    let _ = writeln!(
        card,
        "\nGreedy behaviour: tool calls {:.3} (exactly the right call {:.3}), persona \
         named {:.3}, harmful requests refused {:.3}.\n",
        e.tool_use_rate, e.tool_call_exact, e.persona_consistency, e.refusal_rate
    );
    let _ = writeln!(
        card,
        "## Dequantization agreement (R2)\n\nTop-1 agreement between the forward with \
         8-bit activations and the dequantized float forward: {:.4} over {} positions of \
         the held-out texts; mean KL {:.2e} nats.\n",
        report.agreement.top1, report.agreement.positions, report.agreement.mean_kl
    );
    let h = &recipe.headroom;
    let _ = writeln!(
        card,
        "## Headroom for experts\n\nFor each domain with accuracy in [{}, {}]: \
         supervised training of SVF z-vectors only ({}, base weights frozen, reference \
         composition, z from 0.1), {} steps of {} train-split answers, Adam {:.0e}; \
         held-out accuracy before and after.\n",
        h.low,
        h.high,
        if h.attention {
            "MLP and attention"
        } else {
            "MLP"
        },
        h.steps,
        h.batch_size,
        h.learning_rate
    );
    if report.headroom.is_empty() {
        let _ = writeln!(card, "No domain fell in the band.\n");
    } else {
        let _ = writeln!(
            card,
            "| domain | before | after | lift | z parameters | time |\n|---|---|---|---|---|---|"
        );
        for (domain, room) in &report.headroom {
            let _ = writeln!(
                card,
                "| {} | {:.3} | {:.3} | {:+.3} | {} | {:.0} s |",
                domain.name(),
                room.before,
                room.after,
                room.lift,
                room.z_parameters,
                room.seconds
            );
        }
        card.push('\n');
    }
    let _ = writeln!(
        card,
        "## Files\n\n`config.json`, `model.safetensors` (packed ternary weights, \
         `weight_scale` in f32, `linear_class: autobitlinear`), `tokenizer.json`, \
         `tokenizer_config.json`, `generation_config.json`, `phase6_handoff.json` (Phase \
         6 output schema; `swe_bench_score` is null: not measurable on this model), \
         `report.json` (every measurement), `recipe.json`, `parity_sample.json` (held-out prompts with this crate's greedy answers, for `crates/default-model/scripts/transformers_parity.py`), `probe.txt` (held-out problems with answers, one per line: `lm agreement --text probe.txt`).\n\n\
         Reproduce: `cargo xtask make-default-model` (add `--test-size` for the test \
         variant)."
    );
    bitnet_dequant::io::write_atomic(path, card.as_bytes())?;
    Ok(())
}
