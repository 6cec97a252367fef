//! The training loop: rollouts, the REINFORCE + KL objective, safe optimiser steps,
//! per-epoch validation with interventions, and checkpoints that resume exactly.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::objective::{Baseline, KlEstimator, advantages};
use crate::optim::{AdamW, OptimizerConfig};
use crate::{Error, Result};

/// Log-probabilities a policy assigns to completions.
pub struct Scores {
    /// Per completion, the log-probability of each of its tokens, `[T]` (differentiable
    /// for the trained policy).
    pub token_log_probs: Vec<Tensor>,
    /// Per completion, the full log-distribution at each of its positions, `[T, V]`,
    /// when asked for (exact KL and entropy need it).
    pub distributions: Option<Vec<Tensor>>,
}

/// What the trainer needs from a policy.
pub trait Policy {
    /// A prompt, in whatever form the policy takes.
    type Prompt;
    /// The tensors being trained (requiring gradients), in a fixed order.
    fn parameters(&self) -> Vec<Tensor>;
    /// `samples` completions (token ids) per prompt, drawn with `seed`.
    fn sample(
        &mut self,
        prompts: &[&Self::Prompt],
        samples: usize,
        seed: u64,
    ) -> Result<Vec<Vec<Vec<i64>>>>;
    /// Scores of completions `(prompt index, tokens)` under the current parameters,
    /// differentiable with respect to them.
    fn score(
        &mut self,
        prompts: &[&Self::Prompt],
        completions: &[(usize, Vec<i64>)],
        distributions: bool,
    ) -> Result<Scores>;
    /// The same under the frozen reference policy, without gradients.
    fn score_reference(
        &mut self,
        prompts: &[&Self::Prompt],
        completions: &[(usize, Vec<i64>)],
        distributions: bool,
    ) -> Result<Scores>;
}

/// How a completion's token log-probabilities are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reduction {
    /// Summed (the reference code). The default.
    #[default]
    Sum,
    /// Averaged over the completion's tokens.
    Mean,
}

/// A validation result.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Validation {
    /// The score to maximise (accuracy on held-out problems).
    pub score: f64,
    /// The alignment score, when measured.
    pub alignment: Option<f64>,
    /// Anything else worth logging.
    pub metrics: BTreeMap<String, f64>,
    /// A behaviour gate's decision (for instance `eudaimonia-gate`'s, which also weighs
    /// tool use, persona and drops from a baseline). When present it decides the
    /// intervention instead of [`TrainerConfig::alignment_warn`] and
    /// [`TrainerConfig::alignment_stop`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateDecision>,
}

/// What a behaviour gate decided after an epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", content = "reason", rename_all = "snake_case")]
pub enum GateDecision {
    /// Behaviour kept: no intervention.
    Pass,
    /// Drifting: raise the KL coefficient (why).
    Warn(String),
    /// Eroded: stop, and restart with a higher KL coefficient while restarts remain (why).
    Stop(String),
}

impl Validation {
    /// The gate's decision, or one from the alignment score against the configured
    /// levels when no gate decided.
    pub fn decision(&self, config: &TrainerConfig) -> GateDecision {
        if let Some(decision) = &self.gate {
            return decision.clone();
        }
        match self.alignment {
            Some(a) if a < config.alignment_stop => GateDecision::Stop(format!(
                "alignment {a:.3} fell below {:.3}",
                config.alignment_stop
            )),
            Some(a) if a < config.alignment_warn => GateDecision::Warn(format!(
                "alignment {a:.3} below {:.3}",
                config.alignment_warn
            )),
            _ => GateDecision::Pass,
        }
    }
}

