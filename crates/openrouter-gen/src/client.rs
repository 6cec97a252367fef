//! A small blocking client for OpenAI-compatible chat completions (OpenRouter by
//! default; vLLM, llama.cpp's server, LiteLLM and OpenAI speak the same protocol).
//!
//! Why not async-openai: its default retry layer parses a 429's body into an error type
//! whose `code` is a string, and OpenRouter sends a number, so a rate limit comes back
//! as a deserialisation error without being retried; reading `usage.cost` and sending
//! `provider`/`models` need its untyped (`byot`) calls anyway. What is left is one
//! POST and one GET, which `ureq` (already the workspace's HTTP client) does without an
//! async runtime; concurrency is a handful of worker threads ([`crate::generate`]).
//!
//! Failures are classified once, here ([`ApiError::retryable`]), following
//! OpenRouter's documented table: 408, 429, 5xx, connection errors, timeouts, an
//! error inside an HTTP 200 body and unreadable replies are retried with exponential
//! backoff and jitter (honouring `Retry-After` and `X-RateLimit-Reset`); 400, 401, 403
//! and 402 without `Retry-After` are not.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// Where and how to reach the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Base URL of the OpenAI-compatible API. Default `https://openrouter.ai/api/v1`.
    pub base_url: String,
    /// Environment variable holding the API key. Default `OPENROUTER_API_KEY`. The key
    /// is read from there only, and never written anywhere.
    pub api_key_env: String,
    /// `HTTP-Referer` attribution header (OpenRouter). Default none.
    pub referer: Option<String>,
    /// `X-OpenRouter-Title` (and the older `X-Title`) attribution header. Default
    /// `phase7`.
    pub title: Option<String>,
    /// Seconds one request may take, connection included. Default 120.
    pub timeout_seconds: f64,
    /// Retries.
    pub retry: RetryConfig,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            base_url: "https://openrouter.ai/api/v1".into(),
            api_key_env: "OPENROUTER_API_KEY".into(),
            referer: None,
            title: Some("phase7".into()),
            timeout_seconds: 120.0,
            retry: RetryConfig::default(),
        }
    }
}

/// Retry policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per request, the first included. Default 6.
    pub max_attempts: u32,
    /// First backoff in seconds, doubled per attempt. Default 1.
    pub base_delay_seconds: f64,
    /// Longest wait between attempts, `Retry-After` included. Default 60.
    pub max_delay_seconds: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay_seconds: 1.0,
            max_delay_seconds: 60.0,
        }
    }
}

/// An API key. `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// The key in environment variable `name`, if set and not empty.
    pub fn from_env(name: &str) -> Option<ApiKey> {
        std::env::var(name)
            .ok()
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .map(ApiKey)
    }

    /// A key given directly (tests, embedding programs).
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }

    /// `text` with every occurrence of the key replaced by `[redacted]`.
    pub fn redact(&self, text: &str) -> String {
        if self.0.len() >= 4 {
            text.replace(&self.0, "[redacted]")
        } else {
            text.to_owned()
        }
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

/// A failed exchange with the API.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// A non-2xx status.
    #[error("HTTP {status} from {url}{}: {message}", code.as_ref().map(|c| format!(" (code {c})")).unwrap_or_default())]
    Status {
        /// The URL (no key: keys travel in headers).
        url: String,
        /// HTTP status.
        status: u16,
        /// `error.code`, a number or a string depending on the provider.
        code: Option<String>,
        /// `error.message`, or the start of the body.
        message: String,
        /// Seconds to wait, from `Retry-After` or `X-RateLimit-Reset`.
        retry_after: Option<f64>,
    },
    /// HTTP 200 whose body is an error (OpenRouter: an error after generation began).
    #[error("error in a 200 reply from {url}{}: {message}", code.as_ref().map(|c| format!(" (code {c})")).unwrap_or_default())]
    InBody {
        /// The URL.
        url: String,
        /// `error.code`.
        code: Option<String>,
        /// `error.message`.
        message: String,
    },
    /// The reply is not the JSON the protocol promises.
    #[error("unreadable reply from {url}: {message}")]
    Malformed {
        /// The URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// No reply within the timeout.
    #[error("no reply from {url} within {seconds} s")]
    Timeout {
        /// The URL.
        url: String,
        /// The timeout.
        seconds: f64,
    },
    /// The connection failed.
    #[error("cannot reach {url}: {message}")]
    Connection {
        /// The URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The caller chose not to send the attempt (its budget is spent).
    #[error("not sent: {0}")]
    NotSent(String),
    /// No key in the environment.
    #[error(
        "no API key: environment variable {0} is not set (export it, or choose the procedural or file source)"
    )]
    MissingKey(String),
    /// Attempts ran out; the last failure.
    #[error("gave up after {attempts} attempts; last: {last}")]
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: Box<ApiError>,
    },
}

