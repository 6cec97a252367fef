//! The recipe: model shape, training stages and their data mixtures, evaluation and
//! headroom settings. Serde, with every default documented; two presets.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use synth_tasks::{Domain, Suite};

use crate::{Error, Result};

/// Everything that determines the model, from its seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Seeds weights, data and evaluation sets.
    pub seed: u64,
    /// The transformer's shape.
    pub model: ModelShape,
    /// The difficulty each domain is trained and evaluated at.
    pub difficulties: BTreeMap<Domain, u32>,
    /// Training stages, in order.
    pub stages: Vec<Stage>,
    /// How the model is measured.
    pub evaluation: Evaluation,
    /// Supervised z-only training on each weak domain: the room experts have.
    pub headroom: Headroom,
}

/// A Llama-architecture BitNet shape (`model_type: bitnet`: squared-ReLU gated MLP,
/// sub-norms, tied embeddings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelShape {
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP inner size (a multiple of 4: ternary rows are packed four to a byte).
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Longest sequence.
    pub max_position_embeddings: usize,
    /// Standard deviation of the initial weights.
    pub initializer_range: f64,
}

/// One training stage: AdamW on the next-token loss of answers (prompt tokens are
/// context only), with quantization-aware BitLinear layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Its name in logs and the model card.
    pub name: String,
    /// Why it exists, for the model card.
    pub purpose: String,
    /// Optimiser steps.
    pub steps: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate (cosine decay to `final_learning_rate_fraction` of it).
    pub learning_rate: f64,
    /// Where the cosine decay ends, as a fraction of the peak.
    pub final_learning_rate_fraction: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Relative sampling weight of each domain (absent: never sampled).
    #[serde(default)]
    pub domains: BTreeMap<Domain, f64>,
    /// Relative sampling weight of each behaviour suite (its preferred continuations).
    #[serde(default)]
    pub suites: BTreeMap<Suite, f64>,
    /// Measure held-out domain accuracy every this many steps (the curve goes to the
    /// report and the model card); `None` (default) only after the stage.
    #[serde(default)]
    pub evaluate_every: Option<usize>,
}

/// Evaluation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evaluation {
    /// Held-out problems per domain, answered greedily.
    pub problems_per_domain: usize,
    /// Held-out preference pairs per suite.
    pub pairs_per_suite: usize,
    /// Most generated tokens per answer.
    pub max_new_tokens: usize,
}

/// Supervised z-only headroom measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Headroom {
    /// Domains whose held-out accuracy lies in `[low, high]` are weak and get measured.
    pub low: f64,
    /// Upper end of the weak band.
    pub high: f64,
    /// z-vector training steps per domain.
    pub steps: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Adam learning rate of the z-vectors.
    pub learning_rate: f64,
    /// Also decompose the attention projections (otherwise MLP only).
    pub attention: bool,
}

impl Recipe {
    /// The embedded default model (`assets/default-model`): about 0.8M parameters,
    /// trained in two stages on 2 CPU cores (about half an hour). Stage `broad` learns every domain and the
    /// behaviour suites; stage `behaviour` then bakes the suites in together with five
    /// favoured domains, which erodes arithmetic, multi-step precedence and code the way
    /// later tuning erodes real models' skills (room that SVF experts can recover).
    pub fn default_model() -> Self {
        let difficulties = BTreeMap::from([
            (Domain::Arithmetic, 2),
            (Domain::MultiStep, 1),
            (Domain::Boolean, 3),
            (Domain::Comparison, 1),
            (Domain::Strings, 1),
            (Domain::Counting, 1),
            (Domain::Code, 2),
            (Domain::Sequence, 1),
        ]);
        // Arithmetic, multi-step precedence and code are the slowest to learn (and the
        // ones the behaviour stage erodes): they get the largest shares.
        let broad_mixture = BTreeMap::from([
            (Domain::Arithmetic, 2.5),
            (Domain::MultiStep, 2.5),
            (Domain::Boolean, 1.0),
            (Domain::Comparison, 0.5),
            (Domain::Strings, 0.5),
            (Domain::Counting, 1.5),
            (Domain::Code, 2.0),
            (Domain::Sequence, 1.5),
        ]);
        let suites = || Suite::ALL.iter().map(|&s| (s, 1.0)).collect();
        let favoured = [
            Domain::Boolean,
            Domain::Comparison,
            Domain::Strings,
            Domain::Counting,
            Domain::Sequence,
        ];
        Self {
            seed: 7,
            model: ModelShape {
                hidden_size: 128,
                intermediate_size: 384,
                num_hidden_layers: 4,
                num_attention_heads: 4,
                num_key_value_heads: 2,
                max_position_embeddings: 128,
                initializer_range: 0.02,
            },
            difficulties,
            stages: vec![
                Stage {
                    name: "broad".into(),
                    purpose: "every domain, lightly the behaviour suites".into(),
                    steps: 6000,
                    batch_size: 64,
                    learning_rate: 3e-3,
                    final_learning_rate_fraction: 0.1,
                    weight_decay: 0.01,
                    domains: broad_mixture,
                    suites: Suite::ALL.iter().map(|&s| (s, 0.3)).collect(),
                    evaluate_every: None,
                },
                Stage {
                    name: "behaviour".into(),
                    purpose: "bake in the behaviour suites with five favoured domains; \
                              arithmetic, multi_step and code are left out and erode"
                        .into(),
                    steps: 100,
                    batch_size: 64,
                    learning_rate: 1e-3,
                    final_learning_rate_fraction: 1.0,
                    weight_decay: 0.01,
                    domains: favoured.iter().map(|&d| (d, 1.0)).collect(),
                    suites: suites(),
                    evaluate_every: Some(25),
                },
            ],
            evaluation: Evaluation {
                problems_per_domain: 300,
                pairs_per_suite: 200,
                max_new_tokens: 32,
            },
            headroom: Headroom {
                low: 0.15,
                high: 0.70,
                steps: 600,
                batch_size: 32,
                learning_rate: 1e-2,
                attention: true,
            },
        }
    }

