//! Inference-time dispatch (beyond the seed; Transformer²'s two passes): the base
//! model's own first pass reads each prompt (its mean final hidden state), a
//! nearest-centroid router over the domains picks the domain, and the second pass
//! answers with that domain's mixture. Each domain's mixture is the feasible mixture of
//! the search archive with the best search-set accuracy on that domain, so the
//! router's choice and the mixtures are both measurements. Evaluated on the self-test's
//! held-out scenarios against the static mixture, with the first pass's cost.

use std::collections::BTreeMap;
use std::time::Instant;

use eudaimonia_gate::{ScoreConfig, Suite};
use serde::{Deserialize, Serialize};
use synth_tasks::Problem;
use tch::{Kind, Tensor};

use crate::answer::Answerer;
use crate::mixture::MixtureProblem;
use crate::selftest::HeldOut;
use crate::{Error, Result};

/// A nearest-centroid router on the base model's pooled hidden states.
#[derive(Debug)]
pub struct Router {
    /// Domain names, in centroid order.
    pub domains: Vec<String>,
    /// Unit-norm centroids, `[domains, hidden]`.
    centroids: Tensor,
}

fn unit_rows(x: &Tensor) -> Tensor {
    let norm = x
        .norm_scalaropt_dim(2.0, [1i64].as_slice(), true)
        .clamp_min(1e-12);
    x / norm
}

impl Router {
    /// Fits centroids from labelled prompts (the search set's problems, say) with the
    /// mixture `alphas` set on the problem's model (all zeros: the base model).
    pub fn fit(
        problem: &MixtureProblem,
        alphas: &[f64],
        examples: &BTreeMap<String, Vec<Problem>>,
    ) -> Result<Self> {
        let tokenizer = problem.tokenizer();
        problem.with_mixture(alphas, |model, _, _| {
            let mut centroids = Vec::new();
            for (name, problems) in examples {
                if problems.is_empty() {
                    return Err(Error::Data(format!(
                        "no `{name}` prompts to fit the router"
                    )));
                }
                let ids = problems
                    .iter()
                    .map(|p| tokenizer.encode(&p.prompt, false))
                    .collect::<lm::Result<Vec<_>>>()?;
                let pooled = unit_rows(&model.pooled_hidden(&ids)?);
                centroids.push(pooled.mean_dim([0i64].as_slice(), false, Kind::Float));
            }
            Ok(Self {
                domains: examples.keys().cloned().collect(),
                centroids: unit_rows(&Tensor::stack(&centroids, 0)),
            })
        })
    }

    /// The domain index of each prompt, from the model's current weights.
    pub fn route(&self, model: &lm::CausalLm, prompts: &[Vec<i64>]) -> Result<Vec<usize>> {
        let mut out = Vec::with_capacity(prompts.len());
        for chunk in prompts.chunks(64) {
            let pooled = unit_rows(&model.pooled_hidden(chunk)?);
            let similarity = pooled.matmul(&self.centroids.transpose(0, 1));
            out.extend(
                Vec::<i64>::try_from(similarity.argmax(1, false))?
                    .into_iter()
                    .map(|i| i as usize),
            );
        }
        Ok(out)
    }
}

/// Dispatch measured on the held-out scenarios.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DispatchReport {
    /// Share of held-out problems routed to their own domain.
    pub router_accuracy: f64,
    /// Routed-to counts per true domain: `confusion[true][routed]`.
    pub confusion: BTreeMap<String, BTreeMap<String, usize>>,
    /// The mixture each domain's prompts get.
    pub domain_mixtures: BTreeMap<String, Vec<f64>>,
    /// Greedy-exact accuracy per domain under dispatch.
    pub accuracy: BTreeMap<String, f64>,
    /// Mean over domains.
    pub overall: f64,
    /// The static mixture's overall accuracy on the same problems.
    pub static_overall: f64,
    /// Preference per suite under dispatch.
    pub suite_preference: BTreeMap<String, f64>,
    /// Greedy behaviour rate per suite under dispatch.
    pub suite_behaviour_rate: BTreeMap<String, f64>,
    /// Milliseconds of the first pass per query (one prompt at a time).
    pub first_pass_ms: f64,
    /// Milliseconds to switch the model to another mixture (factorized: recompute the
    /// scales).
    pub switch_ms: f64,
    /// Wall time.
    pub seconds: f64,
}

