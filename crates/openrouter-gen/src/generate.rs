//! Problems from a chat API: a dataset spec becomes requests (one topic each: the
//! domain's description and exact format, solved examples at the wanted difficulty,
//! the spec's requirements), each asking for a batch of problems as JSON under a
//! schema (`response_format: json_schema`, checked again here). Every problem's answer
//! is recomputed by the domain's solver where one exists, else a checker model (by
//! default the same model: self-consistency) must agree with it by majority. A reply
//! that is malformed, or whose problems mostly fail, is re-asked once with the reason.
//!
//! Requests run on `concurrency` worker threads, but replies are screened in request
//! order, so the dataset does not depend on which reply came first. Every request goes
//! through the cache (a re-run sends nothing) and the budget (its worst case reserved
//! before it is sent).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use synth_tasks::dedup::DuplicateIndex;
use synth_tasks::{Domain, Rng, Split};

use crate::budget::{Budget, Exhausted};
use crate::cache::{self, Cache, Entry};
use crate::client::{ApiError, Client, ClientConfig, Completion, Pricing};
use crate::report::{CostReport, Tally};
use crate::source::{AnswerCheck, ProblemSource, Screen, SourcedProblem, check_answer, reason_key};
use crate::spec::GenerationSpec;
use crate::{Error, Result};

/// Settings of API generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeneratorConfig {
    /// The API.
    pub client: ClientConfig,
    /// Model to ask. Default `openai/gpt-4o-mini`.
    pub model: String,
    /// OpenRouter `models` fallbacks, tried in order when the model fails. Default none.
    pub fallback_models: Vec<String>,
    /// OpenRouter `provider` routing object. Default `{"require_parameters": true,
    /// "data_collection": "deny"}` (only providers that honour the schema and the seed,
    /// and that do not keep prompts). An empty object (or `null`) sends none (other
    /// servers).
    pub provider: Value,
    /// Problems asked for per request. Default 10.
    pub problems_per_request: usize,
    /// Sampling temperature. Default 0.8.
    pub temperature: f64,
    /// Most completion tokens per request (and the worst case the budget reserves).
    /// Default 2048.
    pub max_tokens: u32,
    /// Seed of request seeds and retry jitter. Default 0.
    pub seed: u64,
    /// Requests in flight. Default 4.
    pub concurrency: usize,
    /// USD cap of the run (every expert together). Default 5.
    pub budget_usd: f64,
    /// USD cap per expert. Default none.
    pub expert_budget_usd: Option<f64>,
    /// Most requests per call, as a multiple of the requests the wanted count needs.
    /// Default 3.
    pub max_requests_factor: f64,
    /// Prices per model (USD per token, per request), used instead of `/models`:
    /// needed for servers without one (a local vLLM: all zero). Default none.
    pub prices: BTreeMap<String, Pricing>,
    /// Solved examples shown per request. Default 3.
    pub solved_examples: usize,
    /// 3-gram Jaccard similarity from which prompts are near duplicates. Default 0.9.
    pub near_duplicate: f64,
    /// Model that checks answers of domains without a solver. Default: the generating
    /// model (self-consistency).
    pub verify_model: Option<String>,
    /// Independent answers the checker gives; the problem's answer must be the
    /// majority's. Default 3.
    pub agreement_samples: usize,
    /// Cache folder. Default `.cache/openrouter-gen` under the working directory.
    pub cache_dir: PathBuf,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            client: ClientConfig::default(),
            model: "openai/gpt-4o-mini".into(),
            fallback_models: Vec::new(),
            provider: json!({"require_parameters": true, "data_collection": "deny"}),
            problems_per_request: 10,
            temperature: 0.8,
            max_tokens: 2048,
            seed: 0,
            concurrency: 4,
            budget_usd: 5.0,
            expert_budget_usd: None,
            max_requests_factor: 3.0,
            prices: BTreeMap::new(),
            solved_examples: 3,
            near_duplicate: 0.9,
            verify_model: None,
            agreement_samples: 3,
            cache_dir: PathBuf::from(".cache/openrouter-gen"),
        }
    }
}

