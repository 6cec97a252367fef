//! The `processes` executor (each expert a `phase7 stage` process, two at once) gives
//! byte-identical experts, mixture and handoff to the local one; a unit whose process
//! dies is started again.

use phase7::executor::ExecutorKind;
use phase7::run::RunDir;
use phase7::run_pipeline;

mod common;
use common::{assert_same, tiny_config};

/// `phase7 run` in its own process (as the kill tests do: the self-test's memory
/// criterion reads this process's peak memory, which a shared test process would mix).
fn run_cli(config: &phase7::Config, dir: &std::path::Path, name: &str) -> RunDir {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config.to_toml().unwrap()).unwrap();
    let root = dir.join(name);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_phase7"))
        .args(["run", "--config"])
        .arg(&path)
        .arg("--run-dir")
        .arg(&root)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    std::fs::write(dir.join(format!("{name}.log")), &stderr).unwrap();
    RunDir::open(&root).unwrap()
}

#[test]
fn processes_give_the_local_executors_results() {
    let dir = tempfile::tempdir().unwrap();
    // libtorch's CPU reductions depend on the thread count (expert 1 differed at 2
    // threads locally against 1 per process): identical results need the same
    // `threads_per_task` everywhere.
    let mut config = tiny_config();
    config.executor.threads_per_task = 1;
    let local = run_cli(&config, dir.path(), "local");
    config.executor.kind = ExecutorKind::Processes;
    config.executor.workers = 2;
    config.executor.binary = Some(env!("CARGO_BIN_EXE_phase7").into());
    let spread = run_cli(&config, dir.path(), "spread");
    let lines = std::fs::read_to_string(dir.path().join("spread.log")).unwrap();
    assert!(
        lines.contains("worker processes, 1 threads each"),
        "{lines}"
    );
    assert!(lines.contains("[expert-0] "), "{lines}");
    assert_same(&local.root, &spread.root, "processes");
    // The units' metrics reach the pipeline's run, as with the local executor.
    let metrics =
        std::fs::read_to_string(spread.root.join("tracking/pipeline/metrics.jsonl")).unwrap();
    assert!(metrics.contains("stage2/expert-0/step/reward_mean"));
}

#[test]
fn a_unit_that_dies_is_started_again() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(&dir.path().join("run")).unwrap();
    // A wrapper that kills the first attempt of expert-0 before it starts.
    let marker = dir.path().join("first-attempt-done");
    let wrapper = dir.path().join("phase7-flaky");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$2\" = expert-0 ] && [ ! -e '{m}' ]; then touch '{m}'; kill -9 $$; fi\nexec '{bin}' \"$@\"\n",
            m = marker.display(),
            bin = env!("CARGO_BIN_EXE_phase7")
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut config = tiny_config();
    config.executor.kind = ExecutorKind::Processes;
    config.executor.binary = Some(wrapper);
    let mut lines = Vec::new();
    run_pipeline(&run, &config, &mut |l: &str| lines.push(l.to_owned())).unwrap();
    assert!(marker.exists());
    assert!(
        lines
            .iter()
            .any(|l| l.contains("expert-0 failed") && l.contains("starting it again")),
        "{lines:#?}"
    );
    assert!(run.root.join("export/handoff/handoff.json").is_file());
}
