//! Stage 3's search (R14, R16): NSGA-II over mixtures with guidance every k
//! generations. Guidance reads the Pareto front and narrows the alpha bounds to the
//! front's range plus a margin, switches off objectives that no longer separate the front,
//! and stops on a hypervolume plateau. It is advisory: NSGA-II's ranking decides what
//! survives, guidance only moves the box and the stopping point. Each guidance point is
//! logged with what followed it (hypervolume gain and new front members over the next k
//! generations), and [`SearchOutcome::effects`] summarises that per action.
//!
//! An optional [`SearchAdvisor`] (an LLM behind any client) gets the front as JSON and
//! answers with JSON actions; they are validated, and the measured rule is used instead
//! whenever they do not validate.

use std::collections::BTreeSet;
use std::time::Instant;

use nsga2::{Action, Bounds, Config, Executor, GenerationView, Individual, Termination};
use serde::{Deserialize, Serialize};

use crate::mixture::{EvaluationStats, MixtureProblem, MixtureScores};
use crate::{Error, Result};

/// Guidance settings (R16). `enabled: false` runs plain NSGA-II (R21's switch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuidanceConfig {
    /// Guide at all. Default true.
    pub enabled: bool,
    /// Every this many generations. Default 10.
    pub every: usize,
    /// Narrowed bounds extend the front's range by this share of the original width on
    /// each side. Default 0.1.
    pub margin: f64,
    /// Narrow only when the feasible front has at least this many distinct members.
    /// Default 3.
    pub min_front: usize,
    /// An objective whose front values span at most this at two guidance points in a
    /// row, while the other varies, no longer separates the front and is switched off
    /// (one always stays on).
    /// Default 1e-9.
    pub saturation_tolerance: f64,
    /// A window whose relative hypervolume gain is below this counts towards a plateau.
    /// Default 0.002.
    pub plateau_tolerance: f64,
    /// Stop after this many plateau windows in a row. Default 2.
    pub plateau_windows: usize,
    /// Never stop before this generation. Default 20.
    pub min_generations: usize,
}

impl Default for GuidanceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            every: 10,
            margin: 0.1,
            min_front: 3,
            saturation_tolerance: 1e-9,
            plateau_tolerance: 0.002,
            plateau_windows: 2,
            min_generations: 20,
        }
    }
}

/// Search settings (R14).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// Population. Default 50 (the seed's).
    pub population: usize,
    /// Most generations. Default 100 (the seed's).
    pub generations: usize,
    /// Seed of NSGA-II. Default 0.
    pub seed: u64,
    /// Guidance.
    pub guidance: GuidanceConfig,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            population: 50,
            generations: 100,
            seed: 0,
            guidance: GuidanceConfig::default(),
        }
    }
}

/// The run after one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Generation.
    pub generation: usize,
    /// Evaluations so far (cache hits included).
    pub evaluations: usize,
    /// Hypervolume of the feasible front over both objectives, reference (0, 0).
    pub hypervolume: f64,
    /// Feasible front members.
    pub front_size: usize,
    /// Feasible individuals in the population.
    pub feasible: usize,
}

impl CurvePoint {
    /// One progress line: generation, evaluations, hypervolume, front size.
    pub fn line(&self) -> String {
        format!(
            "generation {:>3}: {} evaluations, hypervolume {:.4}, front {}",
            self.generation, self.evaluations, self.hypervolume, self.front_size
        )
    }
}

/// What a guidance point did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum GuidanceAction {
    /// New variable bounds.
    Narrow {
        /// Lower bounds.
        lower: Vec<f64>,
        /// Upper bounds.
        upper: Vec<f64>,
    },
    /// An objective left selection.
    SwitchOff {
        /// Its index (0 overall accuracy, 1 worst accuracy).
        objective: usize,
        /// Why.
        reason: String,
    },
    /// The run ended.
    Stop {
        /// Why.
        reason: String,
    },
}

impl GuidanceAction {
    fn kind(&self) -> &'static str {
        match self {
            Self::Narrow { .. } => "narrow",
            Self::SwitchOff { .. } => "switch_off",
            Self::Stop { .. } => "stop",
        }
    }
}