/// Settings of a training run. Defaults follow what lifted an eroded skill in the
/// project's probe (leave-one-out baseline, 8 samples, 16 prompts, Adam 3e-3, clip 1.0);
/// the reference code's recipe is a configuration of the same fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainerConfig {
    /// Epochs at most. Default 10.
    pub epochs: usize,
    /// Optimiser steps per epoch. Default 20.
    pub steps_per_epoch: usize,
    /// Prompts per step. Default 16.
    pub prompts_per_step: usize,
    /// Samples per prompt. Default 8.
    pub samples_per_prompt: usize,
    /// Reward baseline. Default leave-one-out.
    pub baseline: Baseline,
    /// Sum or mean of token log-probabilities. Default sum.
    pub reduction: Reduction,
    /// KL estimator. Default exact forward KL (the reference code's).
    pub kl_estimator: KlEstimator,
    /// KL coefficient at the start. Default 0.1.
    pub kl_coefficient: f64,
    /// Keep the mean KL near this by doubling or halving the coefficient after each
    /// epoch (off by default).
    pub target_kl: Option<f64>,
    /// Entropy bonus coefficient. Default 0.
    pub entropy_bonus: f64,
    /// Optimiser.
    pub optimizer: OptimizerConfig,
    /// Alignment below this raises the KL coefficient. Default 0.65 (R11).
    pub alignment_warn: f64,
    /// Alignment below this stops the run (and restores the best state). Default 0.60.
    pub alignment_stop: f64,
    /// Factor applied to the KL coefficient on an alignment warning. Default 2.
    pub kl_raise: f64,
    /// Restarts from the initial parameters after an alignment stop. Default 1.
    pub max_restarts: usize,
    /// Factor applied to the KL coefficient at a restart. Default 4.
    pub restart_kl_factor: f64,
    /// Epochs without a better validation score before stopping. Default 3.
    pub patience: usize,
    /// Consecutive skipped (non-finite) steps before giving up. Default 5.
    pub max_bad_steps: usize,
    /// Completions scored and back-propagated together; a step's gradient is accumulated
    /// over chunks of this many, so peak memory follows the chunk rather than the whole
    /// batch (the result is the same up to rounding). Default `None`: all at once.
    pub score_chunk: Option<usize>,
    /// Seed of prompt selection and sampling. Default 0.
    pub seed: u64,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            steps_per_epoch: 20,
            prompts_per_step: 16,
            samples_per_prompt: 8,
            baseline: Baseline::LeaveOneOut,
            reduction: Reduction::Sum,
            kl_estimator: KlEstimator::ExactForward,
            kl_coefficient: 0.1,
            target_kl: None,
            entropy_bonus: 0.0,
            optimizer: OptimizerConfig::default(),
            alignment_warn: 0.65,
            alignment_stop: 0.60,
            kl_raise: 2.0,
            max_restarts: 1,
            restart_kl_factor: 4.0,
            patience: 3,
            max_bad_steps: 5,
            score_chunk: None,
            seed: 0,
        }
    }
}

/// Something the trainer did, with its trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A step with a non-finite loss or gradient was skipped.
    SkippedStep {
        /// Global step index.
        step: usize,
        /// What was not finite.
        reason: String,
    },
    /// Validation after an epoch.
    Validated {
        /// Epoch (1-based).
        epoch: usize,
        /// The result.
        validation: Validation,
        /// Mean reward over the epoch's rollouts.
        mean_reward: f64,
        /// Mean KL per completion over the epoch.
        mean_kl: f64,
    },
    /// A better validation score: these parameters are kept.
    NewBest {
        /// Epoch.
        epoch: usize,
        /// Its score.
        score: f64,
    },
    /// The KL coefficient changed.
    KlCoefficient {
        /// Epoch.
        epoch: usize,
        /// Before.
        from: f64,
        /// After.
        to: f64,
        /// Why.
        reason: String,
    },
    /// Training restarted from the initial parameters.
    Restarted {
        /// Epoch.
        epoch: usize,
        /// The new KL coefficient.
        kl_coefficient: f64,
    },
    /// Training stopped.
    Stopped {
        /// Epoch.
        epoch: usize,
        /// Why.
        reason: String,
    },
}

/// Everything a resumed run needs besides tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    /// Epochs completed.
    pub epoch: usize,
    /// Steps completed (skipped ones included).
    pub step: usize,
    /// Current KL coefficient.
    pub kl_coefficient: f64,
    /// Best validation score so far.
    pub best_score: Option<f64>,
    /// Epochs since the last improvement.
    pub stale_epochs: usize,
    /// Restarts so far.
    pub restarts: usize,
    /// Consecutive skipped steps.
    pub bad_steps: usize,
    /// Optimiser steps taken (for Adam's bias correction).
    pub optimizer_steps: usize,
    /// Whether training has finished.
    pub finished: bool,
    /// Everything that happened.
    pub events: Vec<Event>,
}

/// The outcome of [`train`].
#[derive(Debug, Clone)]
pub struct Report {
    /// Final state (events included).
    pub state: TrainingState,
}

