//! The Slurm executor on a real cluster (`cargo xtask test --slurm` brings up a
//! one-node one on this machine; ignored in the default suite). Each expert is an array
//! task running `phase7 stage expert-K`; the run's artifacts equal the local
//! executor's, also when a task is cancelled with `scancel` mid-run and resubmitted.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use phase7::Config;
use phase7::executor::ExecutorKind;

mod common;
use common::{assert_same, tiny_config};

fn config(kind: ExecutorKind) -> Config {
    let mut config = tiny_config();
    // Enough training that a task can be caught running.
    config.training.expert.trainer.epochs = 3;
    config.training.expert.trainer.patience = 3;
    config.executor.kind = kind;
    config.executor.threads_per_task = 1;
    config.executor.binary = Some(env!("CARGO_BIN_EXE_phase7").into());
    config.executor.slurm.poll_seconds = 0.5;
    config
}

fn write_config(config: &Config, dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config.to_toml().unwrap()).unwrap();
    path
}

fn run(config: &Config, dir: &Path, name: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_phase7"))
        .args(["run", "--config"])
        .arg(write_config(config, dir, name))
        .arg("--run-dir")
        .arg(dir.join(name))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    stderr
}

#[test]
#[ignore = "needs a Slurm cluster: cargo xtask test --slurm"]
fn slurm_gives_the_local_executors_artifacts() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    run(&config(ExecutorKind::Local), dir.path(), "local");
    let log = run(&config(ExecutorKind::Slurm), dir.path(), "slurm");
    assert!(log.contains("executor: Slurm job"), "{log}");
    assert!(dir.path().join("slurm/slurm/units.sbatch").is_file());
    assert_same(
        &dir.path().join("local"),
        &dir.path().join("slurm"),
        "slurm",
    );
}

#[test]
#[ignore = "needs a Slurm cluster: cargo xtask test --slurm"]
fn a_task_cancelled_mid_run_is_resubmitted() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    run(&config(ExecutorKind::Local), dir.path(), "local");
    let config_path = write_config(&config(ExecutorKind::Slurm), dir.path(), "slurm");
    let mut child = Command::new(env!("CARGO_BIN_EXE_phase7"))
        .args(["run", "--config"])
        .arg(&config_path)
        .arg("--run-dir")
        .arg(dir.path().join("slurm"))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    let mut cancelled = None;
    for line in lines.lines().map_while(Result::ok) {
        seen.push(line.clone());
        if cancelled.is_some() {
            continue;
        }
        let Some(job) = line
            .split("executor: Slurm job ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
        else {
            continue;
        };
        // Wait until task 0 runs, then cancel it.
        let task = format!("{job}_0");
        let started = Instant::now();
        loop {
            let queue = Command::new("squeue")
                .args(["--noheader", "--array", "--jobs", job, "--format=%i %t"])
                .output()
                .unwrap();
            let queue = String::from_utf8_lossy(&queue.stdout).into_owned();
            if queue.lines().any(|l| l.trim() == format!("{task} R")) {
                let status = Command::new("scancel").arg(&task).status().unwrap();
                assert!(status.success());
                cancelled = Some(task.clone());
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "task {task} never ran: {queue}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let status = child.wait().unwrap();
    let log = seen.join("\n");
    assert!(status.success(), "{log}");
    assert!(cancelled.is_some(), "{log}");
    assert!(log.contains("resubmitting expert-0"), "{log}");
    assert_same(
        &dir.path().join("local"),
        &dir.path().join("slurm"),
        "slurm after scancel",
    );
}

#[test]
#[ignore = "needs a Slurm cluster: cargo xtask test --slurm"]
fn ctrl_c_cancels_the_job() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let config_path = write_config(&config(ExecutorKind::Slurm), dir.path(), "slurm");
    let mut child = Command::new(env!("CARGO_BIN_EXE_phase7"))
        .args(["run", "--config"])
        .arg(&config_path)
        .arg("--run-dir")
        .arg(dir.path().join("slurm"))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let job = loop {
        let line = lines
            .next()
            .expect("the run ended before submitting")
            .unwrap();
        seen.push(line.clone());
        if let Some(rest) = line.split("executor: Slurm job ").nth(1) {
            break rest.split(',').next().unwrap().to_owned();
        }
    };
    // SIGINT, as Ctrl-C sends.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    seen.extend(lines.map_while(Result::ok));
    let status = child.wait().unwrap();
    let log = seen.join("\n");
    assert!(!status.success(), "{log}");
    assert!(log.contains(&format!("Slurm job {job} cancelled")), "{log}");
    let queue = Command::new("squeue")
        .args(["--noheader", "--array", "--jobs", &job, "--format=%i %t"])
        .output()
        .unwrap();
    let queue = String::from_utf8_lossy(&queue.stdout).into_owned();
    assert!(
        queue
            .lines()
            .all(|l| !l.contains(" R") && !l.contains(" PD")),
        "still queued after cancel: {queue}"
    );
}
