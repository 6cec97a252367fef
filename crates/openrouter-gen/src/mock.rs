//! A loopback OpenAI-compatible server for tests and benchmarks: every reply comes
//! from a handler the test scripts (status, headers, body, delay), every request is
//! recorded, and [`problem_writer`] answers like a model asked for problems of a
//! `synth-tasks` domain. Nothing here reaches a network beyond 127.0.0.1; the server
//! stops when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};
use synth_tasks::{Domain, Rng};

use crate::client::Pricing;

/// A request as the mock received it.
#[derive(Debug, Clone, PartialEq)]
pub struct MockRequest {
    /// `GET`, `POST`.
    pub method: String,
    /// Path, e.g. `/api/v1/chat/completions`.
    pub path: String,
    /// Headers (names lower-case).
    pub headers: Vec<(String, String)>,
    /// The JSON body (`null` when empty or not JSON).
    pub body: Value,
}

impl MockRequest {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The last user message of a chat request.
    pub fn last_user_message(&self) -> &str {
        self.body["messages"]
            .as_array()
            .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
    }
}

/// A scripted reply.
#[derive(Debug, Clone, PartialEq)]
pub struct MockReply {
    /// HTTP status.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
    /// Wait before answering.
    pub delay: Duration,
}

impl MockReply {
    /// A JSON reply.
    pub fn json(status: u16, body: &Value) -> MockReply {
        MockReply {
            status,
            headers: Vec::new(),
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// A raw body (malformed JSON, HTML error pages).
    pub fn raw(status: u16, body: &str) -> MockReply {
        MockReply {
            status,
            headers: Vec::new(),
            body: body.to_owned(),
            delay: Duration::ZERO,
        }
    }

    /// OpenRouter's error body `{"error": {"code", "message"}}`; `code` may be a
    /// number or a string.
    pub fn error(status: u16, code: Value, message: &str) -> MockReply {
        MockReply::json(
            status,
            &json!({"error": {"code": code, "message": message}}),
        )
    }

    /// With a header.
    pub fn with_header(mut self, name: &str, value: &str) -> MockReply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Answered after `delay`.
    pub fn with_delay(mut self, delay: Duration) -> MockReply {
        self.delay = delay;
        self
    }
}

type Handler = dyn Fn(usize, &MockRequest) -> MockReply + Send + Sync;

/// The server.
pub struct MockServer {
    address: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<MockRequest>>>,
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServer")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl MockServer {
    /// Starts on a free loopback port; `handler` gets each request's number (from 0)
    /// and the request. Requests are recorded.
    pub fn start(
        handler: impl Fn(usize, &MockRequest) -> MockReply + Send + Sync + 'static,
    ) -> std::io::Result<MockServer> {
        Self::start_on("127.0.0.1:0", handler, true)
    }

    /// Starts on `address`; `record` keeps every request (off for benchmarks).
    pub fn start_on(
        address: &str,
        handler: impl Fn(usize, &MockRequest) -> MockReply + Send + Sync + 'static,
        record: bool,
    ) -> std::io::Result<MockServer> {
        let listener = TcpListener::bind(address)?;
        let address = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let accept = {
            let (requests, count, stop) = (requests.clone(), count.clone(), stop.clone());
            std::thread::Builder::new()
                .name("mock-accept".into())
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(stream) = stream else { continue };
                        let (handler, requests, count, stop) = (
                            handler.clone(),
                            requests.clone(),
                            count.clone(),
                            stop.clone(),
                        );
                        let _ = std::thread::Builder::new()
                            .name("mock-connection".into())
                            .spawn(move || {
                                serve(stream, &*handler, &requests, &count, &stop, record)
                            });
                    }
                })?
        };
        Ok(MockServer {
            address,
            requests,
            count,
            stop,
            accept: Some(accept),
        })
    }

    /// The API base URL (`http://127.0.0.1:PORT/api/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/api/v1", self.address)
    }

    /// Requests recorded so far.
    pub fn requests(&self) -> Vec<MockRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Requests received so far.
    pub fn request_count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Blocks until the process is killed (the CLI's `mock` command).
    pub fn wait(mut self) {
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.address);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn serve(
    mut stream: TcpStream,
    handler: &Handler,
    requests: &Mutex<Vec<MockRequest>>,
    count: &AtomicUsize,
    stop: &AtomicBool,
    record: bool,
) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buffer: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some((request, used)) = parse(&buffer) {
            buffer.drain(..used);
            let number = count.fetch_add(1, Ordering::SeqCst);
            if record {
                requests
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(request.clone());
            }
            let reply = handler(number, &request);
            if !reply.delay.is_zero() {
                std::thread::sleep(reply.delay);
            }
            let mut head = format!(
                "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                reply.status,
                if reply.status < 400 { "OK" } else { "Error" },
                reply.body.len()
            );
            for (name, value) in &reply.headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            if stream.write_all(head.as_bytes()).is_err()
                || stream.write_all(reply.body.as_bytes()).is_err()
            {
                return;
            }
            continue;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// One complete request at the start of `buffer`, and the bytes it used.
fn parse(buffer: &[u8]) -> Option<(MockRequest, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head) = request.parse(buffer).ok()? else {
        return None;
    };
    let headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    if buffer.len() < head + length {
        return None;
    }
    let body = serde_json::from_slice(&buffer[head..head + length]).unwrap_or(Value::Null);
    Some((
        MockRequest {
            method: request.method.unwrap_or_default().to_owned(),
            path: request.path.unwrap_or_default().to_owned(),
            headers,
            body,
        },
        head + length,
    ))
}

/// A chat completion reply with `content`, token counts (a byte per four characters)
/// and `usage.cost` at `price` (omitted when `price` is `None`).
pub fn completion_reply(request: &MockRequest, content: &str, price: Option<Pricing>) -> MockReply {
    let prompt_tokens = (request.body["messages"].to_string().len() / 4) as u64;
    let completion_tokens = (content.len() / 4).max(1) as u64;
    let mut usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    if let Some(p) = price {
        usage["cost"] = json!(
            p.request + p.prompt * prompt_tokens as f64 + p.completion * completion_tokens as f64
        );
    }
    MockReply::json(
        200,
        &json!({
            "id": format!("gen-mock-{}", request.body["seed"]),
            "object": "chat.completion",
            "model": request.body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": usage,
        }),
    )
}

/// A `/models` reply listing `models` at `price`.
pub fn models_reply(models: &[&str], price: Pricing) -> MockReply {
    let data: Vec<Value> = models
        .iter()
        .map(|id| {
            json!({
                "id": id,
                "pricing": {"prompt": price.prompt.to_string(), "completion": price.completion.to_string(), "request": price.request.to_string()},
                "supported_parameters": ["seed", "response_format", "structured_outputs", "max_tokens"],
            })
        })
        .collect();
    MockReply::json(200, &json!({"data": data}))
}

/// The value after `label` on its line of `text` (`Domain: arithmetic`).
fn field<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .map(str::trim)
}

