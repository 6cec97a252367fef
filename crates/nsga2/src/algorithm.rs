//! The NSGA-II generation: mating (binary tournament, SBX, PM, duplicate elimination),
//! evaluation, and survival by constraint-domination, rank and crowding.

use rayon::prelude::*;
use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};

use crate::crowding::{Crowding, crowding_distance};
use crate::operators::{Pm, Sbx};
use crate::problem::{Bounds, Evaluation, Problem};
use crate::sort::fronts;
use crate::{Error, Result, Rng, exact};

/// Settings of the algorithm. Every default is pymoo 0.6's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Population size. Default 100.
    pub population: usize,
    /// Offspring per generation; `None` (default) means the population size.
    pub offspring: Option<usize>,
    /// Crossover. Default: SBX eta 15, pair 0.9, variable 0.5, exchange 0.5.
    pub sbx: Sbx,
    /// Mutation. Default: PM eta 20, individual 0.9, variable min(0.5, 1/n).
    pub pm: Pm,
    /// Crowding distance variant. Default: over unique objective vectors (pymoo's `"cd"`
    /// is [`Crowding::Standard`]; the two agree when a front has no duplicates).
    pub crowding: Crowding,
    /// Drop offspring whose decision vector equals (bitwise) one in the population or
    /// among the offspring so far, and mate again (at most 100 rounds). Default: true.
    /// pymoo uses a Euclidean distance of 1e-16, the same for variables of magnitude 0.5+.
    pub eliminate_duplicates: bool,
    /// Random seed. Default 0.
    pub seed: u64,
    /// Evaluate individuals on rayon's threads (ignored when the problem evaluates in
    /// batches). Results are identical either way. Default: true.
    pub parallel: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            population: 100,
            offspring: None,
            sbx: Sbx::default(),
            pm: Pm::default(),
            crowding: Crowding::UniqueVectors,
            eliminate_duplicates: true,
            seed: 0,
            parallel: true,
        }
    }
}

impl Config {
    /// Checks sizes and probabilities.
    pub fn check(&self) -> Result<()> {
        let probability = |name: &str, p: f64| {
            if (0.0..=1.0).contains(&p) {
                Ok(())
            } else {
                Err(Error::Config(format!(
                    "{name} is {p}, expected a probability in [0, 1]"
                )))
            }
        };
        if self.population < 2 {
            return Err(Error::Config(format!(
                "population is {}, expected at least 2",
                self.population
            )));
        }
        if self.offspring == Some(0) {
            return Err(Error::Config("offspring is 0, expected at least 1".into()));
        }
        probability("sbx.pair_probability", self.sbx.pair_probability)?;
        probability("sbx.variable_probability", self.sbx.variable_probability)?;
        probability("sbx.exchange_probability", self.sbx.exchange_probability)?;
        probability("pm.individual_probability", self.pm.individual_probability)?;
        if let Some(p) = self.pm.variable_probability {
            probability("pm.variable_probability", p)?;
        }
        for (name, eta) in [("sbx.eta", self.sbx.eta), ("pm.eta", self.pm.eta)] {
            if !(eta.is_finite() && eta >= 0.0) {
                return Err(Error::Config(format!(
                    "{name} is {eta}, expected a non-negative number"
                )));
            }
        }
        Ok(())
    }
}

/// One member of the population.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Individual {
    /// Decision variables.
    #[serde(with = "exact::vec")]
    pub x: Vec<f64>,
    /// Objectives as the problem returned them (NaN after a failed evaluation).
    #[serde(with = "exact::vec")]
    pub objectives: Vec<f64>,
    /// Constraint values `g` (feasible when all `g <= 0`).
    #[serde(with = "exact::vec")]
    pub constraints: Vec<f64>,
    /// Total violation, the sum of `max(0, g)`; infinite after a failed evaluation.
    #[serde(with = "exact::scalar")]
    pub violation: f64,
    /// Front index among feasible individuals (`usize::MAX` when infeasible).
    pub rank: usize,
    /// Crowding distance within its front (0 when infeasible).
    #[serde(with = "exact::scalar")]
    pub crowding: f64,
    /// Why evaluation failed, when it did.
    pub failure: Option<String>,
}

impl Individual {
    /// Whether all constraints hold (and evaluation succeeded).
    pub fn feasible(&self) -> bool {
        self.violation <= 0.0
    }
}

