//! The pieces of the objective: baselines (advantages) and KL estimators.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// What is subtracted from rewards before they weight log-probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Baseline {
    /// Raw rewards (the reference code's default).
    None,
    /// The mean reward of the whole batch.
    BatchMean,
    /// For each sample, the mean reward of the other samples of the same prompt (needs
    /// at least two samples per prompt; falls back to none with one). The default.
    #[default]
    LeaveOneOut,
    /// Per prompt: `(r - mean) / max(std, 1e-6)` over its samples.
    GroupNormalised,
}

/// Advantages for `rewards[prompt][sample]`, in the same layout.
pub fn advantages(rewards: &[Vec<f64>], baseline: Baseline) -> Vec<Vec<f64>> {
    match baseline {
        Baseline::None => rewards.to_vec(),
        Baseline::BatchMean => {
            let all: Vec<f64> = rewards.iter().flatten().copied().collect();
            let mean = all.iter().sum::<f64>() / all.len().max(1) as f64;
            rewards
                .iter()
                .map(|r| r.iter().map(|v| v - mean).collect())
                .collect()
        }
        Baseline::LeaveOneOut => rewards
            .iter()
            .map(|group| {
                let k = group.len();
                if k < 2 {
                    return group.clone();
                }
                let total: f64 = group.iter().sum();
                group
                    .iter()
                    .map(|v| v - (total - v) / (k - 1) as f64)
                    .collect()
            })
            .collect(),
        Baseline::GroupNormalised => rewards
            .iter()
            .map(|group| {
                let k = group.len().max(1) as f64;
                let mean = group.iter().sum::<f64>() / k;
                let std = (group.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / k).sqrt();
                group.iter().map(|v| (v - mean) / std.max(1e-6)).collect()
            })
            .collect(),
    }
}

/// How the KL to the frozen reference policy is measured, per sequence (summed over its
/// positions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// Exact `KL(ref || policy)` over the whole vocabulary at each sampled position, as
    /// the reference code computes it (`F.kl_div(log p, log p_ref, log_target=True)`).
    /// The default.
    #[default]
    ExactForward,
    /// Exact `KL(policy || ref)` over the whole vocabulary at each position.
    ExactReverse,
    /// `log p(y) - log p_ref(y)` at the sampled tokens: unbiased for `KL(policy || ref)`
    /// when the tokens come from the policy, high variance, can be negative.
    K1,
    /// `(r - 1) - log r` with `r = p_ref(y) / p(y)`: unbiased for `KL(policy || ref)`,
    /// never negative, lower variance (Schulman's k3).
    K3,
}

impl KlEstimator {
    /// Whether it needs the full distributions (not only the sampled tokens).
    pub fn needs_distributions(self) -> bool {
        matches!(self, Self::ExactForward | Self::ExactReverse)
    }

    /// The KL of one sequence. `log_p`, `log_ref`: log-probabilities of the sampled
    /// tokens `[T]`; `dist`, `dist_ref`: full log-distributions `[T, V]` (needed by the
    /// exact estimators).
    pub fn sequence_kl(
        self,
        log_p: &Tensor,
        log_ref: &Tensor,
        dist: Option<&Tensor>,
        dist_ref: Option<&Tensor>,
    ) -> Tensor {
        match self {
            Self::K1 => (log_p - log_ref).sum(Kind::Float),
            Self::K3 => {
                let log_ratio = log_ref - log_p;
                (log_ratio.exp() - 1.0 - log_ratio).sum(Kind::Float)
            }
            Self::ExactForward | Self::ExactReverse => {
                let (dist, dist_ref) = (
                    dist.expect("exact KL needs the policy's distributions"),
                    dist_ref.expect("exact KL needs the reference distributions"),
                );
                let (from, to) = if self == Self::ExactForward {
                    (dist_ref, dist)
                } else {
                    (dist, dist_ref)
                };
                (from.exp() * (from - to)).sum(Kind::Float)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baselines_center_rewards_as_documented() {
        let rewards = vec![vec![1.0, -1.0, 1.0, 1.0], vec![-1.0, -1.0]];
        assert_eq!(advantages(&rewards, Baseline::None), rewards);
        let loo = advantages(&rewards, Baseline::LeaveOneOut);
        assert!((loo[0][1] - (-1.0 - 1.0)).abs() < 1e-12);
        assert!((loo[0][0] - (1.0 - 1.0 / 3.0)).abs() < 1e-12);
        assert_eq!(loo[1], vec![0.0, 0.0]);
        let mean = advantages(&rewards, Baseline::BatchMean);
        let total: f64 = mean.iter().flatten().sum();
        assert!(total.abs() < 1e-12);
        let normalised = advantages(&rewards, Baseline::GroupNormalised);
        assert!((normalised[0].iter().sum::<f64>()).abs() < 1e-9);
        assert_eq!(normalised[1], vec![0.0, 0.0]);
    }
}
