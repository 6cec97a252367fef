//! Weights & Biases over HTTP, as the official client speaks it: GraphQL `upsertBucket`
//! creates (or resumes) the run with its configuration, group and tags; `file_stream`
//! carries history lines (`wandb-history.jsonl`, offsets are line numbers), the summary
//! (`wandb-summary.json`, the whole object as line 0) and the final
//! `{"complete": true, "exitcode": N}`; system samples go to `wandb-events.jsonl` and
//! console lines to `output.log`, each with its own line offset. HTTP Basic auth with user `api` and the key.
//!
//! Like the MLflow sink, uploads tail the run's JSONL from a saved state
//! (`sync/wandb.json`): the history offset advances only after W&B accepted the lines,
//! so a resumed run continues its history where it stopped, without gaps or repeats.
//! W&B drops history rows whose `_step` is lower than one it has seen, so `_step` is the
//! record's number (`seq`, increasing by construction) and the caller's step travels as
//! the metric `step`.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, Result, RunInfo, Status, io_error, record};

/// An API key: never serialized, shown as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(pub String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// Where W&B is. The API key is `api_key` when set in code, else `$WANDB_API_KEY`, else
/// `~/.netrc` (`machine <host> ... password <key>`); it is never stored or printed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WandbConfig {
    /// A key given in code (not read from or written to files).
    #[serde(skip)]
    pub api_key: Option<ApiKey>,
    /// On when a key is found. Default true; false keeps W&B off whatever the
    /// environment says.
    pub enabled: bool,
    /// Server. Default `$WANDB_BASE_URL`, else `https://api.wandb.ai`.
    pub base_url: String,
    /// Entity (user or team). Default `$WANDB_ENTITY`, else the key's default entity.
    pub entity: Option<String>,
    /// Project. Default `$WANDB_PROJECT`, else `phase7`.
    pub project: String,
    /// Seconds per request. Default 30.
    pub timeout_seconds: f64,
    /// Most history lines per request. Default 1000.
    pub lines_per_request: usize,
}

impl Default for WandbConfig {
    fn default() -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            api_key: None,
            enabled: true,
            base_url: env("WANDB_BASE_URL").unwrap_or_else(|| "https://api.wandb.ai".into()),
            entity: env("WANDB_ENTITY"),
            project: env("WANDB_PROJECT").unwrap_or_else(|| "phase7".into()),
            timeout_seconds: 30.0,
            lines_per_request: 1000,
        }
    }
}

/// The API key for `base_url`: `$WANDB_API_KEY`, else `~/.netrc`.
pub fn api_key(base_url: &str) -> Option<String> {
    if let Some(key) = std::env::var("WANDB_API_KEY")
        .ok()
        .filter(|k| !k.is_empty())
    {
        return Some(key);
    }
    let host = base_url
        .split_once("://")
        .map_or(base_url, |(_, rest)| rest)
        .split(['/', ':'])
        .next()
        .unwrap_or_default()
        .to_owned();
    let home = std::env::var("HOME").ok()?;
    let text = std::fs::read_to_string(Path::new(&home).join(".netrc")).ok()?;
    netrc_password(&text, &host)
}

/// The password of `machine host` in netrc text.
pub fn netrc_password(text: &str, host: &str) -> Option<String> {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let mut i = 0;
    let mut in_machine = false;
    while i < tokens.len() {
        match tokens[i] {
            "machine" => {
                in_machine = tokens.get(i + 1) == Some(&host);
                i += 2;
            }
            "default" => {
                in_machine = false;
                i += 1;
            }
            "password" if in_machine => return tokens.get(i + 1).map(|p| (*p).to_owned()),
            _ => i += 1,
        }
    }
    None
}

/// What `sync/wandb.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WandbState {
    /// The run id (the URL slug).
    pub run_id: Option<String>,
    /// Entity.
    pub entity: Option<String>,
    /// Project.
    pub project: Option<String>,
    /// Byte offset in `metrics.jsonl` up to which lines were accepted.
    pub offset: u64,
    /// History lines accepted (the next line's number).
    pub history_lines: u64,
    /// Byte offset in `system.jsonl` up to which system events were accepted.
    pub events_offset: u64,
    /// System event lines accepted.
    pub events_lines: u64,
    /// Byte offset in `console.log` up to which console lines were accepted.
    pub console_offset: u64,
    /// Console lines accepted.
    pub console_lines: u64,
    /// The summary last accepted (its JSON text).
    pub summary_sent: Option<String>,
    /// The `complete` exit code sent, once sent.
    pub complete_sent: Option<i32>,
}

