//! Run tracking for the pipeline (`run-tracking`): each stage's numbers are logged when
//! the stage finishes, read back from the files it wrote (so a skipped stage logs
//! nothing again and a resumed one logs once); expert training also logs every
//! optimisation step as it happens. Every key is documented in `docs/metrics.md`; the
//! patterns below are the catalogue ([`CATALOGUE`]) and a test checks each logged key
//! against them.

use std::path::Path;

use run_tracking::{RunInfo, Tracker};
use serde_json::Value;

use crate::config::Config;
use crate::run::RunDir;
use crate::{Result, stages};

/// Every metric key pattern: `{domain}`, `{suite}`, `{k}` (expert index), `{n}`,
/// `{reason}`, `{name}`, `{stage}`, `{a}`/`{b}` (domains) and `{level}` stand for one
/// path segment each.
pub const CATALOGUE: &[&str] = &[
    // Time and cost per stage.
    "pipeline/{stage}/seconds",
    "pipeline/{stage}/cost_usd",
    // R1, R2.
    "r1/missing_required",
    "r1/missing_optional",
    "r1/phase6/{name}",
    "r2/top1_agreement",
    "r2/positions",
    "r2/prompts",
    "r2/passed",
    "r2/used_fallback",
    // Stage 1: profile.
    "stage1/profile/mean_accuracy",
    "stage1/profile/domains",
    "stage1/profile/{domain}/accuracy",
    "stage1/profile/{domain}/accuracy_ci_low",
    "stage1/profile/{domain}/accuracy_ci_high",
    "stage1/profile/{domain}/pass_rate",
    "stage1/profile/{domain}/mean_answer_probability",
    "stage1/profile/{domain}/ece",
    "stage1/profile/{domain}/brier",
    "stage1/profile/{domain}/difficulty",
    "stage1/profile/{domain}/problems",
    "stage1/profile/{domain}/learning_zone_difficulty",
    "stage1/profile/{domain}/learning_zone_accuracy",
    "stage1/profile/{domain}/in_learning_zone",
    "stage1/profile/{domain}/sweep/d{level}/accuracy",
    // Stage 1: plan.
    "stage1/plan/num_experts",
    "stage1/plan/clustered_domains",
    "stage1/plan/general_expert",
    "stage1/plan/mean_cosine",
    "stage1/plan/coherence",
    "stage1/plan/silhouette/k{n}/silhouette",
    "stage1/plan/silhouette/k{n}/bootstrap_mean",
    "stage1/plan/silhouette/k{n}/bootstrap_sd",
    "stage1/plan/cosine/{a}-vs-{b}",
    "stage1/plan/co_assignment/{a}-vs-{b}",
    "stage1/plan/informative_problems/{domain}",
    "stage1/plan/expert-{k}/domains",
    // Stage 1: data.
    "stage1/data/expert-{k}/wanted",
    "stage1/data/expert-{k}/validated",
    "stage1/data/expert-{k}/accepted",
    "stage1/data/expert-{k}/kept",
    "stage1/data/expert-{k}/initial_acceptance_rate",
    "stage1/data/expert-{k}/acceptance_rate",
    "stage1/data/expert-{k}/met_acceptance",
    "stage1/data/expert-{k}/augmented",
    "stage1/data/expert-{k}/expected_accuracy",
    "stage1/data/expert-{k}/in_learning_zone",
    "stage1/data/expert-{k}/rejected/{reason}",
    "stage1/data/cost_usd",
    // Stage 2: each step.
    "stage2/expert-{k}/step/reward_mean",
    "stage2/expert-{k}/step/reward_std",
    "stage2/expert-{k}/step/advantage_abs_mean",
    "stage2/expert-{k}/step/kl",
    "stage2/expert-{k}/step/entropy",
    "stage2/expert-{k}/step/completion_tokens",
    "stage2/expert-{k}/step/loss",
    "stage2/expert-{k}/step/grad_norm",
    "stage2/expert-{k}/step/learning_rate",
    "stage2/expert-{k}/step/kl_coefficient",
    "stage2/expert-{k}/step/skipped",
    // Stage 2: each epoch (validation and the gate).
    "stage2/expert-{k}/epoch/validation_score",
    "stage2/expert-{k}/epoch/alignment",
    "stage2/expert-{k}/epoch/mean_reward",
    "stage2/expert-{k}/epoch/mean_kl",
    "stage2/expert-{k}/epoch/gate_decision",
    "stage2/expert-{k}/epoch/{suite}/{name}",
    // Stage 2: the expert's outcome.
    "stage2/expert-{k}/held_out/{domain}/before",
    "stage2/expert-{k}/held_out/{domain}/after",
    "stage2/expert-{k}/held_out/{domain}/lift",
    "stage2/expert-{k}/gate/{suite}/{name}/before",
    "stage2/expert-{k}/gate/{suite}/{name}/after",
    "stage2/expert-{k}/gate/verdict",
    "stage2/expert-{k}/steps",
    "stage2/expert-{k}/epochs",
    "stage2/expert-{k}/restarts",
    "stage2/expert-{k}/best_score",
    "stage2/expert-{k}/kl_coefficient_final",
    "stage2/expert-{k}/interventions",
    "stage2/expert-{k}/training_problems",
    // Stage 3: search.
    "stage3/bounds/expert-{k}/lower",
    "stage3/bounds/expert-{k}/upper",
    "stage3/search/hypervolume",
    "stage3/search/front_size",
    "stage3/search/feasible",
    "stage3/search/evaluations",
    "stage3/search/guidance/gain",
    "stage3/search/guidance/actions",
    "stage3/search/guidance/next_hypervolume_gain",
    "stage3/search/guidance/next_front_entries",
    "stage3/search/generations",
    "stage3/search/requested",
    "stage3/search/cache_hits",
    "stage3/search/evaluations_to_final",
    "stage3/search/front_members",
    "stage3/search/best/overall",
    "stage3/search/best/worst",
    "stage3/search/base/overall",
    "stage3/search/base/worst",
    // Stage 3: self-test and dispatch.
    "stage3/self_test/{name}/overall",
    "stage3/self_test/{name}/edge_of_chaos",
    "stage3/self_test/{name}/{domain}",
    "stage3/self_test/{name}/{suite}/preference",
    "stage3/self_test/{name}/{suite}/behaviour_rate",
    "stage3/self_test/{name}/{suite}/mean_margin",
    "stage3/self_test/{name}/latency_ms",
    "stage3/self_test/{name}/peak_rss_mb",
    "stage3/self_test/criteria/{name}/value",
    "stage3/self_test/criteria/{name}/held",
    "stage3/self_test/passed",
    "stage3/self_test/attempts",
    "stage3/self_test/scenarios",
    "stage3/self_test/chosen/alpha/expert-{k}",
    "stage3/dispatch/router_accuracy",
    "stage3/dispatch/overall",
    "stage3/dispatch/static_overall",
    "stage3/dispatch/first_pass_ms",
    "stage3/dispatch/switch_ms",
    // Export.
    "export/size_mb",
    "export/num_experts",
    "export/{name}",
];

