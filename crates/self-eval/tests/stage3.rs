//! Stage 3 on the embedded default model with two seeded random experts: the one-pass
//! mixture scores against generation, merged against factorized logits, guidance on and
//! off, the self-test, dispatch and the handoff against its JSON schema.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use eudaimonia_gate::{ScoreConfig, Suite};
use self_eval::Answerer;
use self_eval::dispatch::{Router, evaluate_dispatch};
use self_eval::handoff::export;
use self_eval::mixture::{BoundDecision, ExpertRole, MixtureProblem, ProblemConfig, SearchSet};
use self_eval::profile::distinct_problems;
use self_eval::search::{GuidanceConfig, Hooks, SearchAdvisor, SearchConfig, search};
use self_eval::selftest::{HeldOut, SelfTestConfig, self_test};
use svf::{Decomposition, Expert, Selection};
use synth_tasks::{Domain, Split};
use tch::{Device, Kind, Tensor};

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/default-model")
}

const DOMAINS: [Domain; 3] = [Domain::Arithmetic, Domain::Code, Domain::Counting];
/// Search-set sizes.
const SEARCH_PROBLEMS: usize = 16;
const SEARCH_ITEMS: usize = 8;

fn problems(split: Split, count: usize, seed: u64) -> BTreeMap<String, Vec<synth_tasks::Problem>> {
    DOMAINS
        .iter()
        .map(|&d| {
            (
                d.name().to_owned(),
                distinct_problems(d, 1, split, count, seed),
            )
        })
        .collect()
}

fn suites(split: Split, count: usize) -> Vec<Suite> {
    Suite::synth_all(count, split, 5)
}

/// The default model with two random experts (seeded) over its MLP matrices.
fn mixture_problem(config: ProblemConfig) -> MixtureProblem {
    let dir = model_dir();
    let tokenizer = lm::Tokenizer::from_dir(&dir).unwrap();
    let mut model = lm::CausalLm::load(&dir, Device::Cpu, Kind::Float).unwrap();
    // Stage 3 runs on the dequantized float model (R2), which is what the handoff exports.
    model.set_activation_quantization(false);
    let decomposition = Decomposition::compute(&mut model, &Selection::mlp(), false).unwrap();
    let experts = vec![
        Expert::random(&decomposition, "arithmetic", 0.1, 0.8, 11),
        Expert::random(&decomposition, "code", 0.1, 0.8, 12),
    ];
    let roles = vec![
        ExpertRole {
            name: "arithmetic".into(),
            domains: vec!["arithmetic".into()],
            general: false,
        },
        ExpertRole {
            name: "code".into(),
            domains: vec!["code".into()],
            general: false,
        },
    ];
    let bounds: Vec<BoundDecision> = roles
        .iter()
        .map(|r| BoundDecision {
            expert: r.name.clone(),
            accuracies: BTreeMap::new(),
            mean_accuracy: None,
            class: "weak".into(),
            lower: 0.0,
            upper: 3.0,
            reason: "test".into(),
        })
        .collect();
    let set = SearchSet {
        problems: problems(Split::Train, SEARCH_PROBLEMS, 3),
        suites: suites(Split::Train, SEARCH_ITEMS),
    };
    MixtureProblem::new(
        model,
        tokenizer,
        decomposition,
        experts,
        roles,
        &bounds,
        &set,
        config,
    )
    .unwrap()
}

#[test]
fn one_pass_mixture_scores_equal_generation() {
    let problem = mixture_problem(ProblemConfig::default());
    let set_problems = problems(Split::Train, SEARCH_PROBLEMS, 3);
    let set_suites = suites(Split::Train, SEARCH_ITEMS);
    for alphas in [[0.0, 0.0], [1.0, 0.5], [2.5, 0.0], [0.0, 3.0]] {
        let scores = problem.score(&alphas).unwrap();
        problem
            .with_mixture(&alphas, |model, _, _| {
                let answerer = Answerer::new(model, problem.tokenizer(), Default::default())?;
                for (name, ps) in &set_problems {
                    let (exact, _) = answerer.generate_exact(&answerer.encode(ps)?)?;
                    let generated =
                        exact.iter().filter(|&&e| e).count() as f64 / exact.len() as f64;
                    assert_eq!(scores.accuracy[name], generated, "{alphas:?} {name}");
                }
                for suite in &set_suites {
                    let slow = eudaimonia_gate::score_suite(
                        model,
                        problem.tokenizer(),
                        suite,
                        &ScoreConfig::default(),
                    )?;
                    let quick = &scores.suites[&suite.name];
                    assert_eq!(
                        quick.preference, slow.preference,
                        "{alphas:?} {}",
                        suite.name
                    );
                    if let Some(rate) = quick.behaviour_rate {
                        assert_eq!(Some(rate), slow.behaviour_rate, "{alphas:?} {}", suite.name);
                    }
                }
                Ok(())
            })
            .unwrap();
    }
    // Alphas closer than the quantum are one cached evaluation.
    let before = problem.stats();
    problem.score(&[1.0004, 0.4996]).unwrap();
    let after = problem.stats();
    assert_eq!(after.cache_hits, before.cache_hits + 1);
    assert!(problem.score(&[f64::NAN, 0.0]).is_err());
}

