//! What the integration tests share: the test-size model and a tiny configuration.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use phase7::Config;

/// The test-size default model.
pub fn test_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/test-model")
}

/// A configuration that runs the whole pipeline in seconds.
pub fn tiny_config() -> Config {
    let mut c = Config::preset("quick").unwrap();
    c.model.path = test_model();
    // Whatever the environment says (MLFLOW_TRACKING_URI, WANDB_API_KEY): local only.
    c.tracking = run_tracking::TrackerConfig::local();
    c.dequantize.probe_prompts = 4;
    c.profile.problems = 16;
    c.profile.samples = 2;
    c.profile.sweep = vec![1];
    c.profile.sweep_problems = 8;
    c.planner.gradient_problems = 4;
    c.planner.samples = 2;
    c.data.spec.min_examples = 16;
    c.data.spec.max_examples = 24;
    c.data.min_problems = 4;
    c.data.held_out_per_domain = 16;
    c.data.alignment_items = 4;
    c.data.validation.samples = 2;
    // Two samples give pass rates 0, 0.5 or 1: keep every one.
    c.data.spec.confidence_band = [0.0, 1.0];
    c.training.validation_problems = 8;
    c.training.held_out = 8;
    c.training.suite_items = 4;
    c.training.expert.trainer.epochs = 1;
    c.training.expert.trainer.steps_per_epoch = 2;
    c.search.problems = 4;
    c.search.suite_items = 4;
    c.search.search.population = 4;
    c.search.search.generations = 2;
    c.self_test.problems = 8;
    c.self_test.suite_items = 4;
    c.self_test.criteria.max_attempts = 1;
    c.self_test.criteria.latency_queries = 2;
    // Latency and peak memory measure the moment (the machine's load, what else the
    // process did): tests that compare two runs must not let them decide.
    c.self_test.criteria.latency_budget_ms = 1e9;
    c.self_test.criteria.memory_budget_mb = 1e9;
    c
}

/// Keys whose values measure this execution (time, latency, memory, counts of work
/// done by this process), not the run's results.
pub const MEASUREMENTS: &[&str] = &[
    "latency_ms",
    "latency_p95_ms",
    "latency_mean_ms",
    "peak_rss_mb",
    "vram_gb",
    "first_pass_ms",
    "switch_ms",
];

pub fn strip(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for key in MEASUREMENTS {
                map.remove(*key);
            }
            // The self-test's latency and memory criteria carry their measured value.
            if map
                .get("name")
                .and_then(|n| n.as_str())
                .is_some_and(|n| MEASUREMENTS.contains(&n) || n == "peak_memory_mb")
            {
                map.remove("value");
            }
            map.values_mut().for_each(strip);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
        _ => {}
    }
}

/// The run's result files (every stage output the manifest records, the report's
/// figures left out as they plot wall times), each as bytes or as JSON without
/// measurements.
pub fn results(run: &Path) -> BTreeMap<String, Result<serde_json::Value, Vec<u8>>> {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap();
    let mut out = BTreeMap::new();
    for stage in manifest["stages"].as_object().unwrap().values() {
        for file in stage["outputs"].as_object().unwrap().keys() {
            if file.ends_with("measurements.json") {
                continue;
            }
            let bytes = std::fs::read(run.join(file)).unwrap();
            let entry = if file.ends_with(".json") {
                let mut value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                strip(&mut value);
                Ok(value)
            } else {
                Err(bytes)
            };
            out.insert(file.clone(), entry);
        }
    }
    out
}

/// Where two JSON values first differ (a JSON pointer and both values).
pub fn first_difference(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> Option<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x
            .iter()
            .find_map(|(k, v)| match y.get(k) {
                Some(w) => first_difference(v, w, &format!("{at}/{k}")),
                None => Some(format!("{at}/{k} missing")),
            })
            .or_else(|| (x.len() != y.len()).then(|| format!("{at}: other keys"))),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, &format!("{at}/{i}"))),
        _ => (a != b).then(|| format!("{at}: {a} vs {b}")),
    }
}

pub fn assert_same(reference: &Path, resumed: &Path, what: &str) {
    let (a, b) = (results(reference), results(resumed));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: different files"
    );
    for (file, value) in &a {
        let detail = match (value, &b[file]) {
            (Ok(x), Ok(y)) => first_difference(x, y, ""),
            _ => Some("bytes".to_owned()),
        };
        assert!(
            value == &b[file],
            "{what}: {file} differs from the uninterrupted run's at {detail:?}"
        );
    }
    for must in [
        "export/handoff/handoff.json",
        "export/handoff/merged/model.safetensors",
        "expert-0/expert.safetensors",
        "search/archive.json",
        "validate/self_test.json",
    ] {
        assert!(a.contains_key(must), "{must} not among the results");
    }
}