/// What one [`sync`] pass did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncReport {
    /// History lines sent by this pass.
    pub lines: u64,
    /// Whether everything is on the server (the final state included once ended).
    pub caught_up: bool,
    /// The run id.
    pub run_id: String,
}

/// A W&B client.
pub struct Wandb {
    agent: ureq::Agent,
    base: String,
    authorization: String,
}

fn remote(retryable: bool, retry_after: Option<f64>, message: String) -> Error {
    Error::Remote {
        service: "wandb",
        retryable,
        retry_after,
        message,
    }
}

const UPSERT: &str = "mutation UpsertBucket($id: String, $name: String, $project: String, $entity: String, \
$groupName: String, $displayName: String, $config: JSONString, $state: String, $tags: [String!]) { \
upsertBucket(input: {id: $id, name: $name, groupName: $groupName, modelName: $project, entityName: $entity, \
displayName: $displayName, config: $config, state: $state, tags: $tags}) { \
bucket { id name displayName project { id name entity { id name } } historyLineCount } inserted } }";

const VIEWER: &str = "query Viewer { viewer { id entity } }";

impl Wandb {
    /// A client, when a key is found.
    pub fn new(config: &WandbConfig) -> Result<Self> {
        let key = config
            .api_key
            .as_ref()
            .map(|k| k.0.clone())
            .or_else(|| api_key(&config.base_url))
            .ok_or_else(|| Error::Config("wandb: no API key (WANDB_API_KEY or ~/.netrc)".into()))?;
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs_f64(config.timeout_seconds)))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self {
            agent,
            base: config.base_url.trim_end_matches('/').to_owned(),
            authorization: format!("Basic {}", crate::base64(format!("api:{key}").as_bytes())),
        })
    }

    fn post(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let request = ureq::http::Request::post(&url)
            .header("Content-Type", "application/json")
            .header("Authorization", &self.authorization)
            .body(serde_json::to_vec(body).unwrap_or_default())
            .map_err(|e| remote(false, None, format!("POST {path}: {e}")))?;
        let (status, retry_after, text) =
            crate::exchange("wandb", &self.agent, request, &format!("POST {path}"))?;
        if !(200..300).contains(&status) {
            // The official client retries everything but these.
            let retryable = !matches!(status, 400 | 401 | 403 | 404 | 409 | 410);
            let snippet: String = text.chars().take(200).collect();
            return Err(remote(
                retryable,
                retry_after,
                format!("POST {path}: HTTP {status}: {snippet}"),
            ));
        }
        let value: serde_json::Value = if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| {
                remote(
                    false,
                    None,
                    format!("POST {path}: HTTP {status} but not JSON: {e}"),
                )
            })?
        };
        if let Some(errors) = value.get("errors").filter(|e| !e.is_null()) {
            return Err(remote(
                false,
                None,
                format!("POST {path}: GraphQL errors: {errors}"),
            ));
        }
        Ok(value)
    }

    fn graphql(&self, query: &str, variables: serde_json::Value) -> Result<serde_json::Value> {
        self.post(
            "/graphql",
            &serde_json::json!({"query": query, "variables": variables}),
        )
    }

    /// The key's default entity.
    pub fn default_entity(&self) -> Result<String> {
        let v = self.graphql(VIEWER, serde_json::json!({}))?;
        v["data"]["viewer"]["entity"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| remote(false, None, format!("viewer: no entity in {v}")))
    }

    /// Creates or updates the run; returns W&B's history line count.
    pub fn upsert(&self, variables: serde_json::Value) -> Result<u64> {
        let v = self.graphql(UPSERT, variables)?;
        let bucket = &v["data"]["upsertBucket"]["bucket"];
        if bucket.is_null() {
            return Err(remote(
                false,
                None,
                format!("upsertBucket: no bucket in {v}"),
            ));
        }
        Ok(bucket["historyLineCount"].as_u64().unwrap_or(0))
    }

    /// One `file_stream` request.
    pub fn file_stream(
        &self,
        entity: &str,
        project: &str,
        run: &str,
        body: &serde_json::Value,
    ) -> Result<()> {
        let path = format!(
            "/files/{}/{}/{}/file_stream",
            crate::percent_encode(entity),
            crate::percent_encode(project),
            crate::percent_encode(run)
        );
        self.post(&path, body).map(|_| ())
    }
}

/// The configuration in W&B's form: `{"key": {"desc": null, "value": v}}`.
pub fn config_json(config: &serde_json::Value) -> String {
    let map: serde_json::Map<String, serde_json::Value> = match config {
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::json!({"desc": null, "value": v})))
            .collect(),
        serde_json::Value::Null => serde_json::Map::new(),
        other => [(
            "config".to_owned(),
            serde_json::json!({"desc": null, "value": other}),
        )]
        .into_iter()
        .collect(),
    };
    serde_json::Value::Object(map).to_string()
}

