//! Run tracking that never blocks training and never loses a record.
//!
//! A [`Tracker`] owns a run directory:
//!
//! | file | what |
//! |---|---|
//! | `run.json` | name, group, tags, configuration, start and end time, status |
//! | `metrics.jsonl` | every `log` call, one line each, numbered (`seq`) — the source of truth |
//! | `summary.json` | summary values |
//! | `system.jsonl` | the process's memory, CPU use and threads every 10 s |
//! | `console.log` | console lines, each after its UTC time |
//! | `artifacts/` | files attached to the run |
//! | `tensorboard/` | TensorBoard event files (scalars), when on |
//! | `sync/mlflow.json`, `sync/wandb.json` | how far each upload got, when its sink is on |
//!
//! The calling thread only enqueues: [`Tracker::log`] formats nothing and touches no file
//! (it waits only when [`QUEUE_CAPACITY`] records are already queued, that is when
//! logging outpaces the local disk writer, so that a kill never loses more than that).
//! A writer thread appends the records to `metrics.jsonl` and the TensorBoard file and
//! hands them to the operating system at least every `flush_ms` (100 ms by default), so
//! a process killed at any moment keeps every record logged more than that before.
//! Remote sinks tail the JSONL from their own saved offset in a thread of their own,
//! retrying with backoff on 408/429/5xx and connection errors (honouring
//! `Retry-After`); a server that is down only makes them lag. [`Tracker::finish`] gives
//! them a bounded time to catch up; whatever is left is sent by `run-tracking sync
//! RUN_DIR` later, idempotently. Sinks: MLflow ([`mlflow`], when a tracking URI is set)
//! and Weights & Biases ([`wandb`], when an API key is found).
//!
//! ```
//! use run_tracking::{RunInfo, Status, Tracker, TrackerConfig};
//! let dir = tempfile::tempdir()?;
//! let info = RunInfo::new("demo").with_config(serde_json::json!({"lr": 0.01}));
//! let tracker = Tracker::start(dir.path(), info, TrackerConfig::local())?;
//! for step in 0..3 {
//!     tracker.log(step, &[("train/loss", 1.0 / (step + 1) as f64)]);
//! }
//! tracker.summary("best/loss", serde_json::json!(0.333));
//! let report = tracker.finish(Status::Finished)?;
//! assert_eq!(report.records, 3);
//! let lines = std::fs::read_to_string(dir.path().join("metrics.jsonl"))?;
//! assert_eq!(lines.lines().count(), 3);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![doc(test(attr(deny(warnings))))]

pub mod mlflow;
pub mod record;
pub mod tensorboard;
pub mod wandb;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use mlflow::MlflowConfig;
pub use wandb::WandbConfig;

/// The JSONL file of records.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The folder of artifacts.
pub const ARTIFACTS_DIR: &str = "artifacts";
/// The JSONL file of system metrics (same record format).
pub const SYSTEM_FILE: &str = "system.jsonl";
/// The console lines of the run, each `<UTC time> <text>`.
pub const CONSOLE_FILE: &str = "console.log";

/// `2026-12-04T05:59:21.123456` (UTC) for Unix time `t`.
pub fn utc_timestamp(t: f64) -> String {
    let secs = t.floor() as i64;
    let micros = ((t - t.floor()) * 1e6).round().min(999_999.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// This process's resident memory (MiB), CPU seconds (user + system) and threads,
/// from `/proc/self` (Linux).
fn process_sample() -> Option<(f64, f64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<f64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start after ") ".
    let rest: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks: f64 = rest.get(11)?.parse::<f64>().ok()? + rest.get(12)?.parse::<f64>().ok()?;
    // Linux's USER_HZ is 100 on every supported architecture.
    Some((field("VmRSS:")? / 1024.0, ticks / 100.0, field("Threads:")?))
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// Settings that cannot work.
    #[error("invalid tracking configuration: {0}")]
    Config(String),
    /// A file's content is not what it should be.
    #[error("{0}")]
    Data(String),
    /// A tracking server refused or could not be reached.
    #[error("{service}: {message}")]
    Remote {
        /// Which service.
        service: &'static str,
        /// Whether trying again later may succeed (408, 429, 5xx, connection errors).
        retryable: bool,
        /// Seconds the server asked to wait.
        retry_after: Option<f64>,
        /// What happened (never a credential).
        message: String,
    },
}

/// This crate's result.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Seconds since the Unix epoch.
pub fn unix_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Writes a file through a temporary beside it, synced, then renamed into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        io_error(path, e)
    })
}

