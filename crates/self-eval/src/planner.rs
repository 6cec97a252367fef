//! The expert planner (R4): weak domains clustered by the cosine similarity of their
//! policy gradients with respect to z, the number of experts chosen by silhouette with a
//! bootstrap over problems, a general expert when the gradients share a direction, and
//! an optional advisor whose plan is used only when it passes validation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::gradients::{cosine, mean_vector};
use crate::{Error, Result};

/// One domain's measurements: its accuracy and per-problem policy gradients.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainMeasurement {
    /// Domain name.
    pub domain: String,
    /// Greedy accuracy (from the profile).
    pub accuracy: f64,
    /// Per-problem gradients (one vector per problem, all of one length).
    pub gradients: Vec<Vec<f32>>,
}

/// Settings of the planner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlannerConfig {
    /// A domain is weak below this accuracy. Default 0.70 (the learning zone's floor).
    pub weak_below: f64,
    /// Fewest experts. Default 3 (R4).
    pub min_experts: usize,
    /// Most experts. Default 10 (R4); more clusters than this merge the most similar.
    pub max_experts: usize,
    /// Bootstrap resamples of problems. Default 200.
    pub bootstrap: usize,
    /// Add a general expert when the mean pairwise cosine of the clustered domains'
    /// mean gradients reaches this (they share a direction). Default 0.5.
    pub general_min_mean_cosine: f64,
    /// Accuracy each expert aims for on its domains (R12). Default 0.85.
    pub target_accuracy: f64,
    /// Seed of the bootstrap. Default 0.
    pub seed: u64,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        Self {
            weak_below: 0.70,
            min_experts: 3,
            max_experts: 10,
            bootstrap: 200,
            general_min_mean_cosine: 0.5,
            target_accuracy: 0.85,
            seed: 0,
        }
    }
}

/// One expert of a plan (the seed's schema).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpertDefinition {
    /// 0-based id.
    pub id: usize,
    /// Name.
    pub name: String,
    /// Domains it covers.
    pub domains: Vec<String>,
    /// Why, with the numbers.
    pub rationale: String,
    /// Accuracy points to gain on its domains (target minus current mean).
    pub target_improvement: f64,
}

/// A plan (the seed's schema).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// N.
    pub num_experts: usize,
    /// The experts.
    pub expert_definitions: Vec<ExpertDefinition>,
    /// Why N, with the numbers.
    pub reasoning: String,
}

/// Silhouettes at one number of clusters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SilhouetteAt {
    /// Clusters (excluding a general expert).
    pub clusters: usize,
    /// Mean silhouette on all problems.
    pub silhouette: f64,
    /// Mean over bootstrap resamples.
    pub bootstrap_mean: f64,
    /// Standard deviation over resamples.
    pub bootstrap_sd: f64,
    /// The clusters on all problems.
    pub assignment: Vec<Vec<String>>,
}

/// Everything the plan was decided from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurements {
    /// Every domain's accuracy.
    pub accuracy: BTreeMap<String, f64>,
    /// The domains clustered (weak ones, padded with the least accurate others when
    /// fewer than the minimum).
    pub clustered: Vec<String>,
    /// Why each padded domain was added, if any.
    pub padding: Vec<String>,
    /// Problems per clustered domain behind the gradients.
    pub problems: BTreeMap<String, usize>,
    /// Share of problems whose sampled rewards varied (a non-zero gradient).
    pub informative_problems: BTreeMap<String, f64>,
    /// Cosine similarity of mean gradients, in `clustered` order.
    pub cosine: Vec<Vec<f64>>,
    /// Coherence of the clustered domains' gradients: the norm of the mean of their
    /// unit mean-gradients (1 when all agree, about `1/sqrt(n)` when unrelated).
    pub coherence: f64,
    /// Mean pairwise cosine of the clustered domains' mean gradients.
    pub mean_cosine: f64,
    /// Silhouettes per candidate number of clusters.
    pub silhouettes: Vec<SilhouetteAt>,
    /// Share of bootstrap resamples in which each pair of domains shared a cluster, at
    /// the chosen number, in `clustered` order.
    pub co_assignment: Vec<Vec<f64>>,
}

/// An advisor's proposal and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdvisorRecord {
    /// Who advised.
    pub advisor: String,
    /// The raw answer.
    pub answer: String,
    /// The parsed plan, when it parsed.
    pub plan: Option<Plan>,
    /// What failed validation (empty when accepted).
    pub problems: Vec<String>,
    /// Whether its plan was used.
    pub accepted: bool,
}

