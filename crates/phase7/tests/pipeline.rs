//! The whole pipeline on the test-size model with a tiny configuration: every stage's
//! files, the handoff, skipping unchanged stages, re-running what a change touches, and
//! bad input named.

use std::path::Path;

use phase7::run::RunDir;
use phase7::{run_pipeline, run_stage};

mod common;
use common::{test_model, tiny_config};

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
        "## Validated training data",
        "## Capability before and after",
        "## Expert 0",
        "## Mixture search",
        "## Dispatch",
    ] {
        assert!(report.contains(section), "{section} missing:\n{report}");
    }
    // Every figure the Markdown links exists, and the HTML carries each inline.
    let html = std::fs::read_to_string(run.root.join("report.html")).unwrap();
    let linked: Vec<&str> = report
        .match_indices("](report/")
        .map(|(i, _)| &report[i + 2..i + 2 + report[i + 2..].find(')').unwrap()])
        .collect();
    for name in ["time", "capability", "expert-0", "hypervolume", "front"] {
        assert!(
            linked.contains(&format!("report/{name}.svg").as_str()),
            "{name}"
        );
        assert!(
            html.contains(&format!("<figure id=\"{name}\">\n<svg")),
            "{name}"
        );
    }
    for file in &linked {
        let svg = std::fs::read_to_string(run.root.join(file)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{file}");
    }
    assert_eq!(html.matches("<figure").count(), linked.len());
    assert!(!html.contains("<script") && !html.contains("src=\"http"));
    // Each expert trained on its validated dataset.
    for k in 0..experts {
        let lines = std::fs::read_to_string(run.root.join(format!("data/dataset_{k}.jsonl")))
            .unwrap()
            .lines()
            .count();
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.root.join(format!("data/dataset_{k}.report.json")))
                .unwrap(),
        )
        .unwrap();
        let (accepted, wanted) = (
            report["accepted"].as_u64().unwrap(),
            report["wanted"].as_u64().unwrap(),
        );
        assert_eq!(lines as u64, accepted.min(wanted), "{report}");
        assert!(lines >= config.data.min_problems);
    }

    // Tracking: every logged key is in the catalogue (docs/metrics.md), training steps
    // are logged as they happen, and each stage's time.
    let records =
        run_tracking::record::read_from(&run.root.join("tracking/pipeline/metrics.jsonl"), 0)
            .unwrap();
    let mut keys: Vec<String> = records
        .iter()
        .flat_map(|(r, _)| r.metrics.iter().map(|(k, _)| k.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    let undocumented: Vec<&String> = keys
        .iter()
        .filter(|k| !phase7::track::documented(k))
        .collect();
    assert!(undocumented.is_empty(), "{undocumented:#?}");
    for key in [
        "stage2/expert-0/step/reward_mean",
        "stage2/expert-0/step/grad_norm",
        "stage2/expert-0/epoch/validation_score",
        "stage1/profile/mean_accuracy",
        "stage1/plan/num_experts",
        "stage1/plan/expert-0/domains",
        "stage1/data/expert-0/accepted",
        "stage2/expert-0/held_out/code/after",
        "stage3/search/hypervolume",
        "stage3/dispatch/router_accuracy",
        "export/size_mb",
        "stage3/self_test/final/overall",
        "pipeline/search/seconds",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} not logged: {keys:#?}");
    }
    let docs = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/metrics.md"),
    )
    .unwrap();
    for pattern in phase7::track::CATALOGUE {
        assert!(
            docs.contains(&format!("`{pattern}`")),
            "{pattern} not in docs/metrics.md"
        );
    }
    let console = std::fs::read_to_string(run.root.join("tracking/pipeline/console.log")).unwrap();
    assert!(console.contains(" search: started"), "{console}");
    assert!(
        !console.contains(" progress "),
        "progress lines stay out of the console log"
    );
    let info = run_tracking::RunInfo::load(&run.root.join("tracking/pipeline")).unwrap();
    assert_eq!(info.status, run_tracking::Status::Finished);

    // Nothing changed: every stage is skipped.
    let mut again = Vec::new();
    run_pipeline(&run, &config, &mut |l: &str| again.push(l.to_owned())).unwrap();
    assert!(
        again.iter().all(|l| l.ends_with("unchanged, skipped")
            || l.starts_with("report:")
            || l.starts_with("tracking:")),
        "{again:#?}"
    );

    // A search setting changes the search and what follows it, nothing before.
    let mut changed = config.clone();
    changed.search.search.generations = 3;
    let mut third = Vec::new();
    run_pipeline(&run, &changed, &mut |l: &str| third.push(l.to_owned())).unwrap();
    let skipped: Vec<&String> = third.iter().filter(|l| l.ends_with("skipped")).collect();
    assert_eq!(skipped.len(), 5 + experts, "{third:#?}");
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

    // How problems are shown changes what the model is measured on: the profile runs
    // again although the model files are unchanged.
    let mut shown = changed.clone();
    shown.model.prompt = phase7::config::TaskPrompt::FewShot { seed: 1 };
    let mut fifth = Vec::new();
    for stage in ["dequantize", "profile"] {
        run_stage(&run, &shown, stage, &mut |l: &str| fifth.push(l.to_owned())).unwrap();
    }
    assert!(
        fifth.iter().any(|l| l.starts_with("profile: done")),
        "{fifth:#?}"
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

    // A CUDA device on a machine without one: refused before the first stage.
    if !lm::device::runtime().cuda_available {
        let mut config = tiny_config();
        config.model.handoff = None;
        config.model.device = lm::device::DeviceRequest::Cuda(0);
        let message = run_pipeline(&run, &config, &mut |_: &str| {})
            .unwrap_err()
            .to_string();
        assert!(message.contains("model.device = \"cuda:0\""), "{message}");
        assert!(run.manifest().unwrap().stages.is_empty());
    }

    // An unwritable run directory.
    let blocked = dir.path().join("file");
    std::fs::write(&blocked, "").unwrap();
    let message = RunDir::create(&blocked.join("run"))
        .unwrap_err()
        .to_string();
    assert!(message.contains("file"), "{message}");
}

#[test]
fn short_agreement_falls_back_to_the_pre_quantization_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let fallback = dir.path().join("fallback");
    bitnet_dequant::convert::convert(
        &test_model(),
        &fallback,
        &bitnet_dequant::convert::ConvertOptions::default(),
        &mut bitnet_dequant::convert::NoProgress,
    )
    .unwrap();
    // The test model's float export agrees on fewer than all top-1 tokens, so a
    // requirement of 1.0 is not met.
    let mut config = tiny_config();
    config.dequantize.min_top1_agreement = 1.0;
    let run = RunDir::create(&dir.path().join("run")).unwrap();
    let message = run_stage(&run, &config, "dequantize", &mut |_: &str| {})
        .unwrap_err()
        .to_string();
    assert!(message.contains("model.fallback"), "{message}");
    assert!(!run.manifest().unwrap().stages.contains_key("dequantize"));

    config.model.fallback = Some(fallback.clone());
    let mut lines = Vec::new();
    run_stage(&run, &config, "dequantize", &mut |l: &str| {
        lines.push(l.to_owned())
    })
    .unwrap();
    let verify: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.root.join("dequantize/verify.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(verify["passed"], false, "{verify}");
    assert_eq!(verify["float_model"], "fallback", "{verify}");
    assert!(
        lines.iter().any(|l| l.contains("pre-quantization")),
        "{lines:#?}"
    );
    assert_eq!(
        std::fs::read(run.root.join("dequantize/model/model.safetensors")).unwrap(),
        std::fs::read(fallback.join("model.safetensors")).unwrap()
    );
}

#[test]
fn a_gguf_model_runs_without_a_phase6_handoff() {
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lm/tests/fixtures/gguf/tiny.gguf");
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config();
    config.model.path = gguf;
    config.check_model().unwrap();
    let run = RunDir::create(&dir.path().join("run")).unwrap();
    let mut lines = Vec::new();
    for stage in ["handoff", "dequantize"] {
        run_stage(&run, &config, stage, &mut |l: &str| {
            lines.push(l.to_owned())
        })
        .unwrap();
    }
    let check: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.root.join("handoff/check.json")).unwrap(),
    )
    .unwrap();
    assert!(check["handoff"].is_null(), "{check}");
    assert!(
        lines.iter().any(|l| l.contains("none beside")),
        "{lines:#?}"
    );
    let verify: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.root.join("dequantize/verify.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(verify["top1_agreement"], 1.0, "{verify}");
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(
            run.root.join("dequantize/model").join(file).is_file(),
            "{file}"
        );
    }
}

