//! Executors: how the independent units of a run (stage 2: one task per expert) are
//! spread. `local` runs them one after another in this process; `processes` runs each
//! as its own `phase7 stage NAME --run RUN` process, several at once; `slurm` submits
//! them as a Slurm job array. Units read and write only run-directory files, and each
//! owns its seed (the run's seed and its expert index), so the executor changes where
//! and when a unit runs, never what it computes: the results are byte-identical.
//!
//! Success is decided by the run directory, not by exit codes alone: a unit succeeded
//! when the manifest records its stage as done with its current key. A unit that failed
//! (or was cancelled or preempted) is started again up to `max_retries` times; a re-run
//! after any failure picks up what finished, because finished stages are skipped.

use std::collections::{BTreeMap, VecDeque};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use run_tracking::Tracker;

use crate::config::Config;
use crate::run::RunDir;
use crate::stages::Log;
use crate::{Error, Result};

/// Which executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    /// In this process, one unit after another (the default).
    #[default]
    Local,
    /// One `phase7 stage` process per unit, `workers` at once.
    Processes,
    /// A Slurm job array.
    Slurm,
}

/// How units are spread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorConfig {
    /// `local` (default), `processes` or `slurm`.
    pub kind: ExecutorKind,
    /// `processes`: units run at once. Default 2.
    pub workers: usize,
    /// Torch threads of each unit in every executor (the local one included).
    /// Default 0: libtorch's own choice (every core) locally, cores / workers for
    /// `processes`, `cpus_per_task` under Slurm. Results depend on it: libtorch's CPU
    /// reductions (the backward passes) change with the thread count, so byte-identical
    /// experts across executors need the same nonzero value everywhere.
    pub threads_per_task: usize,
    /// Times a failed unit is started again. Default 2.
    pub max_retries: u32,
    /// The `phase7` binary units run (`processes`, `slurm`). Default: this program
    /// when it is `phase7`, else `phase7` beside it or on the `PATH`.
    pub binary: Option<PathBuf>,
    /// Slurm settings.
    pub slurm: SlurmConfig,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            kind: ExecutorKind::Local,
            workers: 2,
            threads_per_task: 0,
            max_retries: 2,
            binary: None,
            slurm: SlurmConfig::default(),
        }
    }
}

/// Slurm settings (`executor.slurm`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlurmConfig {
    /// `--partition`. Default none (the cluster's default).
    pub partition: Option<String>,
    /// `--account`. Default none.
    pub account: Option<String>,
    /// `--time` of each task. Default `02:00:00`.
    pub time: String,
    /// `--cpus-per-task`. Default 1.
    pub cpus_per_task: u32,
    /// `--gpus-per-task`. Default 0.
    pub gpus_per_task: u32,
    /// `--mem` (e.g. `8G`). Default none.
    pub mem: Option<String>,
    /// Environment variables exported in each task (e.g. `LD_LIBRARY_PATH`).
    pub env: BTreeMap<String, String>,
    /// Extra `#SBATCH` lines, verbatim (e.g. `--qos=high`).
    pub extra: Vec<String>,
    /// Seconds between polls of `squeue`. Default 2.
    pub poll_seconds: f64,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        Self {
            partition: None,
            account: None,
            time: "02:00:00".into(),
            cpus_per_task: 1,
            gpus_per_task: 0,
            mem: None,
            env: BTreeMap::new(),
            extra: Vec::new(),
            poll_seconds: 2.0,
        }
    }
}

impl ExecutorConfig {
    /// Settings that cannot work.
    pub fn check(&self) -> Result<()> {
        if self.workers == 0 {
            return Err(Error::Config(
                "executor.workers is 0, expected at least 1".into(),
            ));
        }
        if self.slurm.poll_seconds.is_nan() || self.slurm.poll_seconds <= 0.0 {
            return Err(Error::Config(format!(
                "executor.slurm.poll_seconds is {}, expected a positive number",
                self.slurm.poll_seconds
            )));
        }
        for (key, value) in &self.slurm.env {
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(Error::Config(format!(
                    "executor.slurm.env: `{key}` is not a variable name"
                )));
            }
            if value.contains('\n') {
                return Err(Error::Config(format!(
                    "executor.slurm.env.{key} holds a line break"
                )));
            }
        }
        Ok(())
    }

    /// Torch threads a unit uses (0: libtorch's choice).
    pub fn threads(&self) -> usize {
        match (self.threads_per_task, self.kind) {
            (0, ExecutorKind::Processes) => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                (cores / self.workers).max(1)
            }
            (n, _) => n,
        }
    }

    /// The `phase7` binary units run.
    pub fn binary(&self) -> Result<PathBuf> {
        if let Some(path) = &self.binary {
            return Ok(path.clone());
        }
        let current = std::env::current_exe()
            .map_err(|e| Error::Input(format!("cannot find this program: {e}")))?;
        if current.file_stem().is_some_and(|s| s == "phase7") {
            return Ok(current);
        }
        let beside = current.with_file_name("phase7");
        if beside.is_file() {
            return Ok(beside);
        }
        Ok(PathBuf::from("phase7"))
    }
}