/// One guidance point, with what followed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuidanceRecord {
    /// Generation.
    pub generation: usize,
    /// Evaluations so far.
    pub evaluations: usize,
    /// Hypervolume now.
    pub hypervolume: f64,
    /// Relative hypervolume gain since the previous guidance point (`None` when the
    /// previous hypervolume was 0: no feasible front yet).
    pub gain: Option<f64>,
    /// Distinct feasible front members.
    pub front_size: usize,
    /// Each variable's range over the front.
    pub front_ranges: Vec<[f64; 2]>,
    /// Each objective's range over the front.
    pub objective_ranges: Vec<[f64; 2]>,
    /// `rule`, `advisor`, or `rule (advisor rejected: why)`.
    pub source: String,
    /// What was done.
    pub actions: Vec<GuidanceAction>,
    /// Hypervolume gain over the next window (absent after the last point).
    pub next_hypervolume_gain: Option<f64>,
    /// Points of the front at the end of the next window that no member of this
    /// point's front matched or beat in both objectives.
    pub next_front_entries: Option<usize>,
}

impl GuidanceRecord {
    /// One progress line: where the actions came from, and the actions as JSON.
    pub fn line(&self) -> String {
        format!(
            "guidance ({}): {}",
            self.source,
            serde_json::to_string(&self.actions).unwrap_or_default()
        )
    }
}

/// How windows after an action went, against windows after none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionEffect {
    /// `narrow`, `switch_off`, or `none`.
    pub action: String,
    /// Windows followed by a measured next window.
    pub windows: usize,
    /// Mean hypervolume gain of the next window.
    pub mean_hypervolume_gain: f64,
    /// Mean new front points in the next window.
    pub mean_front_entries: f64,
}

/// A front member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrontMember {
    /// The alphas evaluated (rounded to the quantum).
    pub alphas: Vec<f64>,
    /// Its search-set scores.
    pub scores: MixtureScores,
}

/// A search's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchOutcome {
    /// The settings.
    pub config: SearchConfig,
    /// Every generation.
    pub curve: Vec<CurvePoint>,
    /// Every guidance point.
    pub guidance: Vec<GuidanceRecord>,
    /// Per action, what followed.
    pub effects: Vec<ActionEffect>,
    /// The final feasible front over both objectives, one mixture per distinct pair of
    /// objective values (the one with the smallest total alpha), best overall accuracy
    /// first.
    pub front: Vec<FrontMember>,
    /// Every other feasible mixture the search scored, in non-dominated layers of the
    /// whole archive (deduplicated the same way, the front's objective values left
    /// out): the self-test's fallbacks after the front.
    pub fallbacks: Vec<FrontMember>,
    /// Why it ended.
    pub reason: String,
    /// Generations run.
    pub generations: usize,
    /// Evaluations until the hypervolume first reached its final value.
    pub evaluations_to_final: usize,
    /// Evaluation counters (of the problem, since it was made).
    pub stats: EvaluationStats,
    /// Wall time.
    pub seconds: f64,
}

