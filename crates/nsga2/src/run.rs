//! The executor: the generation loop, termination, observers that steer the run, and
//! checkpoints that resume bit-identically.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::algorithm::{self, Config, Individual, Shape, State};
use crate::indicators;
use crate::problem::{Bounds, Problem};
use crate::{Error, Result, Rng, exact};

/// When a run stops. Every criterion is optional; the first met ends the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Termination {
    /// Stop after this many generations.
    pub max_generations: Option<usize>,
    /// Stop once this many evaluations were made (checked between generations).
    pub max_evaluations: Option<usize>,
    /// Stop after this much wall time (not reproducible, by nature).
    pub max_time: Option<Duration>,
    /// Stop when the front stops moving.
    pub tolerance: Option<Tolerance>,
}

impl Default for Termination {
    /// pymoo's default multi-objective termination: tolerance-based, capped at 1,000
    /// generations and 100,000 evaluations.
    fn default() -> Self {
        Self {
            max_generations: Some(1000),
            max_evaluations: Some(100_000),
            max_time: None,
            tolerance: Some(Tolerance::default()),
        }
    }
}

impl Termination {
    /// Exactly `n` generations, nothing else.
    pub fn generations(n: usize) -> Self {
        Self {
            max_generations: Some(n),
            max_evaluations: None,
            max_time: None,
            tolerance: None,
        }
    }
}

/// Tolerance-based termination in the spirit of pymoo's
/// `DefaultMultiObjectiveTermination`: every `n_skip + 1` generations the best front is
/// compared with the one measured last time, in objective space (the larger of the moves
/// of the ideal and nadir points and the IGD between the fronts, all normalised by the
/// current front's range) and in decision space (IGD of the decision vectors, normalised
/// by the bounds). The run stops when over the last `period` generations every objective
/// change stayed below `f_tol`, or every decision change below `x_tol`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    /// Objective-space tolerance. Default 0.005 (pymoo's `ftol`).
    pub f_tol: f64,
    /// Decision-space tolerance. Default 0.0005 (pymoo's `xtol`).
    pub x_tol: f64,
    /// Generations skipped between measurements. Default 5.
    pub n_skip: usize,
    /// Generations the tolerance must hold. Default 50.
    pub period: usize,
}

impl Default for Tolerance {
    fn default() -> Self {
        Self {
            f_tol: 0.005,
            x_tol: 0.0005,
            n_skip: 5,
            period: 50,
        }
    }
}

/// The tolerance criterion's memory (part of [`State`], so it resumes exactly).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToleranceState {
    updates: usize,
    /// The front last measured (minimisation sense), row-major, and its width.
    #[serde(with = "exact::vec")]
    front: Vec<f64>,
    m: usize,
    /// Its decision vectors normalised by the bounds, row-major, and their width.
    #[serde(with = "exact::vec")]
    xs: Vec<f64>,
    n_var: usize,
    #[serde(with = "exact::vec")]
    f_window: Vec<f64>,
    #[serde(with = "exact::vec")]
    x_window: Vec<f64>,
}

impl ToleranceState {
    fn update(
        &mut self,
        state_front: (&[f64], usize),
        xs: (&[f64], usize),
        tolerance: &Tolerance,
    ) -> bool {
        let measure = self.updates.is_multiple_of(tolerance.n_skip + 1);
        self.updates += 1;
        let (f_delta, x_delta) = if measure {
            let deltas =
                if self.front.is_empty() || state_front.0.is_empty() || self.m != state_front.1 {
                    (f64::INFINITY, f64::INFINITY)
                } else {
                    (
                        objective_change(&self.front, state_front.0, state_front.1),
                        indicators::igd(&self.xs, xs.0, xs.1),
                    )
                };
            self.front = state_front.0.to_vec();
            self.m = state_front.1;
            self.xs = xs.0.to_vec();
            self.n_var = xs.1;
            deltas
        } else {
            (
                self.f_window.last().copied().unwrap_or(f64::INFINITY),
                self.x_window.last().copied().unwrap_or(f64::INFINITY),
            )
        };
        for (window, delta) in [(&mut self.f_window, f_delta), (&mut self.x_window, x_delta)] {
            window.push(delta);
            if window.len() > tolerance.period {
                window.remove(0);
            }
        }
        let full = self.f_window.len() == tolerance.period;
        full && (self.f_window.iter().all(|&d| d <= tolerance.f_tol)
            || self.x_window.iter().all(|&d| d <= tolerance.x_tol))
    }
}