/// The environment variable a unit's process reads its thread count from.
pub const THREADS_ENV: &str = "PHASE7_THREADS";

/// Sets libtorch's thread count from [`THREADS_ENV`] when it is set (every `phase7`
/// process calls this first).
pub fn apply_thread_env() -> Result<()> {
    let Ok(value) = std::env::var(THREADS_ENV) else {
        return Ok(());
    };
    let threads: i32 = value
        .trim()
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            Error::Config(format!(
                "{THREADS_ENV} is `{value}`, expected a positive number"
            ))
        })?;
    tch::set_num_threads(threads);
    Ok(())
}

/// A way to run independent units (stages) of a run to completion.
pub trait Executor {
    /// Its name in logs.
    fn name(&self) -> &'static str;

    /// Runs every stage of `stages` (none depends on another) until each is done;
    /// their metrics reach `tracker` (the pipeline's run).
    fn run(
        &self,
        run: &RunDir,
        config: &Config,
        stages: &[String],
        log: Log<'_>,
        tracker: &Tracker,
    ) -> Result<()>;
}

/// In this process, one unit after another.
#[derive(Debug, Clone, Copy, Default)]
pub struct Local;

impl Executor for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    fn run(
        &self,
        run: &RunDir,
        config: &Config,
        stages: &[String],
        log: Log<'_>,
        tracker: &Tracker,
    ) -> Result<()> {
        let threads = config.executor.threads();
        let before = tch::get_num_threads();
        if threads > 0 {
            tch::set_num_threads(threads as i32);
        }
        let result = stages.iter().try_for_each(|stage| {
            crate::run_stage_tracked(run, config, stage, log, tracker).map(|_| ())
        });
        tch::set_num_threads(before);
        result
    }
}

/// One `phase7 stage` process per unit, `executor.workers` at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct Processes;

impl Executor for Processes {
    fn name(&self) -> &'static str {
        "processes"
    }

    fn run(
        &self,
        run: &RunDir,
        config: &Config,
        stages: &[String],
        log: Log<'_>,
        tracker: &Tracker,
    ) -> Result<()> {
        out_of_process(run, config, stages, tracker, || {
            run_processes(run, config, stages, log)
        })
    }
}

/// A Slurm job array ([`crate::slurm`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Slurm;

impl Executor for Slurm {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn run(
        &self,
        run: &RunDir,
        config: &Config,
        stages: &[String],
        log: Log<'_>,
        tracker: &Tracker,
    ) -> Result<()> {
        out_of_process(run, config, stages, tracker, || {
            crate::slurm::run_array(run, config, stages, log)
        })
    }
}

/// The executor `kind` names.
pub fn executor(kind: ExecutorKind) -> Box<dyn Executor> {
    match kind {
        ExecutorKind::Local => Box::new(Local),
        ExecutorKind::Processes => Box::new(Processes),
        ExecutorKind::Slurm => Box::new(Slurm),
    }
}

/// Units run by other processes: they read the run's `config.toml`, so it is written
/// first; their metrics are replayed into `tracker` afterwards (also after a failure).
fn out_of_process(
    run: &RunDir,
    config: &Config,
    stages: &[String],
    tracker: &Tracker,
    execute: impl FnOnce() -> Result<()>,
) -> Result<()> {
    save_config(run, config)?;
    let result = execute();
    replay_metrics(run, stages, tracker)?;
    result
}

/// A unit run in another process logged to its own `tracking/stage-NAME/`: its records
/// are logged again to the pipeline's tracker, so the pipeline's run (and its W&B or
/// MLflow run) holds stage 2 as it does with the local executor.
fn replay_metrics(run: &RunDir, stages: &[String], tracker: &Tracker) -> Result<()> {
    for stage in stages {
        let path = run
            .root
            .join("tracking")
            .join(format!("stage-{stage}"))
            .join(run_tracking::METRICS_FILE);
        if !path.is_file() {
            continue;
        }
        for (record, _) in run_tracking::record::read_from(&path, 0)? {
            tracker.log_owned(record.step, record.metrics);
        }
    }
    Ok(())
}

