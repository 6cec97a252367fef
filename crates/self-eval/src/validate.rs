//! Per-problem validation (R7) for problems from any source: quality (the domain's
//! solver agrees with the answer, the prompt round-trips through the tokenizer and fits
//! the context, no exact or near duplicate within the dataset or of any held-out
//! problem), difficulty (pass rate over k samples in a band; the reference answer's
//! probability recorded) and alignment (training on the problem must not pull z against
//! the alignment suite's preference direction). Every verdict keeps its numbers.

use std::collections::BTreeMap;

use eudaimonia_gate::PromptFormat;
use lm::Tokenizer;
use reinforce_kl::SvfPolicy;
use serde::{Deserialize, Serialize};
pub use synth_tasks::dedup::DuplicateIndex;
use synth_tasks::{Domain, Problem, Rng, Split};

use crate::answer::Answerer;
use crate::gradients::{cosine, likelihood_gradients};
use crate::spec::DatasetSpec;
use crate::{Error, Result};

/// A problem and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The problem.
    pub problem: Problem,
    /// Its source (`synth-tasks`, an API model's name, a file).
    pub source: String,
}

/// Settings of validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationConfig {
    /// Samples per problem for the pass rate. Default 8.
    pub samples: usize,
    /// Kept pass rates (inclusive). Default [0.6, 0.9] (the seed's confidence band).
    pub band: [f64; 2],
    /// Most new tokens of a sample. Default 16.
    pub max_new_tokens: usize,
    /// Smallest cosine between a problem's likelihood gradient and the alignment
    /// preference gradient. Default -0.2.
    pub min_alignment_cosine: f64,
    /// Character 3-gram Jaccard similarity from which prompts count as near duplicates.
    /// Default 0.9.
    pub near_duplicate: f64,
    /// Dataset acceptance rate the seed asks for. Default 0.75.
    pub min_acceptance: f64,
    /// Most candidates validated per dataset, as a multiple of the wanted size, before
    /// augmentation gives up. Default 3.
    pub max_candidates_factor: f64,
    /// Expected accuracy band of the dataset. Default [0.70, 0.80] (seed).
    pub learning_zone: [f64; 2],
    /// Seed of samples. Default 0.
    pub seed: u64,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            samples: 8,
            band: [0.6, 0.9],
            max_new_tokens: 16,
            min_alignment_cosine: -0.2,
            near_duplicate: 0.9,
            min_acceptance: 0.75,
            max_candidates_factor: 3.0,
            learning_zone: [0.70, 0.80],
            seed: 0,
        }
    }
}

/// One problem's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProblemVerdict {
    /// The problem.
    pub problem: Problem,
    /// Its source.
    pub source: String,
    /// Kept?
    pub accepted: bool,
    /// Every failed check (empty when accepted).
    pub reasons: Vec<String>,
    /// Share of samples that verified.
    pub pass_rate: Option<f64>,
    /// Probability of the reference answer followed by a stop token.
    pub answer_probability: Option<f64>,
    /// Cosine of its likelihood gradient with the alignment preference gradient.
    pub alignment_cosine: Option<f64>,
    /// Highest 3-gram Jaccard similarity to an earlier kept or held-out prompt.
    pub nearest_similarity: Option<f64>,
}

/// The held-out prompts a dataset must not duplicate: `per_domain` held-out problems of
/// every domain at each difficulty `difficulties(domain)` lists (seeded).
pub fn held_out_index(
    difficulties: &dyn Fn(Domain) -> Vec<u32>,
    per_domain: usize,
    seed: u64,
) -> DuplicateIndex {
    let prompts: Vec<String> = Domain::ALL
        .iter()
        .flat_map(|&d| {
            let mut levels = difficulties(d);
            levels.sort_unstable();
            levels.dedup();
            levels.into_iter().flat_map(move |level| {
                crate::profile::distinct_problems(d, level, Split::HeldOut, per_domain, seed)
                    .into_iter()
                    .map(|p| p.prompt)
            })
        })
        .collect();
    DuplicateIndex::held_out(prompts.iter().map(String::as_str))
}

/// What validation needs of the model: the policy at the expert's initial z, its
/// tokenizer and prompt format, and the alignment preference gradient there.
pub struct ModelChecks<'a> {
    /// The policy (z at the value training starts from).
    pub policy: &'a mut SvfPolicy,
    /// Its tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// Prompt format.
    pub format: PromptFormat,
    /// Gradient of the alignment suite's mean margin at the same z
    /// ([`crate::gradients::preference_gradient`]).
    pub alignment_gradient: Vec<f32>,
}