/// pymoo's `MultiObjectiveSpaceTermination` delta: normalise both fronts by the current
/// ideal/nadir; the largest of the ideal move, the nadir move and the IGD of the current
/// front against the previous one.
fn objective_change(previous: &[f64], current: &[f64], m: usize) -> f64 {
    let bounds = |front: &[f64]| {
        let mut ideal = vec![f64::INFINITY; m];
        let mut nadir = vec![f64::NEG_INFINITY; m];
        for point in front.chunks_exact(m) {
            for j in 0..m {
                ideal[j] = ideal[j].min(point[j]);
                nadir[j] = nadir[j].max(point[j]);
            }
        }
        (ideal, nadir)
    };
    let (ideal, nadir) = bounds(current);
    let (previous_ideal, previous_nadir) = bounds(previous);
    let norm: Vec<f64> = (0..m)
        .map(|j| {
            let range = nadir[j] - ideal[j];
            if range < 1e-32 { 1.0 } else { range }
        })
        .collect();
    let mut delta: f64 = 0.0;
    for j in 0..m {
        delta = delta
            .max(((previous_ideal[j] - ideal[j]) / norm[j]).abs())
            .max(((previous_nadir[j] - nadir[j]) / norm[j]).abs());
    }
    let normalise = |front: &[f64]| -> Vec<f64> {
        let (ideal, norm) = (&ideal, &norm);
        front
            .chunks_exact(m)
            .flat_map(|p| (0..m).map(move |j| (p[j] - ideal[j]) / norm[j]))
            .collect::<Vec<f64>>()
    };
    delta.max(indicators::igd(
        &normalise(previous),
        &normalise(current),
        m,
    ))
}

/// Why a run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TerminationReason {
    /// The generation limit.
    MaxGenerations,
    /// The evaluation limit.
    MaxEvaluations,
    /// The wall-time limit.
    MaxTime,
    /// The front stopped moving.
    Tolerance,
    /// An observer asked to stop, with its reason.
    Observer(String),
}

/// What an observer can do to the run.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Change the variable bounds. Individuals outside the new box are moved to its
    /// nearest point (each variable clamped) and evaluated again; offspring are drawn
    /// within the new bounds from then on.
    SetBounds(Bounds),
    /// Choose which objectives take part in selection (at least one). The population is
    /// ranked again at once. Objectives switched off are still evaluated and reported.
    SetActiveObjectives(Vec<bool>),
    /// End the run after this generation, with a reason.
    Stop(String),
}

/// What observers see after each generation.
pub struct GenerationView<'a> {
    /// The whole state: population with ranks and crowding, counters, bounds.
    pub state: &'a State,
    /// Which objectives the problem maximises.
    pub maximize: &'a [bool],
    /// Wall time since the run (or the resumed run) started.
    pub elapsed: Duration,
}

impl GenerationView<'_> {
    /// The best individuals (see [`State::best`]).
    pub fn front(&self) -> Vec<&Individual> {
        self.state.best()
    }

    /// Hypervolume of the feasible front over all objectives, in minimisation sense
    /// (maximised objectives negated), against `reference` in the same sense.
    pub fn hypervolume(&self, reference: &[f64]) -> f64 {
        let front: Vec<&Individual> = self.front().into_iter().filter(|i| i.feasible()).collect();
        let all = vec![true; self.maximize.len()];
        let (points, m) = algorithm::objective_matrix(&front, self.maximize, &all);
        indicators::hypervolume(&points, m, reference)
    }
}

