//! The Slurm executor: units as a job array (`sbatch --array`), followed with
//! `squeue` (and `sacct` where accounting exists, for the state's name), cancelled
//! with `scancel` on Ctrl-C, and resubmitted a bounded number of times when a task
//! ends without its stage done (failed, cancelled, preempted, timed out). The job
//! script is written into the run directory (`slurm/units.sbatch`) from the settings
//! in `executor.slurm`; each task runs `phase7 stage NAME --run RUN`, so the run
//! directory must be on a filesystem every node sees.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::executor::THREADS_ENV;
use crate::run::RunDir;
use crate::stages::Log;
use crate::{Error, Result};

/// The job script for `stages` (task `i` runs `stages[i]`).
pub fn job_script(
    run: &RunDir,
    config: &Config,
    binary: &Path,
    stages: &[String],
) -> Result<String> {
    let s = &config.executor.slurm;
    let root = run.root.canonicalize().map_err(|e| Error::Io {
        path: run.root.clone(),
        message: e.to_string(),
    })?;
    let quote = |text: &str| format!("'{}'", text.replace('\'', r"'\''"));
    let name = root
        .file_name()
        .map_or("run".into(), |n| n.to_string_lossy().into_owned());
    let mut lines = vec![
        "#!/bin/bash".to_owned(),
        format!(
            "#SBATCH --job-name=phase7-{}",
            name.replace(|c: char| c.is_whitespace(), "-")
        ),
        format!("#SBATCH --output={}/slurm/%A_%a.out", root.display()),
        format!("#SBATCH --time={}", s.time),
        format!("#SBATCH --cpus-per-task={}", s.cpus_per_task),
        "#SBATCH --ntasks=1".to_owned(),
    ];
    if let Some(p) = &s.partition {
        lines.push(format!("#SBATCH --partition={p}"));
    }
    if let Some(a) = &s.account {
        lines.push(format!("#SBATCH --account={a}"));
    }
    if s.gpus_per_task > 0 {
        lines.push(format!("#SBATCH --gpus-per-task={}", s.gpus_per_task));
    }
    if let Some(m) = &s.mem {
        lines.push(format!("#SBATCH --mem={m}"));
    }
    for extra in &s.extra {
        lines.push(format!("#SBATCH {extra}"));
    }
    lines.push("set -euo pipefail".into());
    for (key, value) in &s.env {
        lines.push(format!("export {key}={}", quote(value)));
    }
    let threads = match config.executor.threads_per_task {
        0 => s.cpus_per_task as usize,
        n => n,
    };
    lines.push(format!("export {THREADS_ENV}={threads}"));
    lines.push(format!(
        "STAGES=({})",
        stages
            .iter()
            .map(|s| quote(s))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    lines.push(format!(
        "exec {} stage \"${{STAGES[$SLURM_ARRAY_TASK_ID]}}\" --run {}",
        quote(&binary.display().to_string()),
        quote(&root.display().to_string())
    ));
    Ok(lines.join("\n") + "\n")
}

fn slurm_command(program: &str, args: &[String]) -> Result<String> {
    let output = Command::new(program).args(args).output().map_err(|e| {
        Error::Input(format!(
            "cannot run `{program}` (is Slurm installed and on the PATH?): {e}"
        ))
    })?;
    if !output.status.success() {
        return Err(Error::Input(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Array task ids of `job` still queued or running.
fn queued_tasks(job: &str) -> Result<Vec<usize>> {
    let text = slurm_command(
        "squeue",
        &[
            "--noheader".into(),
            "--array".into(),
            "--jobs".into(),
            job.into(),
            "--format=%i".into(),
        ],
    )
    // A job that has left the queue entirely makes some squeue versions fail with
    // "Invalid job id": nothing is queued.
    .or_else(|e| {
        if e.to_string().contains("Invalid job id") {
            Ok(String::new())
        } else {
            Err(e)
        }
    })?;
    Ok(text
        .lines()
        .filter_map(|l| l.trim().rsplit_once('_'))
        .filter_map(|(_, task)| task.parse().ok())
        .collect())
}

/// `sacct`'s state of each array task, where accounting is on (else empty).
fn task_states(job: &str) -> BTreeMap<usize, String> {
    let Ok(text) = slurm_command(
        "sacct",
        &[
            "--noheader".into(),
            "--parsable2".into(),
            "--jobs".into(),
            job.into(),
            "--format=JobID,State".into(),
        ],
    ) else {
        return BTreeMap::new();
    };
    text.lines()
        .filter_map(|l| l.split_once('|'))
        .filter_map(|(id, state)| {
            let task = id.split_once('_')?.1;
            Some((
                task.parse().ok()?,
                state.split_whitespace().next()?.to_owned(),
            ))
        })
        .collect()
}

/// Runs `stages` as a Slurm job array until each is done, resubmitting tasks that end
/// without their stage done at most `max_retries` times.
pub fn run_array(run: &RunDir, config: &Config, stages: &[String], log: Log<'_>) -> Result<()> {
    let executor = &config.executor;
    let binary = executor.binary()?;
    let binary = binary.canonicalize().unwrap_or(binary);
    let script = job_script(run, config, &binary, stages)?;
    let dir = run.root.join("slurm");
    std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
        path: dir.clone(),
        message: e.to_string(),
    })?;
    let script_path = dir.join("units.sbatch");
    bitnet_dequant::io::write_atomic(&script_path, script.as_bytes()).map_err(|e| Error::Io {
        path: script_path.clone(),
        message: e.to_string(),
    })?;
    let interrupted = interrupt_flag();
    let mut attempts = vec![0u32; stages.len()];
    let mut pending: Vec<usize> = (0..stages.len()).collect();
    let started = Instant::now();
    while !pending.is_empty() {
        let array = pending
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let job = slurm_command(
            "sbatch",
            &[
                "--parsable".into(),
                format!("--array={array}"),
                script_path.display().to_string(),
            ],
        )?;
        let job = job.trim().split(';').next().unwrap_or_default().to_owned();
        log(&format!(
            "executor: Slurm job {job}, array tasks {array} ({})",
            pending
                .iter()
                .map(|&i| stages[i].as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let mut waiting: Vec<usize> = pending.clone();
        let mut failed = Vec::new();
        while !waiting.is_empty() {
            if interrupted.load(Ordering::SeqCst) {
                let _ = slurm_command("scancel", std::slice::from_ref(&job));
                return Err(Error::Input(format!(
                    "interrupted: Slurm job {job} cancelled; `phase7 resume {}` continues",
                    run.root.display()
                )));
            }
            std::thread::sleep(Duration::from_secs_f64(executor.slurm.poll_seconds));
            let queued = queued_tasks(&job)?;
            let left: Vec<usize> = waiting
                .iter()
                .copied()
                .filter(|t| !queued.contains(t))
                .collect();
            if left.is_empty() {
                continue;
            }
            let states = task_states(&job);
            for task in left {
                waiting.retain(|&t| t != task);
                let stage = &stages[task];
                if crate::is_stage_done(run, config, stage)? {
                    log(&format!(
                        "executor: {stage} (task {job}_{task}) done after {:.1} s",
                        started.elapsed().as_secs_f64()
                    ));
                } else {
                    let state = states.get(&task).cloned().unwrap_or_else(|| "ended".into());
                    log(&format!(
                        "executor: {stage} (task {job}_{task}) {state} without finishing; output in {}",
                        dir.join(format!("{job}_{task}.out")).display()
                    ));
                    failed.push(task);
                }
            }
        }
        pending.clear();
        for task in failed {
            attempts[task] += 1;
            if attempts[task] > executor.max_retries {
                return Err(Error::Input(format!(
                    "stage {} did not finish in {} Slurm submissions; see {}; `phase7 resume {}` continues",
                    stages[task],
                    attempts[task],
                    dir.display(),
                    run.root.display()
                )));
            }
            log(&format!(
                "executor: resubmitting {} ({} of {} retries)",
                stages[task], attempts[task], executor.max_retries
            ));
            pending.push(task);
        }
    }
    Ok(())
}

/// A flag raised by Ctrl-C (SIGINT) or SIGTERM, so a submitted job can be cancelled
/// before this process ends.
fn interrupt_flag() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let raised = Arc::clone(&flag);
        // A second Ctrl-C while cancelling still ends the process (ctrlc's default).
        let _ = ctrlc::set_handler(move || raised.store(true, Ordering::SeqCst));
        flag
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_script_carries_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(&dir.path().join("my run")).unwrap();
        let mut config = Config::default();
        config.executor.slurm.partition = Some("gpu".into());
        config.executor.slurm.gpus_per_task = 1;
        config
            .executor
            .slurm
            .env
            .insert("LD_LIBRARY_PATH".into(), "/opt/torch lib".into());
        let script = job_script(
            &run,
            &config,
            Path::new("/opt/bin/phase7"),
            &["expert-0".into(), "expert-1".into()],
        )
        .unwrap();
        assert!(script.starts_with("#!/bin/bash\n"));
        for line in [
            "#SBATCH --partition=gpu",
            "#SBATCH --gpus-per-task=1",
            "#SBATCH --time=02:00:00",
            "export LD_LIBRARY_PATH='/opt/torch lib'",
            "export PHASE7_THREADS=1",
            "STAGES=('expert-0' 'expert-1')",
            "exec '/opt/bin/phase7' stage \"${STAGES[$SLURM_ARRAY_TASK_ID]}\" --run '",
        ] {
            assert!(script.contains(line), "{line}\n{script}");
        }
        assert!(
            script.contains("#SBATCH --job-name=phase7-my-run"),
            "{script}"
        );
    }
}