/// A record as a W&B history line: its metrics, `step`, `_step` (the record number),
/// `_timestamp` and `_runtime`.
pub fn history_line(record: &record::Record, started: f64) -> String {
    let mut map = serde_json::Map::new();
    for (key, value) in &record.metrics {
        let v = if value.is_finite() {
            serde_json::json!(value)
        } else if value.is_nan() {
            serde_json::json!("NaN")
        } else if *value > 0.0 {
            serde_json::json!("Infinity")
        } else {
            serde_json::json!("-Infinity")
        };
        map.insert(key.clone(), v);
    }
    map.insert("step".into(), record.step.into());
    map.insert("_step".into(), record.seq.into());
    map.insert("_timestamp".into(), serde_json::json!(record.time));
    map.insert(
        "_runtime".into(),
        serde_json::json!((record.time - started).max(0.0)),
    );
    serde_json::Value::Object(map).to_string()
}

/// A system sample as a W&B event line: `system.<name>` keys, `_wandb`, `_timestamp`,
/// `_runtime`.
pub fn event_line(record: &record::Record, started: f64) -> String {
    let mut map = serde_json::Map::new();
    for (key, value) in &record.metrics {
        if value.is_finite() {
            map.insert(key.replace('/', "."), serde_json::json!(value));
        }
    }
    map.insert("_wandb".into(), true.into());
    map.insert("_timestamp".into(), serde_json::json!(record.time));
    map.insert(
        "_runtime".into(),
        serde_json::json!((record.time - started).max(0.0)),
    );
    serde_json::Value::Object(map).to_string()
}

/// The complete lines of a text file after byte `offset`, each with the offset after it.
fn lines_from(path: &Path, offset: u64) -> Result<Vec<(String, u64)>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(path, e)),
    };
    let mut out = Vec::new();
    let mut position = offset as usize;
    while position < bytes.len() {
        let Some(end) = bytes[position..].iter().position(|&b| b == b'\n') else {
            break;
        };
        let line = String::from_utf8_lossy(&bytes[position..position + end]).into_owned();
        position += end + 1;
        out.push((line, position as u64));
    }
    Ok(out)
}

/// The upload state of a run directory.
pub fn load_state(dir: &Path) -> Result<WandbState> {
    crate::load_sync_state(dir, "wandb")
}

fn save_state(dir: &Path, state: &WandbState) -> Result<()> {
    crate::save_sync_state(dir, "wandb", state)
}

/// A run id: 8 lowercase letters and digits from the clock and the process.
fn new_run_id() -> String {
    let mut z = (crate::unix_time() * 1e9) as u64 ^ (u64::from(std::process::id()) << 32);
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..8)
        .map(|_| {
            z = z
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            alphabet[((z >> 33) % alphabet.len() as u64) as usize] as char
        })
        .collect()
}