/// Receives every k-th generation and may steer the run.
pub trait Observer {
    /// Looks at a generation; returns the actions to take (or why it failed).
    fn observe(&mut self, view: &GenerationView<'_>) -> std::result::Result<Vec<Action>, String>;
}

impl<F> Observer for F
where
    F: FnMut(&GenerationView<'_>) -> Vec<Action>,
{
    fn observe(&mut self, view: &GenerationView<'_>) -> std::result::Result<Vec<Action>, String> {
        Ok(self(view))
    }
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The final state.
    pub state: State,
    /// Why it ended.
    pub reason: TerminationReason,
    /// Wall time of this call.
    pub elapsed: Duration,
}

impl Outcome {
    /// The best individuals (see [`State::best`]).
    pub fn front(&self) -> Vec<&Individual> {
        self.state.best()
    }
}

const CHECKPOINT_FORMAT: &str = "nsga2-checkpoint";
const CHECKPOINT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    format: String,
    version: u32,
    n_var: usize,
    n_obj: usize,
    config: Config,
    state: State,
}

/// Runs NSGA-II on a problem.
///
/// ```
/// use nsga2::{Config, Executor, Termination, problems::Zdt};
///
/// let problem = Zdt::zdt1(30);
/// let config = Config { seed: 1, parallel: false, ..Config::default() };
/// let outcome = Executor::new(&problem, config)
///     .termination(Termination::generations(50))
///     .run()?;
/// assert_eq!(outcome.state.generation, 50);
/// assert!(!outcome.front().is_empty());
/// # Ok::<(), nsga2::Error>(())
/// ```
pub struct Executor<'a, P: Problem + ?Sized> {
    problem: &'a P,
    config: Config,
    termination: Termination,
    observers: Vec<(usize, Box<dyn Observer + 'a>)>,
    checkpoint: Option<(PathBuf, usize)>,
}

impl<'a, P: Problem + ?Sized> Executor<'a, P> {
    /// A run of `problem` with `config` and the default termination.
    pub fn new(problem: &'a P, config: Config) -> Self {
        Self {
            problem,
            config,
            termination: Termination::default(),
            observers: Vec::new(),
            checkpoint: None,
        }
    }

    /// Sets the termination.
    pub fn termination(mut self, termination: Termination) -> Self {
        self.termination = termination;
        self
    }

    /// Adds an observer called every `every` generations (and after the initial one).
    pub fn observe(mut self, every: usize, observer: impl Observer + 'a) -> Self {
        self.observers.push((every.max(1), Box::new(observer)));
        self
    }

    /// Writes a checkpoint to `path` every `every` generations (atomically), and resumes
    /// from it when the run starts and the file exists.
    pub fn checkpoint(mut self, path: impl Into<PathBuf>, every: usize) -> Self {
        self.checkpoint = Some((path.into(), every.max(1)));
        self
    }

    /// Runs to termination, from the checkpoint if there is one.
    pub fn run(mut self) -> Result<Outcome> {
        let started = Instant::now();
        let shape = Shape::of(self.problem)?;
        self.config.check()?;
        let (mut state, resumed) = match &self.checkpoint {
            Some((path, _)) if path.exists() => (self.load(path, &shape)?, true),
            _ => (self.initialize(&shape)?, false),
        };
        let mut stop: Option<TerminationReason> = None;
        if !resumed {
            stop = self.notify(&mut state, &shape, started)?;
        }
        loop {
            if let Some(reason) = stop.take().or_else(|| self.limit_reached(&state, started)) {
                return Ok(Outcome {
                    state,
                    reason,
                    elapsed: started.elapsed(),
                });
            }
            self.generation(&mut state, &shape)?;
            if let Some(tolerance) = &self.termination.tolerance {
                let (front, m, xs) = tolerance_data(&state, &shape);
                if state
                    .tolerance
                    .update((&front, m), (&xs, shape.n_var), tolerance)
                {
                    stop = Some(TerminationReason::Tolerance);
                }
            }
            if let Some(reason) = self.notify(&mut state, &shape, started)? {
                stop = Some(reason);
            }
            if let Some((path, every)) = &self.checkpoint
                && state.generation % every == 0
            {
                save(
                    path,
                    &Checkpoint {
                        format: CHECKPOINT_FORMAT.into(),
                        version: CHECKPOINT_VERSION,
                        n_var: shape.n_var,
                        n_obj: shape.n_obj,
                        config: self.config.clone(),
                        state: state.clone(),
                    },
                )?;
            }
        }
    }