/// An outside advisor on the search (an LLM behind any client).
pub trait SearchAdvisor {
    /// Gets the front summary; answers JSON of the form
    /// `{"bounds": {"lower": [..], "upper": [..]} | null, "switch_off": [objective
    /// indices], "stop": bool, "reason": "..."}`.
    fn advise(&mut self, summary: &serde_json::Value) -> std::result::Result<String, String>;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdvisorBounds {
    lower: Vec<f64>,
    upper: Vec<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdvisorAnswer {
    #[serde(default)]
    bounds: Option<AdvisorBounds>,
    #[serde(default)]
    switch_off: Vec<usize>,
    #[serde(default)]
    stop: bool,
    #[serde(default)]
    reason: String,
}

/// Checks an advisor's answer against the original box and the active objectives.
fn validate_advice(
    text: &str,
    original: &Bounds,
    active: &[bool],
) -> std::result::Result<Vec<GuidanceAction>, String> {
    let answer: AdvisorAnswer =
        serde_json::from_str(text.trim()).map_err(|e| format!("not the expected JSON: {e}"))?;
    let mut actions = Vec::new();
    if let Some(b) = answer.bounds {
        let n = original.len();
        if b.lower.len() != n || b.upper.len() != n {
            return Err(format!("bounds need {n} lower and upper values"));
        }
        for i in 0..n {
            let (lo, hi) = (b.lower[i], b.upper[i]);
            if !(lo.is_finite() && hi.is_finite() && lo <= hi)
                || lo < original.lower[i]
                || hi > original.upper[i]
            {
                return Err(format!(
                    "variable {i}: [{lo}, {hi}] is not inside [{}, {}]",
                    original.lower[i], original.upper[i]
                ));
            }
        }
        actions.push(GuidanceAction::Narrow {
            lower: b.lower,
            upper: b.upper,
        });
    }
    let mut still = active.to_vec();
    for &j in &answer.switch_off {
        if j >= still.len() || !still[j] {
            return Err(format!("objective {j} is not an active objective"));
        }
        still[j] = false;
        actions.push(GuidanceAction::SwitchOff {
            objective: j,
            reason: format!("advisor: {}", answer.reason),
        });
    }
    if !still.iter().any(|&a| a) {
        return Err("it would switch off every objective".into());
    }
    if answer.stop {
        actions.push(GuidanceAction::Stop {
            reason: format!("advisor: {}", answer.reason),
        });
    }
    Ok(actions)
}

/// A progress callback: each generation's curve point and, at guidance points, the record.
pub type Progress<'a> = &'a mut dyn FnMut(&CurvePoint, Option<&GuidanceRecord>);

/// Optional company for a search: an advisor and a progress callback.
#[derive(Default)]
pub struct Hooks<'a> {
    /// Consulted at each guidance point (when guidance is on).
    pub advisor: Option<&'a mut dyn SearchAdvisor>,
    /// Called after every generation with its curve point and, at guidance points,
    /// the guidance record.
    pub progress: Option<Progress<'a>>,
}

struct Guide<'p, 'a> {
    problem: &'p MixtureProblem,
    config: &'p SearchConfig,
    original: Bounds,
    advisor: Option<&'a mut dyn SearchAdvisor>,
    progress: Option<Progress<'a>>,
    curve: Vec<CurvePoint>,
    records: Vec<GuidanceRecord>,
    /// The front's objective points at each guidance point.
    fronts: Vec<Vec<[f64; 2]>>,
    objective_history: Vec<Vec<[f64; 2]>>,
}

fn distinct_front<'v>(view: &'v GenerationView<'_>) -> Vec<&'v Individual> {
    let mut seen = BTreeSet::new();
    view.front()
        .into_iter()
        .filter(|i| i.feasible())
        .filter(|i| seen.insert(i.x.iter().map(|v| v.to_bits()).collect::<Vec<_>>()))
        .collect()
}

fn ranges(rows: impl Iterator<Item = Vec<f64>>, n: usize) -> Vec<[f64; 2]> {
    let mut out = vec![[f64::INFINITY, f64::NEG_INFINITY]; n];
    for row in rows {
        for (r, v) in out.iter_mut().zip(row) {
            r[0] = r[0].min(v);
            r[1] = r[1].max(v);
        }
    }
    out
}

impl Guide<'_, '_> {
    fn observe(&mut self, view: &GenerationView<'_>) -> Vec<Action> {
        let state = view.state;
        let front = distinct_front(view);
        let hypervolume = view.hypervolume(&[0.0, 0.0]);
        self.curve.push(CurvePoint {
            generation: state.generation,
            evaluations: state.evaluations,
            hypervolume,
            front_size: front.len(),
            feasible: state.population.iter().filter(|i| i.feasible()).count(),
        });
        let guidance = &self.config.guidance;
        if !guidance.enabled
            || state.generation == 0
            || !state.generation.is_multiple_of(guidance.every.max(1))
        {
            if let (Some(progress), Some(point)) = (self.progress.as_deref_mut(), self.curve.last())
            {
                progress(point, None);
            }
            return Vec::new();
        }
        let previous = self.records.last().map_or_else(
            || self.curve.first().map_or(0.0, |c| c.hypervolume),
            |r| r.hypervolume,
        );
        let gain = (previous > 0.0).then(|| (hypervolume - previous) / previous);
        let front_ranges = ranges(front.iter().map(|i| i.x.clone()), state.bounds.len());
        let objective_ranges = ranges(front.iter().map(|i| i.objectives.clone()), 2);
        self.fronts.push(
            front
                .iter()
                .map(|i| [i.objectives[0], i.objectives[1]])
                .collect(),
        );
        self.objective_history.push(objective_ranges.clone());

        let rule = self.rule(state, &front, &front_ranges, &objective_ranges, gain);
        let (source, actions) = match self.advisor.as_deref_mut() {
            None => ("rule".to_owned(), rule),
            Some(advisor) => {
                let summary = serde_json::json!({
                    "generation": state.generation,
                    "hypervolume": hypervolume,
                    "hypervolume_history": self.records.iter().map(|r| r.hypervolume).collect::<Vec<_>>(),
                    "objectives": ["overall_accuracy", "worst_expert_domain_accuracy"],
                    "active_objectives": state.active_objectives,
                    "bounds": {"lower": state.bounds.lower, "upper": state.bounds.upper},
                    "original_bounds": {"lower": self.original.lower, "upper": self.original.upper},
                    "experts": self.problem.roles(),
                    "front": front.iter().map(|i| serde_json::json!({
                        "alphas": self.problem.quantised(&i.x),
                        "objectives": i.objectives,
                    })).collect::<Vec<_>>(),
                    "measured_rule_proposes": rule,
                });
                match advisor.advise(&summary).and_then(|text| {
                    validate_advice(&text, &self.original, &state.active_objectives)
                }) {
                    Ok(actions) => ("advisor".to_owned(), actions),
                    Err(why) => (format!("rule (advisor rejected: {why})"), rule),
                }
            }
        };
        self.records.push(GuidanceRecord {
            generation: state.generation,
            evaluations: state.evaluations,
            hypervolume,
            gain,
            front_size: front.len(),
            front_ranges,
            objective_ranges,
            source,
            actions: actions.clone(),
            next_hypervolume_gain: None,
            next_front_entries: None,
        });
        if let (Some(progress), Some(point)) = (self.progress.as_deref_mut(), self.curve.last()) {
            progress(point, self.records.last());
        }
        actions
            .into_iter()
            .map(|a| match a {
                GuidanceAction::Narrow { lower, upper } => {
                    Action::SetBounds(Bounds::new(lower, upper))
                }
                GuidanceAction::SwitchOff { objective, .. } => {
                    let mut active = state.active_objectives.clone();
                    active[objective] = false;
                    Action::SetActiveObjectives(active)
                }
                GuidanceAction::Stop { reason } => Action::Stop(reason),
            })
            .collect()
    }

