//! Training stages: quantization-aware next-token training on answers drawn from a
//! mixture of synth-tasks domains (train split) and behaviour suites (their preferred
//! continuations).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use lm::{CausalLm, Tokenizer};
use reinforce_kl::{AdamW, OptimizerConfig, Schedule};
use serde::{Deserialize, Serialize};
use synth_tasks::{Domain, Rng, Split, Suite};
use tch::{Kind, Tensor};

use crate::recipe::Stage;
use crate::tokenizer::EOS;
use crate::{Error, Result};

/// Where an example comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// A capability domain at its recipe difficulty.
    Domain(Domain),
    /// A behaviour suite.
    Suite(Suite),
}

/// One training example: prompt tokens and the answer tokens (ending with `</s>`) the
/// loss is taken on.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Where it comes from.
    pub source: Source,
    /// Prompt text.
    pub prompt: String,
    /// Prompt tokens.
    pub prompt_ids: Vec<i64>,
    /// Answer tokens, `</s>` last.
    pub answer_ids: Vec<i64>,
}

/// Draws examples from a stage's mixture (train split only), seeded.
pub struct Sampler<'a> {
    entries: Vec<(Source, f64)>,
    total: f64,
    difficulties: &'a BTreeMap<Domain, u32>,
    rng: Rng,
}

impl<'a> Sampler<'a> {
    /// A sampler over `stage`'s mixture.
    pub fn new(stage: &Stage, difficulties: &'a BTreeMap<Domain, u32>, seed: u64) -> Self {
        let entries: Vec<(Source, f64)> = stage
            .domains
            .iter()
            .map(|(&d, &w)| (Source::Domain(d), w))
            .chain(stage.suites.iter().map(|(&s, &w)| (Source::Suite(s), w)))
            .filter(|(_, w)| *w > 0.0)
            .collect();
        let total = entries.iter().map(|(_, w)| w).sum();
        Self {
            entries,
            total,
            difficulties,
            rng: Rng::new(seed),
        }
    }

    /// The next example.
    pub fn next(&mut self, tokenizer: &Tokenizer) -> Result<Example> {
        let mut pick = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * self.total;
        let mut source = self.entries[self.entries.len() - 1].0;
        for &(s, w) in &self.entries {
            if pick < w {
                source = s;
                break;
            }
            pick -= w;
        }
        let (prompt, answer) = match source {
            Source::Domain(domain) => {
                let difficulty = self.difficulties.get(&domain).copied().unwrap_or(1);
                let p = synth_tasks::generate_in(domain, difficulty, Split::Train, &mut self.rng);
                (p.prompt, p.answer)
            }
            Source::Suite(suite) => {
                let pair = synth_tasks::pairs(suite, 1, Split::Train, &mut self.rng)
                    .pop()
                    .ok_or_else(|| {
                        Error::Data(format!("suite {} has no train prompts", suite.name()))
                    })?;
                (pair.prompt, pair.preferred)
            }
        };
        let prompt_ids = tokenizer.encode(&prompt, false)?;
        let mut answer_ids = tokenizer.encode(&answer, false)?;
        answer_ids.push(EOS);
        Ok(Example {
            source,
            prompt,
            prompt_ids,
            answer_ids,
        })
    }
}

/// What a stage did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageReport {
    /// Stage name.
    pub name: String,
    /// Optimiser steps taken.
    pub steps: usize,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Mean loss (nats per answer token) over the first and the last 5% of steps.
    pub first_loss: f64,
    /// See `first_loss`.
    pub final_loss: f64,
    /// Answer and prompt tokens processed per second.
    pub tokens_per_second: f64,
    /// Distinct training prompts seen, per suite (what "prompts baked" counts).
    pub distinct_suite_prompts: BTreeMap<String, usize>,
    /// Held-out domain accuracy every `evaluate_every` steps: `(step, accuracies)`.
    pub curve: Vec<(usize, BTreeMap<Domain, f64>)>,
}

/// Measures held-out domain accuracy during a stage.
pub type Probe<'a> = dyn FnMut(&CausalLm) -> Result<BTreeMap<Domain, f64>> + 'a;