/// Whether `key` matches a catalogue pattern (each placeholder one non-empty segment
/// part; literal text around it must match).
pub fn documented(key: &str) -> bool {
    CATALOGUE
        .iter()
        .any(|pattern| matches_pattern(pattern, key))
}

fn matches_pattern(pattern: &str, key: &str) -> bool {
    let (p, k): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), key.split('/').collect());
    p.len() == k.len() && p.iter().zip(&k).all(|(p, k)| segment_matches(p, k))
}

fn segment_matches(pattern: &str, text: &str) -> bool {
    match pattern.find('{') {
        None => pattern == text,
        Some(open) => {
            let close = pattern[open..]
                .find('}')
                .map_or(pattern.len(), |c| open + c);
            let (prefix, rest) = (&pattern[..open], &pattern[close + 1..]);
            let Some(after) = text.strip_prefix(prefix) else {
                return false;
            };
            // The placeholder takes at least one character, then the rest must match.
            (1..=after.len()).any(|n| {
                after.is_char_boundary(n)
                    && segment_matches(rest, &after[n..])
                    && !after[..n].contains('/')
            })
        }
    }
}

/// Starts (or continues) the tracker of a run in `dir`.
pub fn start(dir: &Path, run: &RunDir, config: &Config) -> Result<Tracker> {
    let name = run
        .root
        .file_name()
        .map_or_else(|| "phase7".to_owned(), |n| n.to_string_lossy().into_owned());
    let info = RunInfo::new(&name)
        .with_group(&config.preset)
        .with_tags(&["phase7"])
        .with_config(serde_json::to_value(config).unwrap_or_default());
    Ok(Tracker::start(dir, info, config.tracking.clone())?)
}

