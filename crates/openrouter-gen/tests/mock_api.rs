//! The API source against a loopback mock scripted per test: success and the cache,
//! 429 with Retry-After, 500/502/503, malformed JSON, a reply that violates the
//! schema, numeric and string error codes, 401 and 402, replies slower than the
//! timeout, `usage.cost` present and absent, agreement checks for domains without a
//! solver, keys kept out of files and errors, and spend under the cap whatever the
//! concurrency, prices and failures.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use openrouter_gen::client::{ApiKey, Client, ClientConfig, Pricing, RetryConfig};
use openrouter_gen::generate::{ApiSource, GeneratorConfig};
use openrouter_gen::mock::{MockReply, MockRequest, MockServer, completion_reply, problem_writer};
use openrouter_gen::source::ProblemSource;
use openrouter_gen::spec::{GenerationSpec, Topic};
use proptest::prelude::*;
use serde_json::json;
use synth_tasks::dedup::DuplicateIndex;

const MODEL: &str = "mock/model";
const KEY: &str = "sk-or-v1-0123456789abcdef-secret";
const PRICE: Pricing = Pricing {
    prompt: 1e-7,
    completion: 4e-7,
    request: 0.0,
};

fn spec(domain: &str, n: usize) -> GenerationSpec {
    GenerationSpec {
        expert_id: 0,
        expert_name: format!("{domain}-expert"),
        topics: vec![Topic {
            domain: domain.into(),
            description: format!("{domain} problems"),
            difficulty: 2,
        }],
        num_examples: n,
        format: "prompt `Q?`, answer `A`".into(),
        // As self-eval writes them: "exactly" before the count must not confuse the mock.
        special_requirements: vec!["prompts in exactly the domain's format".into()],
    }
}

fn config(server: &MockServer, cache: &std::path::Path) -> GeneratorConfig {
    GeneratorConfig {
        client: ClientConfig {
            base_url: server.base_url(),
            timeout_seconds: 5.0,
            retry: RetryConfig {
                max_attempts: 5,
                base_delay_seconds: 0.01,
                max_delay_seconds: 2.0,
            },
            ..ClientConfig::default()
        },
        model: MODEL.into(),
        budget_usd: 1.0,
        cache_dir: cache.to_owned(),
        concurrency: 2,
        ..GeneratorConfig::default()
    }
}

fn source(config: GeneratorConfig) -> ApiSource {
    let client = Client::with_key(config.client.clone(), Some(ApiKey::new(KEY))).unwrap();
    ApiSource::with_client(config, client, DuplicateIndex::default()).unwrap()
}

/// The problem writer, with `fault` deciding (by chat-request number) whether to answer
/// otherwise.
fn scripted(
    fault: impl Fn(usize, &MockRequest) -> Option<MockReply> + Send + Sync + 'static,
) -> impl Fn(usize, &MockRequest) -> MockReply + Send + Sync + 'static {
    let writer = problem_writer(MODEL, PRICE);
    let chats = AtomicUsize::new(0);
    move |n, request| {
        if request.path.ends_with("/chat/completions") {
            let k = chats.fetch_add(1, Ordering::SeqCst);
            if let Some(reply) = fault(k, request) {
                return reply;
            }
        }
        writer(n, request)
    }
}

fn chat_requests(server: &MockServer) -> Vec<MockRequest> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .collect()
}

#[test]
fn success_then_a_rerun_from_the_cache_costs_nothing() {
    let server = MockServer::start(problem_writer(MODEL, PRICE)).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut first = source(config(&server, cache.path()));
    let problems = first.problems(&spec("arithmetic", 40), 40).unwrap();
    assert_eq!(problems.len(), 40);
    let report = first.report();
    assert!(report.total.requests >= 4, "{report:?}");
    assert!(report.total.usd > 0.0);
    assert_eq!(report.total.cache_hits, 0);
    // What went over the wire.
    let requests = chat_requests(&server);
    let r = &requests[0];
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(r.header("x-openrouter-title"), Some("phase7"));
    assert_eq!(r.body["response_format"]["type"], "json_schema");
    assert_eq!(r.body["response_format"]["json_schema"]["strict"], true);
    assert_eq!(r.body["provider"]["require_parameters"], true);
    assert!(r.body["seed"].is_u64());
    assert!(r.last_user_message().contains("Domain: arithmetic"));
    let sent = server.request_count();

    let mut second = source(config(&server, cache.path()));
    let again = second.problems(&spec("arithmetic", 40), 40).unwrap();
    assert_eq!(again, problems, "a re-run gives the same problems");
    let report = second.report();
    assert_eq!(report.total.requests, 0);
    assert_eq!(report.total.usd, 0.0);
    assert!(report.total.cache_hits >= 4);
    // Only the second source's /models listing reached the server.
    assert_eq!(server.request_count(), sent + 1);
}

