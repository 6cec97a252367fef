//! The phase7 orchestrator: one command from a Phase 6 model to a Phase 8 handoff.
//!
//! A run lives in a run directory ([`run::RunDir`]): `config.toml`, `manifest.json`
//! and one folder per stage. [`run_pipeline`] runs the stages in order, skipping each
//! whose configuration and inputs are unchanged and whose outputs are intact, so an
//! interrupted run continues where it stopped:
//!
//! 1. `handoff` (R1): the Phase 6 handoff's fields, what is missing;
//! 2. `dequantize` (R2): float32 checkpoint and its top-1 agreement with the quantized
//!    forward (at least 99%, else the run stops);
//! 3. `profile`, `plan`, `data` (stage 1): the capability profile, the expert plan from
//!    policy-gradient similarity (the model's own measurements decide N), then a
//!    dataset spec per expert and its problems, each validated;
//! 4. `expert-K` (stage 2): each planned expert trained on its validated problems
//!    with REINFORCE + KL, the behaviour gate checking every epoch;
//! 5. `search`, `validate`, `export` (stage 3): guided NSGA-II over mixtures, the final
//!    self-test with Pareto fallback and dispatch, the Phase 8 handoff.
//!
//! Each stage reads and writes only run-directory files (and the model folder), so
//! `phase7 stage NAME --run DIR` runs it alone. Problems come from `synth-tasks`
//! (offline); paid problem generation, tracking backends and the HTML report are not
//! part of this build yet; `report.md` summarises a run from its files.
//!
//! ```
//! let config = phase7::Config::preset("quick")?;
//! assert_eq!(config.search.search.population, 24);
//! assert!(config.to_toml()?.contains("[search.search]"));
//! # Ok::<(), phase7::Error>(())
//! ```
#![doc(test(attr(deny(warnings))))]

pub mod charts;
pub mod config;
pub mod console;
pub mod executor;
pub mod report;
pub mod run;
pub mod slurm;
pub mod stages;
pub mod track;

use std::time::Instant;

