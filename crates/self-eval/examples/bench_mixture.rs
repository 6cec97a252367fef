//! Scoring one mixture two ways on the same search set, side by side: stage 3's one
//! batched teacher-forced pass (`MixtureProblem::score`: greedy-exact accuracy, suite
//! preferences, one-pass behaviour rates) against generation (greedy decoding of every
//! problem, `score_suite` with generated behaviours), alternated over distinct mixtures.
//! Prints each method's median and spread, the speed-up, and whether every number
//! agrees.
//!
//! ```sh
//! cargo xtask bench mixture            # the embedded default model, seeded random experts
//! cargo run --release -p self-eval --example bench_mixture -- MODEL_DIR [MIXTURES]
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use eudaimonia_gate::{ScoreConfig, Suite};
use self_eval::Answerer;
use self_eval::mixture::{BoundDecision, ExpertRole, MixtureProblem, ProblemConfig, SearchSet};
use self_eval::profile::distinct_problems;
use svf::{Decomposition, Expert, Selection};
use synth_tasks::{Domain, Split};

fn median_and_spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "assets/default-model".into()));
    let mixtures: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(5);
    let tokenizer = lm::Tokenizer::from_dir(&dir)?;
    let mut model = lm::CausalLm::load(&dir, tch::Device::Cpu, tch::Kind::Float)?;
    model.set_activation_quantization(false);
    let decomposition = Decomposition::compute(&mut model, &Selection::mlp(), false)?;
    let names = ["arithmetic", "code", "sequence"];
    let experts: Vec<Expert> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Expert::random(&decomposition, n, 0.1, 0.8, 40 + i as i64))
        .collect();
    let roles: Vec<ExpertRole> = names
        .iter()
        .map(|n| ExpertRole {
            name: (*n).into(),
            domains: vec![(*n).into()],
            general: false,
        })
        .collect();
    let bounds: Vec<BoundDecision> = names
        .iter()
        .map(|n| BoundDecision {
            expert: (*n).into(),
            accuracies: BTreeMap::new(),
            mean_accuracy: None,
            class: "weak".into(),
            lower: 0.0,
            upper: 3.0,
            reason: "benchmark".into(),
        })
        .collect();
    let set = SearchSet {
        problems: Domain::ALL
            .iter()
            .map(|&d| {
                (
                    d.name().to_owned(),
                    distinct_problems(d, 1, Split::Train, 32, 5),
                )
            })
            .collect(),
        suites: Suite::synth_all(16, Split::Train, 5),
    };
    let problem = MixtureProblem::new(
        model,
        tokenizer,
        decomposition,
        experts,
        roles,
        &bounds,
        &set,
        ProblemConfig::default(),
    )?;
    println!(
        "model {} on {} libtorch threads: {} problems over {} domains and {} suite items, {mixtures} mixtures of 3 random experts",
        dir.display(),
        tch::get_num_threads(),
        set.problems.values().map(Vec::len).sum::<usize>(),
        set.problems.len(),
        set.suites.iter().map(|s| s.items.len()).sum::<usize>()
    );
    let mut rng = synth_tasks::Rng::new(9);
    let (mut fast, mut slow) = (Vec::new(), Vec::new());
    let mut agree = true;
    for _ in 0..mixtures {
        let alphas: Vec<f64> = (0..3).map(|_| rng.range(0, 300) as f64 / 100.0).collect();
        let started = Instant::now();
        let quick = problem.score(&alphas)?;
        fast.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        let slow_scores = problem.with_mixture(&alphas, |model, _, _| {
            let answerer = Answerer::new(model, problem.tokenizer(), Default::default())?;
            let mut accuracy = BTreeMap::new();
            for (name, ps) in &set.problems {
                let (exact, _) = answerer.generate_exact(&answerer.encode(ps)?)?;
                accuracy.insert(
                    name.clone(),
                    exact.iter().filter(|&&e| e).count() as f64 / exact.len() as f64,
                );
            }
            let suites = eudaimonia_gate::measure(
                model,
                problem.tokenizer(),
                &set.suites,
                &ScoreConfig::default(),
            )?;
            Ok((accuracy, suites))
        })?;
        slow.push(started.elapsed().as_secs_f64());
        let (accuracy, suites) = slow_scores;
        let same = accuracy == quick.accuracy
            && suites.iter().all(|(name, s)| {
                let q = &quick.suites[name];
                q.preference == s.preference
                    && q.behaviour_rate.is_none_or(|r| Some(r) == s.behaviour_rate)
            });
        if !same {
            println!(
                "  DISAGREE at {alphas:?}: one pass {quick:?}\n  generation {accuracy:?} {suites:?}"
            );
        }
        agree &= same;
        println!(
            "  alphas {alphas:?}: one pass {:.3} s, generation {:.3} s, overall accuracy {:.3}",
            fast.last().unwrap(),
            slow.last().unwrap(),
            quick.overall
        );
    }
    let (f, f_lo, f_hi) = median_and_spread(fast);
    let (s, s_lo, s_hi) = median_and_spread(slow);
    println!("one pass:   median {f:.3} s per mixture (min {f_lo:.3}, max {f_hi:.3})");
    println!("generation: median {s:.3} s per mixture (min {s_lo:.3}, max {s_hi:.3})");
    println!(
        "speed-up: {:.1}x (median), {:.1}x-{:.1}x (worst-best); every number identical: {agree}",
        s / f,
        s_lo / f_hi,
        s_hi / f_lo
    );
    if !agree {
        anyhow::bail!("the one pass and generation disagree");
    }
    Ok(())
}
