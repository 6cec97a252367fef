//! AdamW with an optional Grokfast gradient filter, gradient-norm clipping and a learning
//! rate schedule, over plain tensors (whatever parameters a policy exposes).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// The same rate throughout.
    Constant,
    /// Cosine decay from the rate to `floor * rate` over `total_steps`.
    Cosine {
        /// Steps of the whole run.
        total_steps: usize,
        /// Final fraction of the rate.
        floor: f64,
    },
}

/// Grokfast-EMA (Lee et al. 2024): the gradient becomes `g + lambda * EMA(g)`, with
/// `EMA <- alpha * EMA + (1 - alpha) * g`, amplifying its slow components.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Grokfast {
    /// EMA momentum. Default 0.98.
    pub alpha: f64,
    /// Amplification. Default 2.0.
    pub lambda: f64,
}

impl Default for Grokfast {
    fn default() -> Self {
        Self {
            alpha: 0.98,
            lambda: 2.0,
        }
    }
}

/// Optimiser settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OptimizerConfig {
    /// Learning rate. Default 3e-3 (what lifted an eroded skill in the probe; the
    /// reference code uses 2e-3).
    pub learning_rate: f64,
    /// Adam betas. Default (0.9, 0.999).
    pub betas: (f64, f64),
    /// Adam epsilon. Default 1e-8.
    pub eps: f64,
    /// Decoupled weight decay. Default 0 (z-vectors have no natural zero).
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (after the Grokfast filter). Default 1.0
    /// (the reference code uses 1e-3).
    pub max_grad_norm: Option<f64>,
    /// Grokfast filter for 1-D parameters (z-vectors). Default on (R9).
    pub grokfast: Option<Grokfast>,
    /// Learning-rate schedule. Default constant.
    pub schedule: Schedule,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            learning_rate: 3e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
            grokfast: Some(Grokfast::default()),
            schedule: Schedule::Constant,
        }
    }
}

/// AdamW state for a list of parameters.
pub struct AdamW {
    config: OptimizerConfig,
    /// First moments, second moments and Grokfast EMAs, one per parameter.
    pub(crate) first: Vec<Tensor>,
    pub(crate) second: Vec<Tensor>,
    pub(crate) ema: Vec<Option<Tensor>>,
    /// Steps taken.
    pub(crate) steps: usize,
}

/// What one optimiser step saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Global gradient norm before clipping (after the Grokfast filter).
    pub grad_norm: f64,
    /// Learning rate used.
    pub learning_rate: f64,
}

impl AdamW {
    /// An optimiser for `parameters` (their shapes and devices).
    pub fn new(parameters: &[Tensor], config: OptimizerConfig) -> Self {
        Self {
            first: parameters.iter().map(|p| p.zeros_like().detach()).collect(),
            second: parameters.iter().map(|p| p.zeros_like().detach()).collect(),
            ema: parameters.iter().map(|_| None).collect(),
            steps: 0,
            config,
        }
    }

