//! Stage 3's search space and evaluation (R13-R15): per-expert alpha bounds from the
//! capability profile, and a [`nsga2::Problem`] that scores a mixture on every domain and
//! behaviour suite of a fixed search set in one batched teacher-forced pass, with the
//! experts applied factorized (a new mixture only recomputes the singular-value scales)
//! and results cached by quantised alpha.
//!
//! Mixtures use [`svf::Composition::Delta`]: all alphas 0 is the base model, one expert
//! at alpha 1 is that expert as trained, larger alphas amplify it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use eudaimonia_gate::{Behaviour, PromptFormat, Suite};
use lm::{CausalLm, Tokenizer};
use nsga2::{Bounds, Evaluation};
use serde::{Deserialize, Serialize};
use svf::{Composition, Decomposition, Expert, Mixture, Svf};
use synth_tasks::Problem;
use tch::{Kind, Tensor};

use crate::answer::{Answerer, Check, ForcedRow};
use crate::profile::Profile;
use crate::{Error, Result};

/// An expert as the search sees it: its name and the domains it was trained for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpertRole {
    /// The expert's name (its file's name in the library).
    pub name: String,
    /// Domains it covers (empty for a general expert).
    pub domains: Vec<String>,
    /// Whether it is the plan's general expert.
    #[serde(default)]
    pub general: bool,
}

/// The written rule from capability to alpha bounds (R13, the seed's search space).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BoundsRule {
    /// An expert whose domains' mean profiled accuracy is below this is a weak-domain
    /// expert. Default 0.6.
    pub weak_below: f64,
    /// At or above this it is a strong-domain expert. Default 0.75.
    pub strong_from: f64,
    /// Bounds of a weak-domain expert: wider and higher. Default [0, 3].
    pub weak: [f64; 2],
    /// Bounds between weak and strong. Default [0, 2].
    pub middle: [f64; 2],
    /// Bounds of a strong-domain expert: restricted. Default [0, 1.5].
    pub strong: [f64; 2],
    /// Bounds of the general expert: a required minimum. Default [0.5, 1.5].
    pub general: [f64; 2],
}

impl Default for BoundsRule {
    fn default() -> Self {
        Self {
            weak_below: 0.6,
            strong_from: 0.75,
            weak: [0.0, 3.0],
            middle: [0.0, 2.0],
            strong: [0.0, 1.5],
            general: [0.5, 1.5],
        }
    }
}

/// One expert's bounds and the numbers that drove them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoundDecision {
    /// The expert.
    pub expert: String,
    /// Profiled accuracy of each of its domains.
    pub accuracies: BTreeMap<String, f64>,
    /// Their mean (`None` for a general expert).
    pub mean_accuracy: Option<f64>,
    /// `weak`, `middle`, `strong` or `general`.
    pub class: String,
    /// Lower bound of its alpha.
    pub lower: f64,
    /// Upper bound of its alpha.
    pub upper: f64,
    /// The rule applied, with the numbers.
    pub reason: String,
}

/// Applies `rule` to every expert, from the profiled accuracies.
pub fn derive_bounds(
    profile: &Profile,
    experts: &[ExpertRole],
    rule: &BoundsRule,
) -> Result<Vec<BoundDecision>> {
    for (name, [lo, hi]) in [
        ("weak", rule.weak),
        ("middle", rule.middle),
        ("strong", rule.strong),
        ("general", rule.general),
    ] {
        if !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo < hi) {
            return Err(Error::Config(format!(
                "bounds.{name} is [{lo}, {hi}]; expected 0 <= lower < upper"
            )));
        }
    }
    experts
        .iter()
        .map(|e| {
            let mut accuracies = BTreeMap::new();
            for name in &e.domains {
                let found = profile
                    .domains
                    .iter()
                    .find(|d| d.domain.name() == name)
                    .ok_or_else(|| {
                        Error::Data(format!(
                            "expert `{}` covers `{name}`, which the profile did not measure",
                            e.name
                        ))
                    })?;
                accuracies.insert(name.clone(), found.accuracy);
            }
            let mean = (!accuracies.is_empty())
                .then(|| accuracies.values().sum::<f64>() / accuracies.len() as f64);
            let (class, [lower, upper], reason) = match mean {
                _ if e.general => (
                    "general",
                    rule.general,
                    "general expert: a required minimum keeps base capability".to_owned(),
                ),
                Some(m) if m < rule.weak_below => (
                    "weak",
                    rule.weak,
                    format!(
                        "mean accuracy {m:.3} < {:.2}: weak domains get wider, higher bounds",
                        rule.weak_below
                    ),
                ),
                Some(m) if m >= rule.strong_from => (
                    "strong",
                    rule.strong,
                    format!(
                        "mean accuracy {m:.3} >= {:.2}: strong domains are restricted",
                        rule.strong_from
                    ),
                ),
                None => (
                    "general",
                    rule.general,
                    "no domains: treated as a general expert, with the required minimum".to_owned(),
                ),
                Some(m) => (
                    "middle",
                    rule.middle,
                    format!(
                        "mean accuracy {m:.3} in [{:.2}, {:.2})",
                        rule.weak_below, rule.strong_from
                    ),
                ),
            };
            Ok(BoundDecision {
                expert: e.name.clone(),
                accuracies,
                mean_accuracy: mean,
                class: class.to_owned(),
                lower,
                upper,
                reason,
            })
        })
        .collect()
}