#[test]
fn rate_limits_wait_for_retry_after_with_numeric_codes() {
    let server = MockServer::start(scripted(|k, _| {
        (k == 0).then(|| {
            MockReply::error(429, json!(429), "Rate limit exceeded").with_header("Retry-After", "1")
        })
    }))
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut c = config(&server, cache.path());
    c.concurrency = 1;
    let mut s = source(c);
    let started = Instant::now();
    let problems = s.problems(&spec("arithmetic", 10), 10).unwrap();
    assert_eq!(problems.len(), 10);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    let report = s.report();
    assert_eq!(report.total.retries, 1);
    assert_eq!(report.total.failed_requests, 0);
}

#[test]
fn server_errors_and_malformed_replies_are_retried() {
    let server = MockServer::start(scripted(|k, _| match k {
        0 => Some(MockReply::error(500, json!(500), "internal")),
        1 => Some(MockReply::error(502, json!(502), "model is down")),
        2 => Some(MockReply::raw(503, "<html>unavailable</html>")),
        3 => Some(MockReply::raw(200, "{\"choices\": [")),
        4 => Some(MockReply::json(
            200,
            &json!({"error": {"code": "provider_error", "message": "mid-generation"}}),
        )),
        _ => None,
    }))
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut c = config(&server, cache.path());
    c.concurrency = 1;
    c.client.retry.max_attempts = 6;
    let mut s = source(c);
    assert_eq!(s.problems(&spec("code", 10), 10).unwrap().len(), 10);
    let report = s.report();
    assert_eq!(report.total.retries, 5, "{report:?}");
    assert_eq!(report.total.failed_requests, 0);
    assert!(s.stopped().is_none());
}

#[test]
fn a_reply_that_violates_the_schema_is_re_asked_once_with_the_reason() {
    let server = MockServer::start(scripted(|k, request| {
        (k == 0).then(|| {
            completion_reply(
                request,
                &json!({"problems": [{"prompt": "1+2=", "answer": 3}]}).to_string(),
                Some(PRICE),
            )
        })
    }))
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut c = config(&server, cache.path());
    c.concurrency = 1;
    let mut s = source(c);
    assert_eq!(s.problems(&spec("arithmetic", 10), 10).unwrap().len(), 10);
    let requests = chat_requests(&server);
    assert!(requests.len() >= 2);
    let re_ask = requests[1].last_user_message();
    assert!(
        re_ask.contains("not usable") && re_ask.contains("violates the schema"),
        "{re_ask}"
    );
    assert_eq!(requests[1].body["messages"].as_array().unwrap().len(), 4);
    let report = s.report();
    assert_eq!(
        report.total.rejections.get("reply violates the schema"),
        Some(&1),
        "{report:?}"
    );
}

#[test]
fn wrong_answers_are_rejected_and_a_mostly_wrong_reply_re_asked() {
    let server = MockServer::start(scripted(|k, request| {
        (k == 0).then(|| {
            let problems: Vec<_> = (0..10)
                .map(|i| json!({"prompt": format!("{}+{}=", 10 + i, 20 + i), "answer": "0"}))
                .collect();
            completion_reply(
                request,
                &json!({"problems": problems}).to_string(),
                Some(PRICE),
            )
        })
    }))
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut c = config(&server, cache.path());
    c.concurrency = 1;
    let mut s = source(c);
    assert_eq!(s.problems(&spec("arithmetic", 10), 10).unwrap().len(), 10);
    let requests = chat_requests(&server);
    assert!(
        requests[1]
            .last_user_message()
            .contains("10 of 10 problems failed")
    );
    assert_eq!(s.report().total.rejections.get("wrong answer"), Some(&10));
}