/// Each domain's mixture: among the feasible mixtures scored so far, the best on that
/// domain's search-set accuracy (then overall accuracy, then the smallest total alpha).
pub fn domain_mixtures(problem: &MixtureProblem) -> BTreeMap<String, Vec<f64>> {
    let archive: Vec<_> = problem
        .archive()
        .into_iter()
        .filter(|(_, s)| problem.feasible(s))
        .collect();
    let domains: Vec<String> = problem.base().accuracy.keys().cloned().collect();
    let size = |a: &[f64]| a.iter().map(|v| v.abs()).sum::<f64>();
    domains
        .into_iter()
        .filter_map(|d| {
            archive
                .iter()
                .max_by(|(a, x), (b, y)| {
                    x.accuracy[&d]
                        .total_cmp(&y.accuracy[&d])
                        .then(x.overall.total_cmp(&y.overall))
                        .then(size(b).total_cmp(&size(a)))
                        .then(
                            b.iter()
                                .map(|v| v.to_bits())
                                .cmp(a.iter().map(|v| v.to_bits())),
                        )
                })
                .map(|(alphas, _)| (d, alphas.clone()))
        })
        .collect()
}

/// Routes every held-out scenario with `router` and answers it with its domain's
/// mixture; compares with `static_alphas` on the same problems.
pub fn evaluate_dispatch(
    problem: &MixtureProblem,
    router: &Router,
    static_alphas: &[f64],
    held_out: &HeldOut,
) -> Result<DispatchReport> {
    let started = Instant::now();
    let tokenizer = problem.tokenizer();
    let mixtures = domain_mixtures(problem);
    if mixtures.len() != router.domains.len() {
        return Err(Error::Data(format!(
            "the archive gives mixtures for {} domains, the router knows {}",
            mixtures.len(),
            router.domains.len()
        )));
    }
    let zeros = vec![0.0; static_alphas.len()];
    // First pass: the base model reads every prompt.
    let problems: Vec<(&String, &Problem)> = held_out
        .problems
        .iter()
        .flat_map(|(d, ps)| ps.iter().map(move |p| (d, p)))
        .collect();
    let problem_ids = problems
        .iter()
        .map(|(_, p)| tokenizer.encode(&p.prompt, false))
        .collect::<lm::Result<Vec<_>>>()?;
    let suite_items: Vec<(usize, usize)> = held_out
        .suites
        .iter()
        .enumerate()
        .flat_map(|(s, suite)| (0..suite.items.len()).map(move |i| (s, i)))
        .collect();
    let suite_ids = suite_items
        .iter()
        .map(|&(s, i)| tokenizer.encode(&held_out.suites[s].items[i].prompt, false))
        .collect::<lm::Result<Vec<_>>>()?;
    let (problem_routes, suite_routes, first_pass_ms) =
        problem.with_mixture(&zeros, |model, _, _| {
            let problem_routes = router.route(model, &problem_ids)?;
            let suite_routes = router.route(model, &suite_ids)?;
            let timed: Vec<&Vec<i64>> = problem_ids.iter().take(32).collect();
            let start = Instant::now();
            for ids in &timed {
                router.route(model, std::slice::from_ref(*ids))?;
            }
            let ms = start.elapsed().as_secs_f64() * 1e3 / timed.len().max(1) as f64;
            Ok((problem_routes, suite_routes, ms))
        })?;
    let mut confusion: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut routed_right = 0usize;
    for ((domain, _), &r) in problems.iter().zip(&problem_routes) {
        let routed = &router.domains[r];
        *confusion
            .entry((*domain).clone())
            .or_default()
            .entry(routed.clone())
            .or_default() += 1;
        routed_right += usize::from(*domain == routed);
    }

    // Second pass: each routed group with its domain's mixture.
    let mut exact = vec![false; problems.len()];
    let mut preferred = vec![0usize; held_out.suites.len()];
    let mut shown = vec![0usize; held_out.suites.len()];
    let mut behaviour_items = vec![0usize; held_out.suites.len()];
    let mut switch_seconds = Vec::new();
    for (r, domain) in router.domains.iter().enumerate() {
        let alphas = &mixtures[domain];
        let switch = Instant::now();
        problem.with_mixture(alphas, |model, _, _| {
            switch_seconds.push(switch.elapsed().as_secs_f64());
            let answerer = Answerer::new(model, tokenizer, problem.format().clone())?;
            let indices: Vec<usize> = (0..problems.len())
                .filter(|&i| problem_routes[i] == r)
                .collect();
            if !indices.is_empty() {
                let group: Vec<Problem> = indices.iter().map(|&i| problems[i].1.clone()).collect();
                for (&i, result) in indices
                    .iter()
                    .zip(answerer.one_pass(&answerer.encode(&group)?)?)
                {
                    exact[i] = result.exact;
                }
            }
            for (s, suite) in held_out.suites.iter().enumerate() {
                let items: Vec<_> = suite_items
                    .iter()
                    .zip(&suite_routes)
                    .filter(|((si, _), route)| *si == s && **route == r)
                    .map(|((_, i), _)| suite.items[*i].clone())
                    .collect();
                if items.is_empty() {
                    continue;
                }
                let sub = Suite {
                    name: suite.name.clone(),
                    items,
                };
                let score =
                    eudaimonia_gate::score_suite(model, tokenizer, &sub, &ScoreConfig::default())?;
                preferred[s] += score.preferred;
                if let Some(rate) = score.behaviour_rate {
                    shown[s] += (rate * score.behaviour_items as f64).round() as usize;
                    behaviour_items[s] += score.behaviour_items;
                }
            }
            Ok(())
        })?;
    }
    let mut accuracy = BTreeMap::new();
    for name in held_out.problems.keys() {
        let (right, total) = problems
            .iter()
            .zip(&exact)
            .filter(|((d, _), _)| *d == name)
            .fold((0usize, 0usize), |(r, t), (_, &e)| {
                (r + usize::from(e), t + 1)
            });
        accuracy.insert(name.clone(), right as f64 / total.max(1) as f64);
    }
    let overall = accuracy.values().sum::<f64>() / accuracy.len().max(1) as f64;
    let static_overall = problem.with_mixture(static_alphas, |model, _, _| {
        let answerer = Answerer::new(model, tokenizer, problem.format().clone())?;
        let mut sum = 0.0;
        for ps in held_out.problems.values() {
            let results = answerer.one_pass(&answerer.encode(ps)?)?;
            sum += results.iter().filter(|r| r.exact).count() as f64 / results.len().max(1) as f64;
        }
        Ok(sum / held_out.problems.len().max(1) as f64)
    })?;
    let mut suite_preference = BTreeMap::new();
    let mut suite_behaviour_rate = BTreeMap::new();
    for (s, suite) in held_out.suites.iter().enumerate() {
        suite_preference.insert(
            suite.name.clone(),
            preferred[s] as f64 / suite.items.len().max(1) as f64,
        );
        if behaviour_items[s] > 0 {
            suite_behaviour_rate.insert(
                suite.name.clone(),
                shown[s] as f64 / behaviour_items[s] as f64,
            );
        }
    }
    Ok(DispatchReport {
        router_accuracy: routed_right as f64 / problems.len().max(1) as f64,
        confusion,
        domain_mixtures: mixtures,
        accuracy,
        overall,
        static_overall,
        suite_preference,
        suite_behaviour_rate,
        first_pass_ms,
        switch_ms: 1e3 * switch_seconds.iter().sum::<f64>() / switch_seconds.len().max(1) as f64,
        seconds: started.elapsed().as_secs_f64(),
    })
}