/// One upload pass over run directory `dir`.
pub fn sync(dir: &Path, client: &Wandb, config: &WandbConfig) -> Result<SyncReport> {
    let info = RunInfo::load(dir)?;
    let mut state = load_state(dir)?;
    let mut report = SyncReport::default();
    let resumed_after_finish = info.status == Status::Running && state.complete_sent.is_some();
    if state.run_id.is_none() || resumed_after_finish {
        let entity = match (&state.entity, &config.entity) {
            (Some(e), _) | (None, Some(e)) => e.clone(),
            (None, None) => client.default_entity()?,
        };
        let run_id = state.run_id.clone().unwrap_or_else(new_run_id);
        let lines = client.upsert(serde_json::json!({
            "name": run_id,
            "project": config.project,
            "entity": entity,
            "groupName": info.group,
            "displayName": info.name,
            "config": config_json(&info.config),
            "tags": info.tags,
            "state": "running",
        }))?;
        if state.run_id.is_none() {
            // A run id new to us that W&B already knows (our state lost): its history
            // continues at W&B's line count.
            state.history_lines = lines;
        }
        state.run_id = Some(run_id);
        state.entity = Some(entity);
        state.project = Some(config.project.clone());
        state.complete_sent = None;
        save_state(dir, &state)?;
    }
    let (entity, project, run_id) = (
        state.entity.clone().unwrap_or_default(),
        state.project.clone().unwrap_or_default(),
        state.run_id.clone().unwrap_or_default(),
    );
    report.run_id = run_id.clone();
    let records = record::read_from(&dir.join(crate::METRICS_FILE), state.offset)?;
    for chunk in records.chunks(config.lines_per_request.max(1)) {
        let content: Vec<String> = chunk
            .iter()
            .map(|(r, _)| history_line(r, info.started))
            .collect();
        client.file_stream(
            &entity,
            &project,
            &run_id,
            &serde_json::json!({"files": {"wandb-history.jsonl": {
                "offset": state.history_lines, "content": content}}}),
        )?;
        state.history_lines += chunk.len() as u64;
        state.offset = chunk.last().map_or(state.offset, |(_, end)| *end);
        report.lines += chunk.len() as u64;
        save_state(dir, &state)?;
    }
    let events = record::read_from(&dir.join(crate::SYSTEM_FILE), state.events_offset)?;
    for chunk in events.chunks(config.lines_per_request.max(1)) {
        let content: Vec<String> = chunk
            .iter()
            .map(|(r, _)| event_line(r, info.started))
            .collect();
        client.file_stream(
            &entity,
            &project,
            &run_id,
            &serde_json::json!({"files": {"wandb-events.jsonl": {
                "offset": state.events_lines, "content": content}}}),
        )?;
        state.events_lines += chunk.len() as u64;
        state.events_offset = chunk.last().map_or(state.events_offset, |(_, end)| *end);
        save_state(dir, &state)?;
    }
    let console = lines_from(&dir.join(crate::CONSOLE_FILE), state.console_offset)?;
    for chunk in console.chunks(config.lines_per_request.max(1)) {
        let content: Vec<&str> = chunk.iter().map(|(l, _)| l.as_str()).collect();
        client.file_stream(
            &entity,
            &project,
            &run_id,
            &serde_json::json!({"files": {"output.log": {
                "offset": state.console_lines, "content": content}}}),
        )?;
        state.console_lines += chunk.len() as u64;
        state.console_offset = chunk.last().map_or(state.console_offset, |(_, end)| *end);
        save_state(dir, &state)?;
    }
    if let Ok(summary) = std::fs::read_to_string(dir.join("summary.json")) {
        let line = serde_json::from_str::<serde_json::Value>(&summary)
            .map(|v| v.to_string())
            .unwrap_or_default();
        if !line.is_empty() && state.summary_sent.as_deref() != Some(line.as_str()) {
            client.file_stream(
                &entity,
                &project,
                &run_id,
                &serde_json::json!({"files": {"wandb-summary.json": {"offset": 0, "content": [line]}}}),
            )?;
            state.summary_sent = Some(line);
            save_state(dir, &state)?;
        }
    }
    let exitcode = match info.status {
        Status::Running => None,
        Status::Finished => Some(0),
        Status::Failed => Some(1),
        Status::Killed => Some(130),
    };
    if let Some(code) = exitcode
        && state.complete_sent != Some(code)
    {
        client.file_stream(
            &entity,
            &project,
            &run_id,
            &serde_json::json!({"complete": true, "exitcode": code}),
        )?;
        state.complete_sent = Some(code);
        save_state(dir, &state)?;
    }
    let left = record::read_from(&dir.join(crate::METRICS_FILE), state.offset)?.len()
        + record::read_from(&dir.join(crate::SYSTEM_FILE), state.events_offset)?.len()
        + lines_from(&dir.join(crate::CONSOLE_FILE), state.console_offset)?.len();
    report.caught_up = left == 0 && (exitcode.is_none() || state.complete_sent.is_some());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netrc_config_and_history_are_in_wandb_form() {
        let netrc = "machine example.com login a password b\nmachine api.wandb.ai\n  login user\n  password KEY123\ndefault login x password y";
        assert_eq!(
            netrc_password(netrc, "api.wandb.ai").as_deref(),
            Some("KEY123")
        );
        assert_eq!(netrc_password(netrc, "other"), None);
        assert_eq!(
            config_json(&serde_json::json!({"lr": 0.1})),
            r#"{"lr":{"desc":null,"value":0.1}}"#
        );
        let record = record::Record {
            seq: 4,
            step: 2,
            time: 101.5,
            metrics: vec![("loss".into(), 0.5), ("bad".into(), f64::NAN)],
        };
        let line: serde_json::Value = serde_json::from_str(&history_line(&record, 100.0)).unwrap();
        assert_eq!(
            line,
            serde_json::json!({"loss": 0.5, "bad": "NaN", "step": 2, "_step": 4, "_timestamp": 101.5, "_runtime": 1.5})
        );
        let id = new_run_id();
        assert!(
            id.len() == 8
                && id
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
    }
}
