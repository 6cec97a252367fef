//! Greedy accuracy two ways on the same problems, side by side: one teacher-forced pass
//! (`Answerer::one_pass`) against batched greedy generation (`Answerer::generate_exact`),
//! alternated over repeats; prints per-method median and spread, the speed-up, and
//! whether the two agree on every problem. Then the whole profile's wall time.
//!
//! ```sh
//! cargo xtask bench profile            # the embedded default model
//! cargo run --release -p self-eval --example bench_profile -- MODEL_DIR [REPEATS]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use self_eval::profile::distinct_problems;
use self_eval::{Answerer, ProfileConfig, profile};
use synth_tasks::{Domain, Split};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "assets/default-model".into()));
    let repeats: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(5);
    let model = lm::CausalLm::load(&dir, tch::Device::Cpu, tch::Kind::Float)?;
    let tokenizer = lm::Tokenizer::from_dir(&dir)?;
    let answerer = Answerer::new(&model, &tokenizer, Default::default())?;
    println!(
        "model {} on {} libtorch threads; 200 held-out problems per domain at difficulty 1 and 2, {repeats} repeats",
        dir.display(),
        tch::get_num_threads()
    );
    let mut problems = Vec::new();
    for domain in Domain::ALL {
        for difficulty in [1, 2] {
            problems.extend(distinct_problems(
                domain,
                difficulty,
                Split::HeldOut,
                100,
                1,
            ));
        }
    }
    let encoded = answerer.encode(&problems)?;
    let (mut one_pass_times, mut generate_times, mut prefill_times) =
        (Vec::new(), Vec::new(), Vec::new());
    let prompts: Vec<Vec<i64>> = encoded.iter().map(|e| e.prompt.clone()).collect();
    let prefill_only = lm::GenerateConfig {
        max_new_tokens: 1,
        ..lm::GenerateConfig::default()
    };
    let mut agree = true;
    let mut counts = (0, 0);
    for _ in 0..repeats {
        let started = Instant::now();
        let one_pass = answerer.one_pass(&encoded)?;
        one_pass_times.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        let (generated, _) = answerer.generate_exact(&encoded)?;
        generate_times.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        for chunk in prompts.chunks(answerer.batch) {
            tch::no_grad(|| model.generate(chunk, &prefill_only))?;
        }
        prefill_times.push(started.elapsed().as_secs_f64());
        agree &= one_pass.iter().zip(&generated).all(|(a, g)| a.exact == *g);
        counts = (
            one_pass.iter().filter(|r| r.exact).count(),
            generated.iter().filter(|&&g| g).count(),
        );
    }
    let summary = |times: &mut Vec<f64>| {
        times.sort_by(f64::total_cmp);
        (times[0], times[times.len() / 2], times[times.len() - 1])
    };
    let (o_min, o_med, o_max) = summary(&mut one_pass_times);
    let (g_min, g_med, g_max) = summary(&mut generate_times);
    let (p_min, p_med, p_max) = summary(&mut prefill_times);
    println!(
        "one pass:   median {:.1} ms (min {:.1}, max {:.1}) for {} problems; {} correct",
        o_med * 1e3,
        o_min * 1e3,
        o_max * 1e3,
        problems.len(),
        counts.0
    );
    println!(
        "generation: median {:.1} ms (min {:.1}, max {:.1}); {} correct",
        g_med * 1e3,
        g_min * 1e3,
        g_max * 1e3,
        counts.1
    );
    println!(
        "prefill only (one new token, the floor of any generation): median {:.1} ms (min {:.1}, max {:.1})",
        p_med * 1e3,
        p_min * 1e3,
        p_max * 1e3
    );
    println!(
        "speed-up {:.1}x median (range {:.1}x-{:.1}x); same verdict on every problem: {agree}",
        g_med / o_med,
        g_min / o_max,
        g_max / o_min
    );
    if !agree {
        anyhow::bail!("one pass and generation disagree");
    }
    // One problem at a time (an interactive check, or a GPU where each step is a kernel
    // launch): here the per-step overhead of generation is what the one pass saves.
    let mut single = Answerer::new(&model, &tokenizer, Default::default())?;
    single.batch = 1;
    let subset: Vec<_> = encoded.iter().step_by(13).cloned().collect();
    let (mut one_times, mut gen_times) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        let started = Instant::now();
        let a = single.one_pass(&subset)?;
        one_times.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        let (g, _) = single.generate_exact(&subset)?;
        gen_times.push(started.elapsed().as_secs_f64());
        if a.iter().zip(&g).any(|(a, g)| a.exact != *g) {
            anyhow::bail!("one pass and generation disagree at batch 1");
        }
    }
    let (o1_min, o1_med, o1_max) = summary(&mut one_times);
    let (g1_min, g1_med, g1_max) = summary(&mut gen_times);
    println!(
        "batch 1, {} problems: one pass median {:.1} ms (min {:.1}, max {:.1}), generation median {:.1} ms \
         (min {:.1}, max {:.1}): speed-up {:.1}x (range {:.1}x-{:.1}x), same verdicts",
        subset.len(),
        o1_med * 1e3,
        o1_min * 1e3,
        o1_max * 1e3,
        g1_med * 1e3,
        g1_min * 1e3,
        g1_max * 1e3,
        g1_med / o1_med,
        g1_min / o1_max,
        g1_max / o1_min
    );
    for run in 0..2 {
        let started = Instant::now();
        let measured = profile(&answerer, &ProfileConfig::default())?;
        println!(
            "full profile (8 domains x 200 problems, k=8 samples, 4-point sweep): {:.2} s (run {})",
            started.elapsed().as_secs_f64(),
            run + 1
        );
        let _ = measured;
    }
    Ok(())
}