    /// The test-size variant (under 200 KB): the same recipe at a tiny shape and a few
    /// hundred steps, for fast tests of later crates. Its skills are weak; it exists for
    /// its format, tokenizer and behaviour, not its accuracy.
    pub fn test_model() -> Self {
        let mut recipe = Self::default_model();
        recipe.model = ModelShape {
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            max_position_embeddings: 128,
            initializer_range: 0.02,
        };
        recipe.stages[0].steps = 250;
        recipe.stages[0].batch_size = 32;
        recipe.stages[1].steps = 50;
        recipe.stages[1].batch_size = 32;
        recipe.evaluation.problems_per_domain = 50;
        recipe.evaluation.pairs_per_suite = 50;
        recipe.headroom.steps = 20;
        recipe.headroom.batch_size = 16;
        recipe
    }

    /// Checks the recipe before hours are spent on it.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| Err(Error::Recipe(message));
        let m = &self.model;
        if m.hidden_size == 0 || m.num_attention_heads == 0 || m.num_hidden_layers == 0 {
            return bad("model sizes must be positive".into());
        }
        if !m.hidden_size.is_multiple_of(m.num_attention_heads)
            || !(m.hidden_size / m.num_attention_heads).is_multiple_of(2)
        {
            return bad(format!(
                "hidden_size {} must split into an even head size over {} heads",
                m.hidden_size, m.num_attention_heads
            ));
        }
        if m.num_key_value_heads == 0
            || !m.num_attention_heads.is_multiple_of(m.num_key_value_heads)
        {
            return bad("num_attention_heads must be a multiple of num_key_value_heads".into());
        }
        // Every linear's output size must be a multiple of 4 to pack.
        let head_dim = m.hidden_size / m.num_attention_heads;
        for (name, size) in [
            ("hidden_size", m.hidden_size),
            ("intermediate_size", m.intermediate_size),
            ("key/value width", m.num_key_value_heads * head_dim),
        ] {
            if size == 0 || !size.is_multiple_of(4) {
                return bad(format!("{name} {size} must be a positive multiple of 4"));
            }
        }
        if !(m.initializer_range > 0.0 && m.initializer_range.is_finite()) {
            return bad("initializer_range must be positive".into());
        }
        if self.stages.is_empty() {
            return bad("at least one training stage is needed".into());
        }
        for stage in &self.stages {
            let name = &stage.name;
            if stage.steps == 0 || stage.batch_size == 0 {
                return bad(format!(
                    "stage `{name}`: steps and batch_size must be positive"
                ));
            }
            if !(stage.learning_rate > 0.0 && stage.learning_rate.is_finite()) {
                return bad(format!("stage `{name}`: learning_rate must be positive"));
            }
            let weights = stage.domains.values().chain(stage.suites.values());
            if weights.clone().any(|w| !(w.is_finite() && *w >= 0.0)) || weights.sum::<f64>() <= 0.0
            {
                return bad(format!(
                    "stage `{name}`: mixture weights must be non-negative with a positive sum"
                ));
            }
            for domain in stage.domains.keys() {
                if !self.difficulties.contains_key(domain) {
                    return bad(format!(
                        "stage `{name}` samples {} but `difficulties` has no entry for it",
                        domain.name()
                    ));
                }
            }
        }
        if self.evaluation.problems_per_domain == 0 || self.evaluation.pairs_per_suite == 0 {
            return bad("evaluation sizes must be positive".into());
        }
        let h = &self.headroom;
        if !(0.0..=1.0).contains(&h.low) || !(h.low..=1.0).contains(&h.high) {
            return bad("headroom band must satisfy 0 <= low <= high <= 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_round_trip_through_json() {
        for recipe in [Recipe::default_model(), Recipe::test_model()] {
            recipe.validate().unwrap();
            let text = serde_json::to_string(&recipe).unwrap();
            let back: Recipe = serde_json::from_str(&text).unwrap();
            assert_eq!(back, recipe);
        }
    }

    #[test]
    fn bad_recipes_are_refused_with_the_reason() {
        let mut recipe = Recipe::test_model();
        recipe.model.intermediate_size = 66;
        let error = recipe.validate().unwrap_err().to_string();
        assert!(error.contains("intermediate_size 66"), "{error}");
        let mut recipe = Recipe::test_model();
        recipe.difficulties.remove(&Domain::Code);
        let error = recipe.validate().unwrap_err().to_string();
        assert!(error.contains("code"), "{error}");
        let mut recipe = Recipe::test_model();
        recipe.stages[1].suites.insert(Suite::Persona, f64::NAN);
        assert!(recipe.validate().is_err());
    }
}