    /// The settings.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    fn learning_rate(&self) -> f64 {
        match self.config.schedule {
            Schedule::Constant => self.config.learning_rate,
            Schedule::Cosine { total_steps, floor } => {
                let progress = (self.steps as f64 / total_steps.max(1) as f64).min(1.0);
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                self.config.learning_rate * (floor + (1.0 - floor) * cosine)
            }
        }
    }

    /// The gradients of `parameters` after the Grokfast filter, or `None` when any is
    /// missing a gradient or not finite (the step must then be skipped).
    pub fn filtered_gradients(&mut self, parameters: &[Tensor]) -> Option<Vec<Tensor>> {
        let mut gradients = Vec::with_capacity(parameters.len());
        for p in parameters {
            let g = p.grad();
            if !g.defined() {
                return None;
            }
            if !bool::try_from(g.isfinite().all()).unwrap_or(false) {
                return None;
            }
            gradients.push(g.detach().copy());
        }
        if let Some(filter) = self.config.grokfast {
            for (i, (g, p)) in gradients.iter_mut().zip(parameters).enumerate() {
                if p.dim() != 1 {
                    continue;
                }
                let ema = match &self.ema[i] {
                    Some(previous) => previous * filter.alpha + &*g * (1.0 - filter.alpha),
                    None => g.copy(),
                };
                *g = &*g + &ema * filter.lambda;
                self.ema[i] = Some(ema);
            }
        }
        Some(gradients)
    }

    /// Applies filtered gradients: clipping, then the AdamW update, in place.
    pub fn apply(&mut self, parameters: &[Tensor], gradients: Vec<Tensor>) -> StepReport {
        let _guard = tch::no_grad_guard();
        let norm = gradients
            .iter()
            .map(|g| g.pow_tensor_scalar(2).sum(Kind::Double).double_value(&[]))
            .sum::<f64>()
            .sqrt();
        let clip = match self.config.max_grad_norm {
            Some(max) if norm > max => max / (norm + 1e-12),
            _ => 1.0,
        };
        self.steps += 1;
        let learning_rate = self.learning_rate();
        let (beta1, beta2) = self.config.betas;
        let correction1 = 1.0 - beta1.powi(self.steps as i32);
        let correction2 = 1.0 - beta2.powi(self.steps as i32);
        for (i, (p, g)) in parameters.iter().zip(gradients).enumerate() {
            let g = g * clip;
            self.first[i] = &self.first[i] * beta1 + &g * (1.0 - beta1);
            self.second[i] = &self.second[i] * beta2 + g.square() * (1.0 - beta2);
            let update = (&self.first[i] / correction1)
                / ((&self.second[i] / correction2).sqrt() + self.config.eps);
            let mut p = p.shallow_clone();
            if self.config.weight_decay > 0.0 {
                let _ = p.f_mul_scalar_(1.0 - learning_rate * self.config.weight_decay);
            }
            let _ = p.f_sub_(&(update * learning_rate));
        }
        StepReport {
            grad_norm: norm,
            learning_rate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn adamw_minimises_a_quadratic() {
        let x = Tensor::from_slice(&[3.0f32, -2.0]).set_requires_grad(true);
        let config = OptimizerConfig {
            learning_rate: 0.1,
            grokfast: None,
            ..OptimizerConfig::default()
        };
        let mut adam = AdamW::new(std::slice::from_ref(&x), config);
        for _ in 0..300 {
            x.shallow_clone().zero_grad();
            x.square().sum(Kind::Float).backward();
            let g = adam.filtered_gradients(std::slice::from_ref(&x)).unwrap();
            adam.apply(std::slice::from_ref(&x), g);
        }
        assert!(x.abs().max().double_value(&[]) < 1e-2, "{x:?}");
    }

    #[test]
    fn non_finite_gradients_are_refused_and_grokfast_amplifies_slow_components() {
        let x = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let mut adam = AdamW::new(std::slice::from_ref(&x), OptimizerConfig::default());
        (x.sqrt() * f64::NAN).sum(Kind::Float).backward();
        assert!(adam.filtered_gradients(std::slice::from_ref(&x)).is_none());
        x.shallow_clone().zero_grad();
        (&x * 2.0).sum(Kind::Float).backward();
        let g = adam.filtered_gradients(std::slice::from_ref(&x)).unwrap();
        // First step: EMA = g, filtered = g + 2 g = 3 g.
        assert_eq!(g[0].double_value(&[0]), 6.0);
        let schedule = OptimizerConfig {
            schedule: Schedule::Cosine {
                total_steps: 10,
                floor: 0.1,
            },
            ..OptimizerConfig::default()
        };
        let mut cosine = AdamW::new(&[Tensor::zeros([1], (Kind::Float, Device::Cpu))], schedule);
        cosine.steps = 10;
        assert!((cosine.learning_rate() - 3e-4).abs() < 1e-12);
    }
}