    fn initialize(&self, shape: &Shape) -> Result<State> {
        let bounds = self.problem.bounds();
        bounds.check(shape.n_var)?;
        let mut rng = Rng::seeded(self.config.seed);
        let xs = algorithm::sample(self.config.population, shape, &bounds, &mut rng);
        let population = algorithm::evaluate(self.problem, shape, xs, self.config.parallel, 0)?;
        let failures = population.iter().filter(|i| i.failure.is_some()).count();
        let evaluations = population.len();
        let active = vec![true; shape.n_obj];
        let population = algorithm::survive(
            population,
            self.config.population,
            shape,
            &active,
            self.config.crowding,
            &mut rng,
        );
        Ok(State {
            generation: 0,
            evaluations,
            failures,
            population,
            bounds,
            active_objectives: active,
            rng,
            tolerance: ToleranceState::default(),
        })
    }

    fn generation(&self, state: &mut State, shape: &Shape) -> Result<()> {
        let offspring_x = algorithm::mate(state, &self.config, shape);
        let generation = state.generation + 1;
        let offspring = algorithm::evaluate(
            self.problem,
            shape,
            offspring_x,
            self.config.parallel,
            generation,
        )?;
        state.evaluations += offspring.len();
        state.failures += offspring.iter().filter(|i| i.failure.is_some()).count();
        let mut merged = std::mem::take(&mut state.population);
        merged.extend(offspring);
        state.population = algorithm::survive(
            merged,
            self.config.population,
            shape,
            &state.active_objectives,
            self.config.crowding,
            &mut state.rng,
        );
        state.generation = generation;
        Ok(())
    }

    fn limit_reached(&self, state: &State, started: Instant) -> Option<TerminationReason> {
        let t = &self.termination;
        if t.max_generations.is_some_and(|n| state.generation >= n) {
            return Some(TerminationReason::MaxGenerations);
        }
        if t.max_evaluations.is_some_and(|n| state.evaluations >= n) {
            return Some(TerminationReason::MaxEvaluations);
        }
        if t.max_time.is_some_and(|limit| started.elapsed() >= limit) {
            return Some(TerminationReason::MaxTime);
        }
        None
    }

    /// Calls due observers and applies their actions; returns a stop request.
    fn notify(
        &mut self,
        state: &mut State,
        shape: &Shape,
        started: Instant,
    ) -> Result<Option<TerminationReason>> {
        let mut stop = None;
        for index in 0..self.observers.len() {
            let (every, _) = self.observers[index];
            if !state.generation.is_multiple_of(every) {
                continue;
            }
            let actions = {
                let view = GenerationView {
                    state,
                    maximize: &shape.maximize,
                    elapsed: started.elapsed(),
                };
                self.observers[index]
                    .1
                    .observe(&view)
                    .map_err(Error::Observer)?
            };
            for action in actions {
                match action {
                    Action::Stop(reason) => stop = Some(TerminationReason::Observer(reason)),
                    Action::SetBounds(bounds) => self.apply_bounds(state, shape, bounds)?,
                    Action::SetActiveObjectives(active) => {
                        if active.len() != shape.n_obj || !active.iter().any(|&a| a) {
                            return Err(Error::Observer(format!(
                                "active objectives {active:?}: expected {} flags, at least one set",
                                shape.n_obj
                            )));
                        }
                        state.active_objectives = active;
                        self.rerank(state, shape);
                    }
                }
            }
        }
        Ok(stop)
    }

