//! NSGA-II (Deb et al. 2002) for any multi-objective problem.
//!
//! * **Problems** implement [`Problem`]: bounds, optional integer variables, objectives to
//!   minimise or maximise, inequality constraints `g(x) <= 0`, evaluation one by one (run
//!   on rayon's threads) or in batches. An evaluation may fail; the individual becomes
//!   infeasible with its reason recorded and the run goes on. NaN objectives are errors.
//! * **The algorithm** follows pymoo 0.6's defaults, each documented on [`Config`]: SBX
//!   and polynomial mutation, binary tournaments by constraint-domination then crowding,
//!   duplicate elimination, survival by rank and crowding with random tie-breaks.
//!   Non-dominated sorting is O(N log N) for two objectives and ENS-BS beyond.
//! * **The executor** ([`Executor`]) runs generations until a [`Termination`] criterion
//!   holds; [`Observer`]s see every k-th generation and may change bounds, switch
//!   objectives off or stop the run; checkpoints resume bit-identically.
//! * **Indicators** (hypervolume, IGD, IGD+), **test problems** with reference fronts,
//!   and SVG **plots** (feature `plots`).
//!
//! ```
//! use nsga2::{Config, Executor, Termination, indicators, problems::{ReferenceFront, Zdt}};
//!
//! let problem = Zdt::zdt1(30);
//! let config = Config { seed: 7, parallel: false, ..Config::default() };
//! let outcome = Executor::new(&problem, config)
//!     .termination(Termination::generations(200))
//!     .run()?;
//! let front: Vec<f64> = outcome.front().iter().flat_map(|i| i.objectives.clone()).collect();
//! let hv = indicators::hypervolume(&front, 2, &[1.1, 1.1]);
//! let igd = indicators::igd(&problem.pareto_front(1000), &front, 2);
//! assert!(hv > 0.86 && igd < 0.01, "hv {hv}, igd {igd}");
//! # Ok::<(), nsga2::Error>(())
//! ```
#![doc(test(attr(deny(warnings))))]

pub mod algorithm;
pub mod crowding;
mod error;
mod exact;
pub mod indicators;
pub mod operators;
#[cfg(feature = "plots")]
pub mod plot;
pub mod problem;
pub mod problems;
mod rng;
pub mod run;
pub mod sort;

pub use algorithm::{Config, Individual, State};
pub use crowding::Crowding;
pub use error::{Error, Result};
pub use problem::{Bounds, Evaluation, Problem};
pub use rng::Rng;
pub use run::{
    Action, Executor, GenerationView, Observer, Outcome, Termination, TerminationReason, Tolerance,
};
