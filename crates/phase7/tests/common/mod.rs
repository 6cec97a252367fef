//! What the integration tests share: the test-size model and a tiny configuration.
#![allow(dead_code)]

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
    c
}