fn read(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

/// Collects `(key, value)` pairs, skipping values that are not numbers.
#[derive(Default)]
struct Batch(Vec<(String, f64)>);

impl Batch {
    fn put(&mut self, key: impl Into<String>, value: &Value) {
        if let Some(x) = number(value) {
            self.0.push((key.into(), x));
        }
    }

    fn num(&mut self, key: impl Into<String>, value: f64) {
        self.0.push((key.into(), value));
    }

    fn send(self, tracker: &Tracker, step: u64) {
        if !self.0.is_empty() {
            tracker.log_owned(step, self.0);
        }
    }
}

fn slug(text: &str) -> String {
    let mut out: String = text
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    while out.contains("__") {
        out = out.replace("__", "_");
    }
    out.trim_matches('_').to_owned()
}

/// A logger of expert `k`'s training steps.
pub fn step_logger(tracker: &Tracker, k: usize) -> impl FnMut(&reinforce_kl::StepMetrics) + '_ {
    let prefix = format!("stage2/expert-{k}/step");
    move |m: &reinforce_kl::StepMetrics| {
        let mut b = Batch::default();
        b.num(format!("{prefix}/reward_mean"), m.reward_mean);
        b.num(format!("{prefix}/reward_std"), m.reward_std);
        b.num(format!("{prefix}/advantage_abs_mean"), m.advantage_abs_mean);
        b.num(format!("{prefix}/kl"), m.kl_mean);
        if let Some(e) = m.entropy_mean {
            b.num(format!("{prefix}/entropy"), e);
        }
        b.num(
            format!("{prefix}/completion_tokens"),
            m.completion_tokens_mean,
        );
        b.num(format!("{prefix}/loss"), m.loss);
        if let Some(g) = m.grad_norm {
            b.num(format!("{prefix}/grad_norm"), g);
        }
        if let Some(lr) = m.learning_rate {
            b.num(format!("{prefix}/learning_rate"), lr);
        }
        b.num(format!("{prefix}/kl_coefficient"), m.kl_coefficient);
        b.num(format!("{prefix}/skipped"), f64::from(u8::from(m.skipped)));
        b.send(tracker, m.step as u64);
    }
}

