//! The trainer on a toy policy with a known optimum: a categorical distribution over a
//! few tokens (its logits are the trained parameters), completions of fixed length.

use reinforce_kl::objective::advantages;
use reinforce_kl::{
    Baseline, Error, Event, KlEstimator, OptimizerConfig, Policy, Result, Scores, StepMetrics,
    TrainerConfig, Validation, train, train_observed,
};
use tch::{Device, Kind, Tensor};

const VOCAB: i64 = 5;
const TARGET: i64 = 3;

struct Categorical {
    logits: Tensor,
    reference: Tensor,
    length: usize,
    poison: bool,
}

impl Categorical {
    fn new(length: usize) -> Self {
        let reference = Tensor::from_slice(&[0.5f32, 0.2, 0.0, -0.3, 0.1]);
        Self {
            logits: reference.copy().set_requires_grad(true),
            reference,
            length,
            poison: false,
        }
    }

    fn probability(&self, token: i64) -> f64 {
        self.logits.softmax(0, Kind::Float).double_value(&[token])
    }

    fn scores(logits: &Tensor, completions: &[(usize, Vec<i64>)], distributions: bool) -> Scores {
        let log_p = logits.log_softmax(0, Kind::Float);
        let token_log_probs = completions
            .iter()
            .map(|(_, tokens)| log_p.index_select(0, &Tensor::from_slice(tokens)))
            .collect();
        let distributions = distributions.then(|| {
            completions
                .iter()
                .map(|(_, tokens)| {
                    log_p
                        .unsqueeze(0)
                        .expand([tokens.len() as i64, VOCAB], false)
                })
                .collect()
        });
        Scores {
            token_log_probs,
            distributions,
        }
    }
}

