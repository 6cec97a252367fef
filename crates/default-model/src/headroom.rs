//! The room experts have: for each weak domain, how far supervised training of
//! z-vectors alone (Transformer² SVF, the base weights frozen) lifts held-out accuracy.

use std::collections::BTreeMap;
use std::time::Instant;

use lm::{CausalLm, Tokenizer};
use reinforce_kl::{AdamW, OptimizerConfig, Policy, RolloutConfig, SvfPolicy};
use serde::Serialize;
use svf::{Decomposition, Expert, Selection};
use synth_tasks::{Domain, Problem, Rng, Split};
use tch::{Kind, Tensor};

use crate::evaluate::{self, derived_seed};
use crate::recipe::Headroom;
use crate::tokenizer::EOS;
use crate::{Error, Result};

/// One weak domain's measurement.
#[derive(Debug, Clone, Serialize)]
pub struct DomainHeadroom {
    /// Held-out accuracy of the base model.
    pub before: f64,
    /// Held-out accuracy with the trained z-vectors.
    pub after: f64,
    /// `after - before`.
    pub lift: f64,
    /// Mean answer loss over the first and last 10% of steps.
    pub first_loss: f64,
    /// See `first_loss`.
    pub final_loss: f64,
    /// z parameters trained.
    pub z_parameters: usize,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Trains one z-only expert per domain in `weak` (supervised on the train split's
/// correct answers) and measures held-out accuracy before and after. Returns the
/// model unchanged.
pub fn measure(
    mut model: CausalLm,
    tokenizer: &Tokenizer,
    weak: &BTreeMap<Domain, (u32, f64)>,
    held_out: &BTreeMap<Domain, Vec<Problem>>,
    settings: &Headroom,
    max_new_tokens: usize,
    seed: u64,
) -> Result<(CausalLm, BTreeMap<Domain, DomainHeadroom>)> {
    let selection = if settings.attention {
        Selection::mlp_and_attention()
    } else {
        Selection::mlp()
    };
    let mut out = BTreeMap::new();
    for (&domain, &(difficulty, before)) in weak {
        let started = Instant::now();
        let decomposition = tch::no_grad(|| Decomposition::compute(&mut model, &selection, false))?;
        let expert = Expert::constant(&decomposition, domain.name(), 0.1);
        let z_parameters = expert.z.iter().map(|(_, z)| z.numel()).sum();
        let rollout = RolloutConfig {
            stop_tokens: Some(vec![EOS]),
            ..RolloutConfig::default()
        };
        let mut policy = SvfPolicy::new(model, decomposition, expert, rollout)?;
        let parameters = policy.parameters();
        let mut optimizer = AdamW::new(
            &parameters,
            OptimizerConfig {
                learning_rate: settings.learning_rate,
                grokfast: None,
                ..OptimizerConfig::default()
            },
        );
        let mut rng = Rng::new(derived_seed(seed, &format!("headroom-{}", domain.name())));
        let mut losses = Vec::with_capacity(settings.steps);
        for step in 1..=settings.steps {
            let mut prompts = Vec::with_capacity(settings.batch_size);
            let mut completions = Vec::with_capacity(settings.batch_size);
            for i in 0..settings.batch_size {
                let p = synth_tasks::generate_in(domain, difficulty, Split::Train, &mut rng);
                prompts.push(tokenizer.encode(&p.prompt, false)?);
                let mut answer = tokenizer.encode(&p.answer, false)?;
                answer.push(EOS);
                completions.push((i, answer));
            }
            let prompt_refs: Vec<&Vec<i64>> = prompts.iter().collect();
            for p in &parameters {
                p.shallow_clone().zero_grad();
            }
            let scores = policy.score(&prompt_refs, &completions, false)?;
            let loss = -Tensor::cat(&scores.token_log_probs, 0).mean(Kind::Float);
            let value = loss.double_value(&[]);
            if !value.is_finite() {
                return Err(Error::Training(format!(
                    "headroom {} step {step}: the loss is {value}",
                    domain.name()
                )));
            }
            loss.backward();
            let gradients = optimizer.filtered_gradients(&parameters).ok_or_else(|| {
                Error::Training(format!(
                    "headroom {} step {step}: a gradient is missing or not finite",
                    domain.name()
                ))
            })?;
            optimizer.apply(&parameters, gradients);
            losses.push(value);
        }
        let answer =
            |ids: &[Vec<i64>], config: &lm::GenerateConfig| Ok(policy.generate(ids, config)?);
        let after = evaluate::domain_score(&answer, tokenizer, &held_out[&domain], max_new_tokens)?
            .accuracy;
        let edge = (losses.len() / 10).max(1);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let result = DomainHeadroom {
            before,
            after,
            lift: after - before,
            first_loss: mean(&losses[..edge.min(losses.len())]),
            final_loss: mean(&losses[losses.len().saturating_sub(edge)..]),
            z_parameters,
            seconds: started.elapsed().as_secs_f64(),
        };
        eprintln!(
            "[headroom] {:<11} {:.3} -> {:.3} ({:+.3}) with {} z parameters, loss {:.3} -> {:.3}, {:.0} s",
            domain.name(),
            before,
            after,
            result.lift,
            z_parameters,
            result.first_loss,
            result.final_loss,
            result.seconds
        );
        out.insert(domain, result);
        let (back, _) = policy.into_parts()?;
        model = back;
    }
    Ok((model, out))
}