pub(crate) fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub(crate) fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A sink's upload state, `sync/<sink>.json` in the run directory (default when absent).
pub(crate) fn load_sync_state<T: serde::de::DeserializeOwned + Default>(
    dir: &Path,
    sink: &str,
) -> Result<T> {
    let path = dir.join("sync").join(format!("{sink}.json"));
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| io_error(&path, format!("not a {sink} sync state: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(io_error(&path, e)),
    }
}

/// Saves a sink's upload state atomically.
pub(crate) fn save_sync_state<T: Serialize>(dir: &Path, sink: &str, state: &T) -> Result<()> {
    let path = dir.join("sync").join(format!("{sink}.json"));
    let text = serde_json::to_vec_pretty(state).map_err(|e| io_error(&path, e))?;
    write_atomic(&path, &text)
}

/// One HTTP exchange of a remote sink: the status, the seconds `Retry-After` asks for,
/// and the body. A failure to connect or to read is retryable.
pub(crate) fn exchange(
    service: &'static str,
    agent: &ureq::Agent,
    request: ureq::http::Request<Vec<u8>>,
    what: &str,
) -> Result<(u16, Option<f64>, String)> {
    let connection = |e: ureq::Error| Error::Remote {
        service,
        retryable: true,
        retry_after: None,
        message: format!("{what}: {e}"),
    };
    let mut response = agent.run(request).map_err(connection)?;
    let retry_after = response
        .headers()
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok());
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().map_err(connection)?;
    Ok((status, retry_after, text))
}

/// Every file under `dir`, relative to `base`, sorted, `/`-separated.
pub(crate) fn files_under(dir: &Path, base: &Path, out: &mut Vec<String>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io_error(dir, e))?
        .collect::<std::io::Result<_>>()
        .map_err(|e| io_error(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, base, out)?;
        } else if !entry.file_name().to_string_lossy().starts_with('.') {
            let relative = path.strip_prefix(base).unwrap_or(&path);
            out.push(
                relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/"),
            );
        }
    }
    Ok(())
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Not ended (or killed before it could say so).
    Running,
    /// Completed.
    Finished,
    /// Stopped by an error.
    Failed,
    /// Stopped by the user.
    Killed,
}

/// `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Run name.
    pub name: String,
    /// Group (runs compared together).
    pub group: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// The configuration (any JSON).
    pub config: serde_json::Value,
    /// Unix time of the first start.
    pub started: f64,
    /// Unix time of the end, once ended.
    pub ended: Option<f64>,
    /// Status.
    pub status: Status,
    /// Starts so far (a resumed run counts again).
    pub starts: u32,
}

impl RunInfo {
    /// A run called `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            group: None,
            tags: Vec::new(),
            config: serde_json::Value::Null,
            started: unix_time(),
            ended: None,
            status: Status::Running,
            starts: 0,
        }
    }

    /// With a group.
    pub fn with_group(mut self, group: &str) -> Self {
        self.group = Some(group.to_owned());
        self
    }

    /// With tags.
    pub fn with_tags(mut self, tags: &[&str]) -> Self {
        self.tags = tags.iter().map(|t| (*t).to_owned()).collect();
        self
    }

    /// With its configuration.
    pub fn with_config(mut self, config: serde_json::Value) -> Self {
        self.config = config;
        self
    }

    /// Reads `run.json` of a run directory.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("run.json");
        let text = std::fs::read_to_string(&path).map_err(|e| io_error(&path, e))?;
        serde_json::from_str(&text).map_err(|e| io_error(&path, format!("not a run record: {e}")))
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join("run.json");
        let text = serde_json::to_vec_pretty(self).map_err(|e| io_error(&path, e))?;
        write_atomic(&path, &text)
    }
}