impl ApiError {
    /// Whether trying again may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            ApiError::Status {
                status,
                retry_after,
                ..
            } => match status {
                408 | 429 => true,
                402 => retry_after.is_some(),
                s => *s >= 500,
            },
            ApiError::InBody { .. }
            | ApiError::Malformed { .. }
            | ApiError::Timeout { .. }
            | ApiError::Connection { .. } => true,
            ApiError::MissingKey(_) | ApiError::NotSent(_) | ApiError::Exhausted { .. } => false,
        }
    }

    /// A short label for reports: `http_429`, `timeout`, `in_body`, ...
    pub fn label(&self) -> String {
        match self {
            ApiError::Status { status, .. } => format!("http_{status}"),
            ApiError::InBody { .. } => "error_in_body".into(),
            ApiError::Malformed { .. } => "malformed_reply".into(),
            ApiError::Timeout { .. } => "timeout".into(),
            ApiError::Connection { .. } => "connection".into(),
            ApiError::MissingKey(_) => "missing_key".into(),
            ApiError::NotSent(_) => "not_sent".into(),
            ApiError::Exhausted { last, .. } => last.label(),
        }
    }

    /// Whether the server may have done (and charged for) the work: a timeout or a
    /// connection lost after sending. Budgets then keep the worst case.
    pub fn maybe_charged(&self) -> bool {
        matches!(self, ApiError::Timeout { .. } | ApiError::Connection { .. })
    }

    /// The seconds the server asked to wait, if it did.
    pub fn retry_after(&self) -> Option<f64> {
        match self {
            ApiError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// One chat completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The generation id (`gen-...` on OpenRouter).
    pub id: String,
    /// The model that served it (a fallback may have).
    pub model: String,
    /// The first choice's text.
    pub content: String,
    /// Why it stopped (`stop`, `length`, ...).
    pub finish_reason: Option<String>,
    /// `usage.prompt_tokens`.
    pub prompt_tokens: Option<u64>,
    /// `usage.completion_tokens`.
    pub completion_tokens: Option<u64>,
    /// `usage.cost` in USD (OpenRouter), when the server sent it.
    pub cost_usd: Option<f64>,
}

/// A model's prices in USD (per token, per request).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    /// USD per prompt token.
    pub prompt: f64,
    /// USD per completion token.
    pub completion: f64,
    /// USD per request.
    #[serde(default)]
    pub request: f64,
}

/// A model listed by `/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Its id (`openai/gpt-4o-mini`).
    pub id: String,
    /// Its prices.
    pub pricing: Pricing,
    /// `supported_parameters`, when listed.
    pub supported_parameters: Vec<String>,
}

/// One retry, as the caller may want to count it.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryEvent {
    /// The attempt that failed (1-based).
    pub attempt: u32,
    /// Its failure's label ([`ApiError::label`]).
    pub label: String,
    /// Seconds waited before the next attempt.
    pub wait_seconds: f64,
}

/// The client.
#[derive(Debug, Clone)]
pub struct Client {
    agent: ureq::Agent,
    config: ClientConfig,
    key: Option<ApiKey>,
}

impl Client {
    /// A client with the key from `config.api_key_env` (none when unset: servers that
    /// need no key, such as a local vLLM, still work).
    pub fn new(config: ClientConfig) -> Result<Client> {
        let key = ApiKey::from_env(&config.api_key_env);
        Self::with_key(config, key)
    }

