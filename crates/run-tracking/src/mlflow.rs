//! MLflow over its REST API (2.0): experiment by name, run, `log-batch` within the
//! documented limits (at most 1000 metrics, 100 params, 100 tags and 1000 items per
//! request; keys up to 250 characters; param values up to 6000), run status, and
//! artifacts through the server's artifact proxy.
//!
//! Uploads tail the run's JSONL: [`sync`] sends what the state file
//! (`sync/mlflow.json`) says was not sent yet, advancing it only after the server
//! accepted a batch. MLflow stores an identical metric row once, so a batch re-sent after
//! a crash between acceptance and the state's update is not counted twice.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, Result, RunInfo, Status, io_error, record};

/// Where MLflow is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlflowConfig {
    /// Tracking server URI (`http://host:port`). Default: `$MLFLOW_TRACKING_URI`, else
    /// none (MLflow off). Credentials in the URI are refused: use
    /// `MLFLOW_TRACKING_TOKEN` or `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD`.
    pub tracking_uri: Option<String>,
    /// Experiment name, created when missing. Default `phase7`.
    pub experiment: String,
    /// Seconds per request before it counts as failed. Default 30.
    pub timeout_seconds: f64,
}

impl Default for MlflowConfig {
    fn default() -> Self {
        Self {
            tracking_uri: std::env::var("MLFLOW_TRACKING_URI")
                .ok()
                .filter(|v| !v.is_empty()),
            experiment: "phase7".into(),
            timeout_seconds: 30.0,
        }
    }
}

/// Limits of one `log-batch` request (MLflow's documented ones).
pub const MAX_METRICS: usize = 1000;
/// Params per request.
pub const MAX_PARAMS: usize = 100;
/// Key length.
pub const MAX_KEY: usize = 250;
/// Param value length.
pub const MAX_PARAM_VALUE: usize = 6000;

/// An MLflow client.
pub struct Mlflow {
    agent: ureq::Agent,
    base: String,
    authorization: Option<String>,
}

/// What `sync/mlflow.json` holds: the server's ids and how far the upload got.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MlflowState {
    /// Experiment id.
    pub experiment_id: Option<String>,
    /// Run id.
    pub run_id: Option<String>,
    /// The run's artifact URI.
    pub artifact_uri: Option<String>,
    /// Byte offset in `metrics.jsonl` up to which records were accepted.
    pub offset: u64,
    /// Records accepted.
    pub records_sent: u64,
    /// Metric values accepted.
    pub metrics_sent: u64,
    /// Whether the configuration went up as params.
    pub params_sent: bool,
    /// Params whose value was cut to 6000 characters.
    pub params_truncated: Vec<String>,
    /// Artifacts uploaded: name -> size in bytes.
    pub artifacts_sent: BTreeMap<String, u64>,
    /// The final status sent.
    pub status_sent: Option<String>,
}

/// What one [`sync`] pass did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncReport {
    /// Records sent by this pass.
    pub records: u64,
    /// Metric values sent by this pass.
    pub metrics: u64,
    /// Artifacts uploaded by this pass.
    pub artifacts: usize,
    /// Whether everything in the run directory is on the server now (final status
    /// included when the run has finished).
    pub caught_up: bool,
    /// The run id on the server.
    pub run_id: String,
}

/// `uri` with any user information of its authority replaced by `***`.
fn redact(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{path}"),
        None => uri.to_owned(),
    }
}

fn remote(retryable: bool, retry_after: Option<f64>, message: String) -> Error {
    Error::Remote {
        service: "mlflow",
        retryable,
        retry_after,
        message,
    }
}