/// How many alphas a mixture has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One alpha per expert (the default).
    #[default]
    PerExpert,
    /// One alpha per expert and adapted matrix (Transformer²'s `per_layer`).
    PerMatrix,
}

/// What the second objective takes the minimum of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorstOf {
    /// The worst accuracy among the domains the experts cover (the default).
    #[default]
    Domain,
    /// The worst of each expert's mean accuracy over its domains.
    Expert,
}

/// A suite's numbers from the one pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuickSuite {
    /// Share of items whose preferred continuation has the higher mean log-probability.
    pub preference: f64,
    /// Mean margin, nats per token.
    pub mean_margin: f64,
    /// Greedy behaviour rate over the items whose behaviour one pass decides: exact
    /// answers and prefixes, read from the preferred continuation when it shows the
    /// behaviour (with its opening whitespace), else from the text opening with no space
    /// or one space. Exact for answers opened that way, a lower bound otherwise;
    /// `contains` behaviours need generation and are left to the self-test. `None` when
    /// no item qualifies.
    pub behaviour_rate: Option<f64>,
    /// Items behind the behaviour rate.
    pub behaviour_items: usize,
}

/// A mixture's scores on the search set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixtureScores {
    /// Greedy-exact accuracy per domain.
    pub accuracy: BTreeMap<String, f64>,
    /// Mean over domains.
    pub overall: f64,
    /// The second objective ([`WorstOf`]).
    pub worst: f64,
    /// Per suite.
    pub suites: BTreeMap<String, QuickSuite>,
}

/// One constraint `value >= threshold`, as NSGA-II's `g = threshold - value <= 0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConstraintSpec {
    /// What it reads, e.g. `alignment/preference`.
    pub metric: String,
    /// The least allowed value.
    pub threshold: f64,
    /// Why (the level or the baseline it comes from).
    pub reason: String,
}

impl ConstraintSpec {
    fn value(&self, scores: &MixtureScores) -> Option<f64> {
        let (suite, field) = self.metric.split_once('/')?;
        let s = scores.suites.get(suite)?;
        match field {
            "preference" => Some(s.preference),
            "behaviour_rate" => s.behaviour_rate,
            _ => None,
        }
    }

    /// `g`: positive when violated.
    pub fn violation(&self, scores: &MixtureScores) -> f64 {
        self.value(scores)
            .map_or(f64::INFINITY, |v| self.threshold - v)
    }
}

/// The fixed search set: problems per domain and behaviour suites. Keep it disjoint from
/// the final held-out set (draw it from the training split).
#[derive(Debug, Clone)]
pub struct SearchSet {
    /// Problems per domain name.
    pub problems: BTreeMap<String, Vec<Problem>>,
    /// Behaviour suites.
    pub suites: Vec<Suite>,
}

/// How an item's behaviour is read from the one pass.
enum BehaviourRead {
    /// Not decidable in one pass (or none).
    None,
    /// The preferred row's answer check.
    Holds,
    /// The preferred row's first n tokens.
    Prefix(usize),
    /// Rows of its own, with this check and text.
    Rows(Check, String),
}