/// Logs what stage `stage` measured, from its files, and its time.
pub fn log_stage(tracker: &Tracker, run: &RunDir, stage: &str, seconds: f64, cost_usd: f64) {
    let dir = run.stage_dir(stage);
    let mut b = Batch::default();
    b.num(format!("pipeline/{stage}/seconds"), seconds);
    b.num(format!("pipeline/{stage}/cost_usd"), cost_usd);
    match stage {
        "handoff" => {
            if let Some(c) = read(&dir.join("check.json")) {
                let len = |v: &Value| v.as_array().map_or(0.0, |a| a.len() as f64);
                b.num("r1/missing_required", len(&c["missing_required"]));
                b.num("r1/missing_optional", len(&c["missing_optional"]));
                if let Some(m) = c["handoff_values"]["metrics"].as_object() {
                    for (name, v) in m {
                        b.put(format!("r1/phase6/{}", slug(name)), v);
                    }
                }
            }
        }
        "dequantize" => {
            if let Some(v) = read(&dir.join("verify.json")) {
                for key in ["top1_agreement", "positions", "prompts", "passed"] {
                    b.put(format!("r2/{key}"), &v[key]);
                }
                b.num(
                    "r2/used_fallback",
                    f64::from(u8::from(v["float_model"] == "fallback")),
                );
            }
        }
        "profile" => {
            if let Some(p) = read(&dir.join("profile.json")) {
                b.put("stage1/profile/mean_accuracy", &p["mean_accuracy"]);
                let domains = p["domains"].as_array().cloned().unwrap_or_default();
                b.num("stage1/profile/domains", domains.len() as f64);
                for d in &domains {
                    let name = d["domain"].as_str().unwrap_or("unknown");
                    let at = |k: &str| format!("stage1/profile/{name}/{k}");
                    for key in [
                        "accuracy",
                        "pass_rate",
                        "mean_answer_probability",
                        "ece",
                        "brier",
                        "difficulty",
                        "problems",
                        "learning_zone_difficulty",
                        "learning_zone_accuracy",
                        "in_learning_zone",
                    ] {
                        b.put(at(key), &d[key]);
                    }
                    b.put(at("accuracy_ci_low"), &d["accuracy_ci95"][0]);
                    b.put(at("accuracy_ci_high"), &d["accuracy_ci95"][1]);
                    for s in d["sweep"].as_array().into_iter().flatten() {
                        b.put(
                            at(&format!("sweep/d{}/accuracy", s["difficulty"])),
                            &s["accuracy"],
                        );
                    }
                }
            }
        }
        "plan" => {
            if let Some(p) = read(&dir.join("plan.json")) {
                // The chosen plan is flattened into the record's top level.
                let plan = &p;
                b.put("stage1/plan/num_experts", &plan["num_experts"]);
                let experts = plan["expert_definitions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                b.num(
                    "stage1/plan/general_expert",
                    f64::from(u8::from(experts.iter().any(|e| e["name"] == "general"))),
                );
                for (k, e) in experts.iter().enumerate() {
                    b.num(
                        format!("stage1/plan/expert-{k}/domains"),
                        e["domains"].as_array().map_or(0.0, |d| d.len() as f64),
                    );
                }
                let m = &p["measurements"];
                let clustered: Vec<String> = m["clustered"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|d| d.as_str().map(str::to_owned))
                    .collect();
                b.num("stage1/plan/clustered_domains", clustered.len() as f64);
                b.put("stage1/plan/mean_cosine", &m["mean_cosine"]);
                b.put("stage1/plan/coherence", &m["coherence"]);
                for s in m["silhouettes"].as_array().into_iter().flatten() {
                    let at = |k: &str| format!("stage1/plan/silhouette/k{}/{k}", s["clusters"]);
                    for key in ["silhouette", "bootstrap_mean", "bootstrap_sd"] {
                        b.put(at(key), &s[key]);
                    }
                }
                for (i, a) in clustered.iter().enumerate() {
                    for (j, other) in clustered.iter().enumerate().skip(i + 1) {
                        b.put(
                            format!("stage1/plan/cosine/{a}-vs-{other}"),
                            &m["cosine"][i][j],
                        );
                        b.put(
                            format!("stage1/plan/co_assignment/{a}-vs-{other}"),
                            &m["co_assignment"][i][j],
                        );
                    }
                }
                if let Some(map) = m["informative_problems"].as_object() {
                    for (d, v) in map {
                        b.put(format!("stage1/plan/informative_problems/{d}"), v);
                    }
                }
            }
        }
        "data" => {
            let experts = stages::roles(run).map(|r| r.len()).unwrap_or(0);
            b.num("stage1/data/cost_usd", crate::run::stage_cost_usd(&dir));
            for k in 0..experts {
                let Some(r) = read(&dir.join(format!("dataset_{k}.report.json"))) else {
                    continue;
                };
                let at = |key: &str| format!("stage1/data/expert-{k}/{key}");
                for key in [
                    "wanted",
                    "validated",
                    "accepted",
                    "initial_acceptance_rate",
                    "acceptance_rate",
                    "met_acceptance",
                    "augmented",
                    "expected_accuracy",
                    "in_learning_zone",
                ] {
                    b.put(at(key), &r[key]);
                }
                let kept = std::fs::read_to_string(stages::dataset_path(run, k))
                    .map_or(0, |t| t.lines().filter(|l| !l.trim().is_empty()).count());
                b.num(at("kept"), kept as f64);
                if let Some(map) = r["rejections"].as_object() {
                    for (reason, n) in map {
                        b.put(at(&format!("rejected/{}", slug(reason))), n);
                    }
                }
            }
        }
        "search" => {
            if let Some(bounds) = read(&dir.join("bounds.json")) {
                for (k, e) in bounds.as_array().into_iter().flatten().enumerate() {
                    b.put(format!("stage3/bounds/expert-{k}/lower"), &e["lower"]);
                    b.put(format!("stage3/bounds/expert-{k}/upper"), &e["upper"]);
                }
            }
            if let Some(s) = read(&dir.join("search.json")) {
                for c in s["curve"].as_array().into_iter().flatten() {
                    let mut g = Batch::default();
                    for key in ["hypervolume", "front_size", "feasible", "evaluations"] {
                        g.put(format!("stage3/search/{key}"), &c[key]);
                    }
                    g.send(tracker, c["generation"].as_u64().unwrap_or(0));
                }
                for r in s["guidance"].as_array().into_iter().flatten() {
                    let mut g = Batch::default();
                    g.put("stage3/search/guidance/gain", &r["gain"]);
                    g.num(
                        "stage3/search/guidance/actions",
                        r["actions"].as_array().map_or(0.0, |a| a.len() as f64),
                    );
                    g.put(
                        "stage3/search/guidance/next_hypervolume_gain",
                        &r["next_hypervolume_gain"],
                    );
                    g.put(
                        "stage3/search/guidance/next_front_entries",
                        &r["next_front_entries"],
                    );
                    g.send(tracker, r["generation"].as_u64().unwrap_or(0));
                }
                b.put("stage3/search/generations", &s["generations"]);
                b.put("stage3/search/requested", &s["stats"]["requested"]);
                b.put("stage3/search/cache_hits", &s["stats"]["cache_hits"]);
                b.put(
                    "stage3/search/evaluations_to_final",
                    &s["evaluations_to_final"],
                );
                let front = s["front"].as_array().cloned().unwrap_or_default();
                b.num("stage3/search/front_members", front.len() as f64);
                let best = |key: &str| {
                    front
                        .iter()
                        .filter_map(|m| m["scores"][key].as_f64())
                        .fold(f64::NAN, f64::max)
                };
                b.num("stage3/search/best/overall", best("overall"));
                b.num("stage3/search/best/worst", best("worst"));
            }
            if let Some(base) = read(&dir.join("base_scores.json")) {
                b.put("stage3/search/base/overall", &base["overall"]);
                b.put("stage3/search/base/worst", &base["worst"]);
            }
        }
        "validate" => {
            if let Some(t) = read(&dir.join("self_test.json")) {
                let chosen = t["chosen"]
                    .as_u64()
                    .map_or(Value::Null, |i| t["attempts"][i as usize]["scores"].clone());
                for (name, scores) in [("base", &t["base"]), ("final", &chosen)] {
                    let at = |k: &str| format!("stage3/self_test/{name}/{k}");
                    b.put(at("overall"), &scores["overall"]);
                    b.put(at("edge_of_chaos"), &scores["edge_of_chaos"]);
                    b.put(at("latency_ms"), &scores["latency_ms"]);
                    b.put(at("peak_rss_mb"), &scores["peak_rss_mb"]);
                    if let Some(map) = scores["accuracy"].as_object() {
                        for (d, v) in map {
                            b.put(at(d), v);
                        }
                    }
                    if let Some(map) = scores["suites"].as_object() {
                        for (suite, v) in map {
                            for key in ["preference", "behaviour_rate", "mean_margin"] {
                                b.put(at(&format!("{suite}/{key}")), &v[key]);
                            }
                        }
                    }
                }
                if let Some(i) = t["chosen"].as_u64() {
                    let attempt = &t["attempts"][i as usize];
                    for c in attempt["criteria"].as_array().into_iter().flatten() {
                        let name = c["name"].as_str().unwrap_or("unknown");
                        b.put(
                            format!("stage3/self_test/criteria/{name}/value"),
                            &c["value"],
                        );
                        b.put(
                            format!("stage3/self_test/criteria/{name}/held"),
                            &c["passed"],
                        );
                    }
                    for (k, a) in attempt["alphas"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .enumerate()
                    {
                        b.put(format!("stage3/self_test/chosen/alpha/expert-{k}"), a);
                    }
                }
                b.put("stage3/self_test/passed", &t["passed"]);
                b.num(
                    "stage3/self_test/attempts",
                    t["attempts"].as_array().map_or(0.0, |a| a.len() as f64),
                );
                b.put("stage3/self_test/scenarios", &t["scenarios"]);
            }
            if let Some(d) = read(&dir.join("dispatch.json")) {
                for key in [
                    "router_accuracy",
                    "overall",
                    "static_overall",
                    "first_pass_ms",
                    "switch_ms",
                ] {
                    b.put(format!("stage3/dispatch/{key}"), &d[key]);
                }
            }
        }
        "export" => {
            if let Some(h) = read(&dir.join("handoff/handoff.json")) {
                b.put("export/size_mb", &h["size_mb"]);
                b.put("export/num_experts", &h["num_experts_determined_by_model"]);
                if let Some(map) = h["performance"].as_object() {
                    for (name, v) in map {
                        b.put(format!("export/{}", slug(name)), v);
                    }
                }
            }
        }
        expert if expert.starts_with("expert-") => {
            let k = expert.trim_start_matches("expert-");
            if let Some(o) = read(&dir.join("outcome.json")) {
                let at = |key: &str| format!("stage2/expert-{k}/{key}");
                if let (Some(before), Some(after)) = (
                    o["accuracy_before"].as_object(),
                    o["accuracy_after"].as_object(),
                ) {
                    for (d, v) in before {
                        b.put(at(&format!("held_out/{d}/before")), v);
                        b.put(at(&format!("held_out/{d}/after")), &after[d]);
                        if let (Some(x), Some(y)) = (v.as_f64(), after[d].as_f64()) {
                            b.num(at(&format!("held_out/{d}/lift")), y - x);
                        }
                    }
                }
                for (when, scores) in [("before", &o["gate_before"]), ("after", &o["gate_after"])] {
                    if let Some(map) = scores.as_object() {
                        for (suite, v) in map {
                            for key in ["preference", "mean_margin", "behaviour_rate"] {
                                b.put(at(&format!("gate/{suite}/{key}/{when}")), &v[key]);
                            }
                        }
                    }
                }
                b.num(
                    at("gate/verdict"),
                    match o["gate_report"]["verdict"].as_str() {
                        Some("pass") => 0.0,
                        Some("warn") => 1.0,
                        _ => 2.0,
                    },
                );
                let training = &o["training"];
                b.put(at("steps"), &training["step"]);
                b.put(at("epochs"), &training["epoch"]);
                b.put(at("restarts"), &training["restarts"]);
                b.put(at("best_score"), &training["best_score"]);
                b.put(at("kl_coefficient_final"), &training["kl_coefficient"]);
                let events = training["events"].as_array().cloned().unwrap_or_default();
                b.num(
                    at("interventions"),
                    events
                        .iter()
                        .filter(|e| {
                            matches!(e["event"].as_str(), Some("kl_coefficient" | "restarted"))
                        })
                        .count() as f64,
                );
                for e in events.iter().filter(|e| e["event"] == "validated") {
                    let mut g = Batch::default();
                    let v = &e["validation"];
                    g.put(at("epoch/validation_score"), &v["score"]);
                    g.put(at("epoch/alignment"), &v["alignment"]);
                    g.put(at("epoch/mean_reward"), &e["mean_reward"]);
                    g.put(at("epoch/mean_kl"), &e["mean_kl"]);
                    g.num(
                        at("epoch/gate_decision"),
                        match v["gate"]["decision"].as_str() {
                            Some("pass") | None => 0.0,
                            Some("warn") => 1.0,
                            _ => 2.0,
                        },
                    );
                    if let Some(map) = v["metrics"].as_object() {
                        for (name, value) in map {
                            g.put(at(&format!("epoch/{name}")), value);
                        }
                    }
                    g.send(tracker, e["epoch"].as_u64().unwrap_or(0));
                }
            }
            if let Ok(text) =
                std::fs::read_to_string(stages::dataset_path(run, k.parse().unwrap_or(0)))
            {
                b.num(
                    at_key(k, "training_problems"),
                    text.lines().filter(|l| !l.trim().is_empty()).count() as f64,
                );
            }
        }
        _ => {}
    }
    b.send(tracker, 0);
}

fn at_key(k: &str, key: &str) -> String {
    format!("stage2/expert-{k}/{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_segments() {
        assert!(documented("stage1/profile/code/accuracy"));
        assert!(documented("stage1/profile/code/sweep/d3/accuracy"));
        assert!(documented("stage1/plan/cosine/code-vs-strings"));
        assert!(documented("stage2/expert-12/step/kl"));
        assert!(!documented("stage2/expert-/step/kl"));
        assert!(!documented("stage1/profile/code/accuracy/extra"));
        assert!(!documented("stage1/profile/code/acc"));
        // Every documented key is one MLflow stores as it is (no character replaced).
        for pattern in CATALOGUE {
            let key = pattern.replace(['{', '}'], "");
            assert_eq!(run_tracking::mlflow::metric_key(&key), key, "{pattern}");
        }
    }
}