/// `plan.json`: the chosen plan (seed schema, at the top level), where it came from, the
/// measured plan, the advisor's record and the measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRecord {
    /// The plan used.
    #[serde(flatten)]
    pub plan: Plan,
    /// `measured` or `advisor`.
    pub source: String,
    /// The plan the measurements give.
    pub measured_plan: Plan,
    /// The advisor's proposal, when one was asked.
    pub advisor: Option<AdvisorRecord>,
    /// The numbers.
    pub measurements: Measurements,
    /// Settings.
    pub config: PlannerConfig,
}

/// Something that proposes a plan from the measurements (an instruction-following model
/// over an OpenAI-compatible API, for instance). It gets the request as JSON and
/// answers with text expected to hold a plan in the seed's schema.
pub trait PlanAdvisor {
    /// A name for the record.
    fn name(&self) -> String;
    /// The answer to `request`.
    fn propose(&self, request: &serde_json::Value) -> std::result::Result<String, String>;
}

/// Average-linkage agglomerative clustering of `n` items under `distance`, merged down
/// to `k` clusters; clusters come sorted by their first member.
pub fn agglomerate(distance: &[Vec<f64>], k: usize) -> Vec<Vec<usize>> {
    let n = distance.len();
    let mut clusters: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
    let linkage = |a: &[usize], b: &[usize]| -> f64 {
        let sum: f64 = a
            .iter()
            .flat_map(|&i| b.iter().map(move |&j| distance[i][j]))
            .sum();
        sum / (a.len() * b.len()) as f64
    };
    while clusters.len() > k.max(1) {
        let mut best = (0, 1, f64::INFINITY);
        for i in 0..clusters.len() {
            for j in i + 1..clusters.len() {
                let d = linkage(&clusters[i], &clusters[j]);
                if d < best.2 {
                    best = (i, j, d);
                }
            }
        }
        let merged = clusters.remove(best.1);
        clusters[best.0].extend(merged);
        clusters[best.0].sort_unstable();
    }
    clusters.sort();
    clusters
}

/// Mean silhouette of a clustering under `distance` (a singleton's silhouette is 0, by
/// the usual convention; one cluster has none and gives 0).
pub fn silhouette(distance: &[Vec<f64>], clusters: &[Vec<usize>]) -> f64 {
    let n = distance.len();
    if clusters.len() < 2 || n == 0 {
        return 0.0;
    }
    let mut total = 0.0;
    for (c, members) in clusters.iter().enumerate() {
        for &i in members {
            if members.len() == 1 {
                continue;
            }
            let a = members
                .iter()
                .filter(|&&j| j != i)
                .map(|&j| distance[i][j])
                .sum::<f64>()
                / (members.len() - 1) as f64;
            let b = clusters
                .iter()
                .enumerate()
                .filter(|(o, _)| *o != c)
                .map(|(_, other)| {
                    other.iter().map(|&j| distance[i][j]).sum::<f64>() / other.len() as f64
                })
                .fold(f64::INFINITY, f64::min);
            let denominator = a.max(b);
            if denominator > 0.0 {
                total += (b - a) / denominator;
            }
        }
    }
    total / n as f64
}

fn cosine_matrix(means: &[Vec<f32>]) -> Vec<Vec<f64>> {
    means
        .iter()
        .map(|a| means.iter().map(|b| cosine(a, b)).collect())
        .collect()
}

fn distances(cosines: &[Vec<f64>]) -> Vec<Vec<f64>> {
    cosines
        .iter()
        .map(|row| row.iter().map(|c| 1.0 - c).collect())
        .collect()
}

fn domain_means(measurements: &[&DomainMeasurement]) -> Vec<Vec<f32>> {
    measurements
        .iter()
        .map(|m| mean_vector(&m.gradients.iter().map(Vec::as_slice).collect::<Vec<_>>()))
        .collect()
}

