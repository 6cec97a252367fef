//! The whole pipeline on the test-size model with a tiny configuration: every stage's
//! files, the handoff, skipping unchanged stages, re-running what a change touches, and
//! bad input named.

use std::path::{Path, PathBuf};

use phase7::run::RunDir;
use phase7::{Config, run_pipeline, run_stage};

fn test_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/test-model")
}

fn tiny_config() -> Config {
    let mut c = Config::preset("quick").unwrap();
    c.model.path = test_model();
    c.dequantize.probe_prompts = 4;
    c.profile.problems = 16;
    c.profile.samples = 2;
    c.profile.sweep = vec![1];
    c.profile.sweep_problems = 8;
    c.planner.gradient_problems = 4;
    c.planner.samples = 2;
    c.training.train_problems = 16;
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

#[test]
fn a_tiny_run_goes_end_to_end_and_resumes_by_skipping() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(&dir.path().join("run")).unwrap();
    let config = tiny_config();
    let mut lines = Vec::new();
    run_pipeline(&run, &config, &mut |l: &str| lines.push(l.to_owned())).unwrap();
    let handoff = run.root.join("export/handoff/handoff.json");
    assert!(handoff.is_file(), "{lines:#?}");
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&handoff).unwrap()).unwrap();
    let experts = value["num_experts_determined_by_model"].as_u64().unwrap() as usize;
    assert!((1..=10).contains(&experts));
    let manifest = run.manifest().unwrap();
    assert_eq!(manifest.stages.len(), phase7::stage_names(experts).len());
    let verify: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.root.join("dequantize/verify.json")).unwrap(),
    )
    .unwrap();
    assert!(
        verify["top1_agreement"].as_f64().unwrap() >= 0.99,
        "{verify}"
    );
    let report = std::fs::read_to_string(run.root.join("report.md")).unwrap();
    for section in [
        "## Stages",
        "## Capability before and after",
        "## Expert 0",
        "## Search",
        "## Dispatch",
    ] {
        assert!(report.contains(section), "{section} missing:\n{report}");
    }

    // Nothing changed: every stage is skipped.
    let mut again = Vec::new();
    run_pipeline(&run, &config, &mut |l: &str| again.push(l.to_owned())).unwrap();
    assert!(
        again
            .iter()
            .all(|l| l.ends_with("unchanged, skipped") || l.starts_with("report:")),
        "{again:#?}"
    );

    // A search setting changes the search and what follows it, nothing before.
    let mut changed = config.clone();
    changed.search.search.generations = 3;
    let mut third = Vec::new();
    run_pipeline(&run, &changed, &mut |l: &str| third.push(l.to_owned())).unwrap();
    let skipped: Vec<&String> = third.iter().filter(|l| l.ends_with("skipped")).collect();
    assert_eq!(skipped.len(), 4 + experts, "{third:#?}");
    assert!(third.iter().any(|l| l.starts_with("search: done")));

    // A damaged output is noticed and its stage runs again.
    std::fs::write(run.root.join("profile/profile.md"), "edited").unwrap();
    let mut fourth = Vec::new();
    run_stage(&run, &changed, "profile", &mut |l: &str| {
        fourth.push(l.to_owned())
    })
    .unwrap();
    assert!(
        fourth.iter().any(|l| l.starts_with("profile: done")),
        "{fourth:#?}"
    );
}

#[test]
fn bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    // A Phase 6 handoff without its behaviour numbers.
    let handoff = dir.path().join("phase6.json");
    std::fs::write(
        &handoff,
        r#"{"model": ".", "quantization": "bitnet_1.58", "metrics": {}}"#,
    )
    .unwrap();
    let mut config = tiny_config();
    config.model.handoff = Some(handoff.clone());
    let run = RunDir::create(&dir.path().join("run")).unwrap();
    let message = run_pipeline(&run, &config, &mut |_: &str| {})
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("phase6.json") && message.contains("/metrics/tool_use_rate"),
        "{message}"
    );
    assert!(!run.manifest().unwrap().stages.contains_key("handoff"));

    // A missing model folder.
    let mut config = tiny_config();
    config.model.path = dir.path().join("no-model");
    config.model.handoff = None;
    let message = run_pipeline(&run, &config, &mut |_: &str| {})
        .unwrap_err()
        .to_string();
    assert!(message.contains("no-model"), "{message}");

    // An unwritable run directory.
    let blocked = dir.path().join("file");
    std::fs::write(&blocked, "").unwrap();
    let message = RunDir::create(&blocked.join("run"))
        .unwrap_err()
        .to_string();
    assert!(message.contains("file"), "{message}");
}
