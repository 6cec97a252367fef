//! How time grows with the population: time per generation for populations 100 to
//! 10,000 on ZDT1 (2 objectives) and DTLZ2 (3 objectives), and the non-dominated sort
//! alone against the literal front-peeling sort, with log-log slopes. Writes SVG plots.
//!
//! ```sh
//! cargo run --release -p nsga2 --example bench_scaling -- [OUT_DIR]   # default target/bench
//! ```

use std::path::PathBuf;
use std::time::Instant;

use nsga2::problems::{Dtlz, DtlzKind, Zdt};
use nsga2::{Config, Executor, Problem, Rng, Termination, sort};
use plotters::prelude::*;

const POPULATIONS: [usize; 5] = [100, 300, 1000, 3000, 10_000];

/// Slope of log(time) against log(size): 1 is linear, 2 quadratic.
fn slope(points: &[(usize, f64)]) -> f64 {
    let xs: Vec<f64> = points.iter().map(|p| (p.0 as f64).ln()).collect();
    let ys: Vec<f64> = points.iter().map(|p| p.1.ln()).collect();
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    cov / var
}

fn seconds_per_generation<P: Problem>(problem: &P, population: usize) -> f64 {
    let config = Config {
        population,
        seed: 1,
        parallel: false,
        ..Config::default()
    };
    // Generations beyond the first few are the steady state the search spends its time in.
    let run = |generations| {
        let started = Instant::now();
        Executor::new(problem, config.clone())
            .termination(Termination::generations(generations))
            .run()
            .expect("runs");
        started.elapsed().as_secs_f64()
    };
    let (short, long) = (2, if population >= 3000 { 6 } else { 22 });
    (run(long) - run(short)) / (long - short) as f64
}

fn sort_seconds(n: usize, m: usize, naive: bool) -> f64 {
    let mut rng = Rng::seeded(n as u64);
    let points: Vec<f64> = (0..n * m).map(|_| rng.uniform()).collect();
    let repeats = (200_000 / n).clamp(1, 50);
    let started = Instant::now();
    for _ in 0..repeats {
        if naive {
            std::hint::black_box(sort::naive_ranks(&points, n, m));
        } else {
            std::hint::black_box(sort::ranks(&points, n, m));
        }
    }
    started.elapsed().as_secs_f64() / repeats as f64
}

type Series = (String, Vec<(usize, f64)>);

fn plot(path: &PathBuf, title: &str, y_label: &str, series: &[Series]) {
    let root = SVGBackend::new(path, (720, 480)).into_drawing_area();
    root.fill(&WHITE).expect("draws");
    let all = series.iter().flat_map(|s| s.1.iter());
    let (lo, hi) = all.fold((f64::INFINITY, 0.0f64), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (80f64..14_000f64).log_scale(),
            (lo * 0.5..hi * 2.0).log_scale(),
        )
        .expect("axes");
    chart
        .configure_mesh()
        .x_desc("points (population, or points sorted)")
        .y_desc(y_label)
        .draw()
        .expect("mesh");
    let colours = [RED, BLUE, GREEN, MAGENTA];
    for ((name, values), colour) in series.iter().zip(colours) {
        chart
            .draw_series(LineSeries::new(
                values.iter().map(|&(x, y)| (x as f64, y)),
                colour.stroke_width(2),
            ))
            .expect("series")
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .expect("legend");
    root.present().expect("writes");
}

fn main() {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench"));
    std::fs::create_dir_all(&out).expect("output folder");

    println!("time per generation (one thread; sorting 2N points each generation)");
    println!(
        "{:>10} {:>16} {:>16}",
        "population", "ZDT1 (2 obj)", "DTLZ2 (3 obj)"
    );
    let zdt1 = Zdt::zdt1(30);
    let dtlz2 = Dtlz::new(DtlzKind::Dtlz2, 3);
    let mut generation_series: Vec<Series> = vec![
        ("ZDT1, 2 objectives".into(), Vec::new()),
        ("DTLZ2, 3 objectives".into(), Vec::new()),
    ];
    for &population in &POPULATIONS {
        let two = seconds_per_generation(&zdt1, population);
        let three = seconds_per_generation(&dtlz2, population);
        println!(
            "{population:>10} {:>13.3} ms {:>13.3} ms",
            two * 1e3,
            three * 1e3
        );
        generation_series[0].1.push((population, two));
        generation_series[1].1.push((population, three));
    }
    for (name, values) in &generation_series {
        println!("  {name}: log-log slope {:.2}", slope(values));
    }

    println!("\nnon-dominated sort of N random points (naive: front peeling, up to N = 3000)");
    println!(
        "{:>8} {:>12} {:>12} {:>12} {:>12}",
        "N", "ours, M=2", "naive, M=2", "ours, M=3", "naive, M=3"
    );
    let mut sort_series: Vec<Series> = ["ours, M=2", "naive, M=2", "ours, M=3", "naive, M=3"]
        .iter()
        .map(|name| (name.to_string(), Vec::new()))
        .collect();
    for n in [200, 600, 2000, 6000, 20_000] {
        let mut row = Vec::new();
        for (column, (m, naive)) in [(2, false), (2, true), (3, false), (3, true)]
            .into_iter()
            .enumerate()
        {
            if naive && n > 3000 {
                row.push("-".to_owned());
                continue;
            }
            let t = sort_seconds(n, m, naive);
            sort_series[column].1.push((n, t));
            row.push(format!("{:.3} ms", t * 1e3));
        }
        println!(
            "{n:>8} {:>12} {:>12} {:>12} {:>12}",
            row[0], row[1], row[2], row[3]
        );
    }
    for (name, values) in &sort_series {
        println!("  {name}: log-log slope {:.2}", slope(values));
    }
    let generation_plot = out.join("nsga2_generation_time.svg");
    let sort_plot = out.join("nsga2_sort_time.svg");
    plot(
        &generation_plot,
        "NSGA-II time per generation",
        "seconds",
        &generation_series,
    );
    plot(
        &sort_plot,
        "Non-dominated sorting of random points",
        "seconds",
        &sort_series,
    );
    println!(
        "\nplots: {} and {}",
        generation_plot.display(),
        sort_plot.display()
    );
}
