//! Gradients of a policy with respect to its trained parameters (z-vectors, for an SVF
//! policy): the measurements behind the expert plan and the alignment check of
//! problems.

use reinforce_kl::{Baseline, Policy, objective::advantages};
use tch::{Kind, Tensor};

use crate::Result;

fn zero_gradients(parameters: &[Tensor]) {
    for p in parameters {
        p.shallow_clone().zero_grad();
    }
}

fn flat_gradient(parameters: &[Tensor]) -> Vec<f32> {
    let mut out = Vec::new();
    for p in parameters {
        let g = p.grad();
        let values: Vec<f32> = if g.defined() {
            Vec::try_from(
                g.flatten(0, -1)
                    .to_kind(Kind::Float)
                    .to_device(tch::Device::Cpu),
            )
            .unwrap_or_else(|_| vec![0.0; p.numel()])
        } else {
            vec![0.0; p.numel()]
        };
        out.extend(values);
    }
    out
}

/// The REINFORCE policy gradient of each prompt at the policy's current parameters:
/// `samples` completions per prompt (seeded), rewarded by `reward(prompt index,
/// completion)`, leave-one-out advantages, gradient of
/// `sum_j A_j log pi(c_j) / samples` (ascent direction of the expected reward).
/// A prompt whose samples all earn the same reward contributes a zero vector.
// `x = x + y` on purpose: tch's `+=` is in place, which the autograd graph should not
// depend on.
#[allow(clippy::assign_op_pattern)]
pub fn policy_gradients<P: Policy>(
    policy: &mut P,
    prompts: &[P::Prompt],
    reward: &dyn Fn(usize, &[i64]) -> f64,
    samples: usize,
    seed: u64,
) -> Result<Vec<Vec<f32>>> {
    let parameters = policy.parameters();
    let width: usize = parameters.iter().map(Tensor::numel).sum();
    let refs: Vec<&P::Prompt> = prompts.iter().collect();
    let groups = policy.sample(&refs, samples, seed)?;
    let mut out = Vec::with_capacity(prompts.len());
    for (i, group) in groups.iter().enumerate() {
        let rewards: Vec<f64> = group.iter().map(|c| reward(i, c)).collect();
        let advantage = &advantages(std::slice::from_ref(&rewards), Baseline::LeaveOneOut)[0];
        if advantage.iter().all(|a| *a == 0.0) {
            out.push(vec![0.0; width]);
            continue;
        }
        zero_gradients(&parameters);
        let completions: Vec<(usize, Vec<i64>)> = group.iter().map(|c| (0, c.clone())).collect();
        let scores = policy.score(&[refs[i]], &completions, false)?;
        let mut objective = Tensor::zeros([], (Kind::Float, scores.token_log_probs[0].device()));
        for (log_p, a) in scores.token_log_probs.iter().zip(advantage) {
            objective = objective + log_p.sum(Kind::Float) * (*a / samples as f64);
        }
        objective.backward();
        out.push(flat_gradient(&parameters));
    }
    zero_gradients(&parameters);
    Ok(out)
}

/// The gradient of `sum_t log pi(target)` for each `(prompt, target)`: the direction
/// in which supervised training on that answer would move the parameters.
pub fn likelihood_gradients<P: Policy>(
    policy: &mut P,
    prompts: &[P::Prompt],
    targets: &[Vec<i64>],
) -> Result<Vec<Vec<f32>>> {
    let parameters = policy.parameters();
    let mut out = Vec::with_capacity(prompts.len());
    for (prompt, target) in prompts.iter().zip(targets) {
        zero_gradients(&parameters);
        let scores = policy.score(&[prompt], &[(0, target.clone())], false)?;
        scores.token_log_probs[0].sum(Kind::Float).backward();
        out.push(flat_gradient(&parameters));
    }
    zero_gradients(&parameters);
    Ok(out)
}

/// The gradient of a preference suite's mean length-normalised margin,
/// `mean_i [mean log pi(preferred_i) - mean log pi(rejected_i)]`: the direction that
/// strengthens the suite's preferences.
pub fn preference_gradient<P: Policy>(
    policy: &mut P,
    items: &[(P::Prompt, Vec<i64>, Vec<i64>)],
) -> Result<Vec<f32>> {
    let parameters = policy.parameters();
    zero_gradients(&parameters);
    for (prompt, preferred, rejected) in items {
        let scores = policy.score(
            &[prompt],
            &[(0, preferred.clone()), (0, rejected.clone())],
            false,
        )?;
        let margin = scores.token_log_probs[0].mean(Kind::Float)
            - scores.token_log_probs[1].mean(Kind::Float);
        (margin / items.len().max(1) as f64).backward();
    }
    let gradient = flat_gradient(&parameters);
    zero_gradients(&parameters);
    Ok(gradient)
}

/// The alignment direction validation compares problems with: the gradient of the
/// alignment suite's mean margin ([`preference_gradient`]) over `items` train-split
/// alignment pairs (seeded), rendered in `format`.
pub fn alignment_gradient(
    policy: &mut reinforce_kl::SvfPolicy,
    tokenizer: &lm::Tokenizer,
    format: &eudaimonia_gate::PromptFormat,
    items: usize,
    seed: u64,
) -> Result<Vec<f32>> {
    let suite = eudaimonia_gate::Suite::synth(
        synth_tasks::Suite::Alignment,
        items,
        synth_tasks::Split::Train,
        seed,
    );
    let encoded: Vec<(Vec<i64>, Vec<i64>, Vec<i64>)> = suite
        .items
        .iter()
        .map(|i| {
            Ok((
                tokenizer.encode(&format.render(&i.prompt), false)?,
                tokenizer.encode(&i.preferred, false)?,
                tokenizer.encode(&i.rejected, false)?,
            ))
        })
        .collect::<lm::Result<_>>()?;
    preference_gradient(policy, &encoded)
}

/// Cosine similarity (0 when either vector is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// Element-wise mean of vectors of one length.
pub fn mean_vector(vectors: &[&[f32]]) -> Vec<f32> {
    let width = vectors.first().map_or(0, |v| v.len());
    let mut out = vec![0.0f64; width];
    for v in vectors {
        for (o, &x) in out.iter_mut().zip(v.iter()) {
            *o += f64::from(x);
        }
    }
    let n = vectors.len().max(1) as f64;
    out.into_iter().map(|x| (x / n) as f32).collect()
}