#[test]
fn merged_weights_give_the_factorized_logits() {
    let problem = mixture_problem(ProblemConfig::default());
    let ids = Tensor::from_slice(&[5i64, 30, 27, 11, 40, 9]).view([1, 6]);
    let alphas = [1.7, 0.6];
    let gap = problem
        .with_mixture(&alphas, |model, svf, _| {
            let factorized = model.forward(&ids, None, None)?;
            svf.merge(model)?;
            let merged = model.forward(&ids, None, None)?;
            svf.unmerge(model)?;
            Ok((factorized - merged).abs().max().double_value(&[]))
        })
        .unwrap();
    assert!(gap < 1e-5, "max |factorized - merged| = {gap}");
}

#[test]
fn guidance_is_logged_switchable_and_deterministic() {
    let problem = mixture_problem(ProblemConfig::default());
    let config = SearchConfig {
        population: 8,
        generations: 6,
        seed: 3,
        guidance: GuidanceConfig {
            every: 2,
            min_generations: 100,
            min_front: 1,
            ..GuidanceConfig::default()
        },
    };
    let mut seen = 0;
    let mut progress = |_: &self_eval::search::CurvePoint,
                        _: Option<&self_eval::search::GuidanceRecord>| {
        seen += 1
    };
    let guided = search(
        &problem,
        &config,
        Hooks {
            progress: Some(&mut progress),
            ..Hooks::default()
        },
    )
    .unwrap();
    assert_eq!(
        seen, 7,
        "progress after the initial population and each generation"
    );
    assert_eq!(guided.curve.len(), 7);
    assert_eq!(guided.guidance.len(), 3);
    assert!(
        guided.guidance[..2]
            .iter()
            .all(|r| r.next_hypervolume_gain.is_some())
    );
    assert!(!guided.front.is_empty());
    // Fallbacks: feasible mixtures from the archive, none repeating the front's values.
    for f in &guided.fallbacks {
        assert!(problem.feasible(&f.scores));
        assert!(
            !guided
                .front
                .iter()
                .any(|m| m.scores.overall == f.scores.overall && m.scores.worst == f.scores.worst)
        );
    }
    for w in guided.curve.windows(2) {
        assert!(w[1].evaluations > w[0].evaluations);
    }
    let again = search(&problem, &config, Hooks::default()).unwrap();
    assert_eq!(again.curve, guided.curve);
    assert_eq!(again.front, guided.front);

    let mut off = config.clone();
    off.guidance.enabled = false;
    let plain = search(&problem, &off, Hooks::default()).unwrap();
    assert!(plain.guidance.is_empty());
    assert_eq!(plain.curve.len(), 7);

    // An advisor's valid answer is used; an invalid one falls back to the rule.
    struct Scripted(Vec<&'static str>);
    impl SearchAdvisor for Scripted {
        fn advise(&mut self, _: &serde_json::Value) -> Result<String, String> {
            Ok(self.0.remove(0).to_owned())
        }
    }
    let mut advisor = Scripted(vec![
        r#"{"bounds": {"lower": [0.5, 0.0], "upper": [2.0, 1.0]}, "reason": "front is there"}"#,
        "no idea",
        r#"{"stop": true, "reason": "enough"}"#,
    ]);
    let advised = search(
        &problem,
        &config,
        Hooks {
            advisor: Some(&mut advisor),
            ..Hooks::default()
        },
    )
    .unwrap();
    assert_eq!(advised.guidance[0].source, "advisor");
    assert!(
        advised.guidance[1]
            .source
            .starts_with("rule (advisor rejected")
    );
    assert_eq!(advised.generations, 6);
    assert!(advised.reason.contains("enough"), "{}", advised.reason);
}

#[test]
fn self_test_dispatch_and_handoff() {
    let problem = mixture_problem(ProblemConfig::default());
    let config = SearchConfig {
        population: 8,
        generations: 3,
        seed: 1,
        guidance: GuidanceConfig {
            enabled: false,
            ..GuidanceConfig::default()
        },
    };
    let outcome = search(&problem, &config, Hooks::default()).unwrap();
    let held_out = HeldOut {
        problems: problems(Split::HeldOut, 40, 9),
        learning_zone: problems(Split::HeldOut, 10, 10),
        suites: suites(Split::HeldOut, 16),
    };
    assert!(held_out.scenarios() >= 100);
    let test_config = SelfTestConfig {
        max_attempts: 2,
        latency_queries: 4,
        ..SelfTestConfig::default()
    };
    let test = self_test(&problem, &outcome.front, &held_out, &test_config).unwrap();
    assert!(!test.attempts.is_empty() && test.attempts.len() <= 2);
    let chosen = test.chosen();
    assert_eq!(
        test.passed,
        chosen.criteria.iter().all(|c| c.passed || !c.enforced)
    );
    assert!(chosen.scores.latency_ms > 0.0);
    // The base is all alphas zero: its held-out accuracy is the plain model's.
    let dir = model_dir();
    let tokenizer = lm::Tokenizer::from_dir(&dir).unwrap();
    let mut plain = lm::CausalLm::load(&dir, Device::Cpu, Kind::Float).unwrap();
    plain.set_activation_quantization(false);
    let answerer = Answerer::new(&plain, &tokenizer, Default::default()).unwrap();
    let counting = &held_out.problems["counting"];
    let right = answerer
        .one_pass(&answerer.encode(counting).unwrap())
        .unwrap()
        .iter()
        .filter(|r| r.exact)
        .count();
    assert_eq!(
        test.base.accuracy["counting"],
        right as f64 / counting.len() as f64
    );

    let router = Router::fit(&problem, &[0.0, 0.0], &problems(Split::Train, 16, 4)).unwrap();
    let dispatch = evaluate_dispatch(&problem, &router, &chosen.alphas, &held_out).unwrap();
    assert!(
        dispatch.router_accuracy > 0.6,
        "router accuracy {}",
        dispatch.router_accuracy
    );
    assert_eq!(dispatch.domain_mixtures.len(), DOMAINS.len());
    assert!((dispatch.static_overall - chosen.scores.overall).abs() < 1e-12);

    let out = tempfile::tempdir().unwrap();
    let handoff_dir = out.path().join("handoff");
    let handoff = export(&problem, &dir, &test, 2, &handoff_dir).unwrap();
    let text = std::fs::read_to_string(handoff_dir.join("handoff.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/phase8-handoff.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    // The schema is not a formality: a missing field or an accuracy above 1 fails it.
    let mut broken = value.clone();
    broken["performance"]["overall_accuracy"] = serde_json::json!(1.5);
    broken.as_object_mut().unwrap().remove("expert_library");
    assert!(validator.iter_errors(&broken).count() >= 2);

    assert_eq!(handoff.optimal_mixture, chosen.alphas);
    assert_eq!(handoff.expert_library.len(), 2);
    for file in handoff.expert_library.values() {
        Expert::load(&handoff_dir.join(file)).unwrap();
    }
    let overhead = 100.0 * handoff.compression_notes.total_expert_params as f64
        / handoff.compression_notes.base_model_params as f64;
    assert!((handoff.compression_notes.adaptation_overhead_percent - overhead).abs() < 1e-12);

    // The merged model loads as a plain model and gives the factorized logits.
    let ids = Tensor::from_slice(&[5i64, 30, 27, 11, 40, 9]).view([1, 6]);
    let merged = lm::CausalLm::load(&handoff_dir.join("merged"), Device::Cpu, Kind::Float).unwrap();
    let base = lm::CausalLm::load(&handoff_dir.join("base"), Device::Cpu, Kind::Float).unwrap();
    let factorized = problem
        .with_mixture(&chosen.alphas, |model, _, _| {
            Ok(model.forward(&ids, None, None)?)
        })
        .unwrap();
    let gap = (merged.forward(&ids, None, None).unwrap() - &factorized)
        .abs()
        .max()
        .double_value(&[]);
    assert!(gap < 1e-5, "merged export vs factorized: {gap}");
    assert!(handoff.phase7.merged_max_logit_gap < 1e-5);
    let base_gap = (base.forward(&ids, None, None).unwrap()
        - plain.forward(&ids, None, None).unwrap())
    .abs()
    .max()
    .double_value(&[]);
    assert!(base_gap < 1e-5, "float32 base vs the model: {base_gap}");

    // An existing folder is refused, and nothing is left half-written.
    let message = export(&problem, &dir, &test, 2, &handoff_dir)
        .unwrap_err()
        .to_string();
    assert!(message.contains("already exists"), "{message}");
    let leftovers: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

#[test]
fn per_matrix_alphas_generalise_per_expert_alphas() {
    let per_expert = mixture_problem(ProblemConfig::default());
    let per_matrix = mixture_problem(ProblemConfig {
        granularity: self_eval::mixture::Granularity::PerMatrix,
        ..ProblemConfig::default()
    });
    let m = per_matrix.matrices();
    assert_eq!(nsga2::Problem::n_var(&per_matrix), 2 * m);
    let alphas = [1.3, 0.4];
    let spread: Vec<f64> = alphas
        .iter()
        .flat_map(|&a| std::iter::repeat_n(a, m))
        .collect();
    assert_eq!(
        per_expert.score(&alphas).unwrap(),
        per_matrix.score(&spread).unwrap()
    );
    // Other matrices of the same expert at other alphas make another model.
    let mut uneven = spread.clone();
    uneven[0] = 3.0;
    uneven[m - 1] = 0.0;
    let ids = Tensor::from_slice(&[5i64, 30, 27, 11]).view([1, 4]);
    let forward = |p: &MixtureProblem, a: &[f64]| {
        p.with_mixture(a, |model, _, _| Ok(model.forward(&ids, None, None)?))
            .unwrap()
    };
    let gap = (forward(&per_matrix, &uneven) - forward(&per_matrix, &spread))
        .abs()
        .max()
        .double_value(&[]);
    assert!(gap > 1e-4, "{gap}");
}
