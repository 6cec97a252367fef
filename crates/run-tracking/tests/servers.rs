//! Against a real MLflow server (`mlflow server`, SQLite store, artifact serving) that
//! the test starts on a free loopback port and stops, process group and all; and
//! TensorBoard files read back by the `tensorboard` package. Both need the Python of
//! the tracking peer environment in `PHASE7_TRACKING_PYTHON` (`cargo xtask test` makes
//! it and runs these tests; plain `cargo test` lists them as ignored).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use run_tracking::mlflow::{Mlflow, MlflowConfig};
use run_tracking::{RetryConfig, RunInfo, Status, Tracker, TrackerConfig, record};

fn python() -> PathBuf {
    PathBuf::from(std::env::var("PHASE7_TRACKING_PYTHON").expect(
        "PHASE7_TRACKING_PYTHON: the tracking peer environment's python (cargo xtask test sets it)",
    ))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `mlflow server`, stopped with its whole process group on drop.
struct Server {
    child: Child,
    uri: String,
}

impl Server {
    fn start(dir: &Path) -> Self {
        let port = free_port();
        let child = Command::new(python())
            .args(["-m", "mlflow", "server", "--backend-store-uri"])
            .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
            .arg("--artifacts-destination")
            .arg(dir.join("artifacts"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--workers",
                "1",
            ])
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Self {
            child,
            uri: format!("http://127.0.0.1:{port}"),
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        let started = Instant::now();
        loop {
            if let Ok(mut r) = agent.get(&format!("{}/health", server.uri)).call()
                && r.body_mut().read_to_string().unwrap_or_default().trim() == "OK"
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "mlflow server not healthy after 180 s"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        std::thread::sleep(Duration::from_millis(500));
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

fn config(uri: &str) -> TrackerConfig {
    TrackerConfig {
        mlflow: MlflowConfig {
            tracking_uri: Some(uri.to_owned()),
            experiment: "run-tracking-test".into(),
            timeout_seconds: 10.0,
        },
        flush_ms: 50,
        finish_timeout_seconds: 60.0,
        retry: RetryConfig {
            initial_seconds: 0.1,
            max_seconds: 1.0,
            interval_seconds: 0.2,
        },
        ..TrackerConfig::local()
    }
}

fn history(client: &Mlflow, run_id: &str, key: &str) -> Vec<(u64, f64)> {
    let v = client
        .get(&format!(
            "/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key={key}&max_results=25000"
        ))
        .unwrap();
    let mut out: Vec<(u64, f64)> = v["metrics"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|x| {
                    (
                        x["step"].as_u64().unwrap_or(0),
                        x["value"].as_f64().unwrap_or(f64::NAN),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|a| a.0);
    out
}

fn run_id(dir: &Path) -> String {
    run_tracking::mlflow::load_state(dir)
        .unwrap()
        .run_id
        .unwrap()
}

#[test]
#[ignore = "needs the tracking peer environment (cargo xtask test runs it)"]
fn mlflow_server_receives_everything_once_even_after_an_outage_and_a_kill() {
    let scratch = tempfile::tempdir().unwrap();
    let server = Server::start(&scratch.path().join("server"));
    let client = Mlflow::new(&config(&server.uri).mlflow).unwrap();

    // 1. Live: records (over the 1000-per-request limit), params, summary, artifact,
    //    status; read back through the REST API.
    let live = scratch.path().join("live");
    let info = RunInfo::new("live")
        .with_group("g")
        .with_tags(&["test"])
        .with_config(serde_json::json!({"seed": 7, "search": {"population": 50}}));
    let tracker = Tracker::start(&live, info, config(&server.uri)).unwrap();
    for step in 0..1500u64 {
        tracker.log(
            step,
            &[
                ("train/loss", 1.0 / (step + 1) as f64),
                ("train/reward", step as f64),
            ],
        );
    }
    tracker.log(1500, &[("train/loss", f64::NAN)]);
    std::fs::write(scratch.path().join("plot.svg"), "<svg/>").unwrap();
    tracker
        .artifact(&scratch.path().join("plot.svg"), "report/plot.svg")
        .unwrap();
    let report = tracker.finish(Status::Finished).unwrap();
    assert_eq!(report.records, 1501);
    assert_eq!(report.remote["mlflow"], "caught up", "{report:?}");
    let id = run_id(&live);
    let run = client
        .get(&format!("/api/2.0/mlflow/runs/get?run_id={id}"))
        .unwrap();
    assert_eq!(run["run"]["info"]["status"], "FINISHED", "{run}");
    let params = run["run"]["data"]["params"].as_array().unwrap();
    assert!(
        params
            .iter()
            .any(|p| p["key"] == "search.population" && p["value"] == "50")
    );
    let tags = run["run"]["data"]["tags"].as_array().unwrap();
    for (key, value) in [
        ("group", "g"),
        ("tag.test", "true"),
        ("mlflow.runName", "live"),
    ] {
        assert!(
            tags.iter().any(|t| t["key"] == key && t["value"] == value),
            "tag {key} = {value} missing: {tags:?}"
        );
    }
    assert_eq!(params.len(), 2, "{params:?}");
    let loss = history(&client, &id, "train/loss");
    assert_eq!(loss.len(), 1501);
    assert_eq!(loss[9], (9, 0.1));
    assert!(loss[1500].1.is_nan());
    assert_eq!(history(&client, &id, "train/reward").len(), 1500);
    let artifacts = client
        .get(&format!(
            "/api/2.0/mlflow/artifacts/list?run_id={id}&path=report"
        ))
        .unwrap();
    assert!(
        artifacts.to_string().contains("report/plot.svg"),
        "{artifacts}"
    );

    // 2. The server unreachable for a whole run: training is not held up, nothing is
    //    lost, and `sync` later sends everything exactly once.
    let offline = scratch.path().join("offline");
    let down = config(&format!("http://127.0.0.1:{}", free_port()));
    let tracker = Tracker::start(&offline, RunInfo::new("offline"), down).unwrap();
    let started = Instant::now();
    for step in 0..500u64 {
        tracker.log(step, &[("x", step as f64)]);
    }
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "log blocked"
    );
    let report = tracker.finish(Status::Finished).unwrap();
    assert!(
        report.remote["mlflow"].contains("run-tracking sync"),
        "{report:?}"
    );
    let sync = |dir: &Path| {
        run_tracking::sync(dir, &config(&server.uri), 3)
            .unwrap()
            .mlflow
            .unwrap()
    };
    let first = sync(&offline);
    assert_eq!((first.records, first.caught_up), (500, true));
    let again = sync(&offline);
    assert_eq!((again.records, again.metrics, again.artifacts), (0, 0, 0));
    let x = history(&client, &run_id(&offline), "x");
    assert_eq!(x.len(), 500);
    assert_eq!(x[499], (499, 499.0));
    // A state file rolled back (as if killed after the server accepted a batch but
    // before the state was saved): the re-sent batch is not counted twice.
    let state_path = offline.join("sync/mlflow.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    state["offset"] = 0.into();
    std::fs::write(&state_path, state.to_string()).unwrap();
    sync(&offline);
    assert_eq!(history(&client, &run_id(&offline), "x").len(), 500);

    // 3. A process logging at a high rate is SIGKILLed: every record it logged more
    //    than a second before is in the JSONL, and `sync` sends them all.
    let killed = scratch.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_run-tracking"))
        .args(["bench"])
        .arg(&killed)
        .args([
            "--seconds",
            "60",
            "--metrics-per-call",
            "2",
            "--rate",
            "4000",
            "--progress",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen: Vec<(u64, Instant)> = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let line = lines.next().unwrap().unwrap();
        if let Some(n) = line.strip_prefix("logged ") {
            seen.push((n.parse().unwrap(), Instant::now()));
        }
    }
    child.kill().unwrap();
    let killed_at = Instant::now();
    child.wait().unwrap();
    let safe = seen
        .iter()
        .filter(|(_, t)| killed_at.duration_since(*t) > Duration::from_secs(1))
        .map(|(n, _)| *n)
        .max()
        .unwrap();
    let records = record::read_from(&killed.join("metrics.jsonl"), 0).unwrap();
    assert!(
        records.len() as u64 >= safe,
        "{} records in the JSONL, {safe} logged more than a second before the kill",
        records.len()
    );
    for (i, (r, _)) in records.iter().enumerate() {
        assert_eq!(r.seq, i as u64);
    }
    let report = run_tracking::sync(&killed, &config(&server.uri), 3)
        .unwrap()
        .mlflow
        .unwrap();
    assert_eq!(report.records, records.len() as u64);
    assert_eq!(
        history(&client, &run_id(&killed), "bench/metric_0").len(),
        records.len()
    );
}

#[test]
#[ignore = "needs the tracking peer environment (cargo xtask test runs it)"]
fn credentials_never_reach_files_output_or_errors() {
    let scratch = tempfile::tempdir().unwrap();
    let run = scratch.path().join("run");
    let tracker = Tracker::start(&run, RunInfo::new("r"), TrackerConfig::local()).unwrap();
    tracker.log(0, &[("a", 1.0)]);
    tracker.finish(Status::Finished).unwrap();
    let secret = "s3cret-token-value-1234";
    // The server down: an error message; then up: a successful sync.
    let down = format!("http://127.0.0.1:{}", free_port());
    let server = Server::start(&scratch.path().join("server"));
    let mut outputs = String::new();
    for uri in [&down, &server.uri] {
        let out = Command::new(env!("CARGO_BIN_EXE_run-tracking"))
            .args(["sync"])
            .arg(&run)
            .args(["--mlflow-uri", uri, "--attempts", "1", "--no-wandb"])
            .env("MLFLOW_TRACKING_TOKEN", secret)
            .output()
            .unwrap();
        outputs.push_str(&String::from_utf8_lossy(&out.stdout));
        outputs.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    assert!(outputs.contains("run-tracking: mlflow:"), "{outputs}");
    assert!(outputs.contains("everything is on the server"), "{outputs}");
    // A URI with credentials in it is refused without echoing them.
    let out = Command::new(env!("CARGO_BIN_EXE_run-tracking"))
        .args(["sync"])
        .arg(&run)
        .args([
            "--mlflow-uri",
            &format!("http://user:{secret}@127.0.0.1:1"),
            "--no-wandb",
        ])
        .output()
        .unwrap();
    outputs.push_str(&String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success());
    assert!(!outputs.contains(secret), "{outputs}");
    let mut files = Vec::new();
    let mut stack = vec![run.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 4);
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(secret),
            "{} holds the token",
            file.display()
        );
    }
}

#[test]
#[ignore = "needs the tracking peer environment (cargo xtask test runs it)"]
fn tensorboard_reads_the_event_files_back() {
    let scratch = tempfile::tempdir().unwrap();
    let run = scratch.path().join("run");
    let tracker = Tracker::start(&run, RunInfo::new("tb"), TrackerConfig::local()).unwrap();
    for step in 0..12_000u64 {
        tracker.log(
            step,
            &[
                ("stage2/reward_mean", step as f64 * 0.25),
                ("stage3/hypervolume", 0.5),
            ],
        );
    }
    tracker.finish(Status::Finished).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/read_tensorboard.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(run.join("tensorboard"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reward = &read["stage2/reward_mean"];
    assert_eq!(reward["count"], 12_000, "{read}");
    assert_eq!(reward["first"], serde_json::json!([0, 0.0]));
    assert_eq!(reward["last"], serde_json::json!([11_999, 2999.75]));
    assert_eq!(read["stage3/hypervolume"]["count"], 12_000);
}
