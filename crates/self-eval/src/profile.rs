//! The capability profile (R3): per domain, greedy accuracy with a Wilson interval,
//! confidence (reference-answer probability and pass rate over k samples), calibration
//! (expected calibration error and Brier score) and a difficulty sweep that locates the
//! learning zone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use synth_tasks::{Domain, Problem, Rng, Split};

use crate::answer::Answerer;
use crate::{Error, Result};

/// Settings of a profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfileConfig {
    /// Domains measured. Default: all eight of `synth-tasks`.
    pub domains: Vec<Domain>,
    /// Difficulty each domain is profiled at; domains not listed use 1. Default empty
    /// (callers usually pass the model's recorded difficulties).
    pub difficulties: BTreeMap<Domain, u32>,
    /// Distinct held-out problems per domain. Default 200.
    pub problems: usize,
    /// Sampled completions per problem for the pass rate (temperature 1). Default 8.
    pub samples: usize,
    /// Most new tokens of a sampled completion. Default 16.
    pub max_new_tokens: usize,
    /// Difficulties of the sweep. Default 1..=4.
    pub sweep: Vec<u32>,
    /// Problems per sweep difficulty. Default 64.
    pub sweep_problems: usize,
    /// The learning zone: accuracy band the sweep looks for. Default [0.70, 0.80] (seed).
    pub learning_zone: [f64; 2],
    /// Equal-width confidence bins of the calibration error. Default 10.
    pub calibration_bins: usize,
    /// Seed of problems and samples. Default 0.
    pub seed: u64,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        Self {
            domains: Domain::ALL.to_vec(),
            difficulties: BTreeMap::new(),
            problems: 200,
            samples: 8,
            max_new_tokens: 16,
            sweep: vec![1, 2, 3, 4],
            sweep_problems: 64,
            learning_zone: [0.70, 0.80],
            calibration_bins: 10,
            seed: 0,
        }
    }
}

/// One sweep point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    /// Difficulty.
    pub difficulty: u32,
    /// Problems.
    pub problems: usize,
    /// Greedy accuracy.
    pub accuracy: f64,
}

/// One domain's profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainProfile {
    /// The domain.
    pub domain: Domain,
    /// The difficulty profiled.
    pub difficulty: u32,
    /// Problems.
    pub problems: usize,
    /// Greedy-exact answers.
    pub correct: usize,
    /// Greedy accuracy.
    pub accuracy: f64,
    /// Wilson 95% interval of the accuracy.
    pub accuracy_ci95: [f64; 2],
    /// Mean probability of the reference answer (followed by a stop token).
    pub mean_answer_probability: f64,
    /// Mean share of sampled completions that verify (temperature 1).
    pub pass_rate: f64,
    /// Samples per problem behind the pass rate.
    pub samples: usize,
    /// Expected calibration error of the reference-answer probability as a forecast of
    /// greedy correctness (equal-width bins).
    pub ece: f64,
    /// Brier score of the same forecast.
    pub brier: f64,
    /// Accuracy at each sweep difficulty.
    pub sweep: Vec<SweepPoint>,
    /// The sweep difficulty whose accuracy is closest to the learning zone's centre.
    pub learning_zone_difficulty: u32,
    /// Its accuracy.
    pub learning_zone_accuracy: f64,
    /// Whether that accuracy lies inside the band.
    pub in_learning_zone: bool,
}