/// Norm of the mean of the unit mean-gradients: 1 when all point one way, about
/// `1/sqrt(n)` for unrelated directions.
fn coherence(means: &[Vec<f32>]) -> f64 {
    let units: Vec<Vec<f64>> = means
        .iter()
        .map(|m| {
            let norm = m.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
            m.iter()
                .map(|&x| if norm > 0.0 { f64::from(x) / norm } else { 0.0 })
                .collect()
        })
        .collect();
    let width = units.first().map_or(0, Vec::len);
    let n = units.len().max(1) as f64;
    (0..width)
        .map(|i| (units.iter().map(|u| u[i]).sum::<f64>() / n).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Plans experts from the measurements; with an `advisor`, also asks it and uses its
/// plan when valid.
pub fn plan(
    measurements: &[DomainMeasurement],
    config: &PlannerConfig,
    advisor: Option<&dyn PlanAdvisor>,
) -> Result<PlanRecord> {
    if config.min_experts < 1 || config.min_experts > config.max_experts {
        return Err(Error::Config(format!(
            "min_experts {} and max_experts {} must satisfy 1 <= min <= max",
            config.min_experts, config.max_experts
        )));
    }
    let accuracy: BTreeMap<String, f64> = measurements
        .iter()
        .map(|m| (m.domain.clone(), m.accuracy))
        .collect();
    let mut by_accuracy: Vec<&DomainMeasurement> = measurements.iter().collect();
    by_accuracy.sort_by(|a, b| {
        a.accuracy
            .total_cmp(&b.accuracy)
            .then(a.domain.cmp(&b.domain))
    });
    let mut clustered: Vec<&DomainMeasurement> = by_accuracy
        .iter()
        .copied()
        .filter(|m| m.accuracy < config.weak_below)
        .collect();
    let mut padding = Vec::new();
    for m in &by_accuracy {
        if clustered.len() >= config.min_experts {
            break;
        }
        if m.accuracy >= config.weak_below {
            padding.push(format!(
                "{} (accuracy {:.3}, not weak) added: fewer than {} weak domains below {:.2}",
                m.domain, m.accuracy, config.min_experts, config.weak_below
            ));
            clustered.push(m);
        }
    }
    if clustered.len() < config.min_experts {
        return Err(Error::Data(format!(
            "only {} domains measured; a plan needs at least {}",
            clustered.len(),
            config.min_experts
        )));
    }
    if let Some(m) = clustered.iter().find(|m| m.gradients.is_empty()) {
        return Err(Error::Data(format!("domain {} has no gradients", m.domain)));
    }
    clustered.sort_by(|a, b| a.domain.cmp(&b.domain));
    let names: Vec<String> = clustered.iter().map(|m| m.domain.clone()).collect();
    let means = domain_means(&clustered);
    let cosines = cosine_matrix(&means);
    let distance = distances(&cosines);
    let coherence = coherence(&means);
    let n = names.len();
    let mean_cosine = (0..n)
        .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
        .map(|(i, j)| cosines[i][j])
        .sum::<f64>()
        / (n * (n - 1)).max(1) as f64;
    let general = mean_cosine >= config.general_min_mean_cosine
        && config.max_experts > config.min_experts.min(n);
    let reserved = usize::from(general);
    let low = config
        .min_experts
        .saturating_sub(reserved)
        .max(2)
        .min(names.len());
    let high = (config.max_experts - reserved).min(names.len()).max(low);

    // Bootstrap: resample each domain's problems with replacement.
    let mut rng = synth_tasks::Rng::new(config.seed ^ 0xb007);
    let mut boot_silhouettes: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut boot_assignments: BTreeMap<usize, Vec<Vec<Vec<usize>>>> = BTreeMap::new();
    for _ in 0..config.bootstrap {
        let resampled: Vec<Vec<f32>> = clustered
            .iter()
            .map(|m| {
                let picks: Vec<&[f32]> = (0..m.gradients.len())
                    .map(|_| {
                        m.gradients[rng.range(0, m.gradients.len() as i64 - 1) as usize].as_slice()
                    })
                    .collect();
                mean_vector(&picks)
            })
            .collect();
        let d = distances(&cosine_matrix(&resampled));
        for k in low..=high {
            let clusters = agglomerate(&d, k);
            boot_silhouettes
                .entry(k)
                .or_default()
                .push(silhouette(&d, &clusters));
            boot_assignments.entry(k).or_default().push(clusters);
        }
    }
    let mut silhouettes = Vec::new();
    for k in low..=high {
        let clusters = agglomerate(&distance, k);
        let boot = boot_silhouettes.get(&k).cloned().unwrap_or_default();
        let (mean, sd) = if boot.is_empty() {
            (silhouette(&distance, &clusters), 0.0)
        } else {
            let mean = boot.iter().sum::<f64>() / boot.len() as f64;
            let var = boot.iter().map(|s| (s - mean).powi(2)).sum::<f64>()
                / boot.len().max(2).saturating_sub(1) as f64;
            (mean, var.sqrt())
        };
        silhouettes.push(SilhouetteAt {
            clusters: k,
            silhouette: silhouette(&distance, &clusters),
            bootstrap_mean: mean,
            bootstrap_sd: sd,
            assignment: clusters
                .iter()
                .map(|c| c.iter().map(|&i| names[i].clone()).collect())
                .collect(),
        });
    }
    let best = silhouettes
        .iter()
        .max_by(|a, b| a.bootstrap_mean.total_cmp(&b.bootstrap_mean))
        .ok_or_else(|| Error::Data("no candidate number of experts".into()))?
        .clone();
    // Prefer fewer experts when within one bootstrap standard deviation of the best.
    let chosen = silhouettes
        .iter()
        .find(|s| s.bootstrap_mean >= best.bootstrap_mean - best.bootstrap_sd)
        .cloned()
        .unwrap_or(best.clone());
    let k = chosen.clusters;
    let clusters = agglomerate(&distance, k);
    let mut co_assignment = vec![vec![0.0; n]; n];
    if let Some(all) = boot_assignments.get(&k) {
        for assignment in all {
            for cluster in assignment {
                for &i in cluster {
                    for &j in cluster {
                        co_assignment[i][j] += 1.0 / all.len() as f64;
                    }
                }
            }
        }
    }

    let mut experts = Vec::new();
    for cluster in &clusters {
        let domains: Vec<String> = cluster.iter().map(|&i| names[i].clone()).collect();
        let mean_accuracy =
            cluster.iter().map(|&i| clustered[i].accuracy).sum::<f64>() / cluster.len() as f64;
        let accuracies: Vec<String> = cluster
            .iter()
            .map(|&i| format!("{} {:.3}", names[i], clustered[i].accuracy))
            .collect();
        let mut rationale = format!("accuracy {}", accuracies.join(", "));
        if cluster.len() > 1 {
            let mut pairs = Vec::new();
            for (a, &i) in cluster.iter().enumerate() {
                for &j in &cluster[a + 1..] {
                    pairs.push(format!(
                        "{}~{} cosine {:.3}, together in {:.0}% of resamples",
                        names[i],
                        names[j],
                        cosines[i][j],
                        100.0 * co_assignment[i][j]
                    ));
                }
            }
            let weakest = cluster
                .iter()
                .enumerate()
                .flat_map(|(a, &i)| cluster[a + 1..].iter().map(move |&j| (i, j)))
                .map(|(i, j)| cosines[i][j])
                .fold(f64::INFINITY, f64::min);
            rationale.push_str(&format!(
                "; grouped by gradient similarity{}: {}",
                if weakest < 0.2 {
                    " (weak: cosine below 0.2, the grouping is within the noise)"
                } else {
                    ""
                },
                pairs.join("; ")
            ));
        } else {
            let i = cluster[0];
            let nearest = (0..n)
                .filter(|&j| j != i)
                .max_by(|&a, &b| cosines[i][a].total_cmp(&cosines[i][b]));
            if let Some(j) = nearest {
                rationale.push_str(&format!(
                    "; its own expert: highest gradient cosine with another domain is {:.3} ({}), \
                     shared a cluster with it in {:.0}% of resamples",
                    cosines[i][j],
                    names[j],
                    100.0 * co_assignment[i][j]
                ));
            }
        }
        experts.push(ExpertDefinition {
            id: experts.len(),
            name: domains.join("+"),
            domains,
            rationale,
            target_improvement: (config.target_accuracy - mean_accuracy).max(0.0),
        });
    }
    if general {
        let mean_accuracy = clustered.iter().map(|m| m.accuracy).sum::<f64>() / n as f64;
        experts.push(ExpertDefinition {
            id: experts.len(),
            name: "general".into(),
            domains: names.clone(),
            rationale: format!(
                "the clustered domains' gradients share a direction: mean pairwise cosine {mean_cosine:.3} \
                 >= {:.2} (coherence {coherence:.3}); a general expert carries what they have in common",
                config.general_min_mean_cosine
            ),
            target_improvement: (config.target_accuracy - mean_accuracy).max(0.0),
        });
    }
    let table: Vec<String> = silhouettes
        .iter()
        .map(|s| {
            format!(
                "{} clusters: silhouette {:.3}, bootstrap {:.3} +- {:.3}",
                s.clusters, s.silhouette, s.bootstrap_mean, s.bootstrap_sd
            )
        })
        .collect();
    let reasoning = format!(
        "{} weak domains below accuracy {:.2} ({}){}. Their policy gradients with respect to z were \
         clustered by cosine similarity (average linkage); {}. The best bootstrap silhouette is at {} \
         clusters ({:.3} +- {:.3}); the fewest clusters within one standard deviation of it is {} \
         ({:.3}), chosen because differences inside the bootstrap noise do not justify more experts. \
         Mean pairwise gradient cosine {:.3} against {:.2} for a general expert ({} general expert). N = {}.",
        clustered
            .iter()
            .filter(|m| m.accuracy < config.weak_below)
            .count(),
        config.weak_below,
        names.join(", "),
        if padding.is_empty() {
            String::new()
        } else {
            format!("; padded: {}", padding.join("; "))
        },
        table.join("; "),
        best.clusters,
        best.bootstrap_mean,
        best.bootstrap_sd,
        k,
        chosen.bootstrap_mean,
        mean_cosine,
        config.general_min_mean_cosine,
        if general {
            "so a"
        } else {
            "below the threshold: no"
        },
        experts.len()
    );
    let measured = Plan {
        num_experts: experts.len(),
        expert_definitions: experts,
        reasoning,
    };
    let measurements_record = Measurements {
        accuracy,
        clustered: names.clone(),
        padding,
        problems: clustered
            .iter()
            .map(|m| (m.domain.clone(), m.gradients.len()))
            .collect(),
        informative_problems: clustered
            .iter()
            .map(|m| {
                let informative = m
                    .gradients
                    .iter()
                    .filter(|g| g.iter().any(|&x| x != 0.0))
                    .count();
                (
                    m.domain.clone(),
                    informative as f64 / m.gradients.len() as f64,
                )
            })
            .collect(),
        cosine: cosines,
        coherence,
        mean_cosine,
        silhouettes,
        co_assignment,
    };
    let mut record = PlanRecord {
        plan: measured.clone(),
        source: "measured".into(),
        measured_plan: measured,
        advisor: None,
        measurements: measurements_record,
        config: config.clone(),
    };
    if let Some(advisor) = advisor {
        let request = serde_json::json!({
            "task": "Group the weak domains into experts. Answer with JSON only: \
                     {\"num_experts\": N, \"expert_definitions\": [{\"id\", \"name\", \"domains\", \
                     \"rationale\", \"target_improvement\"}], \"reasoning\"}",
            "num_experts_range": [config.min_experts, config.max_experts],
            "weak_domains": names,
            "measurements": record.measurements,
            "measured_plan": record.measured_plan,
        });
        let (answer, parsed, problems) = match advisor.propose(&request) {
            Ok(answer) => {
                let parsed = parse_plan(&answer);
                let problems = match &parsed {
                    Ok(p) => validate_plan(p, &record.measurements.accuracy, &names, config),
                    Err(e) => vec![e.clone()],
                };
                (answer, parsed.ok(), problems)
            }
            Err(e) => (
                String::new(),
                None,
                vec![format!("the advisor failed: {e}")],
            ),
        };
        let accepted = problems.is_empty() && parsed.is_some();
        if accepted && let Some(p) = &parsed {
            record.plan = p.clone();
            record.source = "advisor".into();
        }
        record.advisor = Some(AdvisorRecord {
            advisor: advisor.name(),
            answer,
            plan: parsed,
            problems,
            accepted,
        });
    }
    Ok(record)
}

/// A plan from an answer: the whole text, or the outermost `{...}` in it (models wrap
/// JSON in prose or code fences).
pub fn parse_plan(answer: &str) -> std::result::Result<Plan, String> {
    let json = match (answer.find('{'), answer.rfind('}')) {
        (Some(a), Some(b)) if a < b => &answer[a..=b],
        _ => return Err("the answer holds no JSON object".into()),
    };
    serde_json::from_str(json).map_err(|e| format!("not a plan in the seed's schema: {e}"))
}

/// What is wrong with `plan` against the measurements: N in range and equal to the
/// definitions, known domains only, every clustered (weak) domain covered, finite
/// targets.
pub fn validate_plan(
    plan: &Plan,
    known: &BTreeMap<String, f64>,
    weak: &[String],
    config: &PlannerConfig,
) -> Vec<String> {
    let mut problems = Vec::new();
    if !(config.min_experts..=config.max_experts).contains(&plan.num_experts) {
        problems.push(format!(
            "num_experts {} outside {}..={}",
            plan.num_experts, config.min_experts, config.max_experts
        ));
    }
    if plan.num_experts != plan.expert_definitions.len() {
        problems.push(format!(
            "num_experts {} but {} definitions",
            plan.num_experts,
            plan.expert_definitions.len()
        ));
    }
    for e in &plan.expert_definitions {
        if e.domains.is_empty() {
            problems.push(format!("expert `{}` covers no domain", e.name));
        }
        for d in &e.domains {
            if !known.contains_key(d) {
                problems.push(format!("expert `{}` names unknown domain `{d}`", e.name));
            }
        }
        if !e.target_improvement.is_finite() {
            problems.push(format!("expert `{}` has a non-finite target", e.name));
        }
    }
    for w in weak {
        if !plan
            .expert_definitions
            .iter()
            .any(|e| e.domains.contains(w))
        {
            problems.push(format!("weak domain `{w}` is covered by no expert"));
        }
    }
    problems
}

/// Measures every domain of `profile` for the planner: `problems` distinct train-split
/// problems at the profiled difficulty, and their REINFORCE gradients with respect to
/// the policy's z (`samples` rollouts each, rewarded +1 when they verify).
pub fn measure_domains(
    policy: &mut reinforce_kl::SvfPolicy,
    tokenizer: &lm::Tokenizer,
    format: &eudaimonia_gate::PromptFormat,
    profile: &crate::profile::Profile,
    problems: usize,
    samples: usize,
    seed: u64,
) -> Result<Vec<DomainMeasurement>> {
    let mut out = Vec::with_capacity(profile.domains.len());
    for d in &profile.domains {
        let set = crate::profile::distinct_problems(
            d.domain,
            d.difficulty,
            synth_tasks::Split::Train,
            problems,
            seed,
        );
        let prompts: Vec<Vec<i64>> = set
            .iter()
            .map(|p| tokenizer.encode(&format.render(&p.prompt), false))
            .collect::<lm::Result<_>>()?;
        let reward = |i: usize, completion: &[i64]| -> f64 {
            match tokenizer.decode(completion, true) {
                Ok(text) if synth_tasks::verify(&set[i], &text) => 1.0,
                _ => -1.0,
            }
        };
        let gradients = crate::gradients::policy_gradients(
            policy,
            &prompts,
            &reward,
            samples,
            seed ^ d.domain as u64,
        )?;
        out.push(DomainMeasurement {
            domain: d.domain.name().to_owned(),
            accuracy: d.accuracy,
            gradients,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silhouette_and_clustering_on_obvious_groups() {
        // Two tight groups {0,1} and {2,3} far apart.
        let d = vec![
            vec![0.0, 0.1, 1.0, 1.0],
            vec![0.1, 0.0, 1.0, 1.0],
            vec![1.0, 1.0, 0.0, 0.1],
            vec![1.0, 1.0, 0.1, 0.0],
        ];
        let two = agglomerate(&d, 2);
        assert_eq!(two, vec![vec![0, 1], vec![2, 3]]);
        assert!((silhouette(&d, &two) - 0.9).abs() < 1e-12);
        let four = agglomerate(&d, 4);
        assert_eq!(silhouette(&d, &four), 0.0);
    }

    #[test]
    fn advisor_plans_are_validated() {
        let known: BTreeMap<String, f64> = [("a", 0.2), ("b", 0.3), ("c", 0.9)]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let weak = vec!["a".to_owned(), "b".to_owned()];
        let config = PlannerConfig {
            min_experts: 1,
            ..PlannerConfig::default()
        };
        let good = parse_plan("Here: ```{\"num_experts\":1,\"expert_definitions\":[{\"id\":0,\"name\":\"x\",\"domains\":[\"a\",\"b\"],\"rationale\":\"r\",\"target_improvement\":0.5}],\"reasoning\":\"r\"}```").unwrap();
        assert!(validate_plan(&good, &known, &weak, &config).is_empty());
        let mut bad = good.clone();
        bad.expert_definitions[0].domains = vec!["a".into(), "zz".into()];
        let problems = validate_plan(&bad, &known, &weak, &config);
        assert!(problems.iter().any(|p| p.contains("zz")));
        assert!(problems.iter().any(|p| p.contains("`b`")));
        assert!(parse_plan("no json").is_err());
        assert!(parse_plan("{\"num_experts\": 2}").is_err());
    }
}
