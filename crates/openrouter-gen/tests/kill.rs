//! A `generate` process killed (SIGKILL) in the middle of a batch loses nothing it had
//! received: the re-run sends only what was not cached, and its problems are
//! byte-identical to an uninterrupted run's. Also: the CLI's offline fallback and a
//! clean stop when the budget is spent.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use openrouter_gen::client::Pricing;
use openrouter_gen::mock::{MockRequest, MockServer, problem_writer};

const PRICE: Pricing = Pricing {
    prompt: 1e-7,
    completion: 4e-7,
    request: 0.0,
};

fn write_specs(dir: &Path, n: usize) -> std::path::PathBuf {
    let path = dir.join("specs.json");
    let spec = serde_json::json!([{
        "expert_id": 0, "expert_name": "arith", "num_examples": n, "format": "a+b=",
        "topics": [{"domain": "arithmetic", "description": "sums", "difficulty": 2}],
        "special_requirements": []
    }]);
    std::fs::write(&path, spec.to_string()).unwrap();
    path
}

fn generate(
    server: &MockServer,
    specs: &Path,
    out: &Path,
    cache: &Path,
    extra: &[&str],
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_openrouter-gen"));
    command
        .args([
            "generate",
            "--source",
            "api",
            "--plain",
            "--model",
            "mock/model",
            "--concurrency",
            "2",
        ])
        .arg("--base-url")
        .arg(server.base_url())
        .arg("--specs")
        .arg(specs)
        .arg("--out")
        .arg(out)
        .arg("--cache-dir")
        .arg(cache)
        .args(extra)
        .env("OPENROUTER_API_KEY", "sk-test-kill")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

fn chats(server: &MockServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|r: &&MockRequest| r.path.ends_with("/chat/completions"))
        .count()
}

fn cache_entries(dir: &Path) -> usize {
    let Ok(shards) = std::fs::read_dir(dir) else {
        return 0;
    };
    shards
        .flatten()
        .flat_map(|s| std::fs::read_dir(s.path()).unwrap().flatten())
        .filter(|f| f.path().extension().is_some_and(|e| e == "json"))
        .count()
}

#[test]
fn killed_mid_batch_then_rerun_equals_an_uninterrupted_run() {
    let writer = problem_writer("mock/model", PRICE);
    let server = MockServer::start(move |n, request| {
        writer(n, request).with_delay(Duration::from_millis(100))
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let specs = write_specs(dir.path(), 200);
    let cache = dir.path().join("cache");

    let mut child = generate(&server, &specs, &dir.path().join("killed"), &cache, &[])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while chats(&server) < 7 {
        assert!(Instant::now() < deadline, "the child sent too few requests");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!dir.path().join("killed").join("problems_0.jsonl").exists());
    let cached = cache_entries(&cache);
    assert!(cached >= 5, "{cached}");

    let before = chats(&server);
    let rerun = generate(&server, &specs, &dir.path().join("rerun"), &cache, &[])
        .output()
        .unwrap();
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let rerun_requests = chats(&server) - before;

    let before = chats(&server);
    let full = generate(
        &server,
        &specs,
        &dir.path().join("full"),
        &dir.path().join("cache2"),
        &[],
    )
    .output()
    .unwrap();
    assert!(full.status.success());
    let full_requests = chats(&server) - before;
    assert_eq!(
        rerun_requests + cached,
        full_requests,
        "the re-run sent only what the killed run had not received"
    );
    let read = |d: &str| std::fs::read(dir.path().join(d).join("problems_0.jsonl")).unwrap();
    assert_eq!(read("rerun"), read("full"));
    assert_eq!(
        String::from_utf8(read("full")).unwrap().lines().count(),
        200
    );

    // A third run from the full cache: no request, $0.
    let before = chats(&server);
    let again = generate(&server, &specs, &dir.path().join("again"), &cache, &[])
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(chats(&server), before);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("again/report.json")).unwrap())
            .unwrap();
    assert_eq!(report["total"]["requests"], 0);
    assert_eq!(report["total"]["usd"], 0.0);
}

#[test]
fn no_key_falls_back_to_procedural_and_a_spent_budget_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let specs = write_specs(dir.path(), 50);
    let out = dir.path().join("offline");
    let offline = Command::new(env!("CARGO_BIN_EXE_openrouter-gen"))
        .args([
            "generate",
            "--plain",
            "--base-url",
            "http://127.0.0.1:9/api/v1",
        ])
        .arg("--specs")
        .arg(&specs)
        .arg("--out")
        .arg(&out)
        .env_remove("OPENROUTER_API_KEY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&offline.stderr);
    assert!(offline.status.success(), "{stderr}");
    assert!(stderr.contains("OPENROUTER_API_KEY is not set"), "{stderr}");
    let text = std::fs::read_to_string(out.join("problems_0.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 50);
    assert!(
        text.lines()
            .all(|l| l.contains("\"source\":\"synth-tasks\""))
    );

    // A budget of about two requests: a clean stop, what was made is kept.
    let server = MockServer::start(problem_writer("mock/model", PRICE)).unwrap();
    let out = dir.path().join("capped");
    let capped = generate(
        &server,
        &specs,
        &out,
        &dir.path().join("cache"),
        &["--budget-usd", "0.0015"],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&capped.stderr);
    assert!(capped.status.success(), "{stderr}");
    assert!(
        stderr.contains("stopped early") && stderr.contains("budget"),
        "{stderr}"
    );
    let kept = std::fs::read_to_string(out.join("problems_0.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!(kept > 0 && kept < 50, "{kept}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert!(report["total"]["usd"].as_f64().unwrap() <= 0.0015);
    assert!(report["stopped"].as_str().unwrap().contains("run cap"));
}