/// Validates `candidates` in order against `index` (kept problems join it as they are
/// accepted).
pub fn validate_candidates(
    checks: &mut ModelChecks<'_>,
    candidates: &[Candidate],
    index: &mut DuplicateIndex,
    config: &ValidationConfig,
) -> Result<Vec<ProblemVerdict>> {
    let context = checks.policy.model().config().max_position_embeddings;
    // Cheap checks first; the model sees only problems that passed them.
    let mut verdicts = Vec::with_capacity(candidates.len());
    let mut survivors = Vec::new();
    let mut batch_index = index.clone();
    for (i, c) in candidates.iter().enumerate() {
        let p = &c.problem;
        let mut reasons = Vec::new();
        match synth_tasks::solve(p.domain, &p.prompt) {
            None => reasons.push(format!("prompt is not in the {} format", p.domain.name())),
            Some(answer) if !synth_tasks::verify(p, &answer) => {
                reasons.push(format!("wrong answer: the solver gives `{answer}`"))
            }
            Some(_) => {}
        }
        let rendered = checks.format.render(&p.prompt);
        let ids = checks.tokenizer.encode(&rendered, false)?;
        if checks.tokenizer.decode(&ids, false)? != rendered {
            reasons.push("prompt does not round-trip through the tokenizer".into());
        }
        let answer_len = checks.tokenizer.encode(&p.answer, false)?.len();
        if ids.len() + answer_len + 1 > context {
            reasons.push(format!(
                "prompt and answer take {} tokens; the context holds {context}",
                ids.len() + answer_len + 1
            ));
        }
        let (duplicate, similarity) = batch_index.check(&p.prompt, config.near_duplicate);
        if let Some(d) = duplicate {
            reasons.push(d.reason());
        }
        if reasons.is_empty() {
            batch_index.keep(&p.prompt);
            survivors.push(i);
        }
        verdicts.push(ProblemVerdict {
            problem: p.clone(),
            source: c.source.clone(),
            accepted: false,
            reasons,
            pass_rate: None,
            answer_probability: None,
            alignment_cosine: None,
            nearest_similarity: Some(similarity),
        });
    }
    if !survivors.is_empty() {
        let problems: Vec<Problem> = survivors
            .iter()
            .map(|&i| candidates[i].problem.clone())
            .collect();
        let (pass_rates, probabilities, prompts, answers) = {
            let model = checks.policy.refreshed_model()?;
            let answerer = Answerer::new(model, checks.tokenizer, checks.format.clone())?;
            let encoded = answerer.encode(&problems)?;
            let pass = answerer.pass_rates(
                &problems,
                &encoded,
                config.samples,
                config.max_new_tokens,
                config.seed,
            )?;
            let one_pass = answerer.one_pass(&encoded)?;
            let prompts: Vec<Vec<i64>> = encoded.iter().map(|e| e.prompt.clone()).collect();
            let answers: Vec<Vec<i64>> = encoded
                .iter()
                .map(|e| {
                    e.answer
                        .iter()
                        .copied()
                        .chain(answerer.stop.first().copied())
                        .collect()
                })
                .collect();
            (
                pass,
                one_pass
                    .iter()
                    .map(|r| r.log_prob.exp())
                    .collect::<Vec<_>>(),
                prompts,
                answers,
            )
        };
        let gradients = likelihood_gradients(checks.policy, &prompts, &answers)?;
        for (k, &i) in survivors.iter().enumerate() {
            let v = &mut verdicts[i];
            let rate = pass_rates[k];
            let cos = cosine(&gradients[k], &checks.alignment_gradient);
            v.pass_rate = Some(rate);
            v.answer_probability = Some(probabilities[k]);
            v.alignment_cosine = Some(cos);
            if rate < config.band[0] {
                v.reasons.push(format!(
                    "too hard: pass rate {rate:.3} below {:.2}",
                    config.band[0]
                ));
            } else if rate > config.band[1] {
                v.reasons.push(format!(
                    "too easy: pass rate {rate:.3} above {:.2}",
                    config.band[1]
                ));
            }
            if cos < config.min_alignment_cosine {
                v.reasons.push(format!(
                    "opposes alignment: gradient cosine {cos:.3} below {:.2}",
                    config.min_alignment_cosine
                ));
            }
            if v.reasons.is_empty() {
                v.accepted = true;
                index.keep(&v.problem.prompt);
            }
        }
    }
    Ok(verdicts)
}

/// A dataset's validation outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetReport {
    /// Expert name.
    pub expert: String,
    /// Problems wanted.
    pub wanted: usize,
    /// Candidates validated.
    pub validated: usize,
    /// Accepted.
    pub accepted: usize,
    /// Acceptance rate of the first `wanted` candidates.
    pub initial_acceptance_rate: f64,
    /// Acceptance rate over every candidate validated.
    pub acceptance_rate: f64,
    /// Whether the first batch met the minimum acceptance rate.
    pub met_acceptance: bool,
    /// Extra candidates drawn because the first batch fell short.
    pub augmented: usize,
    /// Why augmentation stopped, when it ran.
    pub augmentation: Option<String>,
    /// Rejections by reason (the reason's text before its numbers: up to the first `:`
    /// or `(`).
    pub rejections: BTreeMap<String, usize>,
    /// Rejections by source.
    pub rejections_by_source: BTreeMap<String, usize>,
    /// Mean pass rate of the accepted problems: the expected accuracy over the dataset.
    pub expected_accuracy: f64,
    /// Whether it lies in the learning zone.
    pub in_learning_zone: bool,
    /// Every verdict.
    pub verdicts: Vec<ProblemVerdict>,
}

