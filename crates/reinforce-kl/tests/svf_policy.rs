//! The SVF policy on a tiny Llama (the lm parity fixture): reference = base model,
//! gradients reach z, seeded rollouts, and REINFORCE moving a real model's behaviour.

use std::path::{Path, PathBuf};

use lm::CausalLm;
use reinforce_kl::{
    Baseline, KlEstimator, OptimizerConfig, Policy, RolloutConfig, SvfPolicy, TrainerConfig,
    Validation, train,
};
use svf::{Decomposition, Expert, Selection};
use tch::{Device, Kind};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../lm/tests/fixtures/llama")
}

fn model() -> CausalLm {
    CausalLm::load(&fixture(), Device::Cpu, Kind::Float).unwrap()
}

fn policy(selection: &Selection, z: f64, rollout: RolloutConfig) -> SvfPolicy {
    let mut model = model();
    let decomposition = Decomposition::compute(&mut model, selection, false).unwrap();
    let expert = Expert::constant(&decomposition, "test", z);
    SvfPolicy::new(model, decomposition, expert, rollout).unwrap()
}

fn prompts() -> Vec<Vec<i64>> {
    vec![
        vec![5, 9, 14],
        vec![3, 27],
        vec![33, 8, 19, 2, 40],
        vec![11],
        vec![7, 7, 21, 30],
        vec![50, 12, 6],
    ]
}

fn values(t: &tch::Tensor) -> Vec<f32> {
    t.shallow_clone().try_into().unwrap()
}

#[test]
fn the_reference_is_the_base_model_and_gradients_reach_z() {
    let base = model();
    let mut policy = policy(&Selection::mlp(), 1.5, RolloutConfig::default());
    let prompts = prompts();
    let batch: Vec<&Vec<i64>> = prompts.iter().collect();
    let completions = vec![(0, vec![4, 17]), (2, vec![9]), (5, vec![1, 2, 3])];
    let pairs: Vec<(Vec<i64>, Vec<i64>)> = completions
        .iter()
        .map(|(i, c)| (prompts[*i].clone(), c.clone()))
        .collect();
    let expected = base.score(&pairs).unwrap();
    let reference = policy.score_reference(&batch, &completions, true).unwrap();
    for (got, want) in reference.token_log_probs.iter().zip(&expected) {
        for (a, b) in values(got).iter().zip(&want.token_log_probs) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        assert!(!got.requires_grad());
    }
    // A constant z is the identity under the reference composition.
    let scores = policy.score(&batch, &completions, true).unwrap();
    for (got, want) in scores.token_log_probs.iter().zip(&expected) {
        for (a, b) in values(got).iter().zip(&want.token_log_probs) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }
    let loss = scores
        .token_log_probs
        .iter()
        .map(|t| t.sum(Kind::Float))
        .fold(
            tch::Tensor::zeros([], (Kind::Float, Device::Cpu)),
            |a, b| a + b,
        );
    loss.backward();
    let parameters = policy.parameters();
    assert_eq!(parameters.len(), 6, "3 MLP matrices x 2 layers");
    let mut total = 0.0;
    for z in &parameters {
        let grad = z.grad();
        assert!(grad.defined());
        assert_eq!(grad.isfinite().all().int64_value(&[]), 1);
        total += grad.abs().sum(Kind::Float).double_value(&[]);
    }
    assert!(total > 0.0, "no gradient reached z");
    // Out-of-range prompt indices are errors, not panics.
    assert!(policy.score(&batch, &[(9, vec![1])], false).is_err());
}

#[test]
fn rollouts_are_seeded_and_grouped_by_prompt() {
    let rollout = RolloutConfig {
        max_new_tokens: 4,
        ..RolloutConfig::default()
    };
    let mut policy = policy(&Selection::mlp(), 0.1, rollout);
    let prompts = prompts();
    let batch: Vec<&Vec<i64>> = prompts.iter().take(3).collect();
    let a = policy.sample(&batch, 5, 11).unwrap();
    let b = policy.sample(&batch, 5, 11).unwrap();
    let c = policy.sample(&batch, 5, 12).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(a.len(), 3);
    for group in &a {
        assert_eq!(group.len(), 5);
        assert!(group.iter().all(|s| !s.is_empty() && s.len() <= 4));
    }
    // Temperature 1 over 64 tokens: five samples of a prompt are not all the same.
    assert!(a.iter().any(|group| group.iter().any(|s| s != &group[0])));
}

#[test]
fn bad_rollout_settings_are_refused() {
    for rollout in [
        RolloutConfig {
            temperature: 0.0,
            ..RolloutConfig::default()
        },
        RolloutConfig {
            top_p: 1.5,
            ..RolloutConfig::default()
        },
        RolloutConfig {
            max_new_tokens: 0,
            ..RolloutConfig::default()
        },
    ] {
        let mut model = model();
        let decomposition = Decomposition::compute(&mut model, &Selection::mlp(), false).unwrap();
        let expert = Expert::constant(&decomposition, "test", 0.1);
        let err = SvfPolicy::new(model, decomposition, expert, rollout)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("rollout"), "{err}");
    }
}

