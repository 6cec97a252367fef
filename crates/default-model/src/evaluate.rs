//! Held-out measurements: greedy accuracy per domain (exact verifier), likelihood
//! preference per behaviour suite, and greedy behaviour rates (tool calls, persona,
//! refusals).

use std::collections::{BTreeMap, BTreeSet};

use lm::{CausalLm, GenerateConfig, Generated, Sampling, Tokenizer};
use serde::{Deserialize, Serialize};
use synth_tasks::{Domain, Pair, Problem, Rng, Split, Suite};

use crate::recipe::Recipe;
use crate::tokenizer::EOS;
use crate::{Error, Result};

/// The held-out problems and pairs every measurement uses, fixed by the recipe's seed.
#[derive(Debug, Clone)]
pub struct HeldOut {
    /// Distinct held-out problems per domain, at the recipe's difficulty.
    pub problems: BTreeMap<Domain, Vec<Problem>>,
    /// Held-out preference pairs per suite.
    pub pairs: BTreeMap<Suite, Vec<Pair>>,
}

/// A per-purpose seed derived from the recipe's.
pub(crate) fn derived_seed(seed: u64, purpose: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for byte in purpose.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl HeldOut {
    /// Draws the sets: distinct prompts (as many as the domain has, up to the count).
    pub fn new(recipe: &Recipe) -> Self {
        let mut problems = BTreeMap::new();
        for (&domain, &difficulty) in &recipe.difficulties {
            let mut rng = Rng::new(derived_seed(recipe.seed, domain.name()));
            let mut seen = BTreeSet::new();
            let mut chosen = Vec::new();
            let wanted = recipe.evaluation.problems_per_domain;
            for _ in 0..wanted * 20 {
                if chosen.len() == wanted {
                    break;
                }
                let p = synth_tasks::generate_in(domain, difficulty, Split::HeldOut, &mut rng);
                if seen.insert(p.prompt.clone()) {
                    chosen.push(p);
                }
            }
            problems.insert(domain, chosen);
        }
        let pairs = Suite::ALL
            .iter()
            .map(|&suite| {
                let mut rng = Rng::new(derived_seed(recipe.seed, suite.name()));
                let pairs = synth_tasks::pairs(
                    suite,
                    recipe.evaluation.pairs_per_suite,
                    Split::HeldOut,
                    &mut rng,
                );
                (suite, pairs)
            })
            .collect();
        Self { problems, pairs }
    }
}

/// Accuracy of one domain.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct DomainScore {
    /// The difficulty measured.
    pub difficulty: u32,
    /// Correct answers.
    pub correct: usize,
    /// Problems.
    pub total: usize,
    /// `correct / total`.
    pub accuracy: f64,
}

/// Everything measured on one model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Greedy held-out accuracy per domain.
    pub domains: BTreeMap<Domain, DomainScore>,
    /// Fraction of held-out pairs whose preferred continuation has the higher mean
    /// log-probability per token, per suite.
    pub suite_preference: BTreeMap<Suite, f64>,
    /// Fraction of held-out tool-use prompts answered greedily with `CALL calc(`.
    pub tool_use_rate: f64,
    /// Fraction answered with exactly the preferred call (the right expression).
    pub tool_call_exact: f64,
    /// Fraction of held-out identity questions whose greedy answer names the persona.
    pub persona_consistency: f64,
    /// Fraction of held-out harmful requests refused greedily with the fixed refusal.
    pub refusal_rate: f64,
    /// Mean domain accuracy.
    pub aggregate_accuracy: f64,
}

/// The answering function: greedy continuations of prompts (a plain model, or one with
/// an expert installed).
pub type Answer<'a> = dyn Fn(&[Vec<i64>], &GenerateConfig) -> Result<Vec<Generated>> + 'a;

/// Greedy settings: stop at `</s>` or a newline.
pub fn greedy(tokenizer: &Tokenizer, max_new_tokens: usize) -> Result<GenerateConfig> {
    let newline = tokenizer.encode("\n", false)?;
    Ok(GenerateConfig {
        max_new_tokens,
        sampling: Sampling::Greedy,
        seed: 0,
        stop_tokens: Some([EOS].into_iter().chain(newline).collect()),
    })
}

/// Greedy answers (decoded, stop token dropped) to `prompts`, in batches of 256.
pub fn answers(
    answer: &Answer<'_>,
    tokenizer: &Tokenizer,
    prompts: &[&str],
    max_new_tokens: usize,
) -> Result<Vec<String>> {
    let config = greedy(tokenizer, max_new_tokens)?;
    let mut out = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(256) {
        let ids: Vec<Vec<i64>> = chunk
            .iter()
            .map(|p| tokenizer.encode(p, false))
            .collect::<lm::Result<_>>()?;
        for generated in tch::no_grad(|| answer(&ids, &config))? {
            out.push(tokenizer.decode(&generated.tokens, true)?);
        }
    }
    Ok(out)
}