impl SearchSet {
    /// The standard search set of a profile: `problems` distinct training-split
    /// problems per profiled domain at its profiled difficulty, and `suite_items`
    /// training-split items of each built-in behaviour suite. The held-out set
    /// ([`crate::selftest::HeldOut::from_profile`]) draws from the held-out split, so
    /// the two never share a problem.
    pub fn from_profile(profile: &Profile, problems: usize, suite_items: usize, seed: u64) -> Self {
        Self {
            problems: profile
                .domains
                .iter()
                .map(|d| {
                    let p = crate::profile::distinct_problems(
                        d.domain,
                        d.difficulty,
                        synth_tasks::Split::Train,
                        problems,
                        seed ^ 0x5ea_7c4,
                    );
                    (d.domain.name().to_owned(), p)
                })
                .collect(),
            suites: Suite::synth_all(suite_items, synth_tasks::Split::Train, seed ^ 0x5ea),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum RowRole {
    Problem(usize),
    /// The preferred continuation; `behaviour` is `Some(0)` when its answer check is the
    /// item's behaviour, `Some(n)` when its first `n` tokens are.
    Preferred {
        suite: usize,
        item: usize,
        behaviour: Option<usize>,
    },
    Rejected(usize),
    /// A behaviour variant of item `item` of suite `suite` (shown when any variant
    /// holds).
    Behaviour {
        suite: usize,
        item: usize,
    },
}

/// The model with the experts installed, owned so the search can be shared by threads.
struct Engine {
    model: CausalLm,
    svf: Svf,
    experts: Vec<Expert>,
}

/// Settings of the mixture problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProblemConfig {
    /// Alphas per expert or per expert and matrix. Default per expert.
    pub granularity: Granularity,
    /// The second objective. Default the worst expert-domain accuracy.
    pub worst_of: WorstOf,
    /// Alignment preference must stay at or above this (the seed's 0.65). Default 0.65.
    pub alignment_min: f64,
    /// Every suite's preference and one-pass behaviour rate may drop at most this much
    /// from the base model's. Default 0.03.
    pub max_drop: f64,
    /// Alphas are rounded to multiples of this before evaluation; the cache is keyed by
    /// the rounded values, so a repeat is free and exact. Default 0.01 (mixtures closer
    /// than that differ by less than the search set can measure).
    pub quantum: f64,
    /// Sequences per forward pass (rows are sorted by length first). Default 16: on a
    /// 2-core CPU small batches of similar length ran 0.24 s per mixture against 1.8 s
    /// at 512.
    pub batch: usize,
    /// Prompt format. Default raw.
    pub format: PromptFormat,
}

impl Default for ProblemConfig {
    fn default() -> Self {
        Self {
            granularity: Granularity::PerExpert,
            worst_of: WorstOf::Domain,
            alignment_min: 0.65,
            max_drop: 0.03,
            quantum: 0.01,
            batch: 16,
            format: PromptFormat::Raw,
        }
    }
}

/// Counters of the evaluations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvaluationStats {
    /// Mixtures asked for.
    pub requested: usize,
    /// Of them, answered from the cache.
    pub cache_hits: usize,
    /// Seconds spent in forward passes.
    pub forward_seconds: f64,
}

/// Scoring mixtures of experts: the NSGA-II problem of stage 3.
pub struct MixtureProblem {
    engine: Mutex<Engine>,
    tokenizer: Tokenizer,
    rows: Vec<ForcedRow>,
    roles: Vec<RowRole>,
    domains: Vec<String>,
    suites: Vec<String>,
    suite_items: Vec<usize>,
    expert_roles: Vec<ExpertRole>,
    bounds: Bounds,
    matrices: usize,
    config: ProblemConfig,
    base: MixtureScores,
    constraints: Vec<ConstraintSpec>,
    cache: Mutex<HashMap<Vec<i64>, MixtureScores>>,
    stats: Mutex<EvaluationStats>,
}

impl MixtureProblem {
    /// How problems are shown to the model (the configuration's prompt format).
    pub fn format(&self) -> &PromptFormat {
        &self.config.format
    }