/// The whole profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Settings used.
    pub config: ProfileConfig,
    /// Per domain.
    pub domains: Vec<DomainProfile>,
    /// Mean accuracy over domains.
    pub mean_accuracy: f64,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Distinct problems of `domain` at `difficulty` from `split` (as many as exist, up to
/// `count`), drawn from `seed`.
pub fn distinct_problems(
    domain: Domain,
    difficulty: u32,
    split: Split,
    count: usize,
    seed: u64,
) -> Vec<Problem> {
    let mut rng = Rng::new(
        seed ^ (domain as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ u64::from(difficulty) << 32,
    );
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(count);
    for _ in 0..count * 30 {
        if out.len() == count {
            break;
        }
        let p = synth_tasks::generate_in(domain, difficulty, split, &mut rng);
        if seen.insert(p.prompt.clone()) {
            out.push(p);
        }
    }
    out
}

/// Expected calibration error over `bins` equal-width bins of `confidence` (the last bin
/// closed), weighted by bin size, and the Brier score.
pub fn calibration(confidence: &[f64], correct: &[bool], bins: usize) -> (f64, f64) {
    let n = confidence.len().max(1) as f64;
    let bins = bins.max(1);
    let mut count = vec![0usize; bins];
    let mut confidence_sum = vec![0.0; bins];
    let mut correct_sum = vec![0.0; bins];
    let mut brier = 0.0;
    for (&p, &y) in confidence.iter().zip(correct) {
        let y = f64::from(u8::from(y));
        let b = ((p * bins as f64) as usize).min(bins - 1);
        count[b] += 1;
        confidence_sum[b] += p;
        correct_sum[b] += y;
        brier += (p - y).powi(2);
    }
    let ece = (0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| (correct_sum[b] - confidence_sum[b]).abs() / n)
        .sum();
    (ece, brier / n)
}

/// Profiles the model behind `answerer`.
pub fn profile(answerer: &Answerer<'_>, config: &ProfileConfig) -> Result<Profile> {
    if config.domains.is_empty() || config.problems == 0 {
        return Err(Error::Config("a profile needs domains and problems".into()));
    }
    let started = Instant::now();
    let mut domains = Vec::with_capacity(config.domains.len());
    for &domain in &config.domains {
        let difficulty = config.difficulties.get(&domain).copied().unwrap_or(1);
        let problems = distinct_problems(
            domain,
            difficulty,
            Split::HeldOut,
            config.problems,
            config.seed,
        );
        if problems.is_empty() {
            return Err(Error::Data(format!(
                "no held-out problems of {} at difficulty {difficulty}",
                domain.name()
            )));
        }
        let encoded = answerer.encode(&problems)?;
        let one_pass = answerer.one_pass(&encoded)?;
        let correct_flags: Vec<bool> = one_pass.iter().map(|r| r.exact).collect();
        let probabilities: Vec<f64> = one_pass.iter().map(|r| r.log_prob.exp()).collect();
        let correct = correct_flags.iter().filter(|&&c| c).count();
        let (ece, brier) = calibration(&probabilities, &correct_flags, config.calibration_bins);
        let pass_rates = answerer.pass_rates(
            &problems,
            &encoded,
            config.samples,
            config.max_new_tokens,
            config.seed ^ domain as u64,
        )?;
        let mut sweep = Vec::with_capacity(config.sweep.len());
        for &d in &config.sweep {
            let sweep_problems = distinct_problems(
                domain,
                d,
                Split::HeldOut,
                config.sweep_problems,
                config.seed ^ 0x5eed,
            );
            if sweep_problems.is_empty() {
                continue;
            }
            let results = answerer.one_pass(&answerer.encode(&sweep_problems)?)?;
            let right = results.iter().filter(|r| r.exact).count();
            sweep.push(SweepPoint {
                difficulty: d,
                problems: sweep_problems.len(),
                accuracy: right as f64 / sweep_problems.len() as f64,
            });
        }
        let [low, high] = config.learning_zone;
        let centre = (low + high) / 2.0;
        let zone = sweep
            .iter()
            .min_by(|a, b| {
                (a.accuracy - centre)
                    .abs()
                    .total_cmp(&(b.accuracy - centre).abs())
                    .then(a.difficulty.cmp(&b.difficulty))
            })
            .cloned()
            .unwrap_or(SweepPoint {
                difficulty,
                problems: problems.len(),
                accuracy: correct as f64 / problems.len() as f64,
            });
        let n = problems.len();
        domains.push(DomainProfile {
            domain,
            difficulty,
            problems: n,
            correct,
            accuracy: correct as f64 / n as f64,
            accuracy_ci95: eudaimonia_gate::wilson_interval(correct, n),
            mean_answer_probability: probabilities.iter().sum::<f64>() / n as f64,
            pass_rate: pass_rates.iter().sum::<f64>() / n as f64,
            samples: config.samples,
            ece,
            brier,
            sweep,
            learning_zone_difficulty: zone.difficulty,
            learning_zone_accuracy: zone.accuracy,
            in_learning_zone: zone.accuracy >= low && zone.accuracy <= high,
        });
    }
    let mean_accuracy = domains.iter().map(|d| d.accuracy).sum::<f64>() / domains.len() as f64;
    Ok(Profile {
        config: config.clone(),
        domains,
        mean_accuracy,
        seconds: started.elapsed().as_secs_f64(),
    })
}

impl Profile {
    /// The profile of `domain`, if measured.
    pub fn domain(&self, domain: Domain) -> Option<&DomainProfile> {
        self.domains.iter().find(|d| d.domain == domain)
    }

    /// A Markdown table, one row per domain.
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| domain | difficulty | accuracy (95% CI) | answer prob. | pass@1 (k samples) | ECE | Brier | sweep accuracy by difficulty | learning zone |\n\
             |---|---|---|---|---|---|---|---|---|\n",
        );
        for d in &self.domains {
            let sweep: Vec<String> = d
                .sweep
                .iter()
                .map(|p| format!("d{} {:.2}", p.difficulty, p.accuracy))
                .collect();
            out.push_str(&format!(
                "| {} | {} | {:.3} ({}/{}; {:.3}-{:.3}) | {:.3} | {:.3} (k={}) | {:.3} | {:.3} | {} | d{} ({:.2}{}) |\n",
                d.domain.name(),
                d.difficulty,
                d.accuracy,
                d.correct,
                d.problems,
                d.accuracy_ci95[0],
                d.accuracy_ci95[1],
                d.mean_answer_probability,
                d.pass_rate,
                d.samples,
                d.ece,
                d.brier,
                sweep.join(", "),
                d.learning_zone_difficulty,
                d.learning_zone_accuracy,
                if d.in_learning_zone { ", in band" } else { ", outside band" },
            ));
        }
        out.push_str(&format!(
            "\nMean accuracy {:.3} over {} domains{}. Accuracy is greedy-exact (one teacher-forced pass); \
             ECE uses {} equal-width bins of the reference-answer probability as a forecast of greedy correctness.\n",
            self.mean_accuracy,
            self.domains.len(),
            // A record with its wall time set aside (0) says nothing about time.
            if self.seconds > 0.0 {
                format!("; {:.1} s", self.seconds)
            } else {
                String::new()
            },
            self.config.calibration_bins
        ));
        out
    }
}