/// SplitMix64 draws, so sampling is reproducible.
fn uniform(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

impl Policy for Categorical {
    type Prompt = u32;

    fn parameters(&self) -> Vec<Tensor> {
        vec![self.logits.shallow_clone()]
    }

    fn sample(
        &mut self,
        prompts: &[&u32],
        samples: usize,
        seed: u64,
    ) -> Result<Vec<Vec<Vec<i64>>>> {
        let probabilities =
            Vec::<f64>::try_from(self.logits.softmax(0, Kind::Double).detach()).unwrap();
        let mut state = seed;
        Ok(prompts
            .iter()
            .map(|_| {
                (0..samples)
                    .map(|_| {
                        (0..self.length)
                            .map(|_| {
                                let mut u = uniform(&mut state);
                                let mut token = VOCAB - 1;
                                for (i, p) in probabilities.iter().enumerate() {
                                    if u < *p {
                                        token = i as i64;
                                        break;
                                    }
                                    u -= p;
                                }
                                token
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect())
    }

    fn score(
        &mut self,
        _: &[&u32],
        completions: &[(usize, Vec<i64>)],
        distributions: bool,
    ) -> Result<Scores> {
        let logits = if self.poison {
            &self.logits * f64::NAN
        } else {
            self.logits.shallow_clone()
        };
        Ok(Self::scores(&logits, completions, distributions))
    }

    fn score_reference(
        &mut self,
        _: &[&u32],
        completions: &[(usize, Vec<i64>)],
        distributions: bool,
    ) -> Result<Scores> {
        Ok(Self::scores(&self.reference, completions, distributions))
    }
}

fn reward(_: &u32, completion: &[i64]) -> f64 {
    if completion.iter().all(|&t| t == TARGET) {
        1.0
    } else {
        -1.0
    }
}

fn config() -> TrainerConfig {
    TrainerConfig {
        epochs: 6,
        steps_per_epoch: 10,
        prompts_per_step: 4,
        samples_per_prompt: 8,
        kl_coefficient: 0.01,
        patience: 100,
        optimizer: OptimizerConfig {
            learning_rate: 0.1,
            ..OptimizerConfig::default()
        },
        seed: 3,
        ..TrainerConfig::default()
    }
}

fn prompts() -> Vec<u32> {
    (0..32).collect()
}

#[test]
fn converges_to_the_known_optimum() {
    for estimator in [KlEstimator::ExactForward, KlEstimator::K3] {
        let mut policy = Categorical::new(1);
        let before = policy.probability(TARGET);
        let mut validate = |p: &mut Categorical| -> Result<Validation> {
            Ok(Validation {
                score: p.probability(TARGET),
                ..Validation::default()
            })
        };
        let settings = TrainerConfig {
            kl_estimator: estimator,
            ..config()
        };
        let report = train(
            &mut policy,
            &prompts(),
            &reward,
            &mut validate,
            &settings,
            None,
        )
        .unwrap();
        let after = policy.probability(TARGET);
        assert!(
            before < 0.2 && after > 0.9,
            "{estimator:?}: {before} -> {after}"
        );
        assert!(
            report
                .state
                .events
                .iter()
                .any(|e| matches!(e, Event::NewBest { .. }))
        );
    }
}

#[test]
fn kl_estimators_agree_with_the_exact_value() {
    let p = Tensor::from_slice(&[1.0f32, 0.2, -0.5, 0.3, 0.0]).log_softmax(0, Kind::Float);
    let q = Tensor::from_slice(&[0.1f32, 0.6, 0.0, -0.2, 0.4]).log_softmax(0, Kind::Float);
    let exact_reverse = (p.exp() * (&p - &q)).sum(Kind::Float).double_value(&[]);
    let exact_forward = (q.exp() * (&q - &p)).sum(Kind::Float).double_value(&[]);
    let one = |e: KlEstimator, lp: &Tensor, lq: &Tensor| {
        e.sequence_kl(lp, lq, Some(&p.unsqueeze(0)), Some(&q.unsqueeze(0)))
            .double_value(&[])
    };
    let token = Tensor::from_slice(&[0i64]);
    assert!(
        (one(
            KlEstimator::ExactReverse,
            &p.index_select(0, &token),
            &q.index_select(0, &token)
        ) - exact_reverse)
            .abs()
            < 1e-6
    );
    assert!(
        (one(
            KlEstimator::ExactForward,
            &p.index_select(0, &token),
            &q.index_select(0, &token)
        ) - exact_forward)
            .abs()
            < 1e-6
    );
    // Monte Carlo: tokens drawn from p; k1 and k3 average to KL(p || q).
    let probabilities = Vec::<f64>::try_from(p.exp().to_kind(Kind::Double)).unwrap();
    let mut state = 17u64;
    let (mut k1, mut k3, n) = (0.0, 0.0, 200_000);
    for _ in 0..n {
        let mut u = uniform(&mut state);
        let mut token = 4i64;
        for (i, prob) in probabilities.iter().enumerate() {
            if u < *prob {
                token = i as i64;
                break;
            }
            u -= prob;
        }
        let t = Tensor::from_slice(&[token]);
        let (lp, lq) = (p.index_select(0, &t), q.index_select(0, &t));
        k1 += one(KlEstimator::K1, &lp, &lq);
        k3 += one(KlEstimator::K3, &lp, &lq);
    }
    let (k1, k3) = (k1 / n as f64, k3 / n as f64);
    eprintln!(
        "KL(p||q) exact {exact_reverse:.5}, k1 {k1:.5}, k3 {k3:.5}; KL(q||p) {exact_forward:.5}"
    );
    assert!(
        (k1 - exact_reverse).abs() < 0.01,
        "k1 {k1} vs {exact_reverse}"
    );
    assert!(
        (k3 - exact_reverse).abs() < 0.01,
        "k3 {k3} vs {exact_reverse}"
    );
}

#[test]
#[allow(clippy::assign_op_pattern)] // tch's `-=` is in place; keep the graph functional
fn baselines_reduce_gradient_variance() {
    // Signal-to-noise of the policy-gradient estimate over many batches, per baseline.
    let mut snr = Vec::new();
    for baseline in [
        Baseline::None,
        Baseline::BatchMean,
        Baseline::LeaveOneOut,
        Baseline::GroupNormalised,
    ] {
        let mut policy = Categorical::new(1);
        let mut estimates: Vec<Vec<f64>> = Vec::new();
        for batch in 0..400u64 {
            let prompts: Vec<u32> = (0..4).collect();
            let refs: Vec<&u32> = prompts.iter().collect();
            let samples = policy.sample(&refs, 8, 1000 + batch).unwrap();
            let rewards: Vec<Vec<f64>> = samples
                .iter()
                .map(|g| g.iter().map(|c| reward(&0, c)).collect())
                .collect();
            let advantage: Vec<f64> = advantages(&rewards, baseline)
                .into_iter()
                .flatten()
                .collect();
            let completions: Vec<(usize, Vec<i64>)> = samples
                .iter()
                .enumerate()
                .flat_map(|(i, g)| g.iter().map(move |c| (i, c.clone())))
                .collect();
            let scores = policy.score(&refs, &completions, false).unwrap();
            let mut loss = Tensor::zeros([], (Kind::Float, Device::Cpu));
            for (log_p, a) in scores.token_log_probs.iter().zip(&advantage) {
                loss = loss - log_p.sum(Kind::Float) * (*a / completions.len() as f64);
            }
            policy.logits.shallow_clone().zero_grad();
            loss.backward();
            estimates
                .push(Vec::<f64>::try_from(policy.logits.grad().to_kind(Kind::Double)).unwrap());
        }
        let n = estimates.len() as f64;
        let mean: Vec<f64> = (0..VOCAB as usize)
            .map(|j| estimates.iter().map(|e| e[j]).sum::<f64>() / n)
            .collect();
        let signal: f64 = mean.iter().map(|m| m * m).sum();
        let noise: f64 = estimates
            .iter()
            .map(|e| {
                e.iter()
                    .zip(&mean)
                    .map(|(x, m)| (x - m).powi(2))
                    .sum::<f64>()
            })
            .sum::<f64>()
            / n;
        snr.push((baseline, signal / noise));
    }
    eprintln!("gradient signal-to-noise by baseline: {snr:?}");
    let none = snr[0].1;
    for (baseline, value) in &snr[1..] {
        assert!(*value > 1.5 * none, "{baseline:?}: {value} vs none {none}");
    }
}

#[test]
fn interventions_follow_the_alignment_signal() {
    let mut policy = Categorical::new(1);
    let script = [0.9, 0.62, 0.55, 0.7, 0.7, 0.7];
    let mut epoch = 0;
    let mut validate = |p: &mut Categorical| -> Result<Validation> {
        let alignment = script[epoch];
        epoch += 1;
        Ok(Validation {
            score: p.probability(TARGET),
            alignment: Some(alignment),
            ..Validation::default()
        })
    };
    let report = train(
        &mut policy,
        &prompts(),
        &reward,
        &mut validate,
        &config(),
        None,
    )
    .unwrap();
    let events = &report.state.events;
    let raised = events.iter().find_map(|e| match e {
        Event::KlCoefficient {
            epoch: 2, from, to, ..
        } => Some((*from, *to)),
        _ => None,
    });
    assert_eq!(raised, Some((0.01, 0.02)), "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Stopped { epoch: 3, .. })),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(e, Event::Restarted { epoch: 3, kl_coefficient } if (*kl_coefficient - 0.08).abs() < 1e-12)),
        "{events:?}"
    );
    assert_eq!(report.state.restarts, 1);
    assert_eq!(report.state.epoch, 6);
}

#[test]
fn a_plateau_stops_early() {
    let mut policy = Categorical::new(1);
    let mut validate = |_: &mut Categorical| -> Result<Validation> { Ok(Validation::default()) };
    let settings = TrainerConfig {
        patience: 2,
        ..config()
    };
    let report = train(
        &mut policy,
        &prompts(),
        &reward,
        &mut validate,
        &settings,
        None,
    )
    .unwrap();
    assert_eq!(report.state.epoch, 3, "best at 1, then two stale epochs");
    assert!(report.state.finished);
}

#[test]
fn non_finite_steps_are_skipped_then_the_run_stops_with_the_best_state() {
    let mut policy = Categorical::new(1);
    policy.poison = true;
    let mut validate = |_: &mut Categorical| -> Result<Validation> { Ok(Validation::default()) };
    let error = train(
        &mut policy,
        &prompts(),
        &reward,
        &mut validate,
        &config(),
        None,
    )
    .unwrap_err();
    assert!(matches!(error, Error::Diverged(_)), "{error}");
    assert!(error.to_string().contains("5 consecutive steps"), "{error}");
    assert!(bool::try_from(policy.logits.isfinite().all()).unwrap());
}

#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
    let run = |epochs: usize, checkpoint: Option<&std::path::Path>, policy: &mut Categorical| {
        let mut validate = |p: &mut Categorical| -> Result<Validation> {
            Ok(Validation {
                score: p.probability(TARGET),
                ..Validation::default()
            })
        };
        let settings = TrainerConfig { epochs, ..config() };
        train(
            policy,
            &prompts(),
            &reward,
            &mut validate,
            &settings,
            checkpoint,
        )
        .unwrap()
    };
    let mut straight = Categorical::new(2);
    let straight_report = run(4, None, &mut straight);

    let dir = std::env::temp_dir().join(format!("reinforce-kl-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let checkpoint = dir.join("trainer.safetensors");
    let mut first = Categorical::new(2);
    run(2, Some(&checkpoint), &mut first);
    // A new process: fresh policy object, same settings, same checkpoint.
    let mut resumed = Categorical::new(2);
    let resumed_report = run(4, Some(&checkpoint), &mut resumed);
    assert!(
        resumed.logits.equal(&straight.logits),
        "{:?} vs {:?}",
        resumed.logits,
        straight.logits
    );
    assert_eq!(resumed_report.state, straight_report.state);
    std::fs::write(&checkpoint, b"garbage").unwrap();
    let mut again = Categorical::new(2);
    let mut validate = |_: &mut Categorical| -> Result<Validation> { Ok(Validation::default()) };
    let error = train(
        &mut again,
        &prompts(),
        &reward,
        &mut validate,
        &config(),
        Some(&checkpoint),
    )
    .unwrap_err();
    assert!(error.to_string().contains("trainer.safetensors"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_step_observer_sees_every_step_and_changes_nothing() {
    let settings = TrainerConfig {
        kl_estimator: KlEstimator::ExactForward,
        ..config()
    };
    let run = |observe: bool| {
        let mut policy = Categorical::new(1);
        let mut validate = |p: &mut Categorical| -> Result<Validation> {
            Ok(Validation {
                score: p.probability(TARGET),
                ..Validation::default()
            })
        };
        let mut seen: Vec<StepMetrics> = Vec::new();
        let mut observer = |m: &StepMetrics| {
            if observe {
                seen.push(m.clone())
            }
        };
        let report = train_observed(
            &mut policy,
            &prompts(),
            &reward,
            &mut validate,
            &settings,
            None,
            &mut observer,
        )
        .unwrap();
        (report.state, policy.probability(TARGET), seen)
    };
    let (state, probability, seen) = run(true);
    let (plain_state, plain_probability, _) = run(false);
    assert_eq!(
        (state.clone(), probability),
        (plain_state, plain_probability)
    );
    assert_eq!(seen.len(), state.step);
    assert_eq!(
        seen.iter().map(|m| m.step).collect::<Vec<_>>(),
        (0..state.step).collect::<Vec<_>>()
    );
    assert_eq!(seen[0].epoch, 1);
    assert_eq!(seen.last().unwrap().epoch, state.epoch);
    for m in &seen {
        assert!(m.reward_std >= 0.0 && m.kl_mean >= -1e-9 && !m.skipped);
        assert!(m.grad_norm.is_some_and(f64::is_finite) && m.learning_rate.is_some());
        // The exact KL computes distributions, so the entropy is measured.
        assert!(m.entropy_mean.is_some_and(|e| e > 0.0));
    }
    // Rewards rise as the policy learns the target.
    let first: f64 = seen[..10].iter().map(|m| m.reward_mean).sum::<f64>() / 10.0;
    let last: f64 = seen[seen.len() - 10..]
        .iter()
        .map(|m| m.reward_mean)
        .sum::<f64>()
        / 10.0;
    assert!(last > first, "{first} -> {last}");
}