    /// A client with an explicit key.
    pub fn with_key(config: ClientConfig, key: Option<ApiKey>) -> Result<Client> {
        if config.timeout_seconds.is_nan() || config.timeout_seconds <= 0.0 {
            return Err(Error::Config(format!(
                "client.timeout_seconds must be positive, got {}",
                config.timeout_seconds
            )));
        }
        if config.retry.max_attempts == 0 {
            return Err(Error::Config(
                "client.retry.max_attempts must be at least 1".into(),
            ));
        }
        if !config.base_url.starts_with("http://") && !config.base_url.starts_with("https://") {
            return Err(Error::Config(format!(
                "client.base_url must start with http:// or https://, got `{}`",
                config.base_url
            )));
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs_f64(config.timeout_seconds)))
            .http_status_as_error(false)
            .max_idle_connections_per_host(64)
            .build()
            .into();
        Ok(Client { agent, config, key })
    }

    /// Whether a key is set.
    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.config.base_url.trim_end_matches('/'))
    }

    fn redact(&self, text: String) -> String {
        match &self.key {
            Some(key) => key.redact(&text),
            None => text,
        }
    }

    fn request(&self, method: &str, url: &str) -> ureq::http::request::Builder {
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(url)
            .header("Content-Type", "application/json");
        if let Some(ApiKey(key)) = &self.key {
            builder = builder.header("Authorization", format!("Bearer {key}"));
        }
        if let Some(referer) = &self.config.referer {
            builder = builder.header("HTTP-Referer", referer);
        }
        if let Some(title) = &self.config.title {
            builder = builder
                .header("X-OpenRouter-Title", title)
                .header("X-Title", title);
        }
        builder
    }

    /// One exchange: status, wait asked for, body.
    fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> std::result::Result<(u16, Option<f64>, String), ApiError> {
        let url = self.url(path);
        let request = self
            .request(method, &url)
            .body(body)
            .map_err(|e| ApiError::Connection {
                url: url.clone(),
                message: e.to_string(),
            })?;
        let failure = |e: ureq::Error| match e {
            ureq::Error::Timeout(_) => ApiError::Timeout {
                url: url.clone(),
                seconds: self.config.timeout_seconds,
            },
            other => ApiError::Connection {
                url: url.clone(),
                message: self.redact(other.to_string()),
            },
        };
        let mut response = self.agent.run(request).map_err(failure)?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .map(str::to_owned)
        };
        let retry_after = header("Retry-After")
            .and_then(|v| v.parse::<f64>().ok())
            .or_else(|| header("X-RateLimit-Reset").and_then(|v| reset_wait(&v)));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(failure)?;
        Ok((status, retry_after, text))
    }

    /// One attempt at a chat completion with the JSON `body` (OpenAI's request shape;
    /// OpenRouter's extras welcome).
    pub fn chat_once(&self, body: &Value) -> std::result::Result<Completion, ApiError> {
        let url = self.url("chat/completions");
        let bytes = serde_json::to_vec(body).map_err(|e| ApiError::Malformed {
            url: url.clone(),
            message: format!("cannot encode the request: {e}"),
        })?;
        let (status, retry_after, text) = self.exchange("POST", "chat/completions", bytes)?;
        let parsed: std::result::Result<Value, _> = serde_json::from_str(&text);
        if !(200..300).contains(&status) {
            let (code, message) = match &parsed {
                Ok(v) => error_fields(v),
                Err(_) => (None, None),
            };
            return Err(ApiError::Status {
                url,
                status,
                code,
                message: self.redact(message.unwrap_or_else(|| snippet(&text))),
                retry_after,
            });
        }
        let value = parsed.map_err(|e| ApiError::Malformed {
            url: url.clone(),
            message: format!("not JSON ({e}): {}", self.redact(snippet(&text))),
        })?;
        if value.get("error").is_some_and(|e| !e.is_null()) {
            let (code, message) = error_fields(&value);
            return Err(ApiError::InBody {
                url,
                code,
                message: self.redact(message.unwrap_or_else(|| snippet(&text))),
            });
        }
        let malformed = |message: &str| ApiError::Malformed {
            url: url.clone(),
            message: message.to_owned(),
        };
        let choice = value
            .get("choices")
            .and_then(|c| c.get(0))
            .ok_or_else(|| malformed("no `choices[0]`"))?;
        let finish_reason = choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if finish_reason.as_deref() == Some("error") {
            return Err(ApiError::InBody {
                url,
                code: None,
                message: "finish_reason `error`".into(),
            });
        }
        let content = choice
            .get("message")
            .and_then(|m| m.get("content"))
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("`choices[0].message.content` is missing or not text"))?
            .to_owned();
        let usage = value.get("usage");
        let number = |key: &str| usage.and_then(|u| u.get(key)).and_then(Value::as_u64);
        Ok(Completion {
            id: value
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            model: value
                .get("model")
                .and_then(Value::as_str)
                .or_else(|| body.get("model").and_then(Value::as_str))
                .unwrap_or_default()
                .to_owned(),
            content,
            finish_reason,
            prompt_tokens: number("prompt_tokens"),
            completion_tokens: number("completion_tokens"),
            cost_usd: usage
                .and_then(|u| u.get("cost"))
                .and_then(Value::as_f64)
                .filter(|c| c.is_finite() && *c >= 0.0),
        })
    }

    /// A chat completion with retries. `on_retry` hears of every failed attempt that
    /// will be retried. `jitter_seed` makes the jitter reproducible per request.
    pub fn chat(
        &self,
        body: &Value,
        jitter_seed: u64,
        on_retry: &mut dyn FnMut(&RetryEvent),
    ) -> std::result::Result<Completion, ApiError> {
        self.with_retries(jitter_seed, on_retry, || self.chat_once(body))
    }

    /// Runs `attempt_once` until it succeeds, fails for good, or attempts run out,
    /// waiting between attempts as [`RetryConfig`] and the server say.
    pub fn with_retries<T>(
        &self,
        jitter_seed: u64,
        on_retry: &mut dyn FnMut(&RetryEvent),
        mut attempt_once: impl FnMut() -> std::result::Result<T, ApiError>,
    ) -> std::result::Result<T, ApiError> {
        let retry = &self.config.retry;
        let mut rng = synth_tasks::Rng::new(jitter_seed);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match attempt_once() {
                Ok(value) => return Ok(value),
                Err(error) if !error.retryable() => return Err(error),
                Err(error) if attempt >= retry.max_attempts => {
                    return Err(ApiError::Exhausted {
                        attempts: attempt,
                        last: Box::new(error),
                    });
                }
                Err(error) => {
                    let wait = backoff(retry, attempt, error.retry_after(), &mut rng);
                    on_retry(&RetryEvent {
                        attempt,
                        label: error.label(),
                        wait_seconds: wait,
                    });
                    std::thread::sleep(Duration::from_secs_f64(wait));
                }
            }
        }
    }

    /// The models `/models` lists, with their prices.
    pub fn models(&self) -> std::result::Result<Vec<ModelInfo>, ApiError> {
        let url = self.url("models");
        let mut ignore = |_: &RetryEvent| {};
        let text = self.with_retries(0, &mut ignore, || {
            let (status, retry_after, text) = self.exchange("GET", "models", Vec::new())?;
            if !(200..300).contains(&status) {
                let (code, message) = serde_json::from_str::<Value>(&text)
                    .map(|v| error_fields(&v))
                    .unwrap_or((None, None));
                return Err(ApiError::Status {
                    url: url.clone(),
                    status,
                    code,
                    message: self.redact(message.unwrap_or_else(|| snippet(&text))),
                    retry_after,
                });
            }
            Ok(text)
        })?;
        parse_models(&text).map_err(|message| ApiError::Malformed { url, message })
    }
}