/// Retry timing of the remote sinks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// First wait after a failure, seconds. Default 1.
    pub initial_seconds: f64,
    /// Longest wait, seconds. Default 60.
    pub max_seconds: f64,
    /// Seconds between upload passes when all is well. Default 2.
    pub interval_seconds: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_seconds: 1.0,
            max_seconds: 60.0,
            interval_seconds: 2.0,
        }
    }
}

/// Which sinks a tracker writes to besides the JSONL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerConfig {
    /// TensorBoard event files in `tensorboard/`. Default true.
    pub tensorboard: bool,
    /// MLflow, when a tracking URI is set (default from `MLFLOW_TRACKING_URI`).
    pub mlflow: MlflowConfig,
    /// Weights & Biases, when an API key is found (`WANDB_API_KEY` or `~/.netrc`).
    pub wandb: WandbConfig,
    /// Most milliseconds a record waits in memory before it is handed to the operating
    /// system. Default 100.
    pub flush_ms: u64,
    /// Most seconds `finish` waits for remote sinks to catch up; what is left is sent by
    /// `run-tracking sync`. Default 30.
    pub finish_timeout_seconds: f64,
    /// Seconds after which `finish` stops waiting for a sink that has failed every
    /// attempt since `finish` began (a server that is down). Default 3.
    pub finish_unreachable_seconds: f64,
    /// Seconds between samples of the process's memory, CPU use and threads
    /// (`system.jsonl`; W&B's system events); 0 turns them off. Default 10.
    pub system_interval_seconds: f64,
    /// Retries of remote sinks.
    pub retry: RetryConfig,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            tensorboard: true,
            mlflow: MlflowConfig::default(),
            wandb: WandbConfig::default(),
            flush_ms: 100,
            finish_timeout_seconds: 30.0,
            finish_unreachable_seconds: 3.0,
            system_interval_seconds: 10.0,
            retry: RetryConfig::default(),
        }
    }
}

impl TrackerConfig {
    /// JSONL and TensorBoard only, whatever the environment says.
    pub fn local() -> Self {
        Self {
            mlflow: MlflowConfig {
                tracking_uri: None,
                ..MlflowConfig::default()
            },
            wandb: WandbConfig {
                enabled: false,
                ..WandbConfig::default()
            },
            ..Self::default()
        }
    }

    /// Whether W&B is on: enabled and a key found.
    pub fn wandb_on(&self) -> bool {
        self.wandb.enabled
            && (self.wandb.api_key.is_some() || wandb::api_key(&self.wandb.base_url).is_some())
    }
}

enum Message {
    Log(u64, f64, Vec<(String, f64)>),
    Console(f64, String),
    Summary(String, serde_json::Value),
    Flush(mpsc::Sender<()>),
}

/// Records that may wait in memory for the writer. A caller logging faster than the
/// writer puts records on disk (above a million scalars per second on a laptop-class
/// core) waits for room rather than piling up records a kill would lose; a slow or
/// absent server never makes it wait.
pub const QUEUE_CAPACITY: usize = 16_384;

/// What `finish` reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FinishReport {
    /// Records in `metrics.jsonl` (all starts of the run).
    pub records: u64,
    /// Per remote sink: whether it caught up, or why not.
    pub remote: BTreeMap<String, String>,
}

/// A run being tracked. Cheap to share by reference across threads (`log` takes
/// `&self`).
pub struct Tracker {
    dir: PathBuf,
    sender: Mutex<mpsc::SyncSender<Message>>,
    writer: Option<JoinHandle<Result<u64>>>,
    uploaders: Vec<(String, JoinHandle<String>, Arc<AtomicBool>)>,
    info: RunInfo,
}

/// Waits `seconds` unless `stop` is raised meanwhile.
fn sleep_unless(stop: &AtomicBool, seconds: f64) {
    let until = Instant::now() + Duration::from_secs_f64(seconds.max(0.0));
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A jitter factor in [0.75, 1.25] from the clock (no generator needed).
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    0.75 + f64::from(nanos % 1000) / 2000.0
}

