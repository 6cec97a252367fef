//! Quality and speed on ZDT1-3 (n = 30, population 100, 200 generations = 20,000
//! evaluations, one thread), next to pymoo and pygmo run on the same settings.
//!
//! ```sh
//! cargo xtask bench nsga2                      # runs the peers too, then this
//! cargo run --release -p nsga2 --example bench_zdt -- [--seeds 11] [--generations 200]
//!     [--crowding standard|unique|pruning] [--peers peers.json]
//! ```
//!
//! Every indicator is computed here, the same way for every framework: hypervolume with
//! reference (1.1, 1.1) of the final non-dominated set, IGD against a 10,000-point
//! analytic front. pymoo's own hypervolume of its fronts is compared with ours as a
//! cross-check of the implementation.

use std::time::Instant;

use nsga2::problems::{ReferenceFront, Zdt};
use nsga2::{Config, Crowding, Executor, Termination, indicators};

struct Stats {
    seconds: Vec<f64>,
    hv: Vec<f64>,
    igd: Vec<f64>,
}

fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

fn score(front: &[f64], reference: &[f64]) -> (f64, f64) {
    let front = indicators::non_dominated(front, 2);
    (
        indicators::hypervolume(&front, 2, &[1.1, 1.1]),
        indicators::igd(reference, &front, 2),
    )
}

fn main() {
    let mut seeds = 11u64;
    let mut generations = 200usize;
    let mut crowding = Crowding::UniqueVectors;
    let mut peers: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--seeds" => seeds = value.parse().expect("--seeds N"),
            "--generations" => generations = value.parse().expect("--generations N"),
            "--crowding" => {
                crowding = match value.as_str() {
                    "standard" => Crowding::Standard,
                    "pruning" => Crowding::Pruning,
                    _ => Crowding::UniqueVectors,
                }
            }
            "--peers" => peers = Some(value),
            other => panic!("unknown option {other}"),
        }
    }
    let problems = [
        ("zdt1", Zdt::zdt1(30)),
        ("zdt2", Zdt::zdt2(30)),
        ("zdt3", Zdt::zdt3(30)),
    ];
    let peer_report: Option<serde_json::Value> = peers.map(|path| {
        serde_json::from_str(&std::fs::read_to_string(&path).expect("peers file"))
            .expect("peers JSON")
    });
    println!(
        "ZDT1-3, n=30, population 100, {generations} generations, {seeds} seeds, one thread; crowding {crowding:?}"
    );
    println!(
        "{:<6} {:<8} {:>17} {:>23} {:>9} {:>19} {:>10}",
        "", "who", "seconds a run", "HV (1.1,1.1) mean±sd", "HV min", "IGD mean±sd", "time/ours"
    );
    for (name, problem) in problems {
        let reference = problem.pareto_front(10_000);
        let mut ours = Stats {
            seconds: Vec::new(),
            hv: Vec::new(),
            igd: Vec::new(),
        };
        for seed in 1..=seeds {
            let config = Config {
                seed,
                parallel: false,
                crowding,
                ..Config::default()
            };
            let started = Instant::now();
            let outcome = Executor::new(&problem, config)
                .termination(Termination::generations(generations))
                .run()
                .expect("runs");
            ours.seconds.push(started.elapsed().as_secs_f64());
            let front: Vec<f64> = outcome
                .front()
                .iter()
                .flat_map(|i| i.objectives.clone())
                .collect();
            let (hv, igd) = score(&front, &reference);
            ours.hv.push(hv);
            ours.igd.push(igd);
        }
        let our_time = mean_sd(&ours.seconds).0;
        let mut rows = vec![("nsga2", ours)];
        let mut hv_check = 0.0f64;
        if let Some(report) = &peer_report {
            for who in ["pymoo", "pygmo"] {
                let Some(runs) = report[who][name].as_array() else {
                    continue;
                };
                let mut stats = Stats {
                    seconds: Vec::new(),
                    hv: Vec::new(),
                    igd: Vec::new(),
                };
                for run in runs {
                    stats
                        .seconds
                        .push(run["seconds"].as_f64().unwrap_or(f64::NAN));
                    let front: Vec<f64> = run["front"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|p| p.as_array().cloned().unwrap_or_default())
                        .filter_map(|v| v.as_f64())
                        .collect();
                    let (hv, igd) = score(&front, &reference);
                    if let Some(own) = run["own_hv"].as_f64() {
                        hv_check = hv_check.max((own - hv).abs());
                    }
                    stats.hv.push(hv);
                    stats.igd.push(igd);
                }
                rows.push((who, stats));
            }
        }
        for (who, stats) in &rows {
            let (time, time_sd) = mean_sd(&stats.seconds);
            let (hv, hv_sd) = mean_sd(&stats.hv);
            let (igd, igd_sd) = mean_sd(&stats.igd);
            let hv_min = stats.hv.iter().copied().fold(f64::INFINITY, f64::min);
            println!(
                "{name:<6} {who:<8} {time:>9.4} ± {time_sd:<6.4} {hv:>12.5} ± {hv_sd:<8.5} {hv_min:>9.5} {igd:>9.5} ± {igd_sd:<7.5} {:>9.1}x",
                time / our_time
            );
        }
        if let Some((_, pymoo)) = rows.iter().find(|(who, _)| *who == "pymoo") {
            let (ours_hv, _) = mean_sd(&rows[0].1.hv);
            let (ours_igd, _) = mean_sd(&rows[0].1.igd);
            let (pymoo_hv, pymoo_sd) = mean_sd(&pymoo.hv);
            let (pymoo_igd, _) = mean_sd(&pymoo.igd);
            println!(
                "{name:<6} quality: HV {} pymoo mean - sd ({:.5}); IGD {:.1}% of pymoo's ({}); time {:.4} s a run ({}); our HV vs pymoo's own: max |diff| {hv_check:.1e}",
                if ours_hv >= pymoo_hv - pymoo_sd {
                    ">="
                } else {
                    "BELOW"
                },
                pymoo_hv - pymoo_sd,
                100.0 * ours_igd / pymoo_igd,
                if ours_igd <= 1.1 * pymoo_igd {
                    "ok"
                } else {
                    "WORSE than 110%"
                },
                our_time,
                if our_time <= 0.03 {
                    "<= 0.03"
                } else {
                    "ABOVE 0.03"
                }
            );
        }
    }
}