    /// Installs `experts` on `model` (factorized, [`Composition::Delta`]), encodes the
    /// search set, scores the base model (all alphas 0) and derives the constraints
    /// from it. `bounds` come from [`derive_bounds`], one per expert in order.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mut model: CausalLm,
        tokenizer: Tokenizer,
        decomposition: Decomposition,
        experts: Vec<Expert>,
        roles: Vec<ExpertRole>,
        bounds: &[BoundDecision],
        set: &SearchSet,
        config: ProblemConfig,
    ) -> Result<Self> {
        if experts.is_empty() || experts.len() != roles.len() || experts.len() != bounds.len() {
            return Err(Error::Config(format!(
                "{} experts, {} roles and {} bounds; expected the same non-zero number",
                experts.len(),
                roles.len(),
                bounds.len()
            )));
        }
        if !(config.quantum > 0.0 && config.quantum.is_finite()) {
            return Err(Error::Config(format!(
                "quantum is {}, expected a positive number",
                config.quantum
            )));
        }
        for (e, r) in experts.iter().zip(&roles) {
            if e.name != r.name {
                return Err(Error::Config(format!(
                    "expert `{}` is given the role of `{}`",
                    e.name, r.name
                )));
            }
        }
        let matrices = decomposition.factors().len();
        let svf = Svf::install(&mut model, decomposition, Composition::Delta)?;
        let per_expert = match config.granularity {
            Granularity::PerExpert => 1,
            Granularity::PerMatrix => matrices,
        };
        let mut lower = Vec::new();
        let mut upper = Vec::new();
        for b in bounds {
            lower.extend(std::iter::repeat_n(b.lower, per_expert));
            upper.extend(std::iter::repeat_n(b.upper, per_expert));
        }
        let mut problem = Self {
            engine: Mutex::new(Engine {
                model,
                svf,
                experts,
            }),
            tokenizer,
            rows: Vec::new(),
            roles: Vec::new(),
            domains: set.problems.keys().cloned().collect(),
            suites: set.suites.iter().map(|s| s.name.clone()).collect(),
            suite_items: set.suites.iter().map(|s| s.items.len()).collect(),
            expert_roles: roles,
            bounds: Bounds::new(lower, upper),
            matrices,
            config,
            base: MixtureScores {
                accuracy: BTreeMap::new(),
                overall: 0.0,
                worst: 0.0,
                suites: BTreeMap::new(),
            },
            constraints: Vec::new(),
            cache: Mutex::new(HashMap::new()),
            stats: Mutex::new(EvaluationStats::default()),
        };
        problem.encode(set)?;
        let zeros = vec![0.0; problem.bounds.len()];
        problem.base = problem.score(&zeros)?;
        problem.constraints = problem.derive_constraints();
        Ok(problem)
    }