/// Greedy held-out accuracy of `domain`.
pub fn domain_score(
    answer: &Answer<'_>,
    tokenizer: &Tokenizer,
    problems: &[Problem],
    max_new_tokens: usize,
) -> Result<DomainScore> {
    let prompts: Vec<&str> = problems.iter().map(|p| p.prompt.as_str()).collect();
    let outputs = answers(answer, tokenizer, &prompts, max_new_tokens)?;
    let correct = problems
        .iter()
        .zip(&outputs)
        .filter(|(p, o)| synth_tasks::verify(p, o))
        .count();
    Ok(DomainScore {
        difficulty: problems.first().map_or(0, |p| p.difficulty),
        correct,
        total: problems.len(),
        accuracy: correct as f64 / problems.len().max(1) as f64,
    })
}

/// Fraction of pairs whose preferred continuation has the higher mean log-probability.
pub fn preference(model: &CausalLm, tokenizer: &Tokenizer, pairs: &[Pair]) -> Result<f64> {
    if pairs.is_empty() {
        return Err(Error::Data("no preference pairs to score".into()));
    }
    let mut scored = Vec::with_capacity(2 * pairs.len());
    for pair in pairs {
        let prompt = tokenizer.encode(&pair.prompt, false)?;
        for continuation in [&pair.preferred, &pair.rejected] {
            scored.push((prompt.clone(), tokenizer.encode(continuation, false)?));
        }
    }
    let mut means = Vec::with_capacity(scored.len());
    for chunk in scored.chunks(256) {
        means.extend(model.score(chunk)?.into_iter().map(|s| s.mean));
    }
    let preferred = means.chunks(2).filter(|m| m[0] > m[1]).count();
    Ok(preferred as f64 / pairs.len() as f64)
}

/// Measures `model` on `held_out`.
pub fn evaluate(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    held_out: &HeldOut,
    max_new_tokens: usize,
) -> Result<Report> {
    let answer = |ids: &[Vec<i64>], config: &GenerateConfig| Ok(model.generate(ids, config)?);
    let mut domains = BTreeMap::new();
    for (&domain, problems) in &held_out.problems {
        domains.insert(
            domain,
            domain_score(&answer, tokenizer, problems, max_new_tokens)?,
        );
    }
    let mut suite_preference = BTreeMap::new();
    for (&suite, pairs) in &held_out.pairs {
        suite_preference.insert(suite, preference(model, tokenizer, pairs)?);
    }
    let rate = |suite: Suite, accept: &dyn Fn(&Pair, &str) -> bool| -> Result<f64> {
        let pairs: Vec<&Pair> = held_out.pairs[&suite]
            .iter()
            .filter(|p| suite != Suite::Alignment || p.preferred.contains(synth_tasks::REFUSAL))
            .collect();
        let prompts: Vec<&str> = pairs.iter().map(|p| p.prompt.as_str()).collect();
        let outputs = answers(&answer, tokenizer, &prompts, 64)?;
        let hits = pairs
            .iter()
            .zip(&outputs)
            .filter(|(p, o)| accept(p, o))
            .count();
        Ok(hits as f64 / pairs.len().max(1) as f64)
    };
    let tool_use_rate = rate(Suite::ToolUse, &|_, o| o.trim().starts_with("CALL calc("))?;
    let tool_call_exact = rate(Suite::ToolUse, &|p, o| o.trim() == p.preferred.trim())?;
    let persona_consistency = rate(Suite::Persona, &|_, o| {
        o.contains(synth_tasks::PERSONA_NAME)
    })?;
    let refusal_rate = rate(Suite::Alignment, &|_, o| o.trim() == synth_tasks::REFUSAL)?;
    let aggregate_accuracy =
        domains.values().map(|s| s.accuracy).sum::<f64>() / domains.len().max(1) as f64;
    Ok(Report {
        domains,
        suite_preference,
        tool_use_rate,
        tool_call_exact,
        persona_consistency,
        refusal_rate,
        aggregate_accuracy,
    })
}

impl Report {
    /// One line per domain and suite, for logs.
    pub fn summary(&self) -> String {
        let mut lines = Vec::new();
        for (domain, score) in &self.domains {
            lines.push(format!(
                "  {:<11} d{} {:.3} ({}/{})",
                domain.name(),
                score.difficulty,
                score.accuracy,
                score.correct,
                score.total
            ));
        }
        for (suite, value) in &self.suite_preference {
            lines.push(format!("  suite {:<9} preference {value:.3}", suite.name()));
        }
        lines.push(format!(
            "  tool calls {:.3} (exact {:.3}), persona {:.3}, refusals {:.3}, aggregate {:.3}",
            self.tool_use_rate,
            self.tool_call_exact,
            self.persona_consistency,
            self.refusal_rate,
            self.aggregate_accuracy
        ));
        lines.join("\n")
    }
}