impl GeneratorConfig {
    /// Checks ranges; the error names the field.
    pub fn check(&self) -> Result<()> {
        let fail = |m: String| Err(Error::Config(m));
        if self.model.trim().is_empty() {
            return fail("model is empty".into());
        }
        if self.problems_per_request == 0 {
            return fail("problems_per_request must be at least 1".into());
        }
        if self.concurrency == 0 || self.concurrency > 256 {
            return fail(format!(
                "concurrency must be 1..=256, got {}",
                self.concurrency
            ));
        }
        if self.budget_usd.is_nan() || self.budget_usd < 0.0 {
            return fail(format!("budget_usd must be >= 0, got {}", self.budget_usd));
        }
        if self
            .expert_budget_usd
            .is_some_and(|b| b.is_nan() || b < 0.0)
        {
            return fail("expert_budget_usd must be >= 0".into());
        }
        if self.max_requests_factor.is_nan() || self.max_requests_factor < 1.0 {
            return fail(format!(
                "max_requests_factor must be >= 1, got {}",
                self.max_requests_factor
            ));
        }
        if self.max_tokens == 0 {
            return fail("max_tokens must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.near_duplicate) {
            return fail(format!(
                "near_duplicate must be in [0, 1], got {}",
                self.near_duplicate
            ));
        }
        if self.agreement_samples == 0 {
            return fail("agreement_samples must be at least 1".into());
        }
        for (model, p) in &self.prices {
            if [p.prompt, p.completion, p.request]
                .iter()
                .any(|v| !(v.is_finite() && *v >= 0.0))
            {
                return fail(format!("prices.{model}: prices must be finite and >= 0"));
            }
        }
        Ok(())
    }

    /// The models a request may be served by.
    fn models(&self) -> Vec<String> {
        let mut models = vec![self.model.clone()];
        models.extend(self.fallback_models.iter().cloned());
        if let Some(v) = &self.verify_model {
            models.push(v.clone());
        }
        models.dedup();
        models
    }
}

/// The JSON schema replies must follow.
pub fn problems_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["problems"],
        "properties": {
            "problems": {
                "type": "array",
                "description": "The new problems.",
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["prompt", "answer"],
                    "properties": {
                        "prompt": {"type": "string", "description": "The problem, exactly in the domain's format."},
                        "answer": {"type": "string", "description": "The exact expected answer."}
                    }
                }
            }
        }
    })
}

fn answers_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["answers"],
        "properties": {
            "answers": {
                "type": "array",
                "description": "One answer per problem, in order.",
                "items": {"type": "string"}
            }
        }
    })
}

/// A progress note, after every request.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// The expert.
    pub expert: String,
    /// Requests finished in this call.
    pub requests_done: usize,
    /// Requests planned in this round.
    pub requests_planned: usize,
    /// USD spent by the run.
    pub spent_usd: f64,
}

type ProgressFn = dyn Fn(&Progress) + Send + Sync;

/// Problems from the API.
pub struct ApiSource {
    config: GeneratorConfig,
    client: Client,
    cache: Cache,
    budget: Arc<Budget>,
    prices: BTreeMap<String, Pricing>,
    screen: Screen,
    cells: BTreeMap<(String, String), Tally>,
    next_index: BTreeMap<usize, u64>,
    stopped: Option<String>,
    refused: bool,
    progress: Option<Box<ProgressFn>>,
}

impl std::fmt::Debug for ApiSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSource")
            .field("model", &self.config.model)
            .field("cache", &self.cache.dir())
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

/// One exchange's counts.
#[derive(Debug, Clone, Default)]
struct Exchange {
    model: String,
    cached: bool,
    usd: f64,
    retries: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// Why a job could not go on.
#[derive(Debug, Clone)]
enum Stop {
    /// The failure, the attempts retried before it, and the USD they may have cost.
    Api(ApiError, u64, f64),
    Budget(Exhausted),
    Fatal(String),
}

/// What one job (a request, its re-ask, its agreement checks) produced.
#[derive(Debug, Default)]
struct JobResult {
    exchanges: Vec<Exchange>,
    /// Problems with their answer check, from the model that made them.
    problems: Vec<(SourcedProblem, AnswerCheck)>,
    /// Problems rejected before screening (schema, agreement), with the model.
    rejections: Vec<(String, String)>,
    stop: Option<Stop>,
}

impl ApiSource {
    /// A source for `config`: prices from `config.prices`, else from the server's
    /// `/models` (one request); screening against `held_out`.
    pub fn new(config: GeneratorConfig, held_out: DuplicateIndex) -> Result<ApiSource> {
        let client = Client::new(config.client.clone())?;
        Self::with_client(config, client, held_out)
    }