/// The models of a `/models` reply.
pub fn parse_models(text: &str) -> std::result::Result<Vec<ModelInfo>, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let data = value
        .get("data")
        .and_then(Value::as_array)
        .ok_or("no `data` array")?;
    let mut models = Vec::with_capacity(data.len());
    for (i, entry) in data.iter().enumerate() {
        let id = entry
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("data[{i}] has no `id`"))?;
        let price = |key: &str| -> std::result::Result<f64, String> {
            match entry.get("pricing").and_then(|p| p.get(key)) {
                None | Some(Value::Null) => Ok(0.0),
                Some(Value::String(s)) => s
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|p| p.is_finite() && *p >= 0.0)
                    .ok_or_else(|| format!("model `{id}`: pricing.{key} `{s}` is not a price")),
                Some(Value::Number(n)) => n
                    .as_f64()
                    .filter(|p| p.is_finite() && *p >= 0.0)
                    .ok_or_else(|| format!("model `{id}`: pricing.{key} is not a price")),
                Some(other) => Err(format!(
                    "model `{id}`: pricing.{key} is {other}, not a price"
                )),
            }
        };
        if entry.get("pricing").is_none() {
            return Err(format!("model `{id}` has no `pricing`"));
        }
        models.push(ModelInfo {
            id: id.to_owned(),
            pricing: Pricing {
                prompt: price("prompt")?,
                completion: price("completion")?,
                request: price("request")?,
            },
            supported_parameters: entry
                .get("supported_parameters")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    Ok(models)
}

/// The wait before attempt `attempt + 1`: exponential backoff with jitter (between half
/// and all of `base x 2^(attempt-1)`), at least what the server asked, at most the cap.
fn backoff(
    retry: &RetryConfig,
    attempt: u32,
    asked: Option<f64>,
    rng: &mut synth_tasks::Rng,
) -> f64 {
    let exponential =
        retry.base_delay_seconds * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
    let fraction = 0.5 + 0.5 * ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64);
    let wait = (exponential * fraction).max(asked.unwrap_or(0.0));
    wait.clamp(0.0, retry.max_delay_seconds)
}