/// What survives between generations; everything a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Completed generations (0 after the initial population).
    pub generation: usize,
    /// Evaluations so far.
    pub evaluations: usize,
    /// Evaluations that failed so far.
    pub failures: usize,
    /// The population, with rank and crowding from the last survival.
    pub population: Vec<Individual>,
    /// Current variable bounds (observers may change them).
    pub bounds: Bounds,
    /// Which objectives take part in selection (observers may switch them off).
    pub active_objectives: Vec<bool>,
    /// The generator; its state continues exactly on resume.
    pub rng: Rng,
    /// Bookkeeping of the tolerance-based termination.
    pub tolerance: crate::run::ToleranceState,
}

impl State {
    /// The non-dominated feasible individuals (rank 0), or, when none is feasible, the
    /// least infeasible ones.
    pub fn best(&self) -> Vec<&Individual> {
        let feasible: Vec<&Individual> = self
            .population
            .iter()
            .filter(|i| i.feasible() && i.rank == 0)
            .collect();
        if !feasible.is_empty() {
            return feasible;
        }
        let least = self
            .population
            .iter()
            .map(|i| i.violation)
            .fold(f64::INFINITY, f64::min);
        self.population
            .iter()
            .filter(|i| i.violation == least)
            .collect()
    }
}

/// The problem's fixed facts, read once.
pub(crate) struct Shape {
    pub n_var: usize,
    pub n_obj: usize,
    pub n_constr: usize,
    pub integer: Vec<bool>,
    pub maximize: Vec<bool>,
}

impl Shape {
    pub fn of<P: Problem + ?Sized>(problem: &P) -> Result<Self> {
        let shape = Self {
            n_var: problem.n_var(),
            n_obj: problem.n_obj(),
            n_constr: problem.n_constr(),
            integer: problem.integer_variables(),
            maximize: problem.maximize(),
        };
        if shape.n_var == 0 || shape.n_obj == 0 {
            return Err(Error::Config(format!(
                "the problem has {} variables and {} objectives; both must be positive",
                shape.n_var, shape.n_obj
            )));
        }
        if shape.integer.len() != shape.n_var || shape.maximize.len() != shape.n_obj {
            return Err(Error::Config(format!(
                "integer_variables() has {} entries for {} variables, maximize() {} for {} objectives",
                shape.integer.len(),
                shape.n_var,
                shape.maximize.len(),
                shape.n_obj
            )));
        }
        Ok(shape)
    }
}

/// Evaluates decision vectors into individuals (rank and crowding unset).
pub(crate) fn evaluate<P: Problem + ?Sized>(
    problem: &P,
    shape: &Shape,
    xs: Vec<Vec<f64>>,
    parallel: bool,
    generation: usize,
) -> Result<Vec<Individual>> {
    let results: Vec<std::result::Result<Evaluation, String>> = match problem.evaluate_batch(&xs) {
        Some(results) => {
            if results.len() != xs.len() {
                return Err(Error::Problem(format!(
                    "evaluate_batch returned {} results for {} individuals",
                    results.len(),
                    xs.len()
                )));
            }
            results
        }
        None if parallel => xs.par_iter().map(|x| problem.evaluate(x)).collect(),
        None => xs.iter().map(|x| problem.evaluate(x)).collect(),
    };
    xs.into_iter()
        .zip(results)
        .enumerate()
        .map(|(index, (x, result))| match result {
            Ok(evaluation) => {
                if evaluation.objectives.len() != shape.n_obj
                    || evaluation.constraints.len() != shape.n_constr
                {
                    return Err(Error::Problem(format!(
                        "individual {index} of generation {generation}: evaluation gave {} objectives \
                         and {} constraints, the problem declares {} and {}",
                        evaluation.objectives.len(),
                        evaluation.constraints.len(),
                        shape.n_obj,
                        shape.n_constr
                    )));
                }
                if let Some(j) = evaluation.objectives.iter().position(|v| v.is_nan()) {
                    return Err(Error::NanObjective {
                        generation,
                        individual: index,
                        objective: j,
                        x,
                    });
                }
                if let Some(j) = evaluation.constraints.iter().position(|v| v.is_nan()) {
                    return Err(Error::Problem(format!(
                        "individual {index} of generation {generation}: constraint {j} is NaN at x = {x:?}"
                    )));
                }
                let violation = evaluation.constraints.iter().map(|g| g.max(0.0)).sum();
                Ok(Individual {
                    x,
                    objectives: evaluation.objectives,
                    constraints: evaluation.constraints,
                    violation,
                    rank: usize::MAX,
                    crowding: 0.0,
                    failure: None,
                })
            }
            Err(reason) => Ok(Individual {
                x,
                objectives: vec![f64::NAN; shape.n_obj],
                constraints: vec![f64::NAN; shape.n_constr],
                violation: f64::INFINITY,
                rank: usize::MAX,
                crowding: 0.0,
                failure: Some(reason),
            }),
        })
        .collect()
}

