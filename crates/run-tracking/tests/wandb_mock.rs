//! The W&B sink against a loopback mock of W&B's HTTP API that checks Basic auth, the
//! GraphQL bodies and the file_stream offsets, and injects 429 (with Retry-After), 503
//! and a request that never answers. History must arrive contiguous, once, across a
//! resume of the run.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use run_tracking::wandb::{ApiKey, WandbConfig};
use run_tracking::{RetryConfig, RunInfo, Status, Tracker, TrackerConfig};

const KEY: &str = "mock-key-0123456789";

#[derive(Debug, Clone)]
struct Request {
    path: String,
    authorization: String,
    body: serde_json::Value,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Status(u16),
    Hang,
}

#[derive(Default)]
struct MockState {
    /// Requests answered with 200.
    accepted: Vec<Request>,
    /// Faults still to inject, one per file_stream request.
    faults: VecDeque<Fault>,
    injected: Vec<Fault>,
    history_lines: u64,
}

struct Mock {
    url: String,
    state: Arc<Mutex<MockState>>,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<(String, String, Vec<u8>)> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let path = line.split_whitespace().nth(1)?.to_owned();
    let (mut length, mut authorization) = (0usize, String::new());
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "authorization" => authorization = value.trim().to_owned(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((path, authorization, body))
}

fn respond(stream: &mut TcpStream, status: u16, extra: &str, body: &str) {
    let reason = match status {
        200 => "OK",
        429 => "Too Many Requests",
        _ => "Error",
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

fn serve(stream: TcpStream, state: Arc<Mutex<MockState>>) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    while let Some((path, authorization, body)) = read_request(&mut reader) {
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let request = Request {
            path: path.clone(),
            authorization,
            body: body.clone(),
        };
        if path.ends_with("/file_stream") {
            let fault = state.lock().unwrap().faults.pop_front();
            match fault {
                Some(Fault::Status(code)) => {
                    state.lock().unwrap().injected.push(Fault::Status(code));
                    let extra = if code == 429 {
                        "Retry-After: 0\r\n"
                    } else {
                        ""
                    };
                    respond(&mut writer, code, extra, "{\"error\":\"injected\"}");
                    continue;
                }
                Some(Fault::Hang) => {
                    state.lock().unwrap().injected.push(Fault::Hang);
                    // Longer than the client's timeout; then the connection drops.
                    std::thread::sleep(Duration::from_millis(1500));
                    return;
                }
                None => {}
            }
            let mut s = state.lock().unwrap();
            if let Some(history) = body["files"]["wandb-history.jsonl"].as_object() {
                let lines = history["content"].as_array().map_or(0, Vec::len) as u64;
                if history["offset"].as_u64() != Some(s.history_lines) {
                    drop(s);
                    respond(&mut writer, 400, "", "{\"error\":\"offset gap\"}");
                    continue;
                }
                s.history_lines += lines;
            }
            s.accepted.push(request);
            drop(s);
            respond(&mut writer, 200, "", "{\"exitcode\":null,\"limits\":{}}");
        } else if path == "/graphql" {
            let query = body["query"].as_str().unwrap_or_default().to_owned();
            let answer = if query.contains("viewer") {
                serde_json::json!({"data": {"viewer": {"id": "u1", "entity": "mock-entity"}}})
            } else if query.contains("upsertBucket") {
                let lines = state.lock().unwrap().history_lines;
                serde_json::json!({"data": {"upsertBucket": {"bucket": {
                    "id": "b1", "name": body["variables"]["name"], "displayName": "x",
                    "project": {"id": "p", "name": "p", "entity": {"id": "e", "name": "mock-entity"}},
                    "historyLineCount": lines}, "inserted": true}}})
            } else {
                serde_json::json!({"errors": [{"message": "unknown query"}]})
            };
            state.lock().unwrap().accepted.push(request);
            respond(&mut writer, 200, "", &answer.to_string());
        } else {
            respond(&mut writer, 404, "", "{}");
        }
    }
}

impl Mock {
    fn start(faults: &[Fault]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(MockState {
            faults: faults.iter().copied().collect(),
            ..MockState::default()
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, state));
            }
        });
        Self { url, state }
    }
}

fn config(url: &str) -> TrackerConfig {
    TrackerConfig {
        wandb: WandbConfig {
            api_key: Some(ApiKey(KEY.into())),
            enabled: true,
            base_url: url.to_owned(),
            entity: None,
            project: "mock-project".into(),
            timeout_seconds: 0.5,
            lines_per_request: 100,
        },
        retry: RetryConfig {
            initial_seconds: 0.05,
            max_seconds: 0.2,
            interval_seconds: 0.1,
        },
        finish_timeout_seconds: 30.0,
        system_interval_seconds: 0.1,
        ..TrackerConfig::local()
    }
}

