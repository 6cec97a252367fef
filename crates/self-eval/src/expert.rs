//! Training one expert: the glue between problems, the SVF policy, the REINFORCE + KL
//! trainer and the behaviour gate, shared by the `train_expert` example, the
//! orchestrator and tests. Greedy accuracy before and after on every held-out set, the
//! gate's scores before and after, events, timings.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use eudaimonia_gate::{Gate, GateReport, PromptFormat, SuiteScore};
use lm::{CausalLm, Tokenizer};
use reinforce_kl::{RolloutConfig, SvfPolicy, TrainerConfig};
use serde::{Deserialize, Serialize};
use svf::{Decomposition, Expert};
use synth_tasks::Problem;

use crate::answer::Answerer;
use crate::{Error, Result};

/// Settings of one expert's training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExpertConfig {
    /// The trainer's settings. Default: `reinforce-kl`'s, with 20 epochs, patience 10
    /// and score chunks of 32.
    pub trainer: TrainerConfig,
    /// Initial z (reference composition: sigmoid(z) scales). Default 0.1.
    pub init_z: f64,
    /// Standard deviation of the initial noise on z. Default 0.01.
    pub init_noise: f64,
    /// Most new tokens of a rollout. Default 12.
    pub max_new_tokens: usize,
    /// Prompt format. Default raw.
    pub format: PromptFormat,
}

impl Default for ExpertConfig {
    fn default() -> Self {
        Self {
            trainer: TrainerConfig {
                epochs: 20,
                patience: 10,
                score_chunk: Some(32),
                ..TrainerConfig::default()
            },
            init_z: 0.1,
            init_noise: 0.01,
            max_new_tokens: 12,
            format: PromptFormat::Raw,
        }
    }
}

/// Builds the policy an expert trains: `model` with `decomposition` installed and a
/// fresh expert (seeded by the trainer's seed).
pub fn new_policy(
    model: CausalLm,
    tokenizer: &Tokenizer,
    decomposition: Decomposition,
    name: &str,
    config: &ExpertConfig,
) -> Result<SvfPolicy> {
    let expert = Expert::random(
        &decomposition,
        name,
        config.init_z,
        config.init_noise,
        config.trainer.seed as i64,
    );
    let stop = eudaimonia_gate::stop_tokens(&model, tokenizer)?;
    let rollout = RolloutConfig {
        max_new_tokens: config.max_new_tokens,
        stop_tokens: Some(stop),
        ..RolloutConfig::default()
    };
    Ok(SvfPolicy::new(model, decomposition, expert, rollout)?)
}

/// The problems of one expert's training.
#[derive(Debug, Clone, Default)]
pub struct ExpertData {
    /// Training problems (rewarded +1 when a rollout verifies, -1 otherwise).
    pub train: Vec<Problem>,
    /// Validation problems (the best epoch is chosen on them; keep them apart from
    /// `held_out`).
    pub validation: Vec<Problem>,
    /// Held-out sets for the before/after report, by name.
    pub held_out: BTreeMap<String, Vec<Problem>>,
}

/// What training one expert did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExpertOutcome {
    /// Greedy accuracy per held-out set before training.
    pub accuracy_before: BTreeMap<String, f64>,
    /// The same after.
    pub accuracy_after: BTreeMap<String, f64>,
    /// Gate scores before (the base model, z at its initial value).
    pub gate_before: BTreeMap<String, SuiteScore>,
    /// Gate scores after.
    pub gate_after: BTreeMap<String, SuiteScore>,
    /// The gate's verdict after.
    pub gate_report: GateReport,
    /// The trainer's final state (events included).
    pub training: reinforce_kl::TrainingState,
    /// Steps run by this call.
    pub steps_here: usize,
    /// Rollouts rewarded.
    pub rollouts: usize,
    /// Tokens in them.
    pub rollout_tokens: usize,
    /// Wall time of training, seconds (validation included).
    pub seconds: f64,
    /// Of which validation.
    pub validation_seconds: f64,
}

/// How many problems [`ExpertData::synth`] draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataSizes {
    /// Training problems, split evenly over the expert's domains.
    pub train: usize,
    /// Validation problems, split the same way, disjoint from the training ones.
    pub validation: usize,
    /// Held-out problems per reported domain.
    pub held_out: usize,
}

impl ExpertData {
    /// An expert's problems from `synth-tasks`: distinct training-split problems of
    /// each of `domains` at its difficulty (training and validation disjoint, the
    /// trainer samples prompts at random so their order does not matter), and
    /// held-out problems of every domain in `reported` for the before/after report.
    pub fn synth(
        domains: &[synth_tasks::Domain],
        reported: &[synth_tasks::Domain],
        difficulty: &dyn Fn(synth_tasks::Domain) -> u32,
        sizes: DataSizes,
        train_seed: u64,
        held_out_seed: u64,
    ) -> Self {
        let n = domains.len().max(1);
        let share = |total: usize, i: usize| total / n + usize::from(i < total % n);
        let (mut train, mut validation) = (Vec::new(), Vec::new());
        for (i, &d) in domains.iter().enumerate() {
            let (t, v) = (share(sizes.train, i), share(sizes.validation, i));
            let pool = crate::profile::distinct_problems(
                d,
                difficulty(d),
                synth_tasks::Split::Train,
                t + v,
                train_seed,
            );
            let (a, b) = pool.split_at(t.min(pool.len()));
            train.extend_from_slice(a);
            validation.extend_from_slice(b);
        }
        let held_out = reported
            .iter()
            .map(|&d| {
                let problems = crate::profile::distinct_problems(
                    d,
                    difficulty(d),
                    synth_tasks::Split::HeldOut,
                    sizes.held_out,
                    held_out_seed,
                );
                (d.name().to_owned(), problems)
            })
            .collect();
        Self {
            train,
            validation,
            held_out,
        }
    }
}