/// Active objectives of individuals, in minimisation sense, as a flat row-major matrix.
pub(crate) fn objective_matrix(
    individuals: &[&Individual],
    maximize: &[bool],
    active: &[bool],
) -> (Vec<f64>, usize) {
    let m = active.iter().filter(|&&a| a).count();
    let mut matrix = Vec::with_capacity(individuals.len() * m);
    for individual in individuals {
        for (j, &value) in individual.objectives.iter().enumerate() {
            if active[j] {
                matrix.push(if maximize[j] { -value } else { value });
            }
        }
    }
    (matrix, m)
}

/// Keeps `n_survive` of `candidates`: feasible ones by front and crowding (the split
/// front by descending crowding, ties broken at random), then infeasible ones by
/// ascending violation. Sets rank and crowding of the survivors.
pub(crate) fn survive(
    mut candidates: Vec<Individual>,
    n_survive: usize,
    shape: &Shape,
    active: &[bool],
    crowding_mode: Crowding,
    rng: &mut Rng,
) -> Vec<Individual> {
    let (feasible, mut infeasible): (Vec<usize>, Vec<usize>) =
        (0..candidates.len()).partition(|&i| candidates[i].feasible());
    let mut keep: Vec<usize> = Vec::with_capacity(n_survive);
    if !feasible.is_empty() {
        let members: Vec<&Individual> = feasible.iter().map(|&i| &candidates[i]).collect();
        let (matrix, m) = objective_matrix(&members, &shape.maximize, active);
        let fronts = fronts(&matrix, members.len(), m);
        let mut ranks = vec![(0usize, 0.0f64); feasible.len()];
        for (k, front) in fronts.iter().enumerate() {
            if keep.len() >= n_survive {
                break;
            }
            let distances = crowding_distance(&matrix, m, front, crowding_mode);
            for (&slot, &d) in front.iter().zip(&distances) {
                ranks[slot] = (k, d);
            }
            if keep.len() + front.len() <= n_survive {
                keep.extend(front.iter().map(|&slot| feasible[slot]));
            } else if crowding_mode == Crowding::Pruning {
                let room = n_survive - keep.len();
                let mut left: Vec<usize> = front.clone();
                while left.len() > room {
                    let d = crowding_distance(&matrix, m, &left, Crowding::Standard);
                    let least = d.iter().copied().fold(f64::INFINITY, f64::min);
                    let ties: Vec<usize> = (0..left.len()).filter(|&p| d[p] == least).collect();
                    left.remove(ties[rng.below(ties.len())]);
                }
                let d = crowding_distance(&matrix, m, &left, Crowding::Standard);
                for (&slot, &distance) in left.iter().zip(&d) {
                    ranks[slot] = (k, distance);
                }
                keep.extend(left.iter().map(|&slot| feasible[slot]));
            } else {
                // Descending crowding with random tie-breaks: shuffle, then stable sort.
                let mut order: Vec<usize> = (0..front.len()).collect();
                rng.shuffle(&mut order);
                order.sort_by(|&a, &b| distances[b].total_cmp(&distances[a]));
                let room = n_survive - keep.len();
                keep.extend(order[..room].iter().map(|&o| feasible[front[o]]));
            }
        }
        for (slot, &i) in feasible.iter().enumerate() {
            candidates[i].rank = ranks[slot].0;
            candidates[i].crowding = ranks[slot].1;
        }
    }
    if keep.len() < n_survive {
        infeasible.sort_by(|&a, &b| candidates[a].violation.total_cmp(&candidates[b].violation));
        for &i in infeasible.iter().take(n_survive - keep.len()) {
            candidates[i].rank = usize::MAX;
            candidates[i].crowding = 0.0;
            keep.push(i);
        }
    }
    let mut slots: Vec<Option<Individual>> = candidates.into_iter().map(Some).collect();
    keep.into_iter()
        .map(|i| slots[i].take().expect("each survivor kept once"))
        .collect()
}

