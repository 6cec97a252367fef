//! Dataset specs (R5): per expert, the topics, the difficulty that puts the model in its
//! learning zone, how many problems, their format and special requirements, derived
//! from the profile and the plan.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use synth_tasks::Domain;

use crate::planner::Plan;
use crate::profile::Profile;
use crate::{Error, Result};

/// Settings of spec derivation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpecConfig {
    /// Fewest problems per expert. Default 300 (seed).
    pub min_examples: usize,
    /// Most problems per expert. Default 500 (seed).
    pub max_examples: usize,
    /// Per-problem confidence band the validator keeps. Default [0.6, 0.9] (seed).
    pub confidence_band: [f64; 2],
    /// Expected accuracy over the dataset. Default [0.70, 0.80] (seed).
    pub learning_zone: [f64; 2],
    /// Accuracy each expert aims for. Default 0.85 (R12).
    pub target_accuracy: f64,
}

impl Default for SpecConfig {
    fn default() -> Self {
        Self {
            min_examples: 300,
            max_examples: 500,
            confidence_band: [0.6, 0.9],
            learning_zone: [0.70, 0.80],
            target_accuracy: 0.85,
        }
    }
}

/// One topic of a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Topic {
    /// Domain.
    pub domain: String,
    /// What it asks.
    pub description: String,
    /// Difficulty to generate at (the profile's learning-zone difficulty).
    pub difficulty: u32,
    /// The model's greedy accuracy at that difficulty in the sweep.
    pub zone_accuracy: f64,
    /// Its accuracy at the profiled difficulty.
    pub profiled_accuracy: f64,
    /// The profiled difficulty.
    pub profiled_difficulty: u32,
}

/// Difficulty targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DifficultyTarget {
    /// Per-problem confidence band (pass rate over k samples).
    pub confidence_band: [f64; 2],
    /// Expected accuracy over the dataset.
    pub expected_accuracy: [f64; 2],
    /// Generation difficulty per domain.
    pub difficulty: BTreeMap<String, u32>,
}

/// A dataset spec (the seed's schema plus the numbers behind it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSpec {
    /// Expert id in the plan.
    pub expert_id: usize,
    /// Expert name.
    pub expert_name: String,
    /// Topics.
    pub topics: Vec<Topic>,
    /// Difficulty targets.
    pub difficulty_target: DifficultyTarget,
    /// Problems to produce.
    pub num_examples: usize,
    /// Prompt and answer format.
    pub format: String,
    /// Special requirements.
    pub special_requirements: Vec<String>,
    /// How the numbers were derived.
    pub rationale: String,
}

/// One spec per expert of `plan`.
pub fn dataset_specs(
    plan: &Plan,
    profile: &Profile,
    config: &SpecConfig,
) -> Result<Vec<DatasetSpec>> {
    if config.min_examples == 0 || config.min_examples > config.max_examples {
        return Err(Error::Config(format!(
            "min_examples {} must be positive and at most max_examples {}",
            config.min_examples, config.max_examples
        )));
    }
    let mut specs = Vec::new();
    for expert in &plan.expert_definitions {
        let mut topics = Vec::new();
        for name in &expert.domains {
            let domain = Domain::from_name(name)
                .ok_or_else(|| Error::Data(format!("plan names unknown domain `{name}`")))?;
            let measured = profile
                .domain(domain)
                .ok_or_else(|| Error::Data(format!("domain `{name}` is not in the profile")))?;
            topics.push(Topic {
                domain: name.clone(),
                description: domain.description().to_owned(),
                difficulty: measured.learning_zone_difficulty,
                zone_accuracy: measured.learning_zone_accuracy,
                profiled_accuracy: measured.accuracy,
                profiled_difficulty: measured.difficulty,
            });
        }
        let mean_accuracy =
            topics.iter().map(|t| t.profiled_accuracy).sum::<f64>() / topics.len().max(1) as f64;
        let gap =
            ((config.target_accuracy - mean_accuracy) / config.target_accuracy).clamp(0.0, 1.0);
        let span = (config.max_examples - config.min_examples) as f64;
        let num_examples = config.min_examples + (gap * span).round() as usize;
        let format = expert
            .domains
            .iter()
            .filter_map(|d| Domain::from_name(d))
            .map(|d| format!("{}: {}", d.name(), d.format()))
            .collect::<Vec<_>>()
            .join("; ");
        let zones: Vec<String> = topics
            .iter()
            .map(|t| {
                format!(
                    "{} at difficulty {} (sweep accuracy {:.2}; profiled {:.3} at difficulty {})",
                    t.domain,
                    t.difficulty,
                    t.zone_accuracy,
                    t.profiled_accuracy,
                    t.profiled_difficulty
                )
            })
            .collect();
        specs.push(DatasetSpec {
            expert_id: expert.id,
            expert_name: expert.name.clone(),
            difficulty_target: DifficultyTarget {
                confidence_band: config.confidence_band,
                expected_accuracy: config.learning_zone,
                difficulty: topics.iter().map(|t| (t.domain.clone(), t.difficulty)).collect(),
            },
            topics,
            num_examples,
            format: format.clone(),
            special_requirements: vec![
                "one exact answer per prompt, checked by the domain's solver".into(),
                "prompts in exactly the domain's format (no extra words): the model was trained on it".into(),
                "no prompt of any held-out evaluation set, and no near duplicate of one".into(),
                "balanced across the expert's domains".into(),
            ],
            rationale: format!(
                "difficulty: the sweep difficulty whose accuracy is closest to the learning zone's centre: {}; \
                 num_examples = {} + ({:.2} target - {:.3} current) / {:.2} x {} = {}",
                zones.join("; "),
                config.min_examples,
                config.target_accuracy,
                mean_accuracy,
                config.target_accuracy,
                config.max_examples - config.min_examples,
                num_examples
            ),
        });
    }
    Ok(specs)
}