/// Trains `model` (its [`CausalLm::named_parameters`]) for one stage with AdamW and a
/// cosine schedule; progress goes to stderr about twenty times.
pub fn train_stage(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    stage: &Stage,
    difficulties: &BTreeMap<Domain, u32>,
    seed: u64,
    probe: &mut Probe<'_>,
) -> Result<StageReport> {
    let parameters: Vec<Tensor> = model
        .named_parameters()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let mut optimizer = AdamW::new(
        &parameters,
        OptimizerConfig {
            learning_rate: stage.learning_rate,
            weight_decay: stage.weight_decay,
            max_grad_norm: Some(1.0),
            grokfast: None,
            schedule: Schedule::Cosine {
                total_steps: stage.steps,
                floor: stage.final_learning_rate_fraction,
            },
            ..OptimizerConfig::default()
        },
    );
    let mut sampler = Sampler::new(stage, difficulties, seed);
    let mut suite_prompts: BTreeMap<Suite, BTreeSet<String>> = BTreeMap::new();
    let window = (stage.steps / 20).max(1);
    let mut losses = Vec::with_capacity(stage.steps);
    let mut tokens = 0usize;
    let mut curve = Vec::new();
    let mut probe_seconds = 0.0;
    let started = Instant::now();
    for step in 1..=stage.steps {
        let batch: Vec<Example> = (0..stage.batch_size)
            .map(|_| sampler.next(tokenizer))
            .collect::<Result<_>>()?;
        for example in &batch {
            if let Source::Suite(suite) = example.source {
                suite_prompts
                    .entry(suite)
                    .or_default()
                    .insert(example.prompt.clone());
            }
            tokens += example.prompt_ids.len() + example.answer_ids.len();
        }
        let pairs: Vec<(&[i64], &[i64])> = batch
            .iter()
            .map(|e| (e.prompt_ids.as_slice(), e.answer_ids.as_slice()))
            .collect();
        for p in &parameters {
            p.shallow_clone().zero_grad();
        }
        let out = model.completion_log_probs(&pairs, false)?;
        let loss = -Tensor::cat(&out.token_log_probs, 0).mean(Kind::Float);
        let value = loss.double_value(&[]);
        if !value.is_finite() {
            return Err(Error::Training(format!(
                "stage `{}` step {step}: the loss is {value}",
                stage.name
            )));
        }
        loss.backward();
        let gradients = optimizer.filtered_gradients(&parameters).ok_or_else(|| {
            Error::Training(format!(
                "stage `{}` step {step}: a gradient is missing or not finite",
                stage.name
            ))
        })?;
        let report = optimizer.apply(&parameters, gradients);
        losses.push(value);
        if stage
            .evaluate_every
            .is_some_and(|every| every > 0 && step % every == 0)
        {
            let probing = Instant::now();
            let accuracies = tch::no_grad(|| probe(model))?;
            probe_seconds += probing.elapsed().as_secs_f64();
            let line: Vec<String> = accuracies
                .iter()
                .map(|(d, a)| format!("{} {a:.2}", d.name()))
                .collect();
            eprintln!("[{}] step {step} held-out: {}", stage.name, line.join(", "));
            curve.push((step, accuracies));
        }
        if step % window == 0 || step == stage.steps {
            let elapsed = started.elapsed().as_secs_f64() - probe_seconds;
            let recent = &losses[losses.len().saturating_sub(window)..];
            let mean = recent.iter().sum::<f64>() / recent.len() as f64;
            let eta = elapsed / step as f64 * (stage.steps - step) as f64;
            eprintln!(
                "[{}] step {step}/{} loss {mean:.4} lr {:.2e} grad-norm {:.2} {:.2} steps/s, {:.0} s left",
                stage.name,
                stage.steps,
                report.learning_rate,
                report.grad_norm,
                step as f64 / elapsed,
                eta
            );
        }
    }
    // Training time only: probing is measurement.
    let seconds = started.elapsed().as_secs_f64() - probe_seconds;
    let edge = (stage.steps / 20).max(1);
    let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len().max(1) as f64;
    Ok(StageReport {
        name: stage.name.clone(),
        steps: stage.steps,
        seconds,
        first_loss: mean(&losses[..edge.min(losses.len())]),
        final_loss: mean(&losses[losses.len().saturating_sub(edge)..]),
        tokens_per_second: tokens as f64 / seconds.max(1e-9),
        distinct_suite_prompts: suite_prompts
            .into_iter()
            .map(|(suite, prompts)| (suite.name().to_owned(), prompts.len()))
            .collect(),
        curve,
    })
}