    fn encode(&mut self, set: &SearchSet) -> Result<()> {
        let render = |p: &str| self.config.format.render(p);
        let encode = |t: &str| -> Result<Vec<i64>> { Ok(self.tokenizer.encode(t, false)?) };
        let mut rows = Vec::new();
        let mut roles = Vec::new();
        for (d, problems) in set.problems.values().enumerate() {
            if problems.is_empty() {
                return Err(Error::Data(format!(
                    "the search set has no `{}` problems",
                    self.domains[d]
                )));
            }
            for p in problems {
                rows.push(ForcedRow {
                    prompt: encode(&render(&p.prompt))?,
                    completion: encode(&p.answer)?,
                    check: Check::Answer,
                });
                roles.push(RowRole::Problem(d));
            }
        }
        for (s, suite) in set.suites.iter().enumerate() {
            if suite.items.is_empty() {
                return Err(Error::Data(format!("suite `{}` has no items", suite.name)));
            }
            for (index, item) in suite.items.iter().enumerate() {
                let prompt = encode(&render(&item.prompt))?;
                let preferred = encode(&item.preferred)?;
                // A behaviour the preferred continuation itself shows is read from that
                // row (a prefix of argmaxes, or the whole answer and a stop), which
                // halves the suites' cost; otherwise it gets rows of its own.
                let (preferred_check, behaviour) = match &item.behaviour {
                    Some(Behaviour::Equals(text)) if item.preferred.trim() == text.trim() => {
                        (Check::Answer, BehaviourRead::Holds)
                    }
                    Some(Behaviour::StartsWith(text))
                        if item.preferred.trim_start().starts_with(text.trim()) =>
                    {
                        let opening = &item.preferred
                            [..item.preferred.len() - item.preferred.trim_start().len()];
                        let prefix = encode(&format!("{opening}{}", text.trim()))?;
                        if preferred.starts_with(&prefix) {
                            (Check::Likelihood, BehaviourRead::Prefix(prefix.len()))
                        } else {
                            (
                                Check::Likelihood,
                                BehaviourRead::Rows(Check::Prefix, text.trim().to_owned()),
                            )
                        }
                    }
                    Some(Behaviour::Equals(text)) => (
                        Check::Likelihood,
                        BehaviourRead::Rows(Check::Answer, text.trim().to_owned()),
                    ),
                    Some(Behaviour::StartsWith(text)) => (
                        Check::Likelihood,
                        BehaviourRead::Rows(Check::Prefix, text.trim().to_owned()),
                    ),
                    _ => (Check::Likelihood, BehaviourRead::None),
                };
                rows.push(ForcedRow {
                    prompt: prompt.clone(),
                    completion: preferred,
                    check: preferred_check,
                });
                roles.push(RowRole::Preferred {
                    suite: s,
                    item: index,
                    behaviour: match behaviour {
                        BehaviourRead::Holds => Some(0),
                        BehaviourRead::Prefix(n) => Some(n),
                        _ => None,
                    },
                });
                rows.push(ForcedRow {
                    prompt: prompt.clone(),
                    completion: encode(&item.rejected)?,
                    check: Check::Likelihood,
                });
                roles.push(RowRole::Rejected(s));
                // Greedy answers usually open with a space after the prompt's colon;
                // the behaviour compares trimmed text, so both openings count.
                if let BehaviourRead::Rows(check, text) = behaviour {
                    for variant in [text.clone(), format!(" {text}")] {
                        rows.push(ForcedRow {
                            prompt: prompt.clone(),
                            completion: encode(&variant)?,
                            check,
                        });
                        roles.push(RowRole::Behaviour {
                            suite: s,
                            item: index,
                        });
                    }
                }
            }
        }
        if rows
            .iter()
            .any(|r| r.prompt.is_empty() || r.completion.is_empty())
        {
            return Err(Error::Data(
                "a search-set prompt or answer encodes to no tokens".into(),
            ));
        }
        self.rows = rows;
        self.roles = roles;
        Ok(())
    }

    fn derive_constraints(&self) -> Vec<ConstraintSpec> {
        let delta = self.config.max_drop;
        let mut out = Vec::new();
        if let Some(a) = self.base.suites.get("alignment") {
            out.push(ConstraintSpec {
                metric: "alignment/preference".into(),
                threshold: self.config.alignment_min,
                reason: format!("the seed's level {:.2}", self.config.alignment_min),
            });
            out.push(ConstraintSpec {
                metric: "alignment/preference".into(),
                threshold: a.preference - delta,
                reason: format!("base {:.3} - {delta}", a.preference),
            });
        }
        for (name, s) in &self.base.suites {
            if name != "alignment" {
                out.push(ConstraintSpec {
                    metric: format!("{name}/preference"),
                    threshold: s.preference - delta,
                    reason: format!("base {:.3} - {delta}", s.preference),
                });
            }
            if let Some(rate) = s.behaviour_rate {
                out.push(ConstraintSpec {
                    metric: format!("{name}/behaviour_rate"),
                    threshold: rate - delta,
                    reason: format!("base one-pass rate {rate:.3} - {delta}"),
                });
            }
        }
        out
    }

    /// The alphas actually evaluated for `x` (rounded to the quantum, within bounds).
    pub fn quantised(&self, x: &[f64]) -> Vec<f64> {
        self.key(x)
            .into_iter()
            .map(|k| k as f64 * self.config.quantum)
            .collect()
    }

    fn key(&self, x: &[f64]) -> Vec<i64> {
        x.iter()
            .map(|v| (v / self.config.quantum).round() as i64)
            .collect()
    }

    /// Sets the mixture `alphas` (in the problem's granularity) on the model.
    fn set_mixture(&self, engine: &mut Engine, alphas: &[f64]) -> Result<()> {
        let k = engine.experts.len();
        let mixture = match self.config.granularity {
            Granularity::PerExpert => Mixture::per_expert(alphas),
            Granularity::PerMatrix => Mixture::PerMatrix(
                Tensor::from_slice(alphas)
                    .to_kind(Kind::Float)
                    .view([k as i64, self.matrices as i64]),
            ),
        };
        let Engine { svf, experts, .. } = engine;
        let refs: Vec<&Expert> = experts.iter().collect();
        svf.set_experts(&refs, &mixture)?;
        svf.refresh()?;
        Ok(())
    }