/// The per-domain difficulties a model folder records in `recipe.json`
/// (`difficulties.<domain>`, as the embedded default model does); empty when the folder
/// has no recipe.
pub fn recorded_difficulties(dir: &std::path::Path) -> Result<BTreeMap<Domain, u32>> {
    let path = dir.join("recipe.json");
    if !path.is_file() {
        return Ok(BTreeMap::new());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::Io {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let recipe: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Io {
        path: path.clone(),
        message: format!("not JSON: {e}"),
    })?;
    Ok(Domain::ALL
        .iter()
        .filter_map(|&d| {
            recipe["difficulties"][d.name()]
                .as_u64()
                .map(|v| (d, v as u32))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_of_perfect_and_overconfident_forecasts() {
        let (ece, brier) = calibration(&[1.0, 0.0, 1.0], &[true, false, true], 10);
        assert_eq!((ece, brier), (0.0, 0.0));
        // Always 0.9 confident, right half the time: ECE 0.4, Brier (0.01 + 0.81) / 2.
        let (ece, brier) = calibration(&[0.9, 0.9], &[true, false], 10);
        assert!((ece - 0.4).abs() < 1e-12 && (brier - 0.41).abs() < 1e-12);
    }

    #[test]
    fn problems_are_distinct_and_held_out() {
        let problems = distinct_problems(Domain::Code, 2, Split::HeldOut, 50, 3);
        assert_eq!(problems.len(), 50);
        let prompts: BTreeSet<&str> = problems.iter().map(|p| p.prompt.as_str()).collect();
        assert_eq!(prompts.len(), 50);
        assert!(
            problems
                .iter()
                .all(|p| synth_tasks::split_of(p.domain, &p.prompt) == Split::HeldOut)
        );
    }
}