/// Runs `pass` until it catches up after `finishing` is raised, retrying failures with
/// exponential backoff and jitter (or the server's `Retry-After`). Returns how it ended.
fn upload_loop(
    finishing: &AtomicBool,
    retry: &RetryConfig,
    finish_timeout: f64,
    finish_unreachable: f64,
    pass: &mut dyn FnMut() -> Result<bool>,
) -> String {
    let mut failures = 0u32;
    let mut deadline: Option<Instant> = None;
    // When finishing began, and whether a pass has succeeded since.
    let mut finish_started: Option<Instant> = None;
    let mut succeeded_while_finishing = false;
    loop {
        if finishing.load(Ordering::Relaxed) && deadline.is_none() {
            deadline = Some(Instant::now() + Duration::from_secs_f64(finish_timeout));
            finish_started = Some(Instant::now());
            // The backoff built up during the run would outlast the finish: start over.
            failures = 0;
        }
        // Only a pass that began after `finish` raised the flag has seen the final
        // status and the last records.
        let final_pass = finishing.load(Ordering::Relaxed);
        let wait = match pass() {
            Ok(caught_up) => {
                failures = 0;
                succeeded_while_finishing |= final_pass;
                if caught_up && final_pass {
                    return "caught up".into();
                }
                if finishing.load(Ordering::Relaxed) {
                    0.0
                } else {
                    retry.interval_seconds
                }
            }
            Err(Error::Remote {
                retryable: true,
                retry_after,
                message,
                ..
            }) => {
                failures += 1;
                let backoff = (retry.initial_seconds * 2f64.powi(failures as i32 - 1))
                    .min(retry.max_seconds)
                    * jitter();
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return format!(
                        "not caught up within the finish timeout (last error: {message}); `run-tracking sync` sends the rest"
                    );
                }
                if !succeeded_while_finishing
                    && finish_started
                        .is_some_and(|t| t.elapsed().as_secs_f64() >= finish_unreachable)
                {
                    return format!(
                        "unreachable since the run ended (last error: {message}); `run-tracking sync` sends the rest"
                    );
                }
                retry_after.map_or(backoff, |s| s.min(retry.max_seconds))
            }
            Err(e) => {
                return format!("stopped: {e}; `run-tracking sync` sends the rest once fixed");
            }
        };
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return "not caught up within the finish timeout; `run-tracking sync` sends the rest"
                .into();
        }
        // While finishing, no wait outlasts the deadline or, before any success, the
        // unreachable limit; otherwise a wait ends when `finish` begins.
        let stop = AtomicBool::new(false);
        let (flag, wait) = match (finish_started, deadline) {
            (Some(started), Some(deadline)) => {
                let mut limit = deadline
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64();
                if !succeeded_while_finishing {
                    limit =
                        limit.min((finish_unreachable - started.elapsed().as_secs_f64()).max(0.0));
                }
                (&stop, wait.min(limit))
            }
            _ => (finishing, wait),
        };
        sleep_unless(flag, wait);
    }
}