    /// The measured rule.
    fn rule(
        &self,
        state: &nsga2::State,
        front: &[&Individual],
        front_ranges: &[[f64; 2]],
        objective_ranges: &[[f64; 2]],
        gain: Option<f64>,
    ) -> Vec<GuidanceAction> {
        let g = &self.config.guidance;
        let mut actions = Vec::new();
        if front.len() >= g.min_front {
            let (mut lower, mut upper) = (Vec::new(), Vec::new());
            for (i, r) in front_ranges.iter().enumerate() {
                let (lo0, hi0) = (self.original.lower[i], self.original.upper[i]);
                let pad = g.margin * (hi0 - lo0);
                lower.push((r[0] - pad).max(lo0));
                upper.push((r[1] + pad).min(hi0));
            }
            let moved = lower
                .iter()
                .zip(&upper)
                .zip(state.bounds.lower.iter().zip(&state.bounds.upper))
                .any(|((l, u), (cl, cu))| (l - cl).abs() > 1e-9 || (u - cu).abs() > 1e-9);
            if moved {
                actions.push(GuidanceAction::Narrow { lower, upper });
            }
        }
        // An objective constant over the front now and at the previous point, while
        // another active objective still varies over it: it no longer separates front
        // members. (A front collapsed to one point in objective space says nothing about
        // which objective to drop.)
        let before = self
            .objective_history
            .len()
            .checked_sub(2)
            .map(|i| &self.objective_history[i]);
        let active_count = state.active_objectives.iter().filter(|&&a| a).count();
        let flat = |r: &[f64; 2]| r[1] - r[0] <= g.saturation_tolerance;
        if let Some(before) = before {
            for j in 0..2 {
                let others_vary = (0..2)
                    .any(|k| k != j && state.active_objectives[k] && !flat(&objective_ranges[k]));
                if active_count > 1
                    && state.active_objectives[j]
                    && front.len() >= 2
                    && others_vary
                    && flat(&objective_ranges[j])
                    && flat(&before[j])
                {
                    actions.push(GuidanceAction::SwitchOff {
                        objective: j,
                        reason: format!(
                            "objective {j} is {:.4} on every front member at two guidance points in a row while the other objective varies",
                            objective_ranges[j][0]
                        ),
                    });
                    break;
                }
            }
        }
        let flat_now = gain.is_some_and(|x| x.abs() < g.plateau_tolerance);
        let flat_windows = self
            .records
            .iter()
            .rev()
            .take_while(|r| r.gain.is_some_and(|x| x.abs() < g.plateau_tolerance))
            .count()
            + usize::from(flat_now);
        if flat_now && flat_windows >= g.plateau_windows && state.generation >= g.min_generations {
            actions.push(GuidanceAction::Stop {
                reason: format!(
                    "hypervolume changed by less than {:.1}% in each of the last {flat_windows} windows of {} generations",
                    100.0 * g.plateau_tolerance,
                    g.every
                ),
            });
        }
        actions
    }