/// Seconds until `X-RateLimit-Reset` (a Unix time in milliseconds on OpenRouter; in
/// seconds, or a plain delay, elsewhere).
fn reset_wait(value: &str) -> Option<f64> {
    let reset: f64 = value.parse().ok()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    let wait = if reset > 1e12 {
        reset / 1000.0 - now
    } else if reset > 1e9 {
        reset - now
    } else {
        reset
    };
    Some(wait.max(0.0))
}

/// `error.code` (number or string, as text) and `error.message` of an error body.
fn error_fields(value: &Value) -> (Option<String>, Option<String>) {
    let error = value.get("error");
    let code = error.and_then(|e| e.get("code")).and_then(|c| match c {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    let message = error.and_then(|e| match e {
        Value::String(s) => Some(s.clone()),
        _ => e.get("message").and_then(Value::as_str).map(str::to_owned),
    });
    (code, message)
}

fn snippet(text: &str) -> String {
    let trimmed = text.trim();
    let cut: String = trimmed.chars().take(200).collect();
    if cut.len() < trimmed.len() {
        format!("{cut}...")
    } else if cut.is_empty() {
        "(empty body)".into()
    } else {
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_documented_table() {
        let status = |status, retry_after| ApiError::Status {
            url: "u".into(),
            status,
            code: None,
            message: "m".into(),
            retry_after,
        };
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(status(s, None).retryable(), "{s}");
        }
        for s in [400, 401, 402, 403, 404] {
            assert!(!status(s, None).retryable(), "{s}");
        }
        assert!(status(402, Some(5.0)).retryable());
    }

    #[test]
    fn error_codes_as_numbers_or_strings() {
        let numeric: Value = serde_json::json!({"error": {"code": 429, "message": "slow down"}});
        assert_eq!(
            error_fields(&numeric),
            (Some("429".into()), Some("slow down".into()))
        );
        let text: Value =
            serde_json::json!({"error": {"code": "unsupported_value", "message": "no"}});
        assert_eq!(error_fields(&text).0.as_deref(), Some("unsupported_value"));
        let bare: Value = serde_json::json!({"error": "plain"});
        assert_eq!(error_fields(&bare), (None, Some("plain".into())));
    }

    #[test]
    fn backoff_grows_honours_retry_after_and_caps() {
        let retry = RetryConfig {
            max_attempts: 6,
            base_delay_seconds: 1.0,
            max_delay_seconds: 10.0,
        };
        let mut rng = synth_tasks::Rng::new(1);
        for attempt in 1..=3 {
            let wait = backoff(&retry, attempt, None, &mut rng);
            let full = 2f64.powi(attempt as i32 - 1);
            assert!(wait >= full / 2.0 && wait <= full, "{attempt}: {wait}");
        }
        assert_eq!(backoff(&retry, 1, Some(7.5), &mut rng), 7.5);
        assert_eq!(backoff(&retry, 1, Some(90.0), &mut rng), 10.0);
        assert_eq!(backoff(&retry, 20, None, &mut rng), 10.0);
    }

    #[test]
    fn rate_limit_reset_in_milliseconds_seconds_or_delay() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let ms = reset_wait(&format!("{}", ((now + 3.0) * 1000.0) as u64)).unwrap();
        assert!((ms - 3.0).abs() < 1.0, "{ms}");
        let s = reset_wait(&format!("{}", (now + 5.0) as u64)).unwrap();
        assert!((s - 5.0).abs() < 1.5, "{s}");
        assert_eq!(reset_wait("2"), Some(2.0));
        assert_eq!(reset_wait("soon"), None);
    }

    #[test]
    fn models_with_string_prices() {
        let text = r#"{"data":[{"id":"a/b","pricing":{"prompt":"0.00000015","completion":"0.0000006","request":"0"},"supported_parameters":["seed","response_format"]},{"id":"c/free","pricing":{"prompt":"0","completion":"0"}}]}"#;
        let models = parse_models(text).unwrap();
        assert_eq!(models.len(), 2);
        assert!((models[0].pricing.completion - 6e-7).abs() < 1e-18);
        assert_eq!(models[1].pricing, Pricing::default());
        let bad = r#"{"data":[{"id":"x","pricing":{"prompt":"cheap"}}]}"#;
        assert!(
            parse_models(bad)
                .unwrap_err()
                .contains("pricing.prompt `cheap`")
        );
    }

    #[test]
    fn keys_stay_hidden() {
        let key = ApiKey::new("sk-or-v1-secret");
        assert_eq!(format!("{key:?}"), "ApiKey([redacted])");
        assert_eq!(
            key.redact("bad key sk-or-v1-secret!"),
            "bad key [redacted]!"
        );
    }
}