/// Greedy-exact accuracy of the policy's current expert on each set.
pub fn accuracies(
    policy: &SvfPolicy,
    tokenizer: &Tokenizer,
    format: &PromptFormat,
    sets: &BTreeMap<String, Vec<Problem>>,
) -> Result<BTreeMap<String, f64>> {
    let model = policy.refreshed_model()?;
    let answerer = Answerer::new(model, tokenizer, format.clone())?;
    sets.iter()
        .map(|(name, problems)| {
            let results = answerer.one_pass(&answerer.encode(problems)?)?;
            let right = results.iter().filter(|r| r.exact).count();
            Ok((name.clone(), right as f64 / results.len().max(1) as f64))
        })
        .collect()
}

/// Trains the policy's expert on `data` with the gate as the per-epoch validator (R10,
/// R11): validation score = greedy accuracy on `data.validation`; the gate's decision
/// raises the KL coefficient or stops and restarts. With `checkpoint`, an interrupted
/// run resumes. On return the policy holds the best expert by validation.
pub fn train_expert(
    policy: &mut SvfPolicy,
    tokenizer: &Tokenizer,
    data: &ExpertData,
    gate: &Gate,
    config: &ExpertConfig,
    checkpoint: Option<&Path>,
) -> Result<ExpertOutcome> {
    train_expert_observed(
        policy,
        tokenizer,
        data,
        gate,
        config,
        checkpoint,
        &mut |_: &reinforce_kl::StepMetrics| {},
    )
}

/// [`train_expert`], with `on_step` called after every optimisation step (run tracking).
pub fn train_expert_observed(
    policy: &mut SvfPolicy,
    tokenizer: &Tokenizer,
    data: &ExpertData,
    gate: &Gate,
    config: &ExpertConfig,
    checkpoint: Option<&Path>,
    on_step: &mut dyn FnMut(&reinforce_kl::StepMetrics),
) -> Result<ExpertOutcome> {
    if data.train.is_empty() || data.validation.is_empty() {
        return Err(Error::Data(
            "an expert needs training and validation problems".into(),
        ));
    }
    let format = &config.format;
    let accuracy_before = accuracies(policy, tokenizer, format, &data.held_out)?;
    let (gate_before, _) = gate.evaluate(policy.refreshed_model()?, tokenizer)?;

    let mut by_prompt: HashMap<Vec<i64>, &Problem> = HashMap::new();
    for p in &data.train {
        by_prompt.insert(tokenizer.encode(&format.render(&p.prompt), false)?, p);
    }
    let prompts: Vec<Vec<i64>> = {
        let mut keys: Vec<Vec<i64>> = by_prompt.keys().cloned().collect();
        keys.sort();
        keys
    };
    let rollouts = Cell::new(0usize);
    let rollout_tokens = Cell::new(0usize);
    let reward = |prompt: &Vec<i64>, completion: &[i64]| -> f64 {
        rollouts.set(rollouts.get() + 1);
        rollout_tokens.set(rollout_tokens.get() + completion.len());
        let Some(problem) = by_prompt.get(prompt) else {
            return -1.0;
        };
        match tokenizer.decode(completion, true) {
            Ok(text) if synth_tasks::verify(problem, &text) => 1.0,
            _ => -1.0,
        }
    };
    let validation_sets = BTreeMap::from([("validation".to_owned(), data.validation.clone())]);
    let validation_seconds = Cell::new(0.0);
    let mut validate = |p: &mut SvfPolicy| -> reinforce_kl::Result<reinforce_kl::Validation> {
        let started = Instant::now();
        let as_policy_error = |e: Error| reinforce_kl::Error::Policy(e.to_string());
        let score = accuracies(p, tokenizer, format, &validation_sets).map_err(as_policy_error)?["validation"];
        let model = p.refreshed_model()?;
        let (scores, report) = gate
            .evaluate(model, tokenizer)
            .map_err(|e| reinforce_kl::Error::Policy(e.to_string()))?;
        validation_seconds.set(validation_seconds.get() + started.elapsed().as_secs_f64());
        Ok(Gate::validation(score, &scores, &report))
    };
    let started = Instant::now();
    let report = reinforce_kl::train_observed(
        policy,
        &prompts,
        &reward,
        &mut validate,
        &config.trainer,
        checkpoint,
        on_step,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let accuracy_after = accuracies(policy, tokenizer, format, &data.held_out)?;
    let (gate_after, gate_report) = gate.evaluate(policy.refreshed_model()?, tokenizer)?;
    let per_step =
        config.trainer.prompts_per_step.min(prompts.len()) * config.trainer.samples_per_prompt;
    Ok(ExpertOutcome {
        accuracy_before,
        accuracy_after,
        gate_before,
        gate_after,
        gate_report,
        training: report.state,
        steps_here: rollouts.get() / per_step.max(1),
        rollouts: rollouts.get(),
        rollout_tokens: rollout_tokens.get(),
        seconds,
        validation_seconds: validation_seconds.get(),
    })
}