    /// Fills each record's next window and summarises per action.
    fn finish(&mut self, final_front: &[[f64; 2]]) -> Vec<ActionEffect> {
        let last_hv = self.curve.last().map_or(0.0, |c| c.hypervolume);
        for i in 0..self.records.len() {
            let (next_hv, next_front) = match self.records.get(i + 1) {
                Some(next) => (next.hypervolume, self.fronts[i + 1].as_slice()),
                None if self.curve.last().map(|c| c.generation)
                    > Some(self.records[i].generation) =>
                {
                    (last_hv, final_front)
                }
                None => continue,
            };
            self.records[i].next_hypervolume_gain = Some(next_hv - self.records[i].hypervolume);
            // New points: objective vectors no earlier front member matched or beat.
            let earlier = &self.fronts[i];
            let entries = next_front
                .iter()
                .filter(|p| !earlier.iter().any(|q| q[0] >= p[0] && q[1] >= p[1]))
                .count();
            self.records[i].next_front_entries = Some(entries);
        }
        let mut effects = Vec::new();
        for kind in ["narrow", "switch_off", "none"] {
            let windows: Vec<&GuidanceRecord> = self
                .records
                .iter()
                .filter(|r| r.next_hypervolume_gain.is_some())
                .filter(|r| {
                    let kinds: Vec<&str> = r.actions.iter().map(GuidanceAction::kind).collect();
                    if kind == "none" {
                        kinds.iter().all(|k| *k == "stop")
                    } else {
                        kinds.contains(&kind)
                    }
                })
                .collect();
            let n = windows.len();
            let mean = |f: &dyn Fn(&GuidanceRecord) -> f64| {
                windows.iter().fold(0.0, |sum, r| sum + f(r)) / n.max(1) as f64
            };
            effects.push(ActionEffect {
                action: kind.to_owned(),
                windows: n,
                mean_hypervolume_gain: mean(&|r| r.next_hypervolume_gain.unwrap_or(0.0)),
                mean_front_entries: mean(&|r| r.next_front_entries.unwrap_or(0) as f64),
            });
        }
        effects
    }
}

/// Non-dominated layers of `members` over (overall, worst), in order; within a layer
/// one mixture per distinct pair of objective values (the smallest total alpha), best
/// overall accuracy first, then best worst accuracy.
fn layers(members: &[FrontMember]) -> Vec<Vec<FrontMember>> {
    let points: Vec<f64> = members
        .iter()
        .flat_map(|m| [-m.scores.overall, -m.scores.worst])
        .collect();
    let size = |m: &FrontMember| m.alphas.iter().map(|v| v.abs()).sum::<f64>();
    let mut out = Vec::new();
    for layer in nsga2::sort::fronts(&points, members.len(), 2) {
        let mut best: Vec<FrontMember> = Vec::new();
        for i in layer {
            let m = &members[i];
            match best
                .iter_mut()
                .find(|b| b.scores.overall == m.scores.overall && b.scores.worst == m.scores.worst)
            {
                Some(b) if size(m) < size(b) => *b = m.clone(),
                Some(_) => {}
                None => best.push(m.clone()),
            }
        }
        best.sort_by(|a, b| {
            b.scores
                .overall
                .total_cmp(&a.scores.overall)
                .then(b.scores.worst.total_cmp(&a.scores.worst))
                .then(size(a).total_cmp(&size(b)))
        });
        out.push(best);
    }
    out
}

/// Runs the search on `problem`.
pub fn search(
    problem: &MixtureProblem,
    config: &SearchConfig,
    hooks: Hooks<'_>,
) -> Result<SearchOutcome> {
    if config.guidance.enabled && config.guidance.every == 0 {
        return Err(Error::Config(
            "guidance.every is 0, expected at least 1".into(),
        ));
    }
    let started = Instant::now();
    let original = nsga2::Problem::bounds(problem);
    let mut guide = Guide {
        problem,
        config,
        original,
        advisor: hooks.advisor,
        progress: hooks.progress,
        curve: Vec::new(),
        records: Vec::new(),
        fronts: Vec::new(),
        objective_history: Vec::new(),
    };
    let nsga = Config {
        population: config.population,
        seed: config.seed,
        parallel: false,
        ..Config::default()
    };
    let outcome = Executor::new(problem, nsga)
        .termination(Termination::generations(config.generations))
        .observe(1, |view: &GenerationView<'_>| guide.observe(view))
        .run()?;
    // The final front over both objectives among feasible distinct members.
    let mut members: Vec<FrontMember> = Vec::new();
    let mut seen = BTreeSet::new();
    for i in outcome.state.population.iter().filter(|i| i.feasible()) {
        let alphas = problem.quantised(&i.x);
        let key: Vec<i64> = alphas.iter().map(|v| (v * 1e6).round() as i64).collect();
        if seen.insert(key) {
            members.push(FrontMember {
                scores: problem.score(&alphas)?,
                alphas,
            });
        }
    }
    // The front: the final population's first non-dominated layer, one mixture per
    // distinct pair of objective values (the one closest to the base).
    let front = layers(&members).into_iter().next().unwrap_or_default();
    // The fallbacks: every feasible mixture the search scored, layer by layer, without
    // the front's objective values (a population that converged on one point offers
    // nothing else).
    let archive: Vec<FrontMember> = problem
        .archive()
        .into_iter()
        .filter(|(_, scores)| problem.feasible(scores))
        .map(|(alphas, scores)| FrontMember { alphas, scores })
        .collect();
    let fallbacks: Vec<FrontMember> = layers(&archive)
        .into_iter()
        .flatten()
        .filter(|m| {
            !front
                .iter()
                .any(|f| f.scores.overall == m.scores.overall && f.scores.worst == m.scores.worst)
        })
        .collect();
    let final_points: Vec<[f64; 2]> = front
        .iter()
        .map(|m| [m.scores.overall, m.scores.worst])
        .collect();
    let effects = guide.finish(&final_points);
    let final_hv = guide.curve.last().map_or(0.0, |c| c.hypervolume);
    let evaluations_to_final = guide
        .curve
        .iter()
        .find(|c| c.hypervolume >= final_hv)
        .map_or(outcome.state.evaluations, |c| c.evaluations);
    Ok(SearchOutcome {
        config: config.clone(),
        curve: guide.curve,
        guidance: guide.records,
        effects,
        front,
        fallbacks,
        reason: format!("{:?}", outcome.reason),
        generations: outcome.state.generation,
        evaluations_to_final,
        stats: problem.stats(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_is_validated_against_the_original_box() {
        let original = Bounds::new(vec![0.0, 0.5], vec![3.0, 1.5]);
        let ok = r#"{"bounds": {"lower": [1.0, 0.5], "upper": [2.5, 1.0]}, "switch_off": [1], "stop": false, "reason": "front above 1"}"#;
        let actions = validate_advice(ok, &original, &[true, true]).unwrap();
        assert_eq!(actions.len(), 2);
        assert!(matches!(actions[0], GuidanceAction::Narrow { .. }));
        for (bad, why) in [
            (r#"{"bounds": {"lower": [0.0], "upper": [1.0]}}"#, "need 2"),
            (
                r#"{"bounds": {"lower": [0.0, 0.2], "upper": [1.0, 1.0]}}"#,
                "not inside",
            ),
            (r#"{"switch_off": [0, 1]}"#, "every objective"),
            (r#"{"switch_off": [2]}"#, "not an active"),
            (r#"{"narrow": true}"#, "expected JSON"),
            ("sure, narrow it", "expected JSON"),
        ] {
            let message = validate_advice(bad, &original, &[true, true]).unwrap_err();
            assert!(message.contains(why), "{bad}: {message}");
        }
    }
}