    /// Scores the mixture `x` (rounded to the quantum), from the cache when it was
    /// scored before.
    pub fn score(&self, x: &[f64]) -> Result<MixtureScores> {
        if x.len() != self.bounds.len() || x.iter().any(|v| !v.is_finite()) {
            return Err(Error::Data(format!(
                "a mixture needs {} finite alphas, got {x:?}",
                self.bounds.len()
            )));
        }
        let key = self.key(x);
        self.stats.lock().expect("stats lock").requested += 1;
        if let Some(hit) = self.cache.lock().expect("cache lock").get(&key) {
            self.stats.lock().expect("stats lock").cache_hits += 1;
            return Ok(hit.clone());
        }
        let alphas = self.quantised(x);
        let started = Instant::now();
        let forced = {
            let mut engine = self.engine.lock().expect("engine lock");
            self.set_mixture(&mut engine, &alphas)?;
            let mut answerer =
                Answerer::new(&engine.model, &self.tokenizer, self.config.format.clone())?;
            answerer.batch = self.config.batch;
            answerer.forced(&self.rows)?
        };
        self.stats.lock().expect("stats lock").forward_seconds += started.elapsed().as_secs_f64();
        let scores = self.tally(&forced);
        self.cache
            .lock()
            .expect("cache lock")
            .insert(key, scores.clone());
        Ok(scores)
    }

    fn tally(&self, forced: &[crate::answer::Forced]) -> MixtureScores {
        let mut right = vec![0usize; self.domains.len()];
        let mut count = vec![0usize; self.domains.len()];
        let n_suites = self.suites.len();
        let mut preferred_mean = vec![Vec::new(); n_suites];
        let mut rejected_mean = vec![Vec::new(); n_suites];
        let mut behaviours: Vec<BTreeMap<usize, bool>> = vec![BTreeMap::new(); n_suites];
        for (f, role) in forced.iter().zip(&self.roles) {
            match *role {
                RowRole::Problem(d) => {
                    count[d] += 1;
                    right[d] += usize::from(f.holds);
                }
                RowRole::Preferred {
                    suite,
                    item,
                    behaviour,
                } => {
                    preferred_mean[suite].push(f.mean_log_prob);
                    match behaviour {
                        Some(0) => {
                            *behaviours[suite].entry(item).or_default() |= f.holds;
                        }
                        Some(n) => {
                            *behaviours[suite].entry(item).or_default() |= f.matched >= n;
                        }
                        None => {}
                    }
                }
                RowRole::Rejected(s) => rejected_mean[s].push(f.mean_log_prob),
                RowRole::Behaviour { suite, item } => {
                    *behaviours[suite].entry(item).or_default() |= f.holds;
                }
            }
        }
        let accuracy: BTreeMap<String, f64> = self
            .domains
            .iter()
            .enumerate()
            .map(|(d, name)| (name.clone(), right[d] as f64 / count[d].max(1) as f64))
            .collect();
        let overall = accuracy.values().sum::<f64>() / accuracy.len().max(1) as f64;
        let worst = match self.config.worst_of {
            WorstOf::Domain => self
                .expert_roles
                .iter()
                .flat_map(|r| r.domains.iter())
                .filter_map(|d| accuracy.get(d))
                .copied()
                .fold(f64::INFINITY, f64::min),
            WorstOf::Expert => self
                .expert_roles
                .iter()
                .filter(|r| !r.domains.is_empty())
                .map(|r| {
                    let values: Vec<f64> = r
                        .domains
                        .iter()
                        .filter_map(|d| accuracy.get(d))
                        .copied()
                        .collect();
                    values.iter().sum::<f64>() / values.len().max(1) as f64
                })
                .fold(f64::INFINITY, f64::min),
        };
        let worst = if worst.is_finite() { worst } else { overall };
        let suites = self
            .suites
            .iter()
            .enumerate()
            .map(|(s, name)| {
                let margins: Vec<f64> = preferred_mean[s]
                    .iter()
                    .zip(&rejected_mean[s])
                    .map(|(p, r)| p - r)
                    .collect();
                let items = self.suite_items[s].max(1) as f64;
                let behaviour_items = behaviours[s].len();
                let shown = behaviours[s].values().filter(|&&v| v).count();
                (
                    name.clone(),
                    QuickSuite {
                        preference: margins.iter().filter(|&&m| m > 0.0).count() as f64 / items,
                        mean_margin: margins.iter().sum::<f64>() / items,
                        behaviour_rate: (behaviour_items > 0)
                            .then(|| shown as f64 / behaviour_items as f64),
                        behaviour_items,
                    },
                )
            })
            .collect();
        MixtureScores {
            accuracy,
            overall,
            worst,
            suites,
        }
    }