impl Tracker {
    /// Starts tracking into `dir` (created when missing). A directory that already holds
    /// a run continues it: its records are kept and numbering goes on; `info` replaces
    /// the name, group, tags and configuration but not the first start time.
    pub fn start(dir: &Path, info: RunInfo, config: TrackerConfig) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let mut info = info;
        if let Ok(previous) = RunInfo::load(dir) {
            info.started = previous.started;
            info.starts = previous.starts;
        }
        info.starts += 1;
        info.status = Status::Running;
        info.ended = None;
        info.save(dir)?;
        let mut jsonl = record::JsonlWriter::open(&dir.join(METRICS_FILE))?;
        let mut events = if config.tensorboard {
            Some(tensorboard::EventWriter::create(
                &dir.join("tensorboard"),
                unix_time(),
            )?)
        } else {
            None
        };
        let summary_path = dir.join("summary.json");
        let mut summary: serde_json::Map<String, serde_json::Value> =
            match std::fs::read_to_string(&summary_path) {
                Ok(text) => serde_json::from_str(&text)
                    .map_err(|e| io_error(&summary_path, format!("not a summary object: {e}")))?,
                Err(_) => serde_json::Map::new(),
            };
        let (sender, receiver) = mpsc::sync_channel::<Message>(QUEUE_CAPACITY);
        let flush_every = Duration::from_millis(config.flush_ms.max(1));
        let mut system = record::JsonlWriter::open(&dir.join(SYSTEM_FILE))?;
        let console_path = dir.join(CONSOLE_FILE);
        let mut console = std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&console_path)
                .map_err(|e| io_error(&console_path, e))?,
        );
        let system_every = config.system_interval_seconds;
        let mut last_sample: Option<(Instant, f64)> = None;
        let writer = std::thread::Builder::new()
            .name("run-tracking-writer".into())
            .spawn(move || -> Result<u64> {
                let mut dirty_summary = false;
                let mut last_flush = Instant::now();
                loop {
                    let message = receiver.recv_timeout(flush_every);
                    let mut done = false;
                    match message {
                        Ok(Message::Log(step, time, metrics)) => {
                            if let Some(events) = &mut events {
                                events.scalars(step, time, &metrics)?;
                            }
                            jsonl.append(step, time, metrics)?;
                        }
                        Ok(Message::Console(time, line)) => {
                            for part in line.lines() {
                                writeln!(console, "{} {part}", utc_timestamp(time))
                                    .map_err(|e| io_error(&console_path, e))?;
                            }
                        }
                        Ok(Message::Summary(key, value)) => {
                            summary.insert(key, value);
                            dirty_summary = true;
                        }
                        Ok(Message::Flush(done_sender)) => {
                            jsonl.flush()?;
                            if let Some(events) = &mut events {
                                events.flush()?;
                            }
                            let _ = done_sender.send(());
                            last_flush = Instant::now();
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => done = true,
                    }
                    if system_every > 0.0
                        && last_sample
                            .is_none_or(|(t, _)| t.elapsed().as_secs_f64() >= system_every)
                        && let Some((rss, cpu, threads)) = process_sample()
                    {
                        let mut metrics = vec![
                            ("system/rss_mb".to_owned(), rss),
                            ("system/threads".to_owned(), threads),
                        ];
                        if let Some((t, cpu_before)) = last_sample {
                            let wall = t.elapsed().as_secs_f64().max(1e-9);
                            metrics.push((
                                "system/cpu_percent".to_owned(),
                                100.0 * (cpu - cpu_before) / wall,
                            ));
                        }
                        system.append(0, unix_time(), metrics)?;
                        last_sample = Some((Instant::now(), cpu));
                    }
                    if done || last_flush.elapsed() >= flush_every {
                        jsonl.flush()?;
                        system.flush()?;
                        console.flush().map_err(|e| io_error(&console_path, e))?;
                        if let Some(events) = &mut events {
                            events.flush()?;
                        }
                        if dirty_summary {
                            let text = serde_json::to_vec_pretty(&summary)
                                .map_err(|e| io_error(&summary_path, e))?;
                            write_atomic(&summary_path, &text)?;
                            dirty_summary = false;
                        }
                        last_flush = Instant::now();
                    }
                    if done {
                        jsonl.sync()?;
                        return Ok(jsonl.next_seq());
                    }
                }
            })
            .map_err(|e| io_error(dir, format!("cannot start the writer thread: {e}")))?;
        let mut uploaders = Vec::new();
        let spawn = |name: &str, mut pass: Box<dyn FnMut() -> Result<bool> + Send>| {
            let finishing = Arc::new(AtomicBool::new(false));
            let flag = finishing.clone();
            let retry = config.retry.clone();
            let (timeout, unreachable) = (
                config.finish_timeout_seconds,
                config.finish_unreachable_seconds,
            );
            std::thread::Builder::new()
                .name(format!("run-tracking-{name}"))
                .spawn(move || upload_loop(&flag, &retry, timeout, unreachable, &mut *pass))
                .map(|handle| (name.to_owned(), handle, finishing))
                .map_err(|e| io_error(dir, format!("cannot start the {name} uploader: {e}")))
        };
        if config.mlflow.tracking_uri.is_some() {
            let client = mlflow::Mlflow::new(&config.mlflow)?;
            let (run_dir, sink) = (dir.to_path_buf(), config.mlflow.clone());
            uploaders.push(spawn(
                "mlflow",
                Box::new(move || mlflow::sync(&run_dir, &client, &sink).map(|r| r.caught_up)),
            )?);
        }
        if config.wandb_on() {
            let client = wandb::Wandb::new(&config.wandb)?;
            let (run_dir, sink) = (dir.to_path_buf(), config.wandb.clone());
            uploaders.push(spawn(
                "wandb",
                Box::new(move || wandb::sync(&run_dir, &client, &sink).map(|r| r.caught_up)),
            )?);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            sender: Mutex::new(sender),
            writer: Some(writer),
            uploaders,
            info,
        })
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn send(&self, message: Message) {
        if let Ok(sender) = self.sender.lock() {
            // Only fails when the writer stopped on an error, which `finish` reports.
            let _ = sender.send(message);
        }
    }

    /// Logs metrics at `step`: enqueued, written by the writer thread.
    pub fn log(&self, step: u64, metrics: &[(&str, f64)]) {
        let owned = metrics.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        self.send(Message::Log(step, unix_time(), owned));
    }

    /// Logs metrics whose keys are already owned strings (no copy).
    pub fn log_owned(&self, step: u64, metrics: Vec<(String, f64)>) {
        self.send(Message::Log(step, unix_time(), metrics));
    }

    /// Records a console line (progress, warnings) with its time; W&B shows them as
    /// the run's output.
    pub fn console(&self, line: &str) {
        self.send(Message::Console(unix_time(), line.to_owned()));
    }

    /// Sets a summary value (the latest wins).
    pub fn summary(&self, key: &str, value: serde_json::Value) {
        self.send(Message::Summary(key.to_owned(), value));
    }

    /// Copies a file into the run's artifacts as `name` (atomically); remote sinks
    /// upload it.
    pub fn artifact(&self, path: &Path, name: &str) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
        write_atomic(&self.dir.join(ARTIFACTS_DIR).join(name), &bytes)
    }

    /// Waits until everything logged so far is with the operating system.
    pub fn flush(&self) {
        let (done, wait) = mpsc::channel();
        self.send(Message::Flush(done));
        let _ = wait.recv_timeout(Duration::from_secs(30));
    }

    /// Ends the run: writes what is queued, records the status, and gives remote sinks
    /// up to `finish_timeout_seconds` to catch up.
    pub fn finish(mut self, status: Status) -> Result<FinishReport> {
        self.finish_inner(status)
    }

    fn finish_inner(&mut self, status: Status) -> Result<FinishReport> {
        // Closing the channel lets the writer drain it and stop.
        let (closed, _) = mpsc::sync_channel(0);
        if let Ok(mut sender) = self.sender.lock() {
            *sender = closed;
        }
        let records = match self.writer.take() {
            Some(handle) => handle
                .join()
                .map_err(|_| io_error(&self.dir, "the writer thread panicked"))??,
            None => 0,
        };
        self.info.status = status;
        self.info.ended = Some(unix_time());
        self.info.save(&self.dir)?;
        let mut report = FinishReport {
            records,
            remote: BTreeMap::new(),
        };
        for (_, _, finishing) in &self.uploaders {
            finishing.store(true, Ordering::Relaxed);
        }
        for (name, handle, _) in self.uploaders.drain(..) {
            let outcome = handle
                .join()
                .unwrap_or_else(|_| "the uploader panicked".into());
            report.remote.insert(name, outcome);
        }
        Ok(report)
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if self.writer.is_some() {
            // Dropped without `finish` (a panic, an early return): keep the records and
            // say the run did not finish.
            let _ = self.finish_inner(Status::Failed);
        }
    }
}

