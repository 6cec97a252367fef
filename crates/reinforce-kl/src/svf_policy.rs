//! A [`Policy`] made of a causal language model with one trainable SVF expert: what
//! Transformer² trains, ready for [`crate::train`].

use lm::{CausalLm, GenerateConfig, Generated, Sampling};
use svf::{Composition, Decomposition, Expert, Mixture, Svf};
use tch::Tensor;

use crate::trainer::{Policy, Scores};
use crate::{Error, Result};

/// How rollouts are drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    /// Most new tokens per completion. Default 64.
    pub max_new_tokens: usize,
    /// Sampling temperature (> 0). Default 1.0 (the policy's own distribution, which
    /// the log-probabilities of REINFORCE refer to).
    pub temperature: f64,
    /// Nucleus mass. Default 1.0 (no truncation: truncation would bias the gradient).
    pub top_p: f64,
    /// Tokens that end a completion; `None` means the model's EOS ids.
    pub stop_tokens: Option<Vec<i64>>,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: 1.0,
            top_p: 1.0,
            stop_tokens: None,
        }
    }
}

/// A language model whose decomposed matrices are scaled by one trainable expert.
/// Prompts are token ids. The reference policy is the same model with the base scales,
/// so no second copy of the weights is held.
pub struct SvfPolicy {
    model: CausalLm,
    svf: Svf,
    expert: Expert,
    rollout: RolloutConfig,
}

impl SvfPolicy {
    /// Installs `decomposition` in `model` and makes `expert`'s z-vectors the trained
    /// parameters (they are detached from any earlier graph and require gradients).
    pub fn new(
        mut model: CausalLm,
        decomposition: Decomposition,
        mut expert: Expert,
        rollout: RolloutConfig,
    ) -> Result<Self> {
        if !(rollout.temperature > 0.0 && rollout.temperature.is_finite()) {
            return Err(Error::Config(format!(
                "rollout temperature must be positive and finite, got {}",
                rollout.temperature
            )));
        }
        if !(rollout.top_p > 0.0 && rollout.top_p <= 1.0) {
            return Err(Error::Config(format!(
                "rollout top_p must lie in (0, 1], got {}",
                rollout.top_p
            )));
        }
        if rollout.max_new_tokens == 0 {
            return Err(Error::Config(
                "rollout max_new_tokens must be at least 1".into(),
            ));
        }
        expert.check_compatible(&decomposition)?;
        for (_, z) in &mut expert.z {
            *z = z.detach().copy().set_requires_grad(true);
        }
        let composition: Composition = expert.composition;
        let mut svf = Svf::install(&mut model, decomposition, composition)?;
        svf.set_experts(&[&expert], &Mixture::uniform(1))?;
        tch::no_grad(|| svf.refresh())?;
        Ok(Self {
            model,
            svf,
            expert,
            rollout,
        })
    }

    /// The model (with the expert installed).
    pub fn model(&self) -> &CausalLm {
        &self.model
    }

    /// The model with the current z-vectors' scales in place, for measurements outside
    /// the trainer (scoring suites, greedy accuracy); builds no graph.
    pub fn refreshed_model(&self) -> Result<&CausalLm> {
        let _guard = tch::no_grad_guard();
        self.svf.refresh()?;
        Ok(&self.model)
    }

    /// The expert being trained.
    pub fn expert(&self) -> &Expert {
        &self.expert
    }

    /// The rollout settings.
    pub fn rollout(&self) -> &RolloutConfig {
        &self.rollout
    }

    /// Generates from `prompts` with the current z-vectors and `config` (greedy
    /// validation, for instance), without building a graph.
    pub fn generate(
        &self,
        prompts: &[Vec<i64>],
        config: &GenerateConfig,
    ) -> Result<Vec<Generated>> {
        let _guard = tch::no_grad_guard();
        self.svf.refresh()?;
        Ok(self.model.generate(prompts, config)?)
    }

    /// Hands back the model (adapters removed, weights as loaded) and the trained
    /// expert.
    pub fn into_parts(self) -> Result<(CausalLm, Expert)> {
        let Self {
            mut model,
            svf,
            mut expert,
            ..
        } = self;
        svf.uninstall(&mut model)?;
        for (_, z) in &mut expert.z {
            *z = z.detach().copy();
        }
        Ok((model, expert))
    }

    fn log_probs(
        &self,
        prompts: &[&Vec<i64>],
        completions: &[(usize, Vec<i64>)],
        distributions: bool,
    ) -> Result<Scores> {
        let mut pairs = Vec::with_capacity(completions.len());
        for (i, completion) in completions {
            let prompt = prompts.get(*i).ok_or_else(|| {
                Error::Policy(format!(
                    "completion refers to prompt {i}, but only {} prompts were given",
                    prompts.len()
                ))
            })?;
            pairs.push((prompt.as_slice(), completion.as_slice()));
        }
        let out = self.model.completion_log_probs(&pairs, distributions)?;
        Ok(Scores {
            token_log_probs: out.token_log_probs,
            distributions: out.distributions,
        })
    }
}

impl Policy for SvfPolicy {
    type Prompt = Vec<i64>;

    fn parameters(&self) -> Vec<Tensor> {
        self.expert
            .z
            .iter()
            .map(|(_, z)| z.shallow_clone())
            .collect()
    }

    fn sample(
        &mut self,
        prompts: &[&Vec<i64>],
        samples: usize,
        seed: u64,
    ) -> Result<Vec<Vec<Vec<i64>>>> {
        let repeated: Vec<Vec<i64>> = prompts
            .iter()
            .flat_map(|p| std::iter::repeat_n((*p).clone(), samples))
            .collect();
        let config = GenerateConfig {
            max_new_tokens: self.rollout.max_new_tokens,
            sampling: Sampling::Temperature {
                temperature: self.rollout.temperature,
                top_p: self.rollout.top_p,
            },
            seed,
            stop_tokens: self.rollout.stop_tokens.clone(),
        };
        let generated = self.generate(&repeated, &config)?;
        let mut groups = Vec::with_capacity(prompts.len());
        let mut it = generated.into_iter();
        for _ in prompts {
            groups.push(it.by_ref().take(samples).map(|g| g.tokens).collect());
        }
        Ok(groups)
    }

    fn score(
        &mut self,
        prompts: &[&Vec<i64>],
        completions: &[(usize, Vec<i64>)],
        distributions: bool,
    ) -> Result<Scores> {
        // Rebuild the scales inside the graph so the loss reaches z.
        self.svf.refresh()?;
        self.log_probs(prompts, completions, distributions)
    }

    fn score_reference(
        &mut self,
        prompts: &[&Vec<i64>],
        completions: &[(usize, Vec<i64>)],
        distributions: bool,
    ) -> Result<Scores> {
        let _guard = tch::no_grad_guard();
        self.svf.use_base_scales();
        let scores = self.log_probs(prompts, completions, distributions);
        // Back to the expert, whatever happened.
        self.svf.refresh()?;
        let scores = scores?;
        Ok(Scores {
            token_log_probs: scores.token_log_probs.iter().map(Tensor::detach).collect(),
            distributions: scores
                .distributions
                .map(|d| d.iter().map(Tensor::detach).collect()),
        })
    }
}