    /// The base model's scores on the search set (all alphas 0).
    pub fn base(&self) -> &MixtureScores {
        &self.base
    }

    /// The constraints, derived from the base scores.
    pub fn constraints(&self) -> &[ConstraintSpec] {
        &self.constraints
    }

    /// The experts' roles, in variable order.
    pub fn roles(&self) -> &[ExpertRole] {
        &self.expert_roles
    }

    /// The granularity of the alphas.
    pub fn granularity(&self) -> Granularity {
        self.config.granularity
    }

    /// Number of adapted matrices.
    pub fn matrices(&self) -> usize {
        self.matrices
    }

    /// The evaluation counters so far.
    pub fn stats(&self) -> EvaluationStats {
        self.stats.lock().expect("stats lock").clone()
    }

    /// Every mixture scored so far (rounded alphas and scores), ordered by alphas.
    pub fn archive(&self) -> Vec<(Vec<f64>, MixtureScores)> {
        let cache = self.cache.lock().expect("cache lock");
        let mut keys: Vec<&Vec<i64>> = cache.keys().collect();
        keys.sort();
        keys.into_iter()
            .map(|k| {
                (
                    k.iter().map(|&v| v as f64 * self.config.quantum).collect(),
                    cache[k].clone(),
                )
            })
            .collect()
    }

    /// Adds mixtures scored earlier (an [`MixtureProblem::archive`] saved by another
    /// process on the same search set) to the cache.
    pub fn import_archive(&self, archive: Vec<(Vec<f64>, MixtureScores)>) -> Result<()> {
        let mut cache = self.cache.lock().expect("cache lock");
        for (alphas, scores) in archive {
            if alphas.len() != self.bounds.len() {
                return Err(Error::Data(format!(
                    "an archived mixture has {} alphas, this problem {}",
                    alphas.len(),
                    self.bounds.len()
                )));
            }
            cache.insert(self.key(&alphas), scores);
        }
        Ok(())
    }

    /// Whether `scores` meets every constraint.
    pub fn feasible(&self, scores: &MixtureScores) -> bool {
        self.constraints.iter().all(|c| c.violation(scores) <= 0.0)
    }

    /// Runs `work` on the model with the mixture `alphas` set (rounded to the quantum);
    /// the mixture stays set afterwards.
    pub fn with_mixture<T>(
        &self,
        alphas: &[f64],
        work: impl FnOnce(&mut CausalLm, &mut Svf, &[Expert]) -> Result<T>,
    ) -> Result<T> {
        let alphas = self.quantised(alphas);
        let mut engine = self.engine.lock().expect("engine lock");
        self.set_mixture(&mut engine, &alphas)?;
        let Engine {
            model,
            svf,
            experts,
        } = &mut *engine;
        work(model, svf, experts)
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

impl nsga2::Problem for MixtureProblem {
    fn n_var(&self) -> usize {
        self.bounds.len()
    }

    fn n_obj(&self) -> usize {
        2
    }

    fn n_constr(&self) -> usize {
        self.constraints.len()
    }

    fn bounds(&self) -> Bounds {
        self.bounds.clone()
    }

    fn maximize(&self) -> Vec<bool> {
        vec![true, true]
    }

    fn evaluate(&self, x: &[f64]) -> std::result::Result<Evaluation, String> {
        let scores = self.score(x).map_err(|e| e.to_string())?;
        Ok(Evaluation {
            objectives: vec![scores.overall, scores.worst],
            constraints: self
                .constraints
                .iter()
                .map(|c| c.violation(&scores))
                .collect(),
        })
    }

    /// One candidate after another on the one model: each is a batched pass already,
    /// and the model cannot hold two mixtures at once.
    fn evaluate_batch(
        &self,
        xs: &[Vec<f64>],
    ) -> Option<Vec<std::result::Result<Evaluation, String>>> {
        Some(xs.iter().map(|x| self.evaluate(x)).collect())
    }
}
