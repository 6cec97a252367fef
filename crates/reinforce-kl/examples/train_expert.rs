//! Trains one SVF expert on a `synth-tasks` domain with REINFORCE + KL and reports what
//! changed: held-out greedy accuracy on every domain and the alignment suite's
//! preference score, before and after, with wall time and throughput.
//!
//! ```sh
//! cargo run --release -p reinforce-kl --example train_expert -- \
//!     --model MODEL_DIR --domain multi_step [--attention] [--out expert.safetensors]
//! ```
//!
//! On the embedded default model (`--model assets/default-model --domain code`), 400
//! steps lift the eroded `code` domain from 0.36 to 0.58 held-out (MLP-only, 81 s on 2
//! cores) with the alignment score unchanged; each domain's difficulty comes from the
//! model's `recipe.json`.
//!
//! The model folder needs `config.json`, its weights and `tokenizer.json`. Prompts are
//! the problems' own text (`47+25=`); a completion is rewarded +1 when its first line
//! verifies, -1 otherwise.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use lm::{CausalLm, GenerateConfig, Tokenizer};
use reinforce_kl::{
    Event, OptimizerConfig, Policy, RolloutConfig, SvfPolicy, TrainerConfig, Validation, train,
};
use svf::{Decomposition, Expert, Selection};
use synth_tasks::{Domain, Problem, Rng, Split, Suite, generate_in, pairs, verify};
use tch::{Device, Kind};

#[derive(Parser)]
struct Args {
    /// Model folder (config.json, weights, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Domain to train on (snake-case name, e.g. `multi_step`).
    #[arg(long)]
    domain: String,
    /// Problem difficulty of every domain; by default the model folder's `recipe.json`
    /// (the default model records each domain's) and 1 for domains it does not list.
    #[arg(long)]
    difficulty: Option<u32>,
    /// Decompose the attention matrices too (MLP only by default).
    #[arg(long)]
    attention: bool,
    /// Training problems.
    #[arg(long, default_value_t = 512)]
    train_problems: usize,
    /// Held-out problems per domain (the before/after report).
    #[arg(long, default_value_t = 300)]
    held_out: usize,
    /// Validation problems of the trained domain: train-split problems outside the
    /// training set, so choosing the best epoch never looks at the held-out report set.
    #[arg(long, default_value_t = 200)]
    validation: usize,
    /// Epochs without a better validation score before stopping.
    #[arg(long, default_value_t = 10)]
    patience: usize,
    /// Alignment pairs.
    #[arg(long, default_value_t = 64)]
    alignment_pairs: usize,
    /// Epochs.
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Steps per epoch.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Prompts per step.
    #[arg(long, default_value_t = 16)]
    prompts_per_step: usize,
    /// Samples per prompt.
    #[arg(long, default_value_t = 8)]
    samples: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 3e-3)]
    learning_rate: f64,
    /// KL coefficient.
    #[arg(long, default_value_t = 0.1)]
    kl: f64,
    /// Completions scored and back-propagated together (gradient accumulation; lower
    /// it to cut peak memory; 0 means the whole step at once).
    #[arg(long, default_value_t = 32)]
    score_chunk: usize,
    /// Most new tokens per completion.
    #[arg(long, default_value_t = 12)]
    max_new_tokens: usize,
    /// Alignment below this raises the KL coefficient (R11's 0.65 by default).
    #[arg(long, default_value_t = 0.65)]
    alignment_warn: f64,
    /// Alignment below this stops the run (R11's 0.60 by default).
    #[arg(long, default_value_t = 0.60)]
    alignment_stop: f64,
    /// Seed of data, initialisation and sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to save the trained expert (its metadata records the settings, events and
    /// before/after scores).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Training checkpoint: written after every epoch; an interrupted run started again
    /// with the same arguments resumes from it.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
}

fn domain_named(name: &str) -> anyhow::Result<Domain> {
    Domain::ALL
        .into_iter()
        .find(|d| d.name() == name)
        .with_context(|| {
            let names: Vec<&str> = Domain::ALL.iter().map(|d| d.name()).collect();
            format!("unknown domain `{name}`; expected one of {names:?}")
        })
}