impl Mlflow {
    /// A client for `config.tracking_uri` with credentials from the environment.
    pub fn new(config: &MlflowConfig) -> Result<Self> {
        let uri = config
            .tracking_uri
            .clone()
            .ok_or_else(|| Error::Config("mlflow: no tracking URI (MLFLOW_TRACKING_URI)".into()))?;
        if !(uri.starts_with("http://") || uri.starts_with("https://")) {
            return Err(Error::Config(format!(
                "mlflow: tracking URI `{}` is not http(s); a server is needed (`mlflow server`)",
                redact(&uri)
            )));
        }
        if redact(&uri) != uri {
            return Err(Error::Config(format!(
                "mlflow: the tracking URI `{}` carries credentials; set MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD instead",
                redact(&uri)
            )));
        }
        let authorization = match (
            std::env::var("MLFLOW_TRACKING_TOKEN").ok(),
            std::env::var("MLFLOW_TRACKING_USERNAME").ok(),
            std::env::var("MLFLOW_TRACKING_PASSWORD").ok(),
        ) {
            (Some(token), _, _) if !token.is_empty() => Some(format!("Bearer {token}")),
            (_, Some(user), Some(password)) => Some(format!(
                "Basic {}",
                crate::base64(format!("{user}:{password}").as_bytes())
            )),
            _ => None,
        };
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs_f64(config.timeout_seconds)))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self {
            agent,
            base: uri.trim_end_matches('/').to_owned(),
            authorization,
        })
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
        raw: Option<&[u8]>,
    ) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let builder = match method {
            "GET" => ureq::http::Request::get(&url),
            "PUT" => ureq::http::Request::put(&url),
            _ => ureq::http::Request::post(&url),
        };
        let mut builder = builder.header(
            "Content-Type",
            if raw.is_some() {
                "application/octet-stream"
            } else {
                "application/json"
            },
        );
        if let Some(auth) = &self.authorization {
            builder = builder.header("Authorization", auth);
        }
        let bytes = match (body, raw) {
            (_, Some(raw)) => raw.to_vec(),
            (Some(body), None) => serde_json::to_vec(body).unwrap_or_default(),
            (None, None) => Vec::new(),
        };
        let request = builder
            .body(bytes)
            .map_err(|e| remote(false, None, format!("{method} {path}: {e}")))?;
        // Connection refused, reset, timeouts: retryable, the server may come back.
        let (status, retry_after, text) =
            crate::exchange("mlflow", &self.agent, request, &format!("{method} {path}"))?;
        if (200..300).contains(&status) {
            if text.trim().is_empty() {
                return Ok(serde_json::Value::Null);
            }
            return serde_json::from_str(&text).map_err(|e| {
                remote(
                    false,
                    None,
                    format!("{method} {path}: HTTP {status} but the answer is not JSON: {e}"),
                )
            });
        }
        let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let code = value["error_code"].as_str().unwrap_or("");
        let message = value["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| text.chars().take(200).collect());
        let retryable = matches!(status, 408 | 429) || status >= 500;
        Err(remote(
            retryable,
            retry_after,
            format!("{method} {path}: HTTP {status} {code}: {message}"),
        ))
    }

    fn error_code(error: &Error) -> Option<&str> {
        match error {
            Error::Remote { message, .. } => ["RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS"]
                .into_iter()
                .find(|c| message.contains(c)),
            _ => None,
        }
    }

    /// The id of the experiment called `name`, created when missing.
    pub fn experiment_id(&self, name: &str) -> Result<String> {
        let path = format!(
            "/api/2.0/mlflow/experiments/get-by-name?experiment_name={}",
            crate::percent_encode(name)
        );
        let found = |v: serde_json::Value| {
            v["experiment"]["experiment_id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| remote(false, None, format!("get-by-name: no experiment id in {v}")))
        };
        match self.send("GET", &path, None, None) {
            Ok(v) => found(v),
            Err(e) if Self::error_code(&e) == Some("RESOURCE_DOES_NOT_EXIST") => {
                match self.send(
                    "POST",
                    "/api/2.0/mlflow/experiments/create",
                    Some(&serde_json::json!({ "name": name })),
                    None,
                ) {
                    Ok(v) => v["experiment_id"]
                        .as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| remote(false, None, format!("create: no id in {v}"))),
                    // Made meanwhile by another process.
                    Err(e) if Self::error_code(&e) == Some("RESOURCE_ALREADY_EXISTS") => {
                        found(self.send("GET", &path, None, None)?)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Creates a run; returns its id and artifact URI.
    pub fn create_run(
        &self,
        experiment_id: &str,
        name: &str,
        start_ms: u64,
        tags: &[(String, String)],
    ) -> Result<(String, String)> {
        let tags: Vec<serde_json::Value> = tags
            .iter()
            .map(|(k, v)| serde_json::json!({"key": k, "value": v}))
            .collect();
        let v = self.send(
            "POST",
            "/api/2.0/mlflow/runs/create",
            Some(&serde_json::json!({
                "experiment_id": experiment_id,
                "run_name": name,
                "start_time": start_ms,
                "tags": tags,
            })),
            None,
        )?;
        let info = &v["run"]["info"];
        match (info["run_id"].as_str(), info["artifact_uri"].as_str()) {
            (Some(id), Some(uri)) => Ok((id.to_owned(), uri.to_owned())),
            _ => Err(remote(
                false,
                None,
                format!("runs/create: unexpected answer {v}"),
            )),
        }
    }

    /// One `log-batch` request (the caller keeps it within the limits).
    pub fn log_batch(
        &self,
        run_id: &str,
        metrics: &[serde_json::Value],
        params: &[(String, String)],
    ) -> Result<()> {
        let params: Vec<serde_json::Value> = params
            .iter()
            .map(|(k, v)| serde_json::json!({"key": k, "value": v}))
            .collect();
        self.send(
            "POST",
            "/api/2.0/mlflow/runs/log-batch",
            Some(&serde_json::json!({
                "run_id": run_id,
                "metrics": metrics,
                "params": params,
                "tags": [],
            })),
            None,
        )?;
        Ok(())
    }

    /// Sets the run's status (and end time when final).
    pub fn update_run(&self, run_id: &str, status: &str, end_ms: Option<u64>) -> Result<()> {
        let mut body = serde_json::json!({"run_id": run_id, "status": status});
        if let Some(end) = end_ms {
            body["end_time"] = end.into();
        }
        self.send("POST", "/api/2.0/mlflow/runs/update", Some(&body), None)?;
        Ok(())
    }

    /// Uploads a file under the run's artifacts through the server's proxy.
    pub fn upload_artifact(&self, artifact_uri: &str, name: &str, bytes: &[u8]) -> Result<()> {
        let Some(path) = artifact_uri.strip_prefix("mlflow-artifacts:") else {
            return Err(remote(
                false,
                None,
                format!(
                    "the run's artifact store `{artifact_uri}` is not served by the tracking server (start it with artifact serving, the default in MLflow 3)"
                ),
            ));
        };
        let path = path.trim_start_matches('/');
        let encoded: Vec<String> = name.split('/').map(crate::percent_encode).collect();
        self.send(
            "PUT",
            &format!(
                "/api/2.0/mlflow-artifacts/artifacts/{path}/{}",
                encoded.join("/")
            ),
            None,
            Some(bytes),
        )?;
        Ok(())
    }

    /// GET a REST path (reading back, in tests and `run-tracking show`).
    pub fn get(&self, path: &str) -> Result<serde_json::Value> {
        self.send("GET", path, None, None)
    }
}

/// A metric key as MLflow accepts it: alphanumerics and `_ - . space : /`, others
/// replaced by `_`, at most 250 characters.
pub fn metric_key(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-. :/".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(MAX_KEY)
        .collect()
}

/// The run's configuration as MLflow params: nested keys joined by `.`, arrays and
/// other values as JSON text.
pub fn flatten_params(config: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            serde_json::Value::String(s) => out.push((prefix.to_owned(), s.clone())),
            serde_json::Value::Null => out.push((prefix.to_owned(), "None".into())),
            other => out.push((prefix.to_owned(), other.to_string())),
        }
    }
    let mut out = Vec::new();
    walk("", config, &mut out);
    out.retain(|(k, _)| !k.is_empty());
    out
}

/// The upload state of a run directory.
pub fn load_state(dir: &Path) -> Result<MlflowState> {
    crate::load_sync_state(dir, "mlflow")
}

fn save_state(dir: &Path, state: &MlflowState) -> Result<()> {
    crate::save_sync_state(dir, "mlflow", state)
}

/// One upload pass over run directory `dir`: creates the run when needed, sends the
/// configuration, every record not sent yet, new artifacts and a final status. The
/// state is saved after each accepted request, so an interrupted pass loses nothing and
/// repeats nothing that was recorded as sent.
pub fn sync(dir: &Path, client: &Mlflow, config: &MlflowConfig) -> Result<SyncReport> {
    let info = RunInfo::load(dir)?;
    let mut state = load_state(dir)?;
    let mut report = SyncReport::default();
    if state.run_id.is_none() {
        let experiment = client.experiment_id(&config.experiment)?;
        let mut tags = vec![("phase7.tracking".to_owned(), "run-tracking".to_owned())];
        if let Some(group) = &info.group {
            tags.push(("group".into(), group.clone()));
        }
        for tag in &info.tags {
            tags.push((format!("tag.{}", metric_key(tag)), "true".into()));
        }
        let (run_id, artifact_uri) = client.create_run(
            &experiment,
            &info.name,
            (info.started * 1000.0) as u64,
            &tags,
        )?;
        state.experiment_id = Some(experiment);
        state.run_id = Some(run_id);
        state.artifact_uri = Some(artifact_uri);
        save_state(dir, &state)?;
    }
    let run_id = state.run_id.clone().unwrap_or_default();
    report.run_id = run_id.clone();
    if !state.params_sent {
        let mut params = flatten_params(&info.config);
        for (key, value) in &mut params {
            *key = metric_key(key);
            if value.chars().count() > MAX_PARAM_VALUE {
                *value = value.chars().take(MAX_PARAM_VALUE).collect();
                state.params_truncated.push(key.clone());
            }
        }
        for chunk in params.chunks(MAX_PARAMS) {
            client.log_batch(&run_id, &[], chunk)?;
        }
        state.params_sent = true;
        save_state(dir, &state)?;
    }
    // Records, batched to at most 1000 metric values per request; the offset moves
    // only past records whose every value was accepted.
    let records = record::read_from(&dir.join(crate::METRICS_FILE), state.offset)?;
    let mut batch: Vec<serde_json::Value> = Vec::new();
    let mut pending: Option<(u64, u64, u64)> = None; // (offset, records, metrics) once sent
    let flush = |batch: &mut Vec<serde_json::Value>,
                 pending: &mut Option<(u64, u64, u64)>,
                 state: &mut MlflowState,
                 report: &mut SyncReport|
     -> Result<()> {
        if !batch.is_empty() {
            client.log_batch(&run_id, batch, &[])?;
            batch.clear();
        }
        if let Some((offset, records, metrics)) = pending.take() {
            state.offset = offset;
            state.records_sent += records;
            state.metrics_sent += metrics;
            report.records += records;
            report.metrics += metrics;
            save_state(dir, state)?;
        }
        Ok(())
    };
    for (rec, end) in records {
        let timestamp = (rec.time * 1000.0) as u64;
        for (key, value) in &rec.metrics {
            if batch.len() == MAX_METRICS {
                flush(&mut batch, &mut pending, &mut state, &mut report)?;
            }
            let value = if value.is_finite() {
                serde_json::json!(value)
            } else if value.is_nan() {
                serde_json::json!("NaN")
            } else if *value > 0.0 {
                serde_json::json!("Infinity")
            } else {
                serde_json::json!("-Infinity")
            };
            batch.push(serde_json::json!({
                "key": metric_key(key),
                "value": value,
                "timestamp": timestamp,
                "step": rec.step,
            }));
        }
        let (_, records, metrics) = pending.unwrap_or((0, 0, 0));
        pending = Some((end, records + 1, metrics + rec.metrics.len() as u64));
    }
    flush(&mut batch, &mut pending, &mut state, &mut report)?;
    // Artifacts: files under `artifacts/`, each uploaded once per size.
    let artifacts = dir.join(crate::ARTIFACTS_DIR);
    if artifacts.is_dir() {
        let mut files = Vec::new();
        crate::files_under(&artifacts, &artifacts, &mut files)?;
        for name in files {
            let path = artifacts.join(&name);
            let size = std::fs::metadata(&path)
                .map_err(|e| io_error(&path, e))?
                .len();
            if state.artifacts_sent.get(&name) == Some(&size) {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| io_error(&path, e))?;
            client.upload_artifact(
                state.artifact_uri.as_deref().unwrap_or_default(),
                &name,
                &bytes,
            )?;
            state.artifacts_sent.insert(name, size);
            report.artifacts += 1;
            save_state(dir, &state)?;
        }
    }
    let final_status = match info.status {
        Status::Running => None,
        Status::Finished => Some("FINISHED"),
        Status::Failed => Some("FAILED"),
        Status::Killed => Some("KILLED"),
    };
    match final_status {
        Some(status) if state.status_sent.as_deref() != Some(status) => {
            client.update_run(&run_id, status, info.ended.map(|t| (t * 1000.0) as u64))?;
            state.status_sent = Some(status.to_owned());
            save_state(dir, &state)?;
        }
        None if state.status_sent.is_some() => {
            // A resumed run: open it again.
            client.update_run(&run_id, "RUNNING", None)?;
            state.status_sent = None;
            save_state(dir, &state)?;
        }
        _ => {}
    }
    let total = record::read_from(&dir.join(crate::METRICS_FILE), state.offset)?.len();
    report.caught_up = total == 0 && (final_status.is_none() || state.status_sent.is_some());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_params_and_uris_are_made_acceptable() {
        assert_eq!(
            metric_key("stage2/expert-0/reward mean"),
            "stage2/expert-0/reward mean"
        );
        assert_eq!(metric_key("a+b@c"), "a_b_c");
        assert_eq!(metric_key(&"k".repeat(300)).len(), 250);
        let params = flatten_params(&serde_json::json!({
            "seed": 0, "search": {"population": 50, "band": [0.6, 0.9]}, "name": "x", "none": null
        }));
        assert_eq!(
            params,
            [
                ("seed".to_owned(), "0".to_owned()),
                ("search.population".into(), "50".into()),
                ("search.band".into(), "[0.6,0.9]".into()),
                ("name".into(), "x".into()),
                ("none".into(), "None".into()),
            ]
        );
        assert_eq!(
            redact("http://user:secret@host:5000"),
            "http://***@host:5000"
        );
        assert_eq!(redact("http://host:5000/a@b"), "http://host:5000/a@b");
        let config = MlflowConfig {
            tracking_uri: Some("http://user:secret@127.0.0.1:1".into()),
            ..MlflowConfig::default()
        };
        let message = Mlflow::new(&config).err().unwrap().to_string();
        assert!(
            !message.contains("secret") && message.contains("credentials"),
            "{message}"
        );
    }
}