    fn apply_bounds(&self, state: &mut State, shape: &Shape, bounds: Bounds) -> Result<()> {
        bounds.check(shape.n_var)?;
        let mut moved = Vec::new();
        for (i, individual) in state.population.iter_mut().enumerate() {
            let mut x = individual.x.clone();
            let changed = bounds.clamp(&mut x);
            algorithm::round_integers(&mut x, &shape.integer, &bounds);
            if changed || x != individual.x {
                moved.push((i, x));
            }
        }
        state.bounds = bounds;
        if !moved.is_empty() {
            let xs: Vec<Vec<f64>> = moved.iter().map(|(_, x)| x.clone()).collect();
            let evaluated = algorithm::evaluate(
                self.problem,
                shape,
                xs,
                self.config.parallel,
                state.generation,
            )?;
            state.evaluations += evaluated.len();
            state.failures += evaluated.iter().filter(|i| i.failure.is_some()).count();
            for ((i, _), individual) in moved.iter().zip(evaluated) {
                state.population[*i] = individual;
            }
        }
        self.rerank(state, shape);
        Ok(())
    }

    fn rerank(&self, state: &mut State, shape: &Shape) {
        let population = std::mem::take(&mut state.population);
        let n = population.len();
        state.population = algorithm::survive(
            population,
            n,
            shape,
            &state.active_objectives,
            self.config.crowding,
            &mut state.rng,
        );
    }

    fn load(&self, path: &Path, shape: &Shape) -> Result<State> {
        let error = |message: String| Error::Checkpoint {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read: {e}")))?;
        let checkpoint: Checkpoint = serde_json::from_str(&text)
            .map_err(|e| error(format!("not a valid checkpoint: {e}")))?;
        if checkpoint.format != CHECKPOINT_FORMAT || checkpoint.version != CHECKPOINT_VERSION {
            return Err(error(format!(
                "format {} version {}, expected {CHECKPOINT_FORMAT} version {CHECKPOINT_VERSION}",
                checkpoint.format, checkpoint.version
            )));
        }
        if (checkpoint.n_var, checkpoint.n_obj) != (shape.n_var, shape.n_obj) {
            return Err(error(format!(
                "written for {} variables and {} objectives, this problem has {} and {}",
                checkpoint.n_var, checkpoint.n_obj, shape.n_var, shape.n_obj
            )));
        }
        // Parallelism does not change results, so it may differ on resume.
        let comparable = |c: &Config| Config {
            parallel: false,
            ..c.clone()
        };
        if comparable(&checkpoint.config) != comparable(&self.config) {
            return Err(error(format!(
                "written with a different configuration ({:?}); resume with the same one",
                checkpoint.config
            )));
        }
        Ok(checkpoint.state)
    }
}

/// Front (minimisation sense, active objectives) and decision vectors normalised by the
/// bounds, of the best individuals, for the tolerance criterion.
fn tolerance_data(state: &State, shape: &Shape) -> (Vec<f64>, usize, Vec<f64>) {
    let best: Vec<&Individual> = state.best().into_iter().filter(|i| i.feasible()).collect();
    let (front, m) = algorithm::objective_matrix(&best, &shape.maximize, &state.active_objectives);
    let bounds = &state.bounds;
    let xs = best
        .iter()
        .flat_map(|i| {
            i.x.iter().enumerate().map(|(j, &v)| {
                let span = bounds.upper[j] - bounds.lower[j];
                if span > 0.0 {
                    (v - bounds.lower[j]) / span
                } else {
                    0.0
                }
            })
        })
        .collect();
    (front, m, xs)
}

/// Writes atomically: a temporary file beside the target, synced, then renamed.
fn save(path: &Path, checkpoint: &Checkpoint) -> Result<()> {
    use std::io::Write;
    let error = |message: String| Error::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    let text = serde_json::to_vec(checkpoint).map_err(|e| error(e.to_string()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&text)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        error(format!("cannot write: {e}"))
    })
}