/// Splitmix64 over (seed, step, salt): the selection and sampling seeds of a step depend
/// only on these, so a resumed run draws exactly what an uninterrupted one would.
fn mix(seed: u64, step: usize, salt: u64) -> u64 {
    let mut z = seed
        ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn choose_prompts(count: usize, available: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..available).collect();
    let mut state = seed;
    let take = count.min(available);
    for i in 0..take {
        state = mix(state, i, 7);
        let j = i + (state % (available - i) as u64) as usize;
        order.swap(i, j);
    }
    order.truncate(take);
    order
}

/// What one optimisation step measured, handed to the observer of [`train_observed`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Global step index (from 0).
    pub step: usize,
    /// Epoch the step belongs to (from 1).
    pub epoch: usize,
    /// Mean reward of the step's rollouts.
    pub reward_mean: f64,
    /// Their standard deviation.
    pub reward_std: f64,
    /// Mean absolute advantage.
    pub advantage_abs_mean: f64,
    /// Mean sequence KL to the reference (0 when the KL coefficient is 0).
    pub kl_mean: f64,
    /// Mean per-token entropy of the policy, when distributions were computed.
    pub entropy_mean: Option<f64>,
    /// Mean completion length in tokens.
    pub completion_tokens_mean: f64,
    /// The loss (summed over chunks).
    pub loss: f64,
    /// Gradient norm before clipping (absent when the step was skipped).
    pub grad_norm: Option<f64>,
    /// Learning rate used (absent when skipped).
    pub learning_rate: Option<f64>,
    /// KL coefficient in force.
    pub kl_coefficient: f64,
    /// Whether the step was skipped (non-finite loss or gradient).
    pub skipped: bool,
}

/// Trains `policy` on `prompts` with `reward`, validating after every epoch with
/// `validate`. With `checkpoint`, the state is written there after every epoch
/// (atomically) and a run resumes from it when the file exists. On return the policy
/// holds the best parameters by validation.
pub fn train<P: Policy>(
    policy: &mut P,
    prompts: &[P::Prompt],
    reward: &dyn Fn(&P::Prompt, &[i64]) -> f64,
    validate: &mut dyn FnMut(&mut P) -> Result<Validation>,
    config: &TrainerConfig,
    checkpoint: Option<&Path>,
) -> Result<Report> {
    train_observed(
        policy,
        prompts,
        reward,
        validate,
        config,
        checkpoint,
        &mut |_: &StepMetrics| {},
    )
}