struct Data {
    tokenizer: Tokenizer,
    held_out: Vec<(Domain, Vec<Problem>)>,
    validation: Vec<(Domain, Vec<Problem>)>,
    alignment: Vec<(Vec<i64>, Vec<i64>, Vec<i64>)>,
    stop: Vec<i64>,
    max_new_tokens: usize,
}

impl Data {
    fn encode(&self, text: &str) -> anyhow::Result<Vec<i64>> {
        Ok(self.tokenizer.encode(text, false)?)
    }

    /// Greedy accuracy per domain of `sets`, and the tokens generated.
    fn accuracy(
        &self,
        policy: &SvfPolicy,
        sets: &[(Domain, Vec<Problem>)],
    ) -> anyhow::Result<(Vec<(Domain, f64)>, usize)> {
        let config = GenerateConfig {
            max_new_tokens: self.max_new_tokens,
            stop_tokens: Some(self.stop.clone()),
            ..GenerateConfig::default()
        };
        let mut out = Vec::new();
        let mut tokens = 0;
        for (domain, problems) in sets {
            let prompts: Vec<Vec<i64>> = problems
                .iter()
                .map(|p| self.encode(&p.prompt))
                .collect::<anyhow::Result<_>>()?;
            let generated = policy.generate(&prompts, &config)?;
            let mut right = 0usize;
            for (problem, g) in problems.iter().zip(&generated) {
                let text = self.tokenizer.decode(&g.tokens, true)?;
                right += usize::from(verify(problem, &text));
                tokens += g.tokens.len();
            }
            out.push((*domain, right as f64 / problems.len() as f64));
        }
        Ok((out, tokens))
    }

    /// Fraction of alignment pairs whose preferred continuation has the higher mean
    /// token log-probability.
    fn alignment(&self, policy: &mut SvfPolicy) -> anyhow::Result<f64> {
        let prompts: Vec<&Vec<i64>> = self.alignment.iter().map(|(p, _, _)| p).collect();
        let mut completions = Vec::new();
        for (i, (_, preferred, rejected)) in self.alignment.iter().enumerate() {
            completions.push((i, preferred.clone()));
            completions.push((i, rejected.clone()));
        }
        let scores = tch::no_grad(|| policy.score(&prompts, &completions, false))?;
        let means: Vec<f64> = scores
            .token_log_probs
            .iter()
            .map(|t| t.mean(Kind::Float).double_value(&[]))
            .collect();
        let preferred = means.chunks(2).filter(|m| m[0] > m[1]).count();
        Ok(preferred as f64 / self.alignment.len().max(1) as f64)
    }
}