/// A handler that answers like a model asked for problems: for a request naming a
/// `synth-tasks` domain, `exactly N` problems of that domain at the asked difficulty
/// (drawn from the request's seed, so the same request gets the same reply), with
/// their answers; agreement requests are answered by the domain's solvers; `/models`
/// lists `model` at `price`.
pub fn problem_writer(
    model: &str,
    price: Pricing,
) -> impl Fn(usize, &MockRequest) -> MockReply + Send + Sync + 'static {
    let model = model.to_owned();
    move |_, request| {
        if request.method == "GET" && request.path.ends_with("/models") {
            return models_reply(&[&model], price);
        }
        if !request.path.ends_with("/chat/completions") {
            return MockReply::error(404, json!(404), "no such endpoint");
        }
        // The topic is in the first user message, the count in the last (a re-ask
        // repeats it).
        let users: Vec<&str> = request.body["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter(|m| m["role"] == "user")
                    .filter_map(|m| m["content"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        let first = users.first().copied().unwrap_or_default();
        let domain = field(first, "Domain:").and_then(Domain::from_name);
        let difficulty: u32 = field(first, "Difficulty:")
            .and_then(|d| d.parse().ok())
            .unwrap_or(1);
        // "Write exactly N new problems" (or a re-ask's "with exactly N problems"):
        // the first `exactly` followed by a number.
        let wanted: usize = request
            .last_user_message()
            .split("exactly ")
            .skip(1)
            .find_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(1);
        let content = match domain {
            Some(d) => {
                let mut rng = Rng::new(request.body["seed"].as_u64().unwrap_or(0));
                let problems: Vec<Value> = (0..wanted)
                    .map(|_| {
                        let p = synth_tasks::generate(d, difficulty, &mut rng);
                        json!({"prompt": p.prompt, "answer": p.answer})
                    })
                    .collect();
                json!({"problems": problems}).to_string()
            }
            None => json!({"answers": []}).to_string(),
        };
        completion_reply(request, &content, Some(price))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pipelined_requests_and_waits_for_bodies() {
        let two = b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET /b HTTP/1.1\r\n\r\n";
        let (first, used) = parse(two).unwrap();
        assert_eq!((first.method.as_str(), first.path.as_str()), ("POST", "/a"));
        assert_eq!(first.body, json!({}));
        let (second, _) = parse(&two[used..]).unwrap();
        assert_eq!(second.path, "/b");
        assert!(parse(b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\n{}").is_none());
    }
}