/// [`train`], calling `observer` after every step with what it measured (for run
/// tracking; the observer cannot change training).
// `loss = loss - x` on purpose: tch's `-=` is an in-place op, which autograd graphs
// should not depend on.
#[allow(clippy::too_many_arguments, clippy::assign_op_pattern)]
pub fn train_observed<P: Policy>(
    policy: &mut P,
    prompts: &[P::Prompt],
    reward: &dyn Fn(&P::Prompt, &[i64]) -> f64,
    validate: &mut dyn FnMut(&mut P) -> Result<Validation>,
    config: &TrainerConfig,
    checkpoint: Option<&Path>,
    observer: &mut dyn FnMut(&StepMetrics),
) -> Result<Report> {
    if prompts.is_empty() {
        return Err(Error::Config("no training prompts".into()));
    }
    let parameters = policy.parameters();
    let initial: Vec<Tensor> = parameters.iter().map(|p| p.detach().copy()).collect();
    let mut best: Vec<Tensor> = initial.iter().map(Tensor::copy).collect();
    let mut optimizer = AdamW::new(&parameters, config.optimizer.clone());
    let mut state = TrainingState {
        epoch: 0,
        step: 0,
        kl_coefficient: config.kl_coefficient,
        best_score: None,
        stale_epochs: 0,
        restarts: 0,
        bad_steps: 0,
        optimizer_steps: 0,
        finished: false,
        events: Vec::new(),
    };
    if let Some(path) = checkpoint
        && path.exists()
    {
        state = crate::checkpoint::load(path, &parameters, &mut best, &mut optimizer)?;
    }
    let needs_distributions =
        config.kl_estimator.needs_distributions() || config.entropy_bonus > 0.0;
    while !state.finished && state.epoch < config.epochs {
        let (mut reward_sum, mut rollouts, mut kl_sum, mut kl_count) = (0.0, 0usize, 0.0, 0usize);
        for _ in 0..config.steps_per_epoch {
            let step = state.step;
            state.step += 1;
            let chosen = choose_prompts(
                config.prompts_per_step,
                prompts.len(),
                mix(config.seed, step, 1),
            );
            let batch: Vec<&P::Prompt> = chosen.iter().map(|&i| &prompts[i]).collect();
            let samples =
                policy.sample(&batch, config.samples_per_prompt, mix(config.seed, step, 2))?;
            let rewards: Vec<Vec<f64>> = samples
                .iter()
                .zip(&batch)
                .map(|(group, prompt)| group.iter().map(|c| reward(prompt, c)).collect())
                .collect();
            reward_sum += rewards.iter().flatten().sum::<f64>();
            rollouts += rewards.iter().map(Vec::len).sum::<usize>();
            let flat_rewards: Vec<f64> = rewards.iter().flatten().copied().collect();
            let count = flat_rewards.len().max(1) as f64;
            let reward_mean = flat_rewards.iter().sum::<f64>() / count;
            let reward_std = (flat_rewards
                .iter()
                .map(|r| (r - reward_mean).powi(2))
                .sum::<f64>()
                / count)
                .sqrt();
            let (mut step_kl, mut step_kl_count) = (0.0, 0usize);
            let (mut step_entropy, mut step_entropy_count) = (0.0, 0usize);
            let mut step_loss = 0.0;
            let advantage = advantages(&rewards, config.baseline);
            let completions: Vec<(usize, Vec<i64>)> = samples
                .iter()
                .enumerate()
                .flat_map(|(i, group)| group.iter().map(move |c| (i, c.clone())))
                .collect();
            let flat_advantages: Vec<f64> = advantage.into_iter().flatten().collect();
            for p in &parameters {
                p.shallow_clone().zero_grad();
            }
            let n = completions.len() as f64;
            let chunk = config.score_chunk.unwrap_or(completions.len()).max(1);
            let mut skipped = None;
            for start in (0..completions.len()).step_by(chunk) {
                let part = &completions[start..(start + chunk).min(completions.len())];
                let scores = policy.score(&batch, part, needs_distributions)?;
                let reference = if state.kl_coefficient > 0.0 {
                    Some(tch::no_grad(|| {
                        policy.score_reference(&batch, part, needs_distributions)
                    })?)
                } else {
                    None
                };
                let mut loss = Tensor::zeros([], (Kind::Float, scores.token_log_probs[0].device()));
                for (j, log_p) in scores.token_log_probs.iter().enumerate() {
                    let sequence = match config.reduction {
                        Reduction::Sum => log_p.sum(Kind::Float),
                        Reduction::Mean => log_p.mean(Kind::Float),
                    };
                    loss = loss - sequence * (flat_advantages[start + j] / n);
                    if let Some(reference) = &reference {
                        let kl = config.kl_estimator.sequence_kl(
                            log_p,
                            &reference.token_log_probs[j],
                            scores.distributions.as_ref().map(|d| &d[j]),
                            reference.distributions.as_ref().map(|d| &d[j]),
                        );
                        let kl_value = kl.double_value(&[]);
                        kl_sum += kl_value;
                        kl_count += 1;
                        step_kl += kl_value;
                        step_kl_count += 1;
                        loss = loss + kl * (state.kl_coefficient / n);
                    }
                    if let Some(distributions) = &scores.distributions {
                        let d = &distributions[j];
                        let tokens = d.size().first().copied().unwrap_or(1).max(1);
                        if config.entropy_bonus > 0.0 {
                            let entropy = -(d.exp() * d).sum(Kind::Float);
                            step_entropy += entropy.double_value(&[]) / tokens as f64;
                            loss = loss - entropy * (config.entropy_bonus / n);
                        } else {
                            // Measured for the observer only: no graph.
                            let entropy = tch::no_grad(|| -(d.exp() * d).sum(Kind::Float));
                            step_entropy += entropy.double_value(&[]) / tokens as f64;
                        }
                        step_entropy_count += 1;
                    }
                }
                let loss_value = loss.double_value(&[]);
                step_loss += loss_value;
                if !loss_value.is_finite() {
                    skipped = Some(format!("the loss is {loss_value}"));
                    break;
                }
                loss.backward();
            }
            let mut applied = None;
            if skipped.is_none() {
                match optimizer.filtered_gradients(&parameters) {
                    Some(gradients) => {
                        applied = Some(optimizer.apply(&parameters, gradients));
                    }
                    None => skipped = Some("a gradient is not finite".to_owned()),
                }
            }
            observer(&StepMetrics {
                step,
                epoch: state.epoch + 1,
                reward_mean,
                reward_std,
                advantage_abs_mean: flat_advantages.iter().map(|a| a.abs()).sum::<f64>()
                    / flat_advantages.len().max(1) as f64,
                kl_mean: step_kl / step_kl_count.max(1) as f64,
                entropy_mean: (step_entropy_count > 0)
                    .then(|| step_entropy / step_entropy_count as f64),
                completion_tokens_mean: completions.iter().map(|c| c.1.len()).sum::<usize>() as f64
                    / completions.len().max(1) as f64,
                loss: step_loss,
                grad_norm: applied.as_ref().map(|r| r.grad_norm),
                learning_rate: applied.as_ref().map(|r| r.learning_rate),
                kl_coefficient: state.kl_coefficient,
                skipped: skipped.is_some(),
            });
            match skipped {
                Some(reason) => {
                    state.events.push(Event::SkippedStep { step, reason });
                    state.bad_steps += 1;
                    if state.bad_steps >= config.max_bad_steps {
                        restore(&parameters, &best);
                        return Err(Error::Diverged(format!(
                            "{} consecutive steps had non-finite losses or gradients (last at step {step}); \
                             the best parameters were restored",
                            state.bad_steps
                        )));
                    }
                }
                None => state.bad_steps = 0,
            }
        }
        state.epoch += 1;
        state.optimizer_steps = optimizer.steps;
        let epoch = state.epoch;
        let validation = validate(policy)?;
        let mean_kl = if kl_count > 0 {
            kl_sum / kl_count as f64
        } else {
            0.0
        };
        state.events.push(Event::Validated {
            epoch,
            validation: validation.clone(),
            mean_reward: reward_sum / rollouts.max(1) as f64,
            mean_kl,
        });
        let decision = validation.decision(config);
        if let GateDecision::Stop(reason) = decision {
            if state.restarts < config.max_restarts {
                state.restarts += 1;
                let from = state.kl_coefficient;
                state.kl_coefficient = (from.max(1e-3)) * config.restart_kl_factor;
                restore(&parameters, &initial);
                optimizer = AdamW::new(&parameters, config.optimizer.clone());
                state.events.push(Event::Stopped { epoch, reason });
                state.events.push(Event::Restarted {
                    epoch,
                    kl_coefficient: state.kl_coefficient,
                });
            } else {
                state.events.push(Event::Stopped { epoch, reason });
                state.finished = true;
            }
        } else {
            if let GateDecision::Warn(reason) = decision {
                let from = state.kl_coefficient;
                state.kl_coefficient = from.max(1e-3) * config.kl_raise;
                state.events.push(Event::KlCoefficient {
                    epoch,
                    from,
                    to: state.kl_coefficient,
                    reason,
                });
            } else if let Some(target) = config.target_kl {
                let from = state.kl_coefficient;
                let to = if mean_kl > 1.5 * target {
                    from.max(1e-3) * 2.0
                } else if mean_kl < target / 1.5 {
                    from / 2.0
                } else {
                    from
                };
                if to != from {
                    state.kl_coefficient = to;
                    state.events.push(Event::KlCoefficient {
                        epoch,
                        from,
                        to,
                        reason: format!("mean KL {mean_kl:.4} against target {target:.4}"),
                    });
                }
            }
            if state.best_score.is_none_or(|b| validation.score > b) {
                state.best_score = Some(validation.score);
                state.stale_epochs = 0;
                best = parameters.iter().map(|p| p.detach().copy()).collect();
                state.events.push(Event::NewBest {
                    epoch,
                    score: validation.score,
                });
            } else {
                state.stale_epochs += 1;
                if state.stale_epochs >= config.patience {
                    state.events.push(Event::Stopped {
                        epoch,
                        reason: format!(
                            "no better validation score for {} epochs",
                            state.stale_epochs
                        ),
                    });
                    state.finished = true;
                }
            }
        }
        if let Some(path) = checkpoint {
            crate::checkpoint::save(path, &state, &parameters, &best, &optimizer)?;
        }
    }
    restore(&parameters, &best);
    Ok(Report { state })
}

fn restore(parameters: &[Tensor], values: &[Tensor]) {
    let _guard = tch::no_grad_guard();
    for (p, v) in parameters.iter().zip(values) {
        let mut p = p.shallow_clone();
        p.copy_(v);
    }
}

/// Named tensors of the trainer (for checkpoints).
pub(crate) fn named<'a>(
    prefix: &str,
    tensors: impl Iterator<Item = &'a Tensor>,
) -> HashMap<String, Tensor> {
    tensors
        .enumerate()
        .map(|(i, t)| (format!("{prefix}.{i}"), t.detach().shallow_clone()))
        .collect()
}