/// Binary tournament as pymoo's `comp_by_dom_and_crowding`: an infeasible individual
/// loses to a less infeasible one; between feasible ones dominance decides, then the
/// larger crowding distance, then a coin.
fn tournament(
    a: usize,
    b: usize,
    population: &[Individual],
    shape: &Shape,
    active: &[bool],
    rng: &mut Rng,
) -> usize {
    let (pa, pb) = (&population[a], &population[b]);
    if !pa.feasible() || !pb.feasible() {
        return match pa.violation.total_cmp(&pb.violation) {
            std::cmp::Ordering::Less => a,
            std::cmp::Ordering::Greater => b,
            std::cmp::Ordering::Equal => {
                if rng.coin() {
                    a
                } else {
                    b
                }
            }
        };
    }
    match dominance(pa, pb, &shape.maximize, active) {
        std::cmp::Ordering::Less => return a,
        std::cmp::Ordering::Greater => return b,
        std::cmp::Ordering::Equal => {}
    }
    match pa.crowding.total_cmp(&pb.crowding) {
        std::cmp::Ordering::Greater => a,
        std::cmp::Ordering::Less => b,
        std::cmp::Ordering::Equal => {
            if rng.coin() {
                a
            } else {
                b
            }
        }
    }
}

/// `Less` when `a` dominates `b`, `Greater` when `b` dominates `a`, else `Equal`
/// (active objectives, minimisation sense).
fn dominance(
    a: &Individual,
    b: &Individual,
    maximize: &[bool],
    active: &[bool],
) -> std::cmp::Ordering {
    let (mut a_better, mut b_better) = (false, false);
    for j in 0..a.objectives.len() {
        if !active[j] {
            continue;
        }
        let (x, y) = if maximize[j] {
            (-a.objectives[j], -b.objectives[j])
        } else {
            (a.objectives[j], b.objectives[j])
        };
        a_better |= x < y;
        b_better |= y < x;
    }
    match (a_better, b_better) {
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => std::cmp::Ordering::Equal,
    }
}

fn key(x: &[f64]) -> Vec<u64> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Makes offspring decision vectors from the population (not yet evaluated).
pub(crate) fn mate(state: &mut State, config: &Config, shape: &Shape) -> Vec<Vec<f64>> {
    let n_offspring = config.offspring.unwrap_or(config.population);
    let population = &state.population;
    let rng = &mut state.rng;
    // Fx hashing: SipHash's DoS resistance buys nothing here and cost 8% of a run.
    let mut seen: FxHashSet<Vec<u64>> = if config.eliminate_duplicates {
        population.iter().map(|i| key(&i.x)).collect()
    } else {
        FxHashSet::default()
    };
    let mut offspring: Vec<Vec<f64>> = Vec::with_capacity(n_offspring + 1);
    let n = population.len();
    for _round in 0..100 {
        let matings = (n_offspring - offspring.len()).div_ceil(2);
        // Tournament candidates come from concatenated random permutations (pymoo).
        let needed = matings * 4;
        let mut candidates = Vec::with_capacity(needed + n);
        while candidates.len() < needed {
            candidates.extend(rng.permutation(n));
        }
        for mating in 0..matings {
            let c = &candidates[4 * mating..4 * mating + 4];
            let first = tournament(c[0], c[1], population, shape, &state.active_objectives, rng);
            let second = tournament(c[2], c[3], population, shape, &state.active_objectives, rng);
            let mut a = population[first].x.clone();
            let mut b = population[second].x.clone();
            config.sbx.cross(&mut a, &mut b, &state.bounds, rng);
            for child in [&mut a, &mut b] {
                config.pm.mutate(child, &state.bounds, rng);
                round_integers(child, &shape.integer, &state.bounds);
            }
            for child in [a, b] {
                if !config.eliminate_duplicates || seen.insert(key(&child)) {
                    offspring.push(child);
                }
            }
        }
        if offspring.len() >= n_offspring {
            break;
        }
    }
    offspring.truncate(n_offspring);
    offspring
}

/// Rounds integer variables to the nearest integer inside the bounds.
pub(crate) fn round_integers(x: &mut [f64], integer: &[bool], bounds: &Bounds) {
    for (i, v) in x.iter_mut().enumerate() {
        if integer[i] {
            let lo = bounds.lower[i].ceil();
            let hi = bounds.upper[i].floor();
            *v = v.round().clamp(lo, hi.max(lo));
        }
    }
}

/// Uniform random decision vectors (integers uniform over their range).
pub(crate) fn sample(n: usize, shape: &Shape, bounds: &Bounds, rng: &mut Rng) -> Vec<Vec<f64>> {
    (0..n)
        .map(|_| {
            let mut x: Vec<f64> = bounds
                .lower
                .iter()
                .zip(&bounds.upper)
                .map(|(&lo, &hi)| lo + rng.uniform() * (hi - lo))
                .collect();
            round_integers(&mut x, &shape.integer, bounds);
            x
        })
        .collect()
}
