//! The problem interface.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Box bounds of the decision variables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    /// Lower bound per variable.
    pub lower: Vec<f64>,
    /// Upper bound per variable.
    pub upper: Vec<f64>,
}

impl Bounds {
    /// Bounds from pairs; checked by [`Bounds::check`] when a run starts.
    pub fn new(lower: Vec<f64>, upper: Vec<f64>) -> Self {
        Self { lower, upper }
    }

    /// The same interval for `n` variables.
    pub fn uniform(n: usize, lower: f64, upper: f64) -> Self {
        Self {
            lower: vec![lower; n],
            upper: vec![upper; n],
        }
    }

    /// Number of variables.
    pub fn len(&self) -> usize {
        self.lower.len()
    }

    /// Whether there are no variables.
    pub fn is_empty(&self) -> bool {
        self.lower.is_empty()
    }

    /// Finite, `lower <= upper`, one pair per variable.
    pub fn check(&self, n_var: usize) -> Result<()> {
        if self.lower.len() != n_var || self.upper.len() != n_var {
            return Err(Error::Config(format!(
                "bounds give {} lower and {} upper values for {n_var} variables",
                self.lower.len(),
                self.upper.len()
            )));
        }
        for (i, (&lo, &hi)) in self.lower.iter().zip(&self.upper).enumerate() {
            if !lo.is_finite() || !hi.is_finite() || lo > hi {
                return Err(Error::Config(format!(
                    "variable {i} has bounds [{lo}, {hi}]; expected finite values with lower <= upper"
                )));
            }
        }
        Ok(())
    }

    /// Moves `x` into the bounds, coordinate by coordinate (the nearest point of the box).
    pub fn clamp(&self, x: &mut [f64]) -> bool {
        let mut moved = false;
        for ((v, &lo), &hi) in x.iter_mut().zip(&self.lower).zip(&self.upper) {
            let clamped = v.clamp(lo, hi);
            moved |= clamped != *v;
            *v = clamped;
        }
        moved
    }
}

/// What evaluating one decision vector gives.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Evaluation {
    /// Objective values, in the problem's own sense (minimised unless
    /// [`Problem::maximize`] says otherwise).
    pub objectives: Vec<f64>,
    /// Inequality constraints, feasible when `g <= 0`.
    pub constraints: Vec<f64>,
}

impl Evaluation {
    /// An unconstrained evaluation.
    pub fn objectives(objectives: Vec<f64>) -> Self {
        Self {
            objectives,
            constraints: Vec::new(),
        }
    }
}

/// A multi-objective problem.
///
/// Evaluation runs on rayon's threads one individual at a time ([`Problem::evaluate`]),
/// unless [`Problem::evaluate_batch`] is overridden, in which case the whole batch is
/// handed over at once (a model scoring many candidates in one forward pass). Either
/// way results come back in order, so serial, parallel and batch runs are identical.
/// An evaluation may fail: the individual becomes infeasible (worst possible) with the
/// reason kept, and the run goes on.
pub trait Problem: Sync {
    /// Number of decision variables.
    fn n_var(&self) -> usize;
    /// Number of objectives.
    fn n_obj(&self) -> usize;
    /// Number of inequality constraints `g(x) <= 0` (default 0).
    fn n_constr(&self) -> usize {
        0
    }
    /// Variable bounds.
    fn bounds(&self) -> Bounds;
    /// Which variables are integers (default none): they are rounded to the nearest
    /// integer after crossover and mutation, and sampled as integers.
    fn integer_variables(&self) -> Vec<bool> {
        vec![false; self.n_var()]
    }
    /// Which objectives are maximised (default none).
    fn maximize(&self) -> Vec<bool> {
        vec![false; self.n_obj()]
    }
    /// Evaluates one decision vector.
    fn evaluate(&self, x: &[f64]) -> std::result::Result<Evaluation, String>;
    /// Evaluates a batch; `None` (the default) means "evaluate one by one".
    fn evaluate_batch(
        &self,
        _xs: &[Vec<f64>],
    ) -> Option<Vec<std::result::Result<Evaluation, String>>> {
        None
    }
}
