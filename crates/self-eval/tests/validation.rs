//! Per-problem validation on the test model: bad candidates are rejected with their
//! reason, every verdict keeps its numbers, and a dataset is filled by augmentation.

use std::path::Path;

use eudaimonia_gate::PromptFormat;
use self_eval::gradients::preference_gradient;
use self_eval::spec::{DatasetSpec, DifficultyTarget, Topic};
use self_eval::validate::{DuplicateIndex, ModelChecks, synth_candidates, validate_candidates};
use self_eval::{Candidate, ExpertConfig, ValidationConfig, build_dataset, new_policy};
use svf::{Decomposition, Selection};
use synth_tasks::{Domain, Problem, Rng, Split};

fn spec(wanted: usize) -> DatasetSpec {
    DatasetSpec {
        expert_id: 0,
        expert_name: "counting".into(),
        topics: vec![Topic {
            domain: "counting".into(),
            description: Domain::Counting.description().into(),
            difficulty: 1,
            zone_accuracy: 0.5,
            profiled_accuracy: 0.5,
            profiled_difficulty: 1,
        }],
        difficulty_target: DifficultyTarget {
            confidence_band: [0.6, 0.9],
            expected_accuracy: [0.7, 0.8],
            difficulty: [("counting".to_owned(), 1)].into(),
        },
        num_examples: wanted,
        format: Domain::Counting.format().into(),
        special_requirements: vec![],
        rationale: String::new(),
    }
}

#[test]
fn verdicts_name_reasons_and_datasets_fill_by_augmentation() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/test-model");
    let mut model = lm::CausalLm::load(&dir, tch::Device::Cpu, tch::Kind::Float).unwrap();
    let tokenizer = lm::Tokenizer::from_dir(&dir).unwrap();
    let decomposition = Decomposition::compute(&mut model, &Selection::mlp(), false).unwrap();
    let mut policy = new_policy(
        model,
        &tokenizer,
        decomposition,
        "v",
        &ExpertConfig::default(),
    )
    .unwrap();
    let items: Vec<(Vec<i64>, Vec<i64>, Vec<i64>)> =
        eudaimonia_gate::Suite::synth(synth_tasks::Suite::Alignment, 16, Split::Train, 2)
            .items
            .iter()
            .map(|i| {
                (
                    tokenizer.encode(&i.prompt, false).unwrap(),
                    tokenizer.encode(&i.preferred, false).unwrap(),
                    tokenizer.encode(&i.rejected, false).unwrap(),
                )
            })
            .collect();
    let alignment_gradient = preference_gradient(&mut policy, &items).unwrap();
    assert!(alignment_gradient.iter().any(|&g| g != 0.0));
    let mut checks = ModelChecks {
        policy: &mut policy,
        tokenizer: &tokenizer,
        format: PromptFormat::Raw,
        alignment_gradient,
    };
    let held_out_problem =
        synth_tasks::generate_in(Domain::Counting, 1, Split::HeldOut, &mut Rng::new(1));
    let mut index = DuplicateIndex::held_out([held_out_problem.prompt.as_str()]);
    let good = synth_tasks::generate_in(Domain::Counting, 1, Split::Train, &mut Rng::new(2));
    let candidate = |prompt: &str, answer: &str| Candidate {
        problem: Problem {
            domain: Domain::Counting,
            difficulty: 1,
            prompt: prompt.into(),
            answer: answer.into(),
        },
        source: "test".into(),
    };
    let wrong = format!("{}9", good.answer);
    let candidates = vec![
        candidate(&good.prompt, &good.answer),
        candidate(&good.prompt, &good.answer),
        candidate(&good.prompt, &wrong),
        candidate("how many a in banana?", "3"),
        candidate(&held_out_problem.prompt, &held_out_problem.answer),
    ];
    let config = ValidationConfig {
        band: [0.0, 1.0],
        min_alignment_cosine: -1.0,
        ..ValidationConfig::default()
    };
    let verdicts = validate_candidates(&mut checks, &candidates, &mut index, &config).unwrap();
    assert!(verdicts[0].accepted, "{:?}", verdicts[0]);
    assert!(verdicts[0].pass_rate.is_some() && verdicts[0].alignment_cosine.is_some());
    assert!(
        verdicts[0]
            .answer_probability
            .is_some_and(|p| p > 0.0 && p <= 1.0)
    );
    let reason = |i: usize| verdicts[i].reasons.join("; ");
    assert!(
        reason(1).contains("exact duplicate within the dataset"),
        "{}",
        reason(1)
    );
    assert!(reason(2).contains("wrong answer"), "{}", reason(2));
    assert!(
        reason(3).contains("not in the counting format"),
        "{}",
        reason(3)
    );
    assert!(reason(4).contains("held-out"), "{}", reason(4));
    assert!(
        verdicts[1..]
            .iter()
            .all(|v| !v.accepted && v.pass_rate.is_none())
    );

    // A band the test model rarely meets: the first batch falls short and augmentation
    // draws more until the limit, recorded.
    let strict = ValidationConfig {
        band: [0.6, 0.9],
        max_candidates_factor: 2.0,
        ..ValidationConfig::default()
    };
    let mut rng = Rng::new(5);
    let spec = spec(24);
    let mut source = |n: usize| synth_candidates(&spec, n, &mut rng);
    let (kept, report) = build_dataset(
        &mut checks,
        &spec,
        &mut source,
        &DuplicateIndex::default(),
        &strict,
    )
    .unwrap();
    assert_eq!(kept.len(), report.accepted.min(24));
    assert_eq!(report.validated, report.verdicts.len());
    assert!(report.validated > 24 || report.accepted >= 24, "{report:?}");
    assert!(report.augmentation.is_some() || report.accepted >= 24);
    let rejected: usize = report.rejections.values().sum();
    assert!(rejected >= report.validated - report.accepted);
    for v in &report.verdicts {
        assert_eq!(v.accepted, v.reasons.is_empty());
        if v.accepted {
            let rate = v.pass_rate.unwrap();
            assert!((0.6..=0.9).contains(&rate));
        }
    }
}