#[test]
fn credits_and_keys_stop_without_retrying_and_keep_what_was_made() {
    for (status, code) in [
        (402, json!(402)),
        (401, json!("invalid_key")),
        (400, json!("unsupported_value")),
    ] {
        let server = MockServer::start(scripted(move |k, _| {
            (k >= 1)
                .then(|| MockReply::error(status, code.clone(), &format!("refused (key {KEY})")))
        }))
        .unwrap();
        let cache = tempfile::tempdir().unwrap();
        let mut c = config(&server, cache.path());
        c.concurrency = 1;
        let mut s = source(c);
        let problems = s.problems(&spec("arithmetic", 50), 50).unwrap();
        assert_eq!(
            problems.len(),
            10,
            "the first reply's problems are kept ({status})"
        );
        assert!(s.refused());
        let stopped = s.stopped().unwrap().to_owned();
        assert!(stopped.contains(&format!("HTTP {status}")), "{stopped}");
        assert!(!stopped.contains(KEY), "the key leaked into: {stopped}");
        assert!(stopped.contains("[redacted]"));
        assert_eq!(chat_requests(&server).len(), 2, "no retry after {status}");
        // Nothing in the cache holds the key.
        for entry in walk(cache.path()) {
            let text = std::fs::read_to_string(&entry).unwrap();
            assert!(!text.contains(KEY), "{}", entry.display());
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.path().is_dir() {
            out.extend(walk(&entry.path()));
        } else {
            out.push(entry.path());
        }
    }
    out
}

#[test]
fn slow_replies_time_out_and_are_retried_at_the_worst_case() {
    let server = MockServer::start(scripted(|k, request| {
        (k == 0).then(|| {
            completion_reply(request, &json!({"problems": []}).to_string(), Some(PRICE))
                .with_delay(Duration::from_millis(1500))
        })
    }))
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut c = config(&server, cache.path());
    c.concurrency = 1;
    c.client.timeout_seconds = 0.5;
    let mut s = source(c);
    assert_eq!(s.problems(&spec("strings", 10), 10).unwrap().len(), 10);
    let report = s.report();
    assert_eq!(report.total.retries, 1);
    assert!(report.per_model[MODEL].requests >= 1);
    // The timed-out attempt may have been charged: its worst case (at least
    // max_tokens of completion) is kept in the report and the budget alike.
    assert!(
        report.total.usd >= PRICE.completion * 2048.0,
        "{}",
        report.total.usd
    );
    assert!((s.budget().spent() - report.total.usd).abs() < 1e-12);
}

#[test]
fn cost_from_usage_cost_else_tokens_else_the_worst_case() {
    for (with_cost, with_usage) in [(true, true), (false, true), (false, false)] {
        let server = MockServer::start(scripted(move |_, request| {
            let writer = problem_writer(MODEL, PRICE);
            let reply = writer(0, request);
            let mut body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
            if !with_cost {
                body["usage"].as_object_mut().unwrap().remove("cost");
            }
            if !with_usage {
                body.as_object_mut().unwrap().remove("usage");
            }
            Some(MockReply::json(200, &body))
        }))
        .unwrap();
        let cache = tempfile::tempdir().unwrap();
        let mut c = config(&server, cache.path());
        c.concurrency = 1;
        let mut s = source(c);
        s.problems(&spec("arithmetic", 10), 10).unwrap();
        let request = &chat_requests(&server)[0];
        let prompt_tokens = (request.body["messages"].to_string().len() / 4) as f64;
        let usd = s.report().total.usd;
        if with_usage {
            // The mock charges exactly what its token counts give.
            assert!(usd > PRICE.prompt * prompt_tokens && usd < 1e-3, "{usd}");
        } else {
            // Worst case: max_tokens completion tokens at least.
            assert!(usd >= PRICE.completion * 2048.0, "{usd}");
        }
    }
}

#[test]
fn domains_without_a_solver_need_the_checkers_majority() {
    // "capitals": the writer makes three problems, the checker agrees on two.
    let server = MockServer::start(|_, request: &MockRequest| {
        if request.path.ends_with("/models") {
            return openrouter_gen::mock::models_reply(&[MODEL], PRICE);
        }
        let text = request.last_user_message();
        let content = if text.starts_with("Answer these") {
            json!({"answers": ["Paris", "Rome", "Madrid"]})
        } else {
            json!({"problems": [
                {"prompt": "Capital of France?", "answer": "Paris"},
                {"prompt": "Capital of Italy?", "answer": "Rome"},
                {"prompt": "Capital of Spain?", "answer": "Lisbon"}
            ]})
        };
        completion_reply(request, &content.to_string(), Some(PRICE))
    })
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut c = config(&server, cache.path());
    c.problems_per_request = 3;
    c.max_requests_factor = 1.0;
    c.concurrency = 1;
    let mut s = source(c);
    let problems = s.problems(&spec("capitals", 3), 3).unwrap();
    let prompts: Vec<&str> = problems.iter().map(|p| p.prompt.as_str()).collect();
    assert_eq!(prompts, ["Capital of France?", "Capital of Italy?"]);
    let report = s.report();
    assert_eq!(
        report
            .total
            .rejections
            .get("checker model disagrees with the answer"),
        Some(&1)
    );
    // One writing request and three checker samples.
    assert_eq!(chat_requests(&server).len(), 4);
}

#[test]
fn four_hundred_problems_for_one_domain_with_a_cost_report() {
    let server = MockServer::start(problem_writer(MODEL, PRICE)).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut c = config(&server, cache.path());
    c.concurrency = 8;
    let held_out = DuplicateIndex::held_out(["47+25="]);
    let client = Client::with_key(c.client.clone(), Some(ApiKey::new(KEY))).unwrap();
    let mut s = ApiSource::with_client(c, client, held_out).unwrap();
    let problems = s.problems(&spec("arithmetic", 400), 400).unwrap();
    assert_eq!(problems.len(), 400);
    // Ten problems a reply: about 40 requests, more for screened-out problems.
    let requests = chat_requests(&server).len();
    assert!((40..=60).contains(&requests), "{requests}");
    let mut prompts: Vec<&str> = problems.iter().map(|p| p.prompt.as_str()).collect();
    prompts.sort_unstable();
    prompts.dedup();
    assert_eq!(prompts.len(), 400, "no duplicates");
    for p in &problems {
        assert_eq!(
            synth_tasks::solve(synth_tasks::Domain::Arithmetic, &p.prompt).as_deref(),
            Some(p.answer.as_str())
        );
    }
    let report = s.report();
    assert_eq!(report.total.accepted, 400);
    assert!(report.total.usd > 0.0 && report.total.usd < 1.0);
    let markdown = report.to_markdown();
    assert!(markdown.contains("400 problems accepted"), "{markdown}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    /// Whatever the concurrency, prices and failures, the mock's own total of what it
    /// charged never passes the cap.
    #[test]
    fn spend_never_passes_the_cap(
        concurrency in 1usize..9,
        price_scale in 1.0f64..400.0,
        failure_rate in 0.0f64..0.5,
        cap_requests in 1.0f64..12.0,
        seed in any::<u64>(),
    ) {
        let price = Pricing { prompt: PRICE.prompt * price_scale, completion: PRICE.completion * price_scale, request: 1e-6 };
        let charged = Arc::new(Mutex::new(0.0f64));
        let rng = Mutex::new(synth_tasks::Rng::new(seed));
        let total = charged.clone();
        let writer = problem_writer(MODEL, price);
        let server = MockServer::start(move |n, request| {
            if request.path.ends_with("/chat/completions") {
                let roll = rng.lock().unwrap().chance(failure_rate);
                if roll {
                    return MockReply::error(503, json!(503), "no provider");
                }
                let reply = writer(n, request);
                let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
                *total.lock().unwrap() += body["usage"]["cost"].as_f64().unwrap();
                return reply;
            }
            writer(n, request)
        }).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let mut c = config(&server, cache.path());
        c.concurrency = concurrency;
        c.max_tokens = 400;
        c.client.retry.max_attempts = 2;
        // A cap of a few requests' worst case.
        let worst = price.request + price.prompt * 3000.0 + price.completion * 400.0;
        c.budget_usd = worst * cap_requests;
        let mut s = source(c.clone());
        let _ = s.problems(&spec("arithmetic", 300), 300).unwrap();
        let spent = *charged.lock().unwrap();
        prop_assert!(spent <= c.budget_usd + 1e-12, "charged {spent} > cap {}", c.budget_usd);
        prop_assert!(s.budget().spent() <= c.budget_usd + 1e-12);
        prop_assert!(s.stopped().is_some_and(|r| r.starts_with("budget")) || s.report().total.accepted == 300);
    }
}