/// Runs the units of `stages` that are not done yet with the configured executor.
pub fn run_units(
    run: &RunDir,
    config: &Config,
    stages: &[String],
    log: Log<'_>,
    tracker: &Tracker,
) -> Result<()> {
    let mut pending = Vec::new();
    for stage in stages {
        if crate::is_stage_done(run, config, stage)? {
            log(&format!("{stage}: unchanged, skipped"));
        } else {
            pending.push(stage.clone());
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    executor(config.executor.kind).run(run, config, &pending, log, tracker)
}

/// Writes the configuration in use as the run's `config.toml` (the units read it).
pub fn save_config(run: &RunDir, config: &Config) -> Result<()> {
    let path = run.root.join("config.toml");
    let text = config.to_toml()?;
    if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    bitnet_dequant::io::write_atomic(&path, text.as_bytes()).map_err(|e| Error::Io {
        path,
        message: e.to_string(),
    })
}

/// A unit's command: `phase7 stage NAME --run RUN` with its thread count.
pub fn unit_command(binary: &Path, run: &RunDir, stage: &str, threads: usize) -> Command {
    let mut command = Command::new(binary);
    command.arg("stage").arg(stage).arg("--run").arg(&run.root);
    if threads > 0 {
        command.env(THREADS_ENV, threads.to_string());
    }
    command
}

struct Running {
    stage: String,
    attempt: u32,
    child: Child,
    started: Instant,
}

fn run_processes(run: &RunDir, config: &Config, stages: &[String], log: Log<'_>) -> Result<()> {
    let executor = &config.executor;
    let binary = executor.binary()?;
    let threads = executor.threads();
    log(&format!(
        "executor: {} units on {} worker processes, {} threads each ({})",
        stages.len(),
        executor.workers.min(stages.len()),
        if threads == 0 {
            "libtorch's choice of".to_owned()
        } else {
            threads.to_string()
        },
        binary.display()
    ));
    let mut queue: VecDeque<(String, u32)> = stages.iter().map(|s| (s.clone(), 0)).collect();
    let mut running: Vec<Running> = Vec::new();
    let (lines, received) = mpsc::channel::<String>();
    let mut failure: Option<Error> = None;
    loop {
        while failure.is_none() && running.len() < executor.workers {
            let Some((stage, attempt)) = queue.pop_front() else {
                break;
            };
            let mut command = unit_command(&binary, run, &stage, threads);
            command.stdout(Stdio::null()).stderr(Stdio::piped());
            let mut child = command
                .spawn()
                .map_err(|e| Error::Input(format!("cannot start {}: {e}", binary.display())))?;
            if let Some(stderr) = child.stderr.take() {
                let (lines, prefix) = (lines.clone(), stage.clone());
                std::thread::spawn(move || {
                    for line in std::io::BufReader::new(stderr)
                        .lines()
                        .map_while(|l| l.ok())
                    {
                        // The unit's own lines start with `[phase7] `.
                        let line = line.strip_prefix("[phase7] ").unwrap_or(&line).to_owned();
                        if lines.send(format!("[{prefix}] {line}")).is_err() {
                            break;
                        }
                    }
                });
            }
            running.push(Running {
                stage,
                attempt,
                child,
                started: Instant::now(),
            });
        }
        while let Ok(line) = received.try_recv() {
            log(&line);
        }
        if running.is_empty() {
            break;
        }
        let mut index = 0;
        while index < running.len() {
            let status = running[index]
                .child
                .try_wait()
                .map_err(|e| Error::Input(format!("cannot wait for a unit: {e}")))?;
            let Some(status) = status else {
                index += 1;
                continue;
            };
            let unit = running.swap_remove(index);
            // Let the reader thread hand over the unit's last lines.
            std::thread::sleep(Duration::from_millis(20));
            while let Ok(line) = received.try_recv() {
                log(&line);
            }
            let done = crate::is_stage_done(run, config, &unit.stage)?;
            if status.success() && done {
                log(&format!(
                    "executor: {} finished in {:.1} s",
                    unit.stage,
                    unit.started.elapsed().as_secs_f64()
                ));
            } else if unit.attempt < executor.max_retries && failure.is_none() {
                log(&format!(
                    "executor: {} failed ({status}); starting it again ({} of {} retries)",
                    unit.stage,
                    unit.attempt + 1,
                    executor.max_retries
                ));
                queue.push_back((unit.stage, unit.attempt + 1));
            } else {
                failure.get_or_insert(Error::Input(format!(
                    "stage {} failed {} times (last: {status}); its output is above; `phase7 resume {}` continues",
                    unit.stage,
                    unit.attempt + 1,
                    run.root.display()
                )));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