    /// The same with a given client (tests, an explicit key).
    pub fn with_client(
        config: GeneratorConfig,
        client: Client,
        held_out: DuplicateIndex,
    ) -> Result<ApiSource> {
        config.check()?;
        let mut prices = config.prices.clone();
        let missing: Vec<String> = config
            .models()
            .into_iter()
            .filter(|m| !prices.contains_key(m))
            .collect();
        if !missing.is_empty() {
            let listed = client.models()?;
            for model in &missing {
                let info = listed.iter().find(|m| &m.id == model).ok_or_else(|| {
                    Error::Config(format!(
                        "no price for model `{model}`: {}/models does not list it; set prices.\"{model}\" (USD per token) for servers without one",
                        client.config().base_url
                    ))
                })?;
                prices.insert(model.clone(), info.pricing);
            }
        }
        let budget = Budget::new(config.budget_usd);
        let screen = Screen::new(held_out, config.near_duplicate);
        Ok(ApiSource {
            cache: Cache::new(&config.cache_dir),
            client,
            budget: Arc::new(budget),
            prices,
            screen,
            cells: BTreeMap::new(),
            next_index: BTreeMap::new(),
            stopped: None,
            refused: false,
            progress: None,
            config,
        })
    }

    /// Calls `progress` after every request.
    pub fn on_progress(&mut self, progress: impl Fn(&Progress) + Send + Sync + 'static) {
        self.progress = Some(Box::new(progress));
    }

    /// Why generation stopped short, if it did.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }

    /// Whether the server refused for good (401, 402, 403, 400): the caller should
    /// fail after keeping what was made.
    pub fn refused(&self) -> bool {
        self.refused
    }

    /// The shared budget.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Before any request: requests, expected and worst-case USD to make `specs`
    /// (expected: prompts as sent, completions at ~40 tokens per problem; worst: every
    /// request at `max_tokens` and `max_requests_factor` times as many requests).
    pub fn estimate(&self, specs: &[GenerationSpec]) -> Result<Estimate> {
        let mut estimate = Estimate::default();
        for spec in specs {
            spec.check()?;
            let requests = spec.num_examples.div_ceil(self.config.problems_per_request);
            let body = self.request_body(spec, 0, self.config.problems_per_request);
            let prompt_tokens = prompt_token_bound(&body) as f64 / 3.0;
            let price = self.price(&self.config.model);
            let expected_completion = 40.0 * self.config.problems_per_request as f64;
            let expected = requests as f64
                * (price.request
                    + price.prompt * prompt_tokens
                    + price.completion * expected_completion);
            let worst =
                (requests as f64 * self.config.max_requests_factor).ceil() * self.worst_case(&body);
            estimate.requests += requests;
            estimate.expected_usd += expected;
            estimate.worst_case_usd += worst;
            estimate
                .per_expert
                .push((spec.expert_name.clone(), requests, expected, worst));
        }
        estimate.cap_usd = self.config.budget_usd;
        Ok(estimate)
    }

    fn price(&self, model: &str) -> Pricing {
        self.prices
            .get(model)
            .copied()
            .unwrap_or_else(|| self.prices[&self.config.model])
    }