/// Draws candidates for `spec` from the `synth-tasks` generators: train-split problems at
/// each topic's difficulty, round-robin over the topics.
pub fn synth_candidates(spec: &DatasetSpec, count: usize, rng: &mut Rng) -> Result<Vec<Candidate>> {
    let domains: Vec<(Domain, u32)> = spec
        .topics
        .iter()
        .map(|t| {
            Domain::from_name(&t.domain)
                .map(|d| (d, t.difficulty))
                .ok_or_else(|| Error::Data(format!("unknown domain `{}`", t.domain)))
        })
        .collect::<Result<_>>()?;
    if domains.is_empty() {
        return Err(Error::Data(format!(
            "spec `{}` has no topics",
            spec.expert_name
        )));
    }
    Ok((0..count)
        .map(|i| {
            let (domain, difficulty) = domains[i % domains.len()];
            Candidate {
                problem: synth_tasks::generate_in(domain, difficulty, Split::Train, rng),
                source: "synth-tasks".into(),
            }
        })
        .collect())
}

/// Validates candidates from `source` until `spec.num_examples` are accepted: first
/// `num_examples` of them; when fewer pass, more ("variants": new draws from the same
/// source and spec) in batches, until the count is met or
/// `max_candidates_factor x num_examples` have been validated.
pub fn build_dataset(
    checks: &mut ModelChecks<'_>,
    spec: &DatasetSpec,
    source: &mut dyn FnMut(usize) -> Result<Vec<Candidate>>,
    held_out: &DuplicateIndex,
    config: &ValidationConfig,
) -> Result<(Vec<Problem>, DatasetReport)> {
    let wanted = spec.num_examples;
    let limit = ((wanted as f64) * config.max_candidates_factor).ceil() as usize;
    let mut index = held_out.clone();
    let first = source(wanted)?;
    let mut verdicts = validate_candidates(checks, &first, &mut index, config)?;
    let first_accepted = verdicts.iter().filter(|v| v.accepted).count();
    let initial_rate = first_accepted as f64 / verdicts.len().max(1) as f64;
    let mut augmentation = None;
    while verdicts.iter().filter(|v| v.accepted).count() < wanted {
        let accepted = verdicts.iter().filter(|v| v.accepted).count();
        if verdicts.len() >= limit {
            augmentation = Some(format!(
                "stopped at the limit of {limit} candidates with {accepted} of {wanted} accepted"
            ));
            break;
        }
        // Draw what the observed acceptance rate says is missing (at least 32), never
        // past the limit.
        let rate = (accepted as f64 / verdicts.len() as f64).max(0.05);
        let missing = ((wanted - accepted) as f64 / rate).ceil() as usize;
        let draw = missing.max(32).min(limit - verdicts.len());
        let more = source(draw)?;
        if more.is_empty() {
            augmentation = Some(format!(
                "the source ran dry with {accepted} of {wanted} accepted"
            ));
            break;
        }
        verdicts.extend(validate_candidates(checks, &more, &mut index, config)?);
        augmentation = Some(format!(
            "{} of {wanted} accepted after {} candidates",
            verdicts.iter().filter(|v| v.accepted).count(),
            verdicts.len()
        ));
    }
    // Keep the first `wanted` accepted problems.
    let mut kept = Vec::new();
    for v in &verdicts {
        if v.accepted && kept.len() < wanted {
            kept.push(v.problem.clone());
        }
    }
    let mut rejections = BTreeMap::new();
    let mut rejections_by_source = BTreeMap::new();
    for v in verdicts.iter().filter(|v| !v.accepted) {
        for r in &v.reasons {
            let key = r.split([':', '(']).next().unwrap_or(r).trim().to_owned();
            *rejections.entry(key).or_insert(0) += 1;
        }
        *rejections_by_source.entry(v.source.clone()).or_insert(0) += 1;
    }
    let accepted: Vec<&ProblemVerdict> = verdicts.iter().filter(|v| v.accepted).collect();
    let expected_accuracy =
        accepted.iter().filter_map(|v| v.pass_rate).sum::<f64>() / accepted.len().max(1) as f64;
    let report = DatasetReport {
        expert: spec.expert_name.clone(),
        wanted,
        validated: verdicts.len(),
        accepted: accepted.len(),
        initial_acceptance_rate: initial_rate,
        acceptance_rate: accepted.len() as f64 / verdicts.len().max(1) as f64,
        met_acceptance: initial_rate >= config.min_acceptance,
        augmented: verdicts.len() - first.len(),
        augmentation,
        rejections,
        rejections_by_source,
        expected_accuracy,
        in_learning_zone: expected_accuracy >= config.learning_zone[0]
            && expected_accuracy <= config.learning_zone[1],
        verdicts,
    };
    Ok((kept, report))
}
