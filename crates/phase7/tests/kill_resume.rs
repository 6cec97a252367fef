//! Kill tests: the `phase7` binary is killed with SIGKILL during profiling, during an
//! expert's training (after its first checkpoint) and during the search; `phase7 resume`
//! then finishes the run, and its experts, handoff and report data equal an
//! uninterrupted run's: every binary file byte for byte, every JSON file equal once the
//! measurements of the moment (latencies, memory, wall times, work done by this
//! process) are set aside.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::{assert_same, tiny_config};

fn phase7() -> Command {
    Command::new(env!("CARGO_BIN_EXE_phase7"))
}

fn config_file(dir: &Path) -> PathBuf {
    let mut config = tiny_config();
    // Enough epochs that a checkpoint exists before training ends.
    config.training.expert.trainer.epochs = 3;
    config.training.expert.trainer.patience = 3;
    let path = dir.join("tiny.toml");
    std::fs::write(&path, config.to_toml().unwrap()).unwrap();
    path
}

fn start(config: &Path, run: &Path) -> (Child, mpsc::Receiver<String>) {
    let mut child = phase7()
        .args(["run", "--config"])
        .arg(config)
        .arg("--run-dir")
        .arg(run)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    (child, receive)
}

/// Runs until `trigger` holds for a line or the run directory, then SIGKILLs; returns
/// the lines seen.
fn kill_when(config: &Path, run: &Path, trigger: &dyn Fn(&str, &Path) -> bool) -> Vec<String> {
    let (mut child, lines) = start(config, run);
    let started = Instant::now();
    let mut seen = Vec::new();
    loop {
        let line = lines.recv_timeout(Duration::from_millis(5));
        let fired = match &line {
            Ok(l) => {
                seen.push(l.clone());
                trigger(l, run)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => trigger("", run),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the run ended before the kill point: {seen:#?}")
            }
        };
        if fired {
            // Child::kill sends SIGKILL.
            child.kill().unwrap();
            child.wait().unwrap();
            return seen;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no kill point within 5 minutes: {seen:#?}"
        );
    }
}

fn finish(args: &[&str], run: &Path) {
    let output = phase7().args(args).arg(run).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn sigkill_during_profile_training_and_search_then_resume_gives_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path());
    let reference = dir.path().join("reference");
    finish(
        &["run", "--config", config.to_str().unwrap(), "--run-dir"],
        &reference,
    );

    // During profiling: as soon as the stage has started.
    let run = dir.path().join("killed-in-profile");
    let seen = kill_when(&config, &run, &|line, _| line.ends_with("profile: started"));
    assert!(!seen.iter().any(|l| l.contains("profile: done")));
    finish(&["resume"], &run);
    assert_same(&reference, &run, "killed during profiling");

    // During an expert's training: once its first checkpoint is on disk.
    let run = dir.path().join("killed-in-training");
    kill_when(&config, &run, &|_, run| {
        run.join(".expert-0.checkpoint").exists()
    });
    let manifest = std::fs::read_to_string(run.join("manifest.json")).unwrap();
    assert!(
        !manifest.contains("\"expert-0\""),
        "expert-0 finished before the kill"
    );
    finish(&["resume"], &run);
    assert_same(&reference, &run, "killed during training");
    // The resumed training continued from the checkpoint: it ran fewer steps itself.
    let steps = |run: &Path| {
        let m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.join("expert-0/measurements.json")).unwrap(),
        )
        .unwrap();
        m["steps_here"].as_u64().unwrap()
    };
    assert!(
        steps(&run) < steps(&reference),
        "resumed {} steps, uninterrupted {}",
        steps(&run),
        steps(&reference)
    );

    // During the search: at its first progress line.
    let run = dir.path().join("killed-in-search");
    kill_when(&config, &run, &|line, _| {
        line.contains("search: generation")
    });
    let manifest = std::fs::read_to_string(run.join("manifest.json")).unwrap();
    assert!(
        !manifest.contains("\"search\""),
        "the search finished before the kill"
    );
    finish(&["resume"], &run);
    assert_same(&reference, &run, "killed during the search");
}