    /// The worst case of a request: the dearest model that may serve it, the prompt's
    /// token bound and `max_tokens`.
    fn worst_case(&self, body: &Value) -> f64 {
        let prompt = prompt_token_bound(body) as f64;
        let max_tokens = body
            .get("max_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(u64::from(self.config.max_tokens)) as f64;
        let mut models: Vec<&str> = vec![body["model"].as_str().unwrap_or(&self.config.model)];
        if let Some(list) = body.get("models").and_then(Value::as_array) {
            models.extend(list.iter().filter_map(Value::as_str));
        }
        models
            .into_iter()
            .map(|m| {
                let p = self.price(m);
                p.request + p.prompt * prompt + p.completion * max_tokens
            })
            .fold(0.0, f64::max)
    }

    fn request_seed(&self, expert_id: usize, index: u64) -> u64 {
        let mut rng = Rng::new(self.config.seed ^ ((expert_id as u64) << 40) ^ index);
        rng.next_u64() >> 1
    }

    /// The request body of job `index` for `spec`: one topic, `n` problems.
    fn request_body(&self, spec: &GenerationSpec, index: u64, n: usize) -> Value {
        let topic = &spec.topics[index as usize % spec.topics.len()];
        let domain = Domain::from_name(&topic.domain);
        let format: &str = match domain {
            Some(d) => d.format(),
            None => &spec.format,
        };
        let mut text = format!(
            "Domain: {}\nWhat it asks: {}\nFormat: {}\nDifficulty: {}\n",
            topic.domain, topic.description, format, topic.difficulty
        );
        if let Some(d) = domain {
            // Solved examples at the wanted difficulty, from the held-out-free train
            // split, different per request.
            let mut rng = Rng::new(self.request_seed(spec.expert_id, index) ^ 0xe8a);
            text.push_str("Solved examples at this difficulty:\n");
            for _ in 0..self.config.solved_examples {
                let p = synth_tasks::generate_in(d, topic.difficulty, Split::Train, &mut rng);
                text.push_str(&format!("- prompt `{}` answer `{}`\n", p.prompt, p.answer));
            }
        }
        text.push_str("Requirements:\n");
        for r in &spec.special_requirements {
            text.push_str(&format!("- {r}\n"));
        }
        text.push_str(&format!(
            "- Write exactly {n} new problems, different from the examples and from each other.\n\
             - Each prompt is exactly in the format above, with no extra words; each answer is the exact expected output.\n\
             Batch {index} of expert `{}`: vary the numbers and the structure.",
            spec.expert_name
        ));
        let mut body = json!({
            "model": self.config.model,
            "messages": [
                {"role": "system", "content": "You write training problems for a small language model. Reply with JSON only, following the schema."},
                {"role": "user", "content": text}
            ],
            "temperature": self.config.temperature,
            "seed": self.request_seed(spec.expert_id, index),
            "max_tokens": self.config.max_tokens,
            "response_format": {"type": "json_schema", "json_schema": {"name": "problems", "strict": true, "schema": problems_schema()}},
        });
        if !self.config.fallback_models.is_empty() {
            body["models"] = json!(
                std::iter::once(&self.config.model)
                    .chain(&self.config.fallback_models)
                    .collect::<Vec<_>>()
            );
        }
        let empty = self
            .config
            .provider
            .as_object()
            .is_some_and(|o| o.is_empty());
        if !self.config.provider.is_null() && !empty {
            body["provider"] = self.config.provider.clone();
        }
        body
    }

    /// One request through the cache and the budget.
    fn exchange(
        &self,
        expert: &str,
        body: &Value,
        jitter_seed: u64,
    ) -> std::result::Result<(Completion, Exchange), Stop> {
        let key = cache::key(body);
        if let Some(entry) = self
            .cache
            .get(&key)
            .map_err(|e| Stop::Fatal(e.to_string()))?
        {
            let exchange = Exchange {
                model: entry.completion.model.clone(),
                cached: true,
                prompt_tokens: entry.completion.prompt_tokens.unwrap_or(0),
                completion_tokens: entry.completion.completion_tokens.unwrap_or(0),
                ..Exchange::default()
            };
            return Ok((entry.completion, exchange));
        }
        // Each attempt reserves the worst case before it is sent: an attempt that
        // timed out may have been charged, so the budget keeps its worst case and the
        // retry needs a reservation of its own.
        let worst = self.worst_case(body);
        let mut refusal: Option<Exhausted> = None;
        let mut charged = 0.0;
        let mut retries = 0u64;
        let attempt = || {
            let reservation = match self.budget.reserve(expert, worst) {
                Ok(r) => r,
                Err(exhausted) => {
                    let message = exhausted.to_string();
                    refusal = Some(exhausted);
                    return Err(ApiError::NotSent(message));
                }
            };
            match self.client.chat_once(body) {
                Ok(completion) => {
                    let price = self.price(&completion.model);
                    let usd = match (
                        completion.cost_usd,
                        completion.prompt_tokens,
                        completion.completion_tokens,
                    ) {
                        (Some(cost), _, _) => cost,
                        (None, Some(p), Some(c)) => {
                            price.request + price.prompt * p as f64 + price.completion * c as f64
                        }
                        // Nothing to go by: keep the worst case.
                        _ => f64::NAN,
                    };
                    let usd = if usd.is_finite() {
                        usd
                    } else {
                        reservation.amount()
                    };
                    self.budget.settle(reservation, usd);
                    charged += usd;
                    Ok(completion)
                }
                Err(error) => {
                    if error.maybe_charged() {
                        charged += reservation.amount();
                        self.budget.settle(reservation, f64::NAN);
                    } else {
                        self.budget.release(reservation);
                    }
                    Err(error)
                }
            }
        };
        let result = self
            .client
            .with_retries(jitter_seed, &mut |_| retries += 1, attempt);
        match result {
            Ok(completion) => {
                let entry = Entry {
                    key,
                    request: body.clone(),
                    completion: completion.clone(),
                    cost_usd: charged,
                };
                self.cache
                    .put(&entry)
                    .map_err(|e| Stop::Fatal(e.to_string()))?;
                let exchange = Exchange {
                    model: completion.model.clone(),
                    cached: false,
                    usd: charged,
                    retries,
                    prompt_tokens: completion.prompt_tokens.unwrap_or(0),
                    completion_tokens: completion.completion_tokens.unwrap_or(0),
                };
                Ok((completion, exchange))
            }
            Err(_) if refusal.is_some() => Err(Stop::Budget(refusal.expect("checked"))),
            Err(error) => Err(Stop::Api(error, retries, charged)),
        }
    }

    /// Job `index` of `spec`: the request, one re-ask when needed, agreement checks.
    fn run_job(&self, spec: &GenerationSpec, index: u64, n: usize) -> JobResult {
        let mut result = JobResult::default();
        let expert = &spec.expert_name;
        let topic = &spec.topics[index as usize % spec.topics.len()];
        let mut body = self.request_body(spec, index, n);
        let seed = self.request_seed(spec.expert_id, index);
        for attempt in 0..2 {
            let (completion, exchange) = match self.exchange(expert, &body, seed ^ attempt) {
                Ok(ok) => ok,
                Err(stop) => {
                    // A request refused by the budget was never sent.
                    if let Stop::Api(_, retries, usd) = &stop {
                        result.exchanges.push(Exchange {
                            model: self.config.model.clone(),
                            retries: *retries,
                            usd: *usd,
                            ..Exchange::default()
                        });
                    }
                    result.stop = Some(stop);
                    return result;
                }
            };
            result.exchanges.push(exchange);
            let source = format!("api:{}", completion.model);
            let parsed = parse_problems(&completion.content);
            let problems: Vec<(SourcedProblem, AnswerCheck)> = match &parsed {
                Ok(items) => items
                    .iter()
                    .map(|(prompt, answer)| {
                        let p = SourcedProblem {
                            domain: topic.domain.clone(),
                            difficulty: topic.difficulty,
                            prompt: prompt.trim().to_owned(),
                            answer: answer.trim().to_owned(),
                            source: source.clone(),
                        };
                        let check = check_answer(&p.domain, &p.prompt, &p.answer);
                        (p, check)
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
            let failing = problems
                .iter()
                .filter(|(_, c)| matches!(c, AnswerCheck::Rejected(_)))
                .count();
            let complaint = match &parsed {
                Err(reason) => Some(reason.clone()),
                Ok(_) if problems.is_empty() => Some("the reply holds no problems".to_owned()),
                Ok(_) if failing * 2 > problems.len() => Some(format!(
                    "{failing} of {} problems failed the domain's checker: {}",
                    problems.len(),
                    problems
                        .iter()
                        .filter_map(|(p, c)| match c {
                            AnswerCheck::Rejected(r) => Some(format!("`{}`: {r}", p.prompt)),
                            _ => None,
                        })
                        .take(3)
                        .collect::<Vec<_>>()
                        .join("; ")
                )),
                Ok(_) => None,
            };
            match complaint {
                Some(reason) if attempt == 0 => {
                    // Re-ask once, saying what was wrong; the first reply's problems
                    // are dropped (counted as rejections below).
                    if let Err(r) = &parsed {
                        result
                            .rejections
                            .push((completion.model.clone(), r.clone()));
                    }
                    for (_, check) in &problems {
                        if let AnswerCheck::Rejected(r) = check {
                            result
                                .rejections
                                .push((completion.model.clone(), r.clone()));
                        } else {
                            result.rejections.push((
                                completion.model.clone(),
                                "dropped with a re-asked reply".into(),
                            ));
                        }
                    }
                    let messages = body["messages"]
                        .as_array_mut()
                        .expect("built with messages");
                    messages.push(json!({"role": "assistant", "content": completion.content}));
                    messages.push(json!({"role": "user", "content": format!(
                        "That reply was not usable: {reason}. Reply again with exactly {n} problems as JSON following the schema, each prompt exactly in the format."
                    )}));
                }
                _ => {
                    if let Err(r) = &parsed {
                        result
                            .rejections
                            .push((completion.model.clone(), r.clone()));
                    }
                    result.problems = problems;
                    break;
                }
            }
        }
        // Domains without a solver: a checker model must agree.
        let unverifiable: Vec<usize> = result
            .problems
            .iter()
            .enumerate()
            .filter(|(_, (_, c))| *c == AnswerCheck::Unverifiable)
            .map(|(i, _)| i)
            .collect();
        if !unverifiable.is_empty() {
            match self.agreement(
                spec,
                index,
                &result.problems,
                &unverifiable,
                &mut result.exchanges,
            ) {
                Ok(votes) => {
                    for (&i, agreed) in unverifiable.iter().zip(votes) {
                        result.problems[i].1 = if agreed {
                            AnswerCheck::Verified
                        } else {
                            AnswerCheck::Rejected("checker model disagrees with the answer".into())
                        };
                    }
                }
                Err(stop) => {
                    for &i in &unverifiable {
                        result.problems[i].1 =
                            AnswerCheck::Rejected("no agreement check (the checker failed)".into());
                    }
                    result.stop = Some(stop);
                }
            }
        }
        result
    }

    /// For each problem of `which`, whether the checker's majority answer equals its
    /// answer.
    fn agreement(
        &self,
        spec: &GenerationSpec,
        index: u64,
        problems: &[(SourcedProblem, AnswerCheck)],
        which: &[usize],
        exchanges: &mut Vec<Exchange>,
    ) -> std::result::Result<Vec<bool>, Stop> {
        let model = self
            .config
            .verify_model
            .as_ref()
            .unwrap_or(&self.config.model);
        let listing: String = which
            .iter()
            .enumerate()
            .map(|(k, &i)| format!("{}. {}\n", k + 1, problems[i].0.prompt))
            .collect();
        let mut votes = vec![0usize; which.len()];
        for sample in 0..self.config.agreement_samples as u64 {
            let seed = self.request_seed(spec.expert_id, index) ^ (0x5eed << 8) ^ sample;
            let body = json!({
                "model": model,
                "messages": [
                    {"role": "system", "content": "Answer each problem with its exact final answer only. Reply with JSON only, following the schema."},
                    {"role": "user", "content": format!("Answer these {} problems, in order:\n{listing}", which.len())}
                ],
                "temperature": 0.7,
                "seed": seed,
                "max_tokens": self.config.max_tokens,
                "response_format": {"type": "json_schema", "json_schema": {"name": "answers", "strict": true, "schema": answers_schema()}},
            });
            let (completion, exchange) = self.exchange(&spec.expert_name, &body, seed)?;
            exchanges.push(exchange);
            let answers = parse_answers(&completion.content).unwrap_or_default();
            for (k, &i) in which.iter().enumerate() {
                if answers.get(k).is_some_and(|a| {
                    synth_tasks::normalise(a) == synth_tasks::normalise(&problems[i].0.answer)
                }) {
                    votes[k] += 1;
                }
            }
        }
        Ok(votes
            .into_iter()
            .map(|v| 2 * v > self.config.agreement_samples)
            .collect())
    }

    fn cell(&mut self, expert: &str, model: &str) -> &mut Tally {
        self.cells
            .entry((expert.to_owned(), model.to_owned()))
            .or_default()
    }
}

/// Problems of a reply: the JSON object (fences tolerated), checked against the schema.
pub fn parse_problems(content: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let value = parse_json_reply(content)?;
    check_schema(&problems_schema(), &value)?;
    Ok(value["problems"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|p| {
                    (
                        p["prompt"].as_str().unwrap_or_default().to_owned(),
                        p["answer"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

fn parse_answers(content: &str) -> std::result::Result<Vec<String>, String> {
    let value = parse_json_reply(content)?;
    check_schema(&answers_schema(), &value)?;
    Ok(value["answers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default())
}

fn parse_json_reply(content: &str) -> std::result::Result<Value, String> {
    let trimmed = content.trim();
    // Models reached through fallbacks may wrap JSON in a Markdown fence.
    let unfenced = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|rest| rest.trim_end().strip_suffix("```"))
        .unwrap_or(trimmed);
    serde_json::from_str(unfenced).map_err(|e| format!("reply is not JSON ({e})"))
}

fn check_schema(schema: &Value, value: &Value) -> std::result::Result<(), String> {
    let validator = jsonschema::validator_for(schema).map_err(|e| format!("schema: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(value)
        .take(3)
        .map(|e| format!("{} at `{}`", e, e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("reply violates the schema: {}", errors.join("; ")))
    }
}

/// An upper bound on a request's prompt tokens: every token of a byte-level
/// vocabulary is at least one byte, plus a margin per message for role markers.
fn prompt_token_bound(body: &Value) -> u64 {
    let messages = body["messages"].as_array().map_or(&[][..], Vec::as_slice);
    let text: u64 = messages
        .iter()
        .map(|m| m["content"].as_str().map_or(0, str::len) as u64)
        .sum();
    let schema = body
        .get("response_format")
        .map_or(0, |f| f.to_string().len() as u64);
    text + schema + 16 * messages.len() as u64 + 32
}

/// A pre-run estimate.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Estimate {
    /// Requests the wanted counts need (no re-asks or failures).
    pub requests: usize,
    /// Expected USD.
    pub expected_usd: f64,
    /// Worst case: every request at `max_tokens`, `max_requests_factor` times as many.
    pub worst_case_usd: f64,
    /// The run's cap.
    pub cap_usd: f64,
    /// Per expert: name, requests, expected, worst case.
    pub per_expert: Vec<(String, usize, f64, f64)>,
}

impl ProblemSource for ApiSource {
    fn name(&self) -> String {
        format!("api:{}", self.config.model)
    }

    fn problems(&mut self, spec: &GenerationSpec, count: usize) -> Result<Vec<SourcedProblem>> {
        spec.check()?;
        if let Some(cap) = self.config.expert_budget_usd {
            self.budget.set_expert_cap(&spec.expert_name, cap);
        }
        let per_request = self.config.problems_per_request;
        let limit = ((count.div_ceil(per_request)) as f64 * self.config.max_requests_factor).ceil()
            as usize;
        let mut accepted: Vec<SourcedProblem> = Vec::new();
        let mut sent = 0usize;
        while accepted.len() < count && self.stopped.is_none() && sent < limit {
            let missing = count - accepted.len();
            let jobs = missing.div_ceil(per_request).min(limit - sent);
            let first = *self.next_index.entry(spec.expert_id).or_insert(0);
            *self.next_index.get_mut(&spec.expert_id).expect("inserted") += jobs as u64;
            sent += jobs;
            let results = self.run_round(spec, first, jobs, per_request);
            for result in results {
                for e in &result.exchanges {
                    let cell = self.cell(&spec.expert_name, &e.model);
                    if e.cached {
                        cell.cache_hits += 1;
                    } else {
                        cell.requests += 1;
                    }
                    cell.retries += e.retries;
                    cell.usd += e.usd;
                    cell.prompt_tokens += e.prompt_tokens;
                    cell.completion_tokens += e.completion_tokens;
                }
                for (model, reason) in &result.rejections {
                    let cell = self.cell(&spec.expert_name, model);
                    cell.problems_received += 1;
                    *cell.rejections.entry(reason_key(reason)).or_insert(0) += 1;
                }
                for (problem, check) in &result.problems {
                    let model = problem.source.trim_start_matches("api:").to_owned();
                    let verdict = if accepted.len() < count {
                        self.screen.admit(&spec.expert_name, problem, check)
                    } else {
                        Err("more than wanted".to_owned())
                    };
                    let cell = self.cell(&spec.expert_name, &model);
                    cell.problems_received += 1;
                    match verdict {
                        Ok(()) => {
                            cell.accepted += 1;
                            accepted.push(problem.clone());
                        }
                        Err(reason) => {
                            *cell.rejections.entry(reason_key(&reason)).or_insert(0) += 1
                        }
                    }
                }
                match result.stop {
                    None => {}
                    Some(Stop::Budget(exhausted)) => {
                        self.stopped.get_or_insert(format!("budget: {exhausted}"));
                    }
                    Some(Stop::Fatal(message)) => {
                        self.refused = true;
                        self.stopped.get_or_insert(message);
                    }
                    Some(Stop::Api(error, _, _)) => {
                        let model = self.config.model.clone();
                        self.cell(&spec.expert_name, &model).failed_requests += 1;
                        if !error.retryable() && !matches!(error, ApiError::Exhausted { .. }) {
                            self.refused = true;
                            self.stopped
                                .get_or_insert(format!("the API refused: {error}"));
                        }
                    }
                }
            }
        }
        Ok(accepted)
    }

    fn report(&self) -> CostReport {
        let mut report = CostReport::from_cells(&self.name(), &self.cells);
        report.cap_usd = Some(self.config.budget_usd);
        report.peak_reserved_usd = self.budget.run_account().peak_reserved;
        report.stopped = self.stopped.clone();
        report
    }
}

impl ApiSource {
    /// Runs jobs `first..first + jobs` on the worker threads; results in job order.
    fn run_round(
        &self,
        spec: &GenerationSpec,
        first: u64,
        jobs: usize,
        n: usize,
    ) -> Vec<JobResult> {
        let slots: Vec<Mutex<Option<JobResult>>> = (0..jobs).map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        // A refusal (401/402) stops the other workers from starting new jobs.
        let halt = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            for _ in 0..self.config.concurrency.min(jobs) {
                scope.spawn(|| {
                    loop {
                        let j = next.fetch_add(1, Ordering::SeqCst);
                        if j >= jobs || halt.load(Ordering::SeqCst) {
                            break;
                        }
                        let result = self.run_job(spec, first + j as u64, n);
                        let halting = match &result.stop {
                            Some(Stop::Budget(_) | Stop::Fatal(_)) => true,
                            Some(Stop::Api(e, _, _)) => {
                                !e.retryable() && !matches!(e, ApiError::Exhausted { .. })
                            }
                            None => false,
                        };
                        if halting {
                            halt.store(true, Ordering::SeqCst);
                        }
                        *slots[j].lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                        let finished = done.fetch_add(1, Ordering::SeqCst) + 1;
                        if let Some(progress) = &self.progress {
                            progress(&Progress {
                                expert: spec.expert_name.clone(),
                                requests_done: finished,
                                requests_planned: jobs,
                                spent_usd: self.budget.spent(),
                            });
                        }
                    }
                });
            }
        });
        slots
            .into_iter()
            .filter_map(|s| s.into_inner().unwrap_or_else(|p| p.into_inner()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_with_fences_and_fail_on_schema() {
        let ok = r#"{"problems":[{"prompt":"1+2=","answer":"3"}]}"#;
        assert_eq!(
            parse_problems(ok).unwrap(),
            vec![("1+2=".into(), "3".into())]
        );
        assert_eq!(
            parse_problems(&format!("```json\n{ok}\n```"))
                .unwrap()
                .len(),
            1
        );
        let extra = r#"{"problems":[{"prompt":"1+2=","answer":"3","why":"x"}]}"#;
        assert!(
            parse_problems(extra)
                .unwrap_err()
                .contains("violates the schema")
        );
        let number = r#"{"problems":[{"prompt":"1+2=","answer":3}]}"#;
        assert!(
            parse_problems(number)
                .unwrap_err()
                .contains("violates the schema")
        );
        assert!(
            parse_problems("Sure! Here are")
                .unwrap_err()
                .contains("not JSON")
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let c = GeneratorConfig {
            concurrency: 0,
            ..GeneratorConfig::default()
        };
        assert!(c.check().unwrap_err().to_string().contains("concurrency"));
        let c = GeneratorConfig {
            budget_usd: f64::NAN,
            ..GeneratorConfig::default()
        };
        assert!(c.check().unwrap_err().to_string().contains("budget_usd"));
        let text = "modle = \"x\"";
        let e = toml_like_unknown_key(text);
        assert!(e.contains("modle"), "{e}");
    }

    fn toml_like_unknown_key(text: &str) -> String {
        // serde's deny_unknown_fields through JSON (the CLI reads TOML the same way).
        let (key, value) = text.split_once(" = ").unwrap();
        let json = format!("{{\"{key}\": {value}}}");
        serde_json::from_str::<GeneratorConfig>(&json)
            .unwrap_err()
            .to_string()
    }
}