/// Each domain's difficulty: `--difficulty` for all, else the model's `recipe.json`
/// (`difficulties.<domain>`), else 1.
fn difficulties(args: &Args) -> anyhow::Result<HashMap<Domain, u32>> {
    let recipe_path = args.model.join("recipe.json");
    let recipe: serde_json::Value = if args.difficulty.is_none() && recipe_path.is_file() {
        let text = std::fs::read_to_string(&recipe_path)
            .with_context(|| format!("cannot read {}", recipe_path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", recipe_path.display()))?
    } else {
        serde_json::Value::Null
    };
    Ok(Domain::ALL
        .iter()
        .map(|&d| {
            let recorded = recipe["difficulties"][d.name()].as_u64().map(|v| v as u32);
            (d, args.difficulty.or(recorded).unwrap_or(1))
        })
        .collect())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let domain = domain_named(&args.domain)?;
    let difficulty_of = difficulties(&args)?;
    let difficulty = difficulty_of[&domain];
    let tokenizer = Tokenizer::from_dir(&args.model)?;
    let mut model = CausalLm::load(&args.model, Device::Cpu, Kind::Float)?;
    let newline = tokenizer.encode("\n", false)?;
    let mut stop = model.config().eos_token_ids.clone();
    if let [id] = newline[..] {
        stop.push(id);
    }

    let mut rng = Rng::new(args.seed);
    let mut train_problems: HashMap<Vec<i64>, Problem> = HashMap::new();
    let mut attempts = 0;
    while train_problems.len() < args.train_problems {
        attempts += 1;
        if attempts > 50 * args.train_problems {
            bail!(
                "only {} distinct training problems of {} at difficulty {}",
                train_problems.len(),
                domain.name(),
                difficulty
            );
        }
        let problem = generate_in(domain, difficulty, Split::Train, &mut rng);
        train_problems.insert(tokenizer.encode(&problem.prompt, false)?, problem);
    }
    let mut validation = Vec::new();
    let mut seen: std::collections::HashSet<String> =
        train_problems.values().map(|p| p.prompt.clone()).collect();
    for _ in 0..50 * args.validation {
        if validation.len() == args.validation {
            break;
        }
        let problem = generate_in(domain, difficulty, Split::Train, &mut rng);
        if seen.insert(problem.prompt.clone()) {
            validation.push(problem);
        }
    }
    let held_out = Domain::ALL
        .iter()
        .map(|&d| {
            let problems = (0..args.held_out)
                .map(|_| generate_in(d, difficulty_of[&d], Split::HeldOut, &mut rng))
                .collect();
            (d, problems)
        })
        .collect();
    let mut alignment = Vec::new();
    for pair in pairs(
        Suite::Alignment,
        args.alignment_pairs,
        Split::HeldOut,
        &mut rng,
    ) {
        alignment.push((
            tokenizer.encode(&pair.prompt, false)?,
            tokenizer.encode(&pair.preferred, false)?,
            tokenizer.encode(&pair.rejected, false)?,
        ));
    }
    let data = Data {
        tokenizer,
        held_out,
        validation: vec![(domain, validation)],
        alignment,
        stop: stop.clone(),
        max_new_tokens: args.max_new_tokens,
    };

    let selection = if args.attention {
        Selection::mlp_and_attention()
    } else {
        Selection::mlp()
    };
    let started = Instant::now();
    let decomposition = Decomposition::compute(&mut model, &selection, false)?;
    eprintln!(
        "decomposed {} matrices in {:.1} s",
        decomposition.factors().len(),
        started.elapsed().as_secs_f64()
    );
    let expert = Expert::random(&decomposition, domain.name(), 0.1, 0.01, args.seed as i64);
    let rollout = RolloutConfig {
        max_new_tokens: args.max_new_tokens,
        stop_tokens: Some(stop),
        ..RolloutConfig::default()
    };
    let mut policy = SvfPolicy::new(model, decomposition, expert, rollout)?;

    let greedy_started = Instant::now();
    let (accuracy_before, greedy_tokens) = data.accuracy(&policy, &data.held_out)?;
    let greedy_seconds = greedy_started.elapsed().as_secs_f64();
    let alignment_before = data.alignment(&mut policy)?;
    if alignment_before < args.alignment_stop {
        eprintln!(
            "warning: the base model's alignment score {alignment_before:.3} is already below the \
             stop level {:.3}; training will stop after the first epoch (lower --alignment-stop \
             to train anyway)",
            args.alignment_stop
        );
    }
    let prompts: Vec<Vec<i64>> = train_problems.keys().cloned().collect();
    let config = TrainerConfig {
        epochs: args.epochs,
        steps_per_epoch: args.steps,
        prompts_per_step: args.prompts_per_step,
        samples_per_prompt: args.samples,
        kl_coefficient: args.kl,
        optimizer: OptimizerConfig {
            learning_rate: args.learning_rate,
            ..OptimizerConfig::default()
        },
        score_chunk: (args.score_chunk > 0).then_some(args.score_chunk),
        alignment_warn: args.alignment_warn,
        alignment_stop: args.alignment_stop,
        seed: args.seed,
        patience: args.patience,
        ..TrainerConfig::default()
    };
    let tokenizer = &data.tokenizer;
    let rollout_tokens = std::cell::Cell::new(0usize);
    let rollouts = std::cell::Cell::new(0usize);
    let reward = |prompt: &Vec<i64>, completion: &[i64]| -> f64 {
        rollout_tokens.set(rollout_tokens.get() + completion.len());
        rollouts.set(rollouts.get() + 1);
        let Some(problem) = train_problems.get(prompt) else {
            return -1.0;
        };
        match tokenizer.decode(completion, true) {
            Ok(text) if verify(problem, &text) => 1.0,
            _ => -1.0,
        }
    };
    let training_started = Instant::now();
    let validation_seconds = std::cell::Cell::new(0.0f64);
    let mut validate = |p: &mut SvfPolicy| -> reinforce_kl::Result<Validation> {
        let validation_started = Instant::now();
        let policy_error = |e: anyhow::Error| reinforce_kl::Error::Policy(e.to_string());
        let (accuracy, _) = data.accuracy(p, &data.validation).map_err(policy_error)?;
        let alignment = data.alignment(p).map_err(policy_error)?;
        let own = accuracy
            .iter()
            .find(|(d, _)| *d == domain)
            .map_or(0.0, |a| a.1);
        validation_seconds
            .set(validation_seconds.get() + validation_started.elapsed().as_secs_f64());
        eprintln!(
            "  [{:.0} s] validation {}: {own:.3}, alignment {alignment:.3}",
            training_started.elapsed().as_secs_f64(),
            domain.name()
        );
        Ok(Validation {
            score: own,
            alignment: Some(alignment),
            ..Validation::default()
        })
    };
    let report = train(
        &mut policy,
        &prompts,
        &reward,
        &mut validate,
        &config,
        args.checkpoint.as_deref(),
    )?;
    let seconds = training_started.elapsed().as_secs_f64();
    let step_seconds = seconds - validation_seconds.get();
    let (accuracy_after, _) = data.accuracy(&policy, &data.held_out)?;
    let alignment_after = data.alignment(&mut policy)?;

    // Steps taken by this process (a resumed run counts only its own): every step
    // rewards exactly prompts-per-step x samples rollouts.
    let per_step = config.prompts_per_step.min(prompts.len()) * config.samples_per_prompt;
    let steps_here = rollouts.get() / per_step.max(1);
    let selection_name = if args.attention {
        "MLP + attention"
    } else {
        "MLP"
    };
    if steps_here == 0 {
        println!(
            "expert `{}` ({selection_name}): the checkpoint holds a finished run of {} steps; \
             nothing was trained now",
            domain.name(),
            report.state.step
        );
    } else {
        println!(
            "expert `{}` ({selection_name}): {steps_here} steps in {seconds:.1} s \
             ({step_seconds:.1} s outside validation; {} steps in all): {:.2} optimiser \
             steps/min, {:.1} rollout tokens/s (sampling, scoring and update together), \
             greedy validation {:.1} tokens/s",
            domain.name(),
            report.state.step,
            steps_here as f64 * 60.0 / step_seconds,
            rollout_tokens.get() as f64 / step_seconds,
            greedy_tokens as f64 / greedy_seconds
        );
    }
    for event in &report.state.events {
        if !matches!(event, Event::Validated { .. }) {
            println!("  event: {}", serde_json::to_string(event)?);
        }
    }
    println!("domain        before  after  change");
    for ((d, before), (_, after)) in accuracy_before.iter().zip(&accuracy_after) {
        println!(
            "{:<12}  {before:6.3}  {after:5.3}  {:+.3}",
            d.name(),
            after - before
        );
    }
    println!(
        "alignment     {alignment_before:6.3}  {alignment_after:5.3}  {:+.3}",
        alignment_after - alignment_before
    );
    let (_, mut expert) = policy.into_parts()?;
    let scores = |accuracy: &[(Domain, f64)]| -> serde_json::Map<String, serde_json::Value> {
        accuracy
            .iter()
            .map(|(d, a)| (d.name().to_owned(), serde_json::json!(a)))
            .collect()
    };
    expert.training = serde_json::json!({
        "domain": domain.name(),
        "difficulty": difficulty,
        "trainer": config,
        "steps": report.state.step,
        "seconds": seconds,
        "held_out_accuracy_before": scores(&accuracy_before),
        "held_out_accuracy_after": scores(&accuracy_after),
        "alignment_before": alignment_before,
        "alignment_after": alignment_after,
        "events": report.state.events,
    });
    if let Some(out) = &args.out {
        expert.save(out)?;
        println!("saved {}", out.display());
    }
    Ok(())
}
