//! Kill tests: the `phase7` binary is killed with SIGKILL during profiling, during an
//! expert's training (after its first checkpoint) and during the search; `phase7 resume`
//! then finishes the run, and its experts, handoff and report data equal an
//! uninterrupted run's: every binary file byte for byte, every JSON file equal once the
//! measurements of the moment (latencies, memory, wall times, work done by this
//! process) are set aside.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::tiny_config;

/// Keys whose values measure this execution (time, latency, memory, counts of work
/// done by this process), not the run's results.
const MEASUREMENTS: &[&str] = &[
    "latency_ms",
    "latency_p95_ms",
    "latency_mean_ms",
    "peak_rss_mb",
    "vram_gb",
    "first_pass_ms",
    "switch_ms",
];

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

fn strip(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for key in MEASUREMENTS {
                map.remove(*key);
            }
            // The self-test's latency and memory criteria carry their measured value.
            if map
                .get("name")
                .and_then(|n| n.as_str())
                .is_some_and(|n| MEASUREMENTS.contains(&n) || n == "peak_memory_mb")
            {
                map.remove("value");
            }
            map.values_mut().for_each(strip);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
        _ => {}
    }
}

/// The run's result files (every stage output the manifest records, the report's
/// figures left out as they plot wall times), each as bytes or as JSON without
/// measurements.
fn results(run: &Path) -> BTreeMap<String, Result<serde_json::Value, Vec<u8>>> {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap();
    let mut out = BTreeMap::new();
    for stage in manifest["stages"].as_object().unwrap().values() {
        for file in stage["outputs"].as_object().unwrap().keys() {
            if file.ends_with("measurements.json") {
                continue;
            }
            let bytes = std::fs::read(run.join(file)).unwrap();
            let entry = if file.ends_with(".json") {
                let mut value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                strip(&mut value);
                Ok(value)
            } else {
                Err(bytes)
            };
            out.insert(file.clone(), entry);
        }
    }
    out
}

/// Where two JSON values first differ (a JSON pointer and both values).
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> Option<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x
            .iter()
            .find_map(|(k, v)| match y.get(k) {
                Some(w) => first_difference(v, w, &format!("{at}/{k}")),
                None => Some(format!("{at}/{k} missing")),
            })
            .or_else(|| (x.len() != y.len()).then(|| format!("{at}: other keys"))),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, &format!("{at}/{i}"))),
        _ => (a != b).then(|| format!("{at}: {a} vs {b}")),
    }
}

fn assert_same(reference: &Path, resumed: &Path, what: &str) {
    let (a, b) = (results(reference), results(resumed));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: different files"
    );
    for (file, value) in &a {
        let detail = match (value, &b[file]) {
            (Ok(x), Ok(y)) => first_difference(x, y, ""),
            _ => Some("bytes".to_owned()),
        };
        assert!(
            value == &b[file],
            "{what}: {file} differs from the uninterrupted run's at {detail:?}"
        );
    }
    for must in [
        "export/handoff/handoff.json",
        "export/handoff/merged/model.safetensors",
        "expert-0/expert.safetensors",
        "search/archive.json",
        "validate/self_test.json",
    ] {
        assert!(a.contains_key(must), "{must} not among the results");
    }
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