/// What `sync` sent, per sink that is on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncSummary {
    /// MLflow, when on.
    pub mlflow: Option<mlflow::SyncReport>,
    /// W&B, when on.
    pub wandb: Option<wandb::SyncReport>,
}

fn with_retries<T>(
    config: &TrackerConfig,
    attempts: u32,
    mut pass: impl FnMut() -> Result<T>,
) -> Result<T> {
    let mut failures = 0;
    loop {
        match pass() {
            Ok(report) => return Ok(report),
            Err(Error::Remote {
                retryable: true,
                retry_after,
                ..
            }) if failures + 1 < attempts => {
                failures += 1;
                let wait = retry_after.unwrap_or(
                    (config.retry.initial_seconds * 2f64.powi(failures as i32 - 1))
                        .min(config.retry.max_seconds),
                );
                std::thread::sleep(Duration::from_secs_f64(wait * jitter()));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sends what the run directory holds and the sinks that are on have not received yet
/// (`run-tracking sync`), retrying failures up to `attempts` times each.
pub fn sync(dir: &Path, config: &TrackerConfig, attempts: u32) -> Result<SyncSummary> {
    RunInfo::load(dir)?;
    let mut summary = SyncSummary::default();
    if config.mlflow.tracking_uri.is_some() {
        let client = mlflow::Mlflow::new(&config.mlflow)?;
        summary.mlflow = Some(with_retries(config, attempts, || {
            mlflow::sync(dir, &client, &config.mlflow)
        })?);
    }
    if config.wandb_on() {
        let client = wandb::Wandb::new(&config.wandb)?;
        summary.wandb = Some(with_retries(config, attempts, || {
            wandb::sync(dir, &client, &config.wandb)
        })?);
    }
    if summary.mlflow.is_none() && summary.wandb.is_none() {
        return Err(Error::Config(
            "no remote sink is on: set an MLflow tracking URI or a W&B API key".into(),
        ));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_timestamps_are_civil_dates() {
        assert_eq!(utc_timestamp(0.0), "1970-01-01T00:00:00.000000");
        assert_eq!(utc_timestamp(951_782_400.5), "2000-02-29T00:00:00.500000");
        assert_eq!(
            utc_timestamp(1_796_363_961.25),
            "2026-12-04T05:59:21.250000"
        );
        assert!(
            process_sample()
                .is_some_and(|(rss, cpu, threads)| rss > 0.0 && cpu >= 0.0 && threads >= 1.0)
        );
    }

    #[test]
    fn helpers_encode_as_the_standards_say() {
        assert_eq!(base64(b"api:key"), "YXBpOmtleQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(percent_encode("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn a_server_down_all_run_costs_the_finish_only_a_few_seconds() {
        // A closed loopback port: every upload is refused, and by the end of the run
        // the backoff has grown past the unreachable limit.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let mut config = TrackerConfig::local();
        config.mlflow.tracking_uri = Some(format!("http://127.0.0.1:{port}"));
        config.retry.initial_seconds = 0.5;
        config.finish_unreachable_seconds = 1.0;
        let tracker = Tracker::start(dir.path(), RunInfo::new("down"), config).unwrap();
        for step in 0..40 {
            tracker.log(step, &[("x", step as f64)]);
            std::thread::sleep(Duration::from_millis(100));
        }
        let started = Instant::now();
        let report = tracker.finish(Status::Finished).unwrap();
        let seconds = started.elapsed().as_secs_f64();
        assert!(seconds < 2.5, "finish took {seconds:.1} s");
        assert!(
            report.remote["mlflow"].contains("unreachable"),
            "{report:?}"
        );
        assert_eq!(report.records, 40);
    }

    #[test]
    fn a_restarted_run_continues_its_records_and_summary() {
        let dir = tempfile::tempdir().unwrap();
        let tracker =
            Tracker::start(dir.path(), RunInfo::new("r"), TrackerConfig::local()).unwrap();
        tracker.log(0, &[("a", 1.0)]);
        tracker.summary("best", serde_json::json!(1));
        tracker.finish(Status::Failed).unwrap();
        let first = RunInfo::load(dir.path()).unwrap();
        assert_eq!(first.status, Status::Failed);
        let tracker =
            Tracker::start(dir.path(), RunInfo::new("r"), TrackerConfig::local()).unwrap();
        tracker.log(1, &[("a", 2.0)]);
        tracker.summary("last", serde_json::json!(2));
        let report = tracker.finish(Status::Finished).unwrap();
        assert_eq!(report.records, 2);
        let info = RunInfo::load(dir.path()).unwrap();
        assert_eq!(
            (info.starts, info.status, info.started),
            (2, Status::Finished, first.started)
        );
        let records = record::read_from(&dir.path().join(METRICS_FILE), 0).unwrap();
        assert_eq!(records.iter().map(|r| r.0.seq).collect::<Vec<_>>(), [0, 1]);
        let summary: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("summary.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(summary, serde_json::json!({"best": 1, "last": 2}));
        // Two starts, two TensorBoard files.
        assert_eq!(
            std::fs::read_dir(dir.path().join("tensorboard"))
                .unwrap()
                .count(),
            2
        );
    }
}