/// Mean probability of `target` as the first completion token, under the current z.
fn target_probability(policy: &mut SvfPolicy, prompts: &[Vec<i64>], target: i64) -> f64 {
    let batch: Vec<&Vec<i64>> = prompts.iter().collect();
    let completions: Vec<(usize, Vec<i64>)> =
        (0..prompts.len()).map(|i| (i, vec![target])).collect();
    let scores = tch::no_grad(|| policy.score(&batch, &completions, false)).unwrap();
    scores
        .token_log_probs
        .iter()
        .map(|t| t.double_value(&[0]).exp())
        .sum::<f64>()
        / prompts.len() as f64
}

#[test]
fn reinforce_raises_a_rewarded_behaviour_of_a_real_model() {
    let rollout = RolloutConfig {
        max_new_tokens: 1,
        ..RolloutConfig::default()
    };
    let mut policy = policy(&Selection::mlp_and_attention(), 0.1, rollout);
    let prompts = prompts();
    // A token the base model gives a modest probability to.
    let target = 17;
    let before = target_probability(&mut policy, &prompts, target);
    let config = TrainerConfig {
        epochs: 4,
        steps_per_epoch: 10,
        prompts_per_step: 6,
        samples_per_prompt: 8,
        baseline: Baseline::LeaveOneOut,
        kl_estimator: KlEstimator::ExactForward,
        kl_coefficient: 0.01,
        optimizer: OptimizerConfig {
            learning_rate: 0.05,
            ..OptimizerConfig::default()
        },
        patience: 10,
        ..TrainerConfig::default()
    };
    let reward = |_: &Vec<i64>, completion: &[i64]| {
        if completion.first() == Some(&target) {
            1.0
        } else {
            -1.0
        }
    };
    let eval_prompts = prompts.clone();
    let mut validate = |p: &mut SvfPolicy| -> reinforce_kl::Result<Validation> {
        Ok(Validation {
            score: target_probability(p, &eval_prompts, target),
            ..Validation::default()
        })
    };
    let report = train(&mut policy, &prompts, &reward, &mut validate, &config, None).unwrap();
    let after = target_probability(&mut policy, &prompts, target);
    assert!(
        after > before * 2.0 && after > before + 0.05,
        "target probability {before:.4} -> {after:.4}; events {:?}",
        report.state.events
    );
    eprintln!("target probability {before:.4} -> {after:.4}");
    // The trained expert comes back detached, the model without adapters.
    let (model, expert) = policy.into_parts().unwrap();
    assert!(expert.z.iter().all(|(_, z)| !z.requires_grad()));
    let base = self::model();
    let ids = tch::Tensor::from_slice(&[5i64, 9, 14]).view([1, 3]);
    let diff = (model.forward(&ids, None, None).unwrap() - base.forward(&ids, None, None).unwrap())
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn chunked_scoring_accumulates_the_same_step() {
    let rollout = RolloutConfig {
        max_new_tokens: 3,
        ..RolloutConfig::default()
    };
    let prompts = prompts();
    let reward = |_: &Vec<i64>, completion: &[i64]| {
        if completion.contains(&17) { 1.0 } else { -1.0 }
    };
    let mut trained = Vec::new();
    for chunk in [None, Some(5), Some(1)] {
        let mut policy = policy(&Selection::mlp(), 0.1, rollout.clone());
        let config = TrainerConfig {
            epochs: 1,
            steps_per_epoch: 2,
            prompts_per_step: 4,
            samples_per_prompt: 4,
            kl_coefficient: 0.05,
            entropy_bonus: 0.01,
            // A large epsilon makes each update proportional to the gradient. With
            // Adam's usual 1e-8, a near-zero gradient gets a sign-like full step, so the
            // rounding differences between chunkings (matrix products of other shapes)
            // would show as 1e-5 differences in z, while a gradient scaled wrongly by
            // the accumulation would not show at all.
            optimizer: OptimizerConfig {
                learning_rate: 0.5,
                eps: 1.0,
                ..OptimizerConfig::default()
            },
            score_chunk: chunk,
            ..TrainerConfig::default()
        };
        let mut validate =
            |_: &mut SvfPolicy| -> reinforce_kl::Result<Validation> { Ok(Validation::default()) };
        train(&mut policy, &prompts, &reward, &mut validate, &config, None).unwrap();
        trained.push(policy.parameters().iter().map(values).collect::<Vec<_>>());
    }
    let initial = 0.1f32;
    assert!(
        trained[0]
            .iter()
            .flatten()
            .any(|z| (z - initial).abs() > 1e-3),
        "the steps did not move z"
    );
    for other in &trained[1..] {
        for (a, b) in trained[0].iter().flatten().zip(other.iter().flatten()) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
