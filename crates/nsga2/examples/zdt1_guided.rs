//! A guided run: an observer watches the hypervolume every 10 generations, narrows the
//! bounds of the distance variables once the front has formed, and stops the run when
//! the hypervolume stops improving. Writes the final front and the hypervolume curve as
//! SVG.
//!
//! ```sh
//! cargo run --release -p nsga2 --example zdt1_guided -- [OUT_DIR]   # default target/plots
//! ```

use std::path::PathBuf;

use nsga2::problems::{ReferenceFront, Zdt};
use nsga2::{Action, Config, Executor, GenerationView, Termination, plot};

fn main() -> Result<(), nsga2::Error> {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/plots"));
    std::fs::create_dir_all(&out).expect("output folder");
    let problem = Zdt::zdt1(30);
    let mut curve: Vec<(usize, f64)> = Vec::new();
    let mut narrowed = false;
    let guide = |view: &GenerationView<'_>| {
        let hv = view.hypervolume(&[1.1, 1.1]);
        let generation = view.state.generation;
        let previous = curve.last().map(|&(_, v)| v).unwrap_or(0.0);
        curve.push((generation, hv));
        let mut actions = Vec::new();
        // On ZDT1 the front lies at x2..x30 = 0: once the search is close, keep it there.
        if !narrowed && hv > 0.8 {
            let mut bounds = view.state.bounds.clone();
            for upper in &mut bounds.upper[1..] {
                *upper = 0.2;
            }
            narrowed = true;
            println!("generation {generation}: HV {hv:.5}, narrowing x2..x30 to [0, 0.2]");
            actions.push(Action::SetBounds(bounds));
        }
        if generation >= 100 && hv - previous < 1e-4 {
            println!(
                "generation {generation}: HV {hv:.5} gained {:.1e}; stopping",
                hv - previous
            );
            actions.push(Action::Stop("hypervolume plateau".into()));
        }
        actions
    };
    let outcome = Executor::new(
        &problem,
        Config {
            seed: 3,
            ..Config::default()
        },
    )
    .termination(Termination::generations(400))
    .observe(10, guide)
    .run()?;
    let front: Vec<f64> = outcome
        .front()
        .iter()
        .flat_map(|i| i.objectives.clone())
        .collect();
    println!(
        "stopped at generation {} ({:?}) after {} evaluations",
        outcome.state.generation, outcome.reason, outcome.state.evaluations
    );
    plot::front_svg(
        &out.join("zdt1_front.svg"),
        "ZDT1 front",
        &front,
        &problem.pareto_front(500),
    )?;
    plot::curve_svg(
        &out.join("zdt1_hypervolume.svg"),
        "ZDT1 hypervolume",
        "HV (1.1, 1.1)",
        &curve,
    )?;
    println!("plots in {}", out.display());
    Ok(())
}
