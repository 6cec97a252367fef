//! What to generate: the fields of a dataset spec this crate needs. It reads the
//! `specs.json` that `self-eval` writes (its `DatasetSpec`, whose other fields, the
//! numbers behind the choice, are ignored here), or a spec a user writes by hand.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::file_error;
use crate::{Error, Result};

/// One topic: a domain at a difficulty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Topic {
    /// Domain name (`arithmetic`; `synth-tasks` names have a solver that checks
    /// answers, other names are checked by agreement).
    pub domain: String,
    /// What it asks, in a sentence.
    pub description: String,
    /// Difficulty to generate at.
    pub difficulty: u32,
}

/// A dataset spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationSpec {
    /// Expert id.
    pub expert_id: usize,
    /// Expert name (budgets and reports are per expert).
    pub expert_name: String,
    /// Topics, generated round-robin.
    pub topics: Vec<Topic>,
    /// Problems wanted.
    pub num_examples: usize,
    /// The prompt and answer format, with examples.
    pub format: String,
    /// Requirements every problem must meet.
    #[serde(default)]
    pub special_requirements: Vec<String>,
}

impl GenerationSpec {
    /// Checks the spec is usable; the error names the expert and the field.
    pub fn check(&self) -> Result<()> {
        if self.topics.is_empty() {
            return Err(Error::Config(format!(
                "spec of expert `{}`: `topics` is empty",
                self.expert_name
            )));
        }
        if self.num_examples == 0 {
            return Err(Error::Config(format!(
                "spec of expert `{}`: `num_examples` is 0",
                self.expert_name
            )));
        }
        Ok(())
    }
}

/// The specs in a JSON file holding one spec or an array of them.
pub fn read_specs(path: &Path) -> Result<Vec<GenerationSpec>> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| file_error(path, format!("not JSON: {e}")))?;
    let specs: Vec<GenerationSpec> = if value.is_array() {
        serde_json::from_value(value)
    } else {
        serde_json::from_value(value).map(|s| vec![s])
    }
    .map_err(|e| {
        file_error(
            path,
            format!("not a dataset spec (or an array of them): {e}"),
        )
    })?;
    for spec in &specs {
        spec.check().map_err(|e| file_error(path, e))?;
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_or_many_and_names_the_file_on_errors() {
        let dir = tempfile::tempdir().unwrap();
        let one = r#"{"expert_id":0,"expert_name":"arith","topics":[{"domain":"arithmetic","description":"sums","difficulty":2,"zone_accuracy":0.7}],"num_examples":10,"format":"a+b=","rationale":"ignored"}"#;
        let path = dir.path().join("one.json");
        std::fs::write(&path, one).unwrap();
        assert_eq!(read_specs(&path).unwrap()[0].topics[0].difficulty, 2);
        std::fs::write(&path, format!("[{one},{one}]")).unwrap();
        assert_eq!(read_specs(&path).unwrap().len(), 2);
        std::fs::write(&path, r#"{"expert_id":0}"#).unwrap();
        let error = read_specs(&path).unwrap_err().to_string();
        assert!(
            error.contains("one.json") && error.contains("expert_name"),
            "{error}"
        );
        std::fs::write(
            &path,
            one.replace("\"num_examples\":10", "\"num_examples\":0"),
        )
        .unwrap();
        let error = read_specs(&path).unwrap_err().to_string();
        assert!(error.contains("num_examples"), "{error}");
    }
}
