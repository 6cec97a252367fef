//! `run-tracking`: send a run directory's records to MLflow and W&B, show what it holds, or
//! measure the logging hot path.
//!
//! ```sh
//! run-tracking sync RUN_DIR [--mlflow-uri URI] [--experiment NAME] [--wandb-project P]   # idempotent
//! run-tracking show RUN_DIR
//! run-tracking bench DIR [--seconds S] [--metrics-per-call K] [--progress]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use run_tracking::{RunInfo, Status, Tracker, TrackerConfig, mlflow, record};

#[derive(Parser)]
#[command(version, about = "Run tracking: sync to MLflow, show, benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send what the run directory holds and the server has not received (the
    /// configuration, records, artifacts, the final status); safe to repeat.
    Sync {
        /// The run directory (with run.json and metrics.jsonl).
        run: PathBuf,
        /// MLflow tracking URI (default $MLFLOW_TRACKING_URI).
        #[arg(long)]
        mlflow_uri: Option<String>,
        /// MLflow experiment name.
        #[arg(long, default_value = "phase7")]
        experiment: String,
        /// W&B project (default $WANDB_PROJECT, else phase7); W&B is on when
        /// WANDB_API_KEY or ~/.netrc has a key.
        #[arg(long)]
        wandb_project: Option<String>,
        /// W&B entity (default $WANDB_ENTITY, else the key's).
        #[arg(long)]
        wandb_entity: Option<String>,
        /// Leave W&B out even when a key is found.
        #[arg(long)]
        no_wandb: bool,
        /// Attempts on retryable failures.
        #[arg(long, default_value_t = 5)]
        attempts: u32,
    },
    /// What a run directory holds and how far its upload got.
    Show {
        /// The run directory.
        run: PathBuf,
    },
    /// Log as fast as possible into DIR for a while: the calling thread's cost per
    /// scalar and the sustained scalars per second reaching the JSONL.
    Bench {
        /// A fresh directory.
        dir: PathBuf,
        /// How long to log.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Scalars per `log` call.
        #[arg(long, default_value_t = 10)]
        metrics_per_call: usize,
        /// Print `logged N` every 1000 calls (for kill tests).
        #[arg(long)]
        progress: bool,
        /// Most calls per second (0: as fast as possible).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// No TensorBoard file.
        #[arg(long)]
        no_tensorboard: bool,
    },
}

fn run() -> run_tracking::Result<()> {
    match Cli::parse().command {
        Command::Sync {
            run,
            mlflow_uri,
            experiment,
            wandb_project,
            wandb_entity,
            no_wandb,
            attempts,
        } => {
            let mut config = TrackerConfig::default();
            if mlflow_uri.is_some() {
                config.mlflow.tracking_uri = mlflow_uri;
            }
            config.mlflow.experiment = experiment;
            if let Some(project) = wandb_project {
                config.wandb.project = project;
            }
            if wandb_entity.is_some() {
                config.wandb.entity = wandb_entity;
            }
            config.wandb.enabled = !no_wandb;
            let summary = run_tracking::sync(&run, &config, attempts.max(1))?;
            let state = |caught_up: bool| {
                if caught_up {
                    "everything is on the server"
                } else {
                    "not everything is on the server yet"
                }
            };
            if let Some(r) = summary.mlflow {
                println!(
                    "{}: {} records ({} values) and {} artifacts sent to MLflow run {}; {}",
                    run.display(),
                    r.records,
                    r.metrics,
                    r.artifacts,
                    r.run_id,
                    state(r.caught_up)
                );
            }
            if let Some(r) = summary.wandb {
                println!(
                    "{}: {} history lines sent to W&B run {}; {}",
                    run.display(),
                    r.lines,
                    r.run_id,
                    state(r.caught_up)
                );
            }
        }
        Command::Show { run } => {
            let info = RunInfo::load(&run)?;
            let records = record::read_from(&run.join(run_tracking::METRICS_FILE), 0)?;
            let values: usize = records.iter().map(|(r, _)| r.metrics.len()).sum();
            let mut keys: Vec<&str> = records
                .iter()
                .flat_map(|(r, _)| r.metrics.iter().map(|(k, _)| k.as_str()))
                .collect();
            keys.sort_unstable();
            keys.dedup();
            println!(
                "run `{}` ({:?}, {} start(s)): {} records, {} values, {} distinct keys",
                info.name,
                info.status,
                info.starts,
                records.len(),
                values,
                keys.len()
            );
            let state = mlflow::load_state(&run)?;
            if let Some(id) = state.run_id {
                println!(
                    "mlflow run {id}: {} records sent, {} artifacts, status {}",
                    state.records_sent,
                    state.artifacts_sent.len(),
                    state.status_sent.as_deref().unwrap_or("not sent")
                );
            }
        }
        Command::Bench {
            dir,
            seconds,
            metrics_per_call,
            progress,
            rate,
            no_tensorboard,
        } => {
            let mut config = TrackerConfig::local();
            config.tensorboard = !no_tensorboard;
            let tracker = Tracker::start(&dir, RunInfo::new("bench"), config)?;
            let keys: Vec<String> = (0..metrics_per_call)
                .map(|k| format!("bench/metric_{k}"))
                .collect();
            let mut values: Vec<(&str, f64)> = keys.iter().map(|k| (k.as_str(), 0.0)).collect();
            let started = Instant::now();
            let mut in_log = 0.0;
            let mut calls = 0u64;
            while started.elapsed().as_secs_f64() < seconds {
                if rate > 0.0 {
                    let due = calls as f64 / rate;
                    let now = started.elapsed().as_secs_f64();
                    if due > now {
                        std::thread::sleep(std::time::Duration::from_secs_f64(due - now));
                    }
                }
                for (i, v) in values.iter_mut().enumerate() {
                    v.1 = calls as f64 + i as f64 * 0.5;
                }
                let t = Instant::now();
                tracker.log(calls, &values);
                in_log += t.elapsed().as_secs_f64();
                calls += 1;
                if progress && calls.is_multiple_of(1000) {
                    println!("logged {calls}");
                }
            }
            let logging = started.elapsed().as_secs_f64();
            let report = tracker.finish(Status::Finished)?;
            let total = started.elapsed().as_secs_f64();
            let scalars = calls as f64 * metrics_per_call as f64;
            println!(
                "{{\"calls\":{calls},\"scalars\":{scalars},\"hot_path_ns_per_scalar\":{:.1},\"scalars_per_second\":{:.0},\"records\":{},\"logging_seconds\":{logging:.3},\"drain_seconds\":{:.3}}}",
                1e9 * in_log / scalars.max(1.0),
                scalars / total,
                report.records,
                total - logging
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("run-tracking: {e}");
            ExitCode::FAILURE
        }
    }
}
