//! Building a (micro) default model end to end, and packing exactness.

use std::path::Path;

use default_model::package::{config_json, write_checkpoint, write_tokenizer};
use default_model::{Recipe, build};
use lm::{CausalLm, ModelConfig};
use tch::{Device, Kind, Tensor};

fn micro_recipe() -> Recipe {
    let mut recipe = Recipe::test_model();
    recipe.stages[0].steps = 30;
    recipe.stages[0].batch_size = 16;
    recipe.stages[1].steps = 10;
    recipe.stages[1].batch_size = 16;
    recipe.stages[1].evaluate_every = Some(5);
    recipe.evaluation.problems_per_domain = 8;
    recipe.evaluation.pairs_per_suite = 8;
    recipe.evaluation.max_new_tokens = 12;
    // Every domain counts as weak, so the headroom path runs.
    recipe.headroom.low = 0.0;
    recipe.headroom.high = 1.0;
    recipe.headroom.steps = 2;
    recipe.headroom.batch_size = 4;
    recipe
}

#[test]
fn a_build_writes_a_complete_folder_that_lm_loads_and_describes_it_honestly() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("model");
    // An existing folder is replaced only once the new one is complete.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("stale.txt"), "old").unwrap();
    let recipe = micro_recipe();
    let summary = build(&recipe, &out).unwrap();
    assert!(!out.join("stale.txt").exists());
    assert!(!root.path().join("model.partial").exists());
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "phase6_handoff.json",
        "report.json",
        "recipe.json",
        "README.md",
        "parity_sample.json",
        "probe.txt",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let report = &summary.report;
    assert_eq!(report.stages.len(), 2);
    assert_eq!(
        report.stages[1].0.curve.len(),
        2,
        "evaluated every 5 of 10 steps"
    );
    assert_eq!(report.headroom.len(), 8);
    let e = &report.final_evaluation;
    assert_eq!(e.domains.len(), 8);
    for score in e.domains.values() {
        assert_eq!(score.total, 8);
        assert!((0.0..=1.0).contains(&score.accuracy));
    }
    assert!(report.agreement.positions > 0 && report.agreement.top1 > 0.5);

    // The folder is a BitNet checkpoint our lm loads as BitLinear.
    let model = CausalLm::load(&out, Device::Cpu, Kind::Float).unwrap();
    assert_eq!(model.config().architecture, lm::Architecture::BitNet);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["quantization_config"]["quant_method"], "bitnet");

    // The handoff follows the seed's Phase 6 schema, with measured values.
    let handoff: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("phase6_handoff.json")).unwrap())
            .unwrap();
    assert_eq!(handoff["quantization"], "bitnet_1.58");
    let metrics = &handoff["metrics"];
    assert!(metrics["swe_bench_score"].is_null());
    assert_eq!(
        metrics["aggregate_benchmark"].as_f64().unwrap(),
        e.aggregate_accuracy
    );
    assert_eq!(metrics["tool_use_rate"].as_f64().unwrap(), e.tool_use_rate);
    let baked = &handoff["baked_capabilities"];
    assert!(baked["tool_prompts_baked"].as_u64().unwrap() > 0);
    assert!(baked["persona_prompts_baked"].as_u64().unwrap() > 0);
    assert!(baked["eudaimonia_aligned"].is_boolean());
    let size = handoff["size_mb"].as_f64().unwrap();
    assert!(size > 0.0 && size < 0.2, "{size}");

    // The card states the measured numbers.
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    let arithmetic = e.domains[&synth_tasks::Domain::Arithmetic].accuracy;
    assert!(card.contains(&format!("**{arithmetic:.3}**")), "{card}");
    assert!(card.contains(&format!("{:.4}", report.agreement.top1)));
}

#[test]
fn packing_keeps_the_trained_ternary_model_exactly() {
    let recipe = micro_recipe();
    let dir = tempfile::tempdir().unwrap();
    write_tokenizer(dir.path(), 128).unwrap();
    let map = config_json(&recipe.model);
    let config = ModelConfig::from_map(&map, Path::new("config.json")).unwrap();
    let mut trained = CausalLm::init(config, 5, Device::Cpu, Kind::Float).unwrap();
    trained.set_weight_quantization(true);
    write_checkpoint(&trained, &map, dir.path()).unwrap();
    let packed = CausalLm::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
    let ids = Tensor::from_slice(&[20i64, 30, 40, 50, 60, 70, 80]).view([1, 7]);
    let (a, b) = tch::no_grad(|| {
        (
            trained.forward(&ids, None, None).unwrap(),
            packed.forward(&ids, None, None).unwrap(),
        )
    });
    let difference = (a - b).abs().max().double_value(&[]);
    assert!(difference < 1e-4, "packed logits differ by {difference}");
}

#[test]
fn a_recipe_file_with_a_typo_is_refused() {
    let mut value = serde_json::to_value(Recipe::test_model()).unwrap();
    value["stages"][0]["stpes"] = serde_json::json!(10);
    let error = serde_json::from_value::<Recipe>(value)
        .unwrap_err()
        .to_string();
    assert!(error.contains("stpes"), "{error}");
}