#[test]
fn a_corrupt_checkpoint_or_model_path_is_named_and_nothing_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(test_model()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    let weights = model.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let mut config = tiny_config();
    config.model.path = model.clone();
    let run = RunDir::create(&dir.path().join("run")).unwrap();
    let message = run_pipeline(&run, &config, &mut |_: &str| {})
        .unwrap_err()
        .to_string();
    assert!(message.contains("model.safetensors"), "{message}");
    assert!(!run.manifest().unwrap().stages.contains_key("dequantize"));

    // Not a model at all: a text file, a folder without config.json.
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello").unwrap();
    config.model.path = text;
    let message = config.check_model().unwrap_err().to_string();
    assert!(
        message.contains("model.path") && message.contains("notes.txt") && message.contains("GGUF"),
        "{message}"
    );
    config.model.path = dir.path().to_path_buf();
    let message = config.check_model().unwrap_err().to_string();
    assert!(message.contains("without config.json"), "{message}");
}

#[test]
fn problems_from_an_api_are_screened_validated_and_costed() {
    use openrouter_gen::client::Pricing;
    use openrouter_gen::mock::{MockServer, problem_writer};
    let price = Pricing {
        prompt: 1e-7,
        completion: 4e-7,
        request: 0.0,
    };
    let server = MockServer::start(problem_writer("mock/model", price)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(&dir.path().join("run")).unwrap();
    let mut config = tiny_config();
    config.budget.usd = 0.5;
    config.data.source = phase7::config::DataSource::Api;
    config.data.api.model = "mock/model".into();
    config.data.api.client.base_url = server.base_url();
    config.data.api.cache_dir = dir.path().join("api-cache");
    let mut lines = Vec::new();
    for stage in ["handoff", "dequantize", "profile", "plan", "data"] {
        run_stage(&run, &config, stage, &mut |l: &str| {
            lines.push(l.to_owned())
        })
        .unwrap();
    }
    let generation: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.root.join("data/generation_report.json")).unwrap(),
    )
    .unwrap();
    let requests = generation["total"]["requests"].as_u64().unwrap();
    assert!(requests > 0, "{generation}");
    let usd = generation["total"]["usd"].as_f64().unwrap();
    assert!(usd > 0.0 && usd <= 0.5, "{usd}");
    // The manifest's cost of the stage is what was spent.
    assert_eq!(run.manifest().unwrap().stages["data"].cost_usd, usd);
    let dataset: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.root.join("data/dataset_0.report.json")).unwrap(),
    )
    .unwrap();
    let verdicts = dataset["verdicts"].as_array().unwrap();
    assert!(!verdicts.is_empty());
    assert!(
        verdicts.iter().all(|v| v["source"] == "api:mock/model"),
        "every candidate came from the API"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("requests") && l.contains("api:mock/model")),
        "{lines:#?}"
    );
    // The same stage again with its key changed only in a way that does not matter
    // to the API: every request is answered from the cache.
    let before = server.request_count();
    let run2 = RunDir::create(&dir.path().join("run2")).unwrap();
    for stage in ["handoff", "dequantize", "profile", "plan", "data"] {
        run_stage(&run2, &config, stage, &mut |_: &str| {}).unwrap();
    }
    // Only the /models listing of the second source reached the server.
    assert_eq!(server.request_count(), before + 1);
    assert_eq!(
        std::fs::read(run.root.join("data/dataset_0.jsonl")).unwrap(),
        std::fs::read(run2.root.join("data/dataset_0.jsonl")).unwrap()
    );
}