pub use config::Config;
use run::RunDir;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        message: String,
    },
    /// Settings that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Inputs that cannot be used.
    #[error("{0}")]
    Input(String),
    /// A budget ran out.
    #[error("budget exhausted: {0}")]
    Budget(String),
    /// A stage's library failed.
    #[error(transparent)]
    SelfEval(#[from] self_eval::Error),
    /// The language model failed.
    #[error(transparent)]
    Lm(#[from] lm::Error),
    /// SVF failed.
    #[error(transparent)]
    Svf(#[from] svf::Error),
    /// A behaviour gate failed.
    #[error(transparent)]
    Gate(#[from] eudaimonia_gate::Error),
    /// NSGA-II failed.
    #[error(transparent)]
    Search(#[from] nsga2::Error),
    /// libtorch failed.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// Run tracking failed (a local file; remote sinks never fail a run).
    #[error(transparent)]
    Tracking(#[from] run_tracking::Error),
}

/// This crate's result.
pub type Result<T> = std::result::Result<T, Error>;

/// The stages of a run for `experts` planned experts, in order.
pub fn stage_names(experts: usize) -> Vec<String> {
    let mut names: Vec<String> = ["handoff", "dequantize", "profile", "plan", "data"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    names.extend((0..experts).map(stages::expert_stage));
    names.extend(
        ["search", "validate", "export"]
            .iter()
            .map(|s| (*s).to_owned()),
    );
    names
}

/// The configuration slice and input paths a stage depends on.
fn stage_inputs(
    run: &RunDir,
    config: &Config,
    stage: &str,
) -> Result<(serde_json::Value, Vec<std::path::PathBuf>)> {
    let value =
        |v: serde_json::Result<serde_json::Value>| v.map_err(|e| Error::Config(e.to_string()));
    let model = config.model.path.clone();
    let float = stages::float_model_dir(run);
    let dir = |s: &str| run.stage_dir(s);
    let seed = config.seed;
    // How problems are shown and where the model runs change every measurement.
    let shown = (&config.model.prompt, config.model.device);
    Ok(match stage {
        "handoff" => {
            let beside = config.model.path.join("phase6_handoff.json");
            let handoff = config.model.handoff.clone().unwrap_or(beside);
            (
                value(serde_json::to_value(&config.model))?,
                vec![handoff].into_iter().filter(|p| p.is_file()).collect(),
            )
        }
        "dequantize" => (
            value(serde_json::to_value((
                &config.model,
                &config.dequantize,
                seed,
            )))?,
            std::iter::once(model)
                .chain(config.model.fallback.clone())
                .collect(),
        ),
        "profile" => (
            value(serde_json::to_value((&config.profile, shown, seed)))?,
            vec![float, model.join("recipe.json")]
                .into_iter()
                .filter(|p| p.exists())
                .collect(),
        ),
        "plan" => (
            value(serde_json::to_value((
                &config.planner,
                &config.training.expert,
                shown,
                seed,
            )))?,
            vec![float, dir("profile")],
        ),
        "data" => {
            let mut inputs = vec![float, dir("profile"), dir("plan")];
            if config.data.source == crate::config::DataSource::File
                && let Some(file) = &config.data.file
            {
                inputs.push(file.clone());
            }
            (
                value(serde_json::to_value((
                    &config.data,
                    &config.training.expert,
                    config.budget.usd,
                    shown,
                    seed,
                )))?,
                inputs,
            )
        }
        "search" | "validate" | "export" => {
            let mut inputs = vec![float, dir("profile"), dir("plan")];
            let experts = stages::roles(run)?.len();
            inputs.extend((0..experts).map(|k| dir(&stages::expert_stage(k))));
            if stage != "search" {
                inputs.push(dir("search"));
            }
            if stage == "export" {
                inputs.push(dir("validate"));
            }
            (
                value(serde_json::to_value((
                    &config.search,
                    &config.self_test,
                    shown,
                    seed,
                )))?,
                inputs,
            )
        }
        expert if expert.starts_with("expert-") => (
            value(serde_json::to_value((&config.training, shown, seed)))?,
            vec![float, dir("profile"), dir("plan"), dir("data")],
        ),
        other => return Err(Error::Input(format!("unknown stage `{other}`"))),
    })
}

/// Runs one stage unless it is already done with the same key; returns whether it ran.
/// Its metrics go to the run's `tracking/stage-NAME/`.
pub fn run_stage(run: &RunDir, config: &Config, stage: &str, log: stages::Log<'_>) -> Result<bool> {
    let tracker = track::start(
        &run.root.join("tracking").join(format!("stage-{stage}")),
        run,
        config,
    )?;
    let result = run_stage_tracked(run, config, stage, &mut tee(&tracker, log), &tracker);
    finish_tracking(tracker, result.is_ok(), log)?;
    result
}

/// `log`, with every line but progress also kept as the tracked run's console output.
fn tee<'a>(tracker: &'a run_tracking::Tracker, log: stages::Log<'a>) -> impl FnMut(&str) + 'a {
    move |line: &str| {
        if !line.starts_with("progress ") {
            tracker.console(line);
        }
        log(line);
    }
}

fn finish_tracking(tracker: run_tracking::Tracker, ok: bool, log: stages::Log<'_>) -> Result<()> {
    let dir = tracker.dir().to_path_buf();
    let status = if ok {
        run_tracking::Status::Finished
    } else {
        run_tracking::Status::Failed
    };
    let report = tracker.finish(status)?;
    for (sink, outcome) in &report.remote {
        log(&format!("tracking: {sink}: {outcome}"));
    }
    log(&format!(
        "tracking: {} records in {}",
        report.records,
        dir.join(run_tracking::METRICS_FILE).display()
    ));
    Ok(())
}

/// Whether `stage` is done with the key its configuration and inputs give now.
pub fn is_stage_done(run: &RunDir, config: &Config, stage: &str) -> Result<bool> {
    let (slice, inputs) = stage_inputs(run, config, stage)?;
    let input_refs: Vec<&std::path::Path> = inputs.iter().map(|p| p.as_path()).collect();
    let key = run.stage_key(stage, &slice, &input_refs)?;
    run.is_done(stage, &key)
}

/// [`run_stage`] logging to `tracker`.
pub fn run_stage_tracked(
    run: &RunDir,
    config: &Config,
    stage: &str,
    log: stages::Log<'_>,
    tracker: &run_tracking::Tracker,
) -> Result<bool> {
    let (slice, inputs) = stage_inputs(run, config, stage)?;
    let input_refs: Vec<&std::path::Path> = inputs.iter().map(|p| p.as_path()).collect();
    let key = run.stage_key(stage, &slice, &input_refs)?;
    if run.is_done(stage, &key)? {
        log(&format!("{stage}: unchanged, skipped"));
        return Ok(false);
    }
    log(&format!("{stage}: started"));
    let started = Instant::now();
    let dir = run.clear_stage(stage)?;
    match stage {
        "handoff" => stages::check_handoff(config, &dir, log)?,
        "dequantize" => stages::dequantize(config, &dir, log)?,
        "profile" => stages::profile_stage(run, config, &dir, log)?,
        "plan" => stages::plan_stage(run, config, &dir, log)?,
        "data" => stages::data_stage(run, config, &dir, log)?,
        "search" => stages::search_stage(run, config, &dir, log)?,
        "validate" => stages::validate_stage(run, config, &dir, log)?,
        "export" => stages::export_stage(run, config, &dir, log)?,
        expert => {
            let k: usize = expert
                .strip_prefix("expert-")
                .and_then(|k| k.parse().ok())
                .ok_or_else(|| Error::Input(format!("unknown stage `{expert}`")))?;
            let trainer = &config.training.expert.trainer;
            let total = trainer.epochs * trainer.steps_per_epoch;
            // Both the stage and the step observer write lines; never at once.
            let log = std::cell::RefCell::new(&mut *log);
            let mut track_step = track::step_logger(tracker, k);
            let mut on_step = |m: &reinforce_kl::StepMetrics| {
                track_step(m);
                (log.borrow_mut())(&console::progress_line(stage, m.step + 1, total));
            };
            let mut stage_log = |line: &str| (log.borrow_mut())(line);
            stages::train_stage(run, config, k, &dir, &mut stage_log, &mut on_step)?
        }
    }
    let record = run.finish(stage, key, started.elapsed().as_secs_f64())?;
    track::log_stage(tracker, run, stage, record.seconds, record.cost_usd);
    log(&format!(
        "{stage}: done in {:.1} s ({} files)",
        record.seconds,
        record.outputs.len()
    ));
    Ok(true)
}

/// Runs every stage in order (skipping finished ones) within the wall-time budget.
pub fn run_pipeline(run: &RunDir, config: &Config, log: stages::Log<'_>) -> Result<()> {
    config.check()?;
    config.check_model()?;
    let tracker = track::start(&run.root.join("tracking").join("pipeline"), run, config)?;
    let result = pipeline_tracked(run, config, log, &tracker);
    finish_tracking(tracker, result.is_ok(), log)?;
    result
}

fn pipeline_tracked(
    run: &RunDir,
    config: &Config,
    log: stages::Log<'_>,
    tracker: &run_tracking::Tracker,
) -> Result<()> {
    let mut console = tee(tracker, log);
    let log: stages::Log<'_> = &mut console;
    let started = Instant::now();
    let budget = config.budget.wall_minutes * 60.0;
    let mut index = 0;
    loop {
        // The expert stages are known once the plan exists.
        let experts = if run.stage_dir("plan").join("plan.json").is_file() {
            stages::roles(run)?.len()
        } else {
            0
        };
        let names = stage_names(experts);
        let Some(stage) = names.get(index) else {
            break;
        };
        if started.elapsed().as_secs_f64() > budget {
            return Err(Error::Budget(format!(
                "{:.0} of {:.0} wall-clock minutes spent before stage `{stage}`; `phase7 resume` continues with a larger budget.wall_minutes",
                started.elapsed().as_secs_f64() / 60.0,
                config.budget.wall_minutes
            )));
        }
        if stage.starts_with("expert-") {
            // Stage 2: every expert at once, as the executor spreads them.
            let experts: Vec<String> = names
                .iter()
                .filter(|n| n.starts_with("expert-"))
                .cloned()
                .collect();
            executor::run_units(run, config, &experts, log, tracker)?;
            index += experts.len();
            continue;
        }
        run_stage_tracked(run, config, stage, log, tracker)?;
        index += 1;
    }
    report::write_report(run)?;
    log(&format!(
        "report: {} and {}",
        run.root.join("report.md").display(),
        run.root.join("report.html").display()
    ));
    Ok(())
}