#[test]
fn history_arrives_contiguous_and_once_through_faults_and_a_resume() {
    let mock = Mock::start(&[Fault::Status(429), Fault::Status(503), Fault::Hang]);
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let info = || {
        RunInfo::new("mock run")
            .with_group("g")
            .with_tags(&["t1"])
            .with_config(serde_json::json!({"lr": 0.01, "search": {"population": 50}}))
    };
    let tracker = Tracker::start(&run, info(), config(&mock.url)).unwrap();
    tracker.console("first start");
    for step in 0..250u64 {
        tracker.log(step, &[("train/loss", 1.0 / (step + 1) as f64)]);
    }
    std::thread::sleep(Duration::from_millis(350));
    tracker.console("logged 250");
    tracker.summary("best/loss", serde_json::json!(0.004));
    let report = tracker.finish(Status::Finished).unwrap();
    assert_eq!(report.remote["wandb"], "caught up", "{report:?}");

    // Resumed: the same W&B run continues its history.
    let tracker = Tracker::start(&run, info(), config(&mock.url)).unwrap();
    for step in 250..350u64 {
        tracker.log(step, &[("train/loss", 1.0 / (step + 1) as f64)]);
    }
    tracker.console("resumed");
    std::thread::sleep(Duration::from_millis(250));
    let report = tracker.finish(Status::Finished).unwrap();
    assert_eq!(report.remote["wandb"], "caught up", "{report:?}");

    let state = mock.state.lock().unwrap();
    assert_eq!(state.injected.len(), 3, "{:?}", state.injected);
    let expected_auth = format!(
        "Basic {}",
        // base64("api:mock-key-0123456789")
        "YXBpOm1vY2sta2V5LTAxMjM0NTY3ODk="
    );
    assert!(
        state
            .accepted
            .iter()
            .all(|r| r.authorization == expected_auth)
    );
    // GraphQL: the default entity, then the run (twice: created, then resumed).
    let graphql: Vec<&Request> = state
        .accepted
        .iter()
        .filter(|r| r.path == "/graphql")
        .collect();
    assert!(
        graphql[0].body["query"]
            .as_str()
            .unwrap()
            .contains("viewer")
    );
    let upserts: Vec<&&Request> = graphql
        .iter()
        .filter(|r| r.body["query"].as_str().unwrap().contains("upsertBucket"))
        .collect();
    assert_eq!(upserts.len(), 2);
    let v = &upserts[0].body["variables"];
    assert_eq!(v["entity"], "mock-entity");
    assert_eq!(v["project"], "mock-project");
    assert_eq!(v["groupName"], "g");
    assert_eq!(v["displayName"], "mock run");
    assert_eq!(v["tags"], serde_json::json!(["t1"]));
    let run_config: serde_json::Value =
        serde_json::from_str(v["config"].as_str().unwrap()).unwrap();
    assert_eq!(run_config["search"]["value"]["population"], 50);
    assert_eq!(upserts[1].body["variables"]["name"], v["name"]);
    // file_stream: every history line once, in order, offsets contiguous (the mock
    // refuses a gap), `_step` 0..349.
    let streams: Vec<&Request> = state
        .accepted
        .iter()
        .filter(|r| r.path.ends_with("/file_stream"))
        .collect();
    assert!(streams[0].path.starts_with(&format!(
        "/files/mock-entity/mock-project/{}",
        v["name"].as_str().unwrap()
    )));
    let mut steps = Vec::new();
    let mut expected_offset = 0;
    for r in &streams {
        if let Some(h) = r.body["files"]["wandb-history.jsonl"].as_object() {
            assert_eq!(h["offset"], expected_offset);
            for line in h["content"].as_array().unwrap() {
                let row: serde_json::Value = serde_json::from_str(line.as_str().unwrap()).unwrap();
                steps.push(row["_step"].as_u64().unwrap());
                assert_eq!(row["step"], row["_step"]);
                assert!(row["train/loss"].is_number() && row["_runtime"].is_number());
            }
            expected_offset += h["content"].as_array().unwrap().len() as u64;
        }
    }
    assert_eq!(steps, (0..350).collect::<Vec<u64>>());
    assert_eq!(state.history_lines, 350);
    let summaries: Vec<&&Request> = streams
        .iter()
        .filter(|r| r.body["files"]["wandb-summary.json"].is_object())
        .collect();
    assert_eq!(summaries.len(), 1);
    assert_eq!(
        summaries[0].body["files"]["wandb-summary.json"]["content"][0],
        "{\"best/loss\":0.004}"
    );
    // System events and console lines: contiguous offsets too, every line once.
    for (file, check) in [("wandb-events.jsonl", "system.rss_mb"), ("output.log", "")] {
        let mut lines = Vec::new();
        for r in &streams {
            if let Some(f) = r.body["files"][file].as_object() {
                assert_eq!(f["offset"], lines.len() as u64, "{file}");
                for line in f["content"].as_array().unwrap() {
                    lines.push(line.as_str().unwrap().to_owned());
                }
            }
        }
        assert!(lines.len() >= 3, "{file}: {lines:?}");
        if check.is_empty() {
            let texts: Vec<&str> = lines.iter().map(|l| l.split_once(' ').unwrap().1).collect();
            assert_eq!(texts, ["first start", "logged 250", "resumed"]);
            assert!(lines[0].starts_with("20") && lines[0].as_bytes()[10] == b'T');
        } else {
            for line in &lines {
                let event: serde_json::Value = serde_json::from_str(line).unwrap();
                assert!(event[check].as_f64().unwrap() > 0.0, "{line}");
                assert_eq!(event["_wandb"], true);
            }
        }
    }
    let completes = streams
        .iter()
        .filter(|r| r.body["complete"] == true)
        .count();
    assert_eq!(completes, 2);
    drop(state);

    // The key is in no file of the run.
    let mut stack = vec![run.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
                assert!(!text.contains(KEY), "{} holds the key", path.display());
            }
        }
    }
    assert!(!format!("{:?}", config(&mock.url)).contains(KEY));
}
