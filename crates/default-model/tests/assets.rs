//! The committed models say what they are: measuring them again from their own
//! `recipe.json` gives the numbers their `report.json` (and card) state.

use std::path::{Path, PathBuf};

use default_model::Recipe;
use default_model::evaluate::{self, HeldOut};
use lm::{CausalLm, Tokenizer};
use serde_json::Value;
use synth_tasks::Domain;
use tch::{Device, Kind};

fn asset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../assets")
        .join(name)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn load(dir: &Path) -> (Recipe, CausalLm, Tokenizer, Value) {
    let recipe: Recipe = serde_json::from_value(read_json(&dir.join("recipe.json"))).unwrap();
    let model = CausalLm::load(dir, Device::Cpu, Kind::Float).unwrap();
    let tokenizer = Tokenizer::from_dir(dir).unwrap();
    (
        recipe,
        model,
        tokenizer,
        read_json(&dir.join("report.json")),
    )
}

#[test]
fn the_test_model_measures_as_its_report_says() {
    let dir = asset("test-model");
    let (recipe, model, tokenizer, report) = load(&dir);
    let held_out = HeldOut::new(&recipe);
    let measured = tch::no_grad(|| {
        evaluate::evaluate(
            &model,
            &tokenizer,
            &held_out,
            recipe.evaluation.max_new_tokens,
        )
    })
    .unwrap();
    let stated = &report["final_evaluation"];
    for (domain, score) in &measured.domains {
        assert_eq!(
            stated["domains"][domain.name()]["correct"]
                .as_u64()
                .unwrap() as usize,
            score.correct,
            "{domain:?}"
        );
    }
    for (suite, value) in &measured.suite_preference {
        assert_eq!(
            stated["suite_preference"][suite.name()].as_f64().unwrap(),
            *value
        );
    }
    assert_eq!(
        stated["tool_use_rate"].as_f64().unwrap(),
        measured.tool_use_rate
    );
    let size: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(size < 200_000, "the test model takes {size} bytes");
}

#[test]
fn the_default_model_measures_as_its_report_says() {
    let dir = asset("default-model");
    let (recipe, model, tokenizer, report) = load(&dir);
    let held_out = HeldOut::new(&recipe);
    let answer = |ids: &[Vec<i64>], config: &lm::GenerateConfig| Ok(model.generate(ids, config)?);
    // Two domains, a strong one and an eroded one: the whole evaluation takes longer
    // than a test should.
    for domain in [Domain::Comparison, Domain::MultiStep] {
        let score = evaluate::domain_score(
            &answer,
            &tokenizer,
            &held_out.problems[&domain],
            recipe.evaluation.max_new_tokens,
        )
        .unwrap();
        let stated = &report["final_evaluation"]["domains"][domain.name()];
        assert_eq!(
            stated["correct"].as_u64().unwrap() as usize,
            score.correct,
            "{domain:?}"
        );
    }
    let handoff = read_json(&dir.join("phase6_handoff.json"));
    assert_eq!(handoff["quantization"], "bitnet_1.58");
    assert!(handoff["size_mb"].as_f64().unwrap() <= 5.0);
}
