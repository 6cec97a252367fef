//! The Phase 8 handoff (R18): the float32 base (Hugging Face layout), the expert
//! library (one safetensors file per expert, named), the chosen mixture, the merged
//! model with the mixture baked in (loads in `lm` and transformers), and `handoff.json`
//! in the seed's schema with every value measured. The folder appears only when
//! complete.

use std::collections::BTreeMap;
use std::path::Path;

use bitnet_dequant::convert::{ConvertOptions, NoProgress, convert};
use serde::{Deserialize, Serialize};

use crate::mixture::{Granularity, MixtureProblem};
use crate::selftest::{HeldOutScores, SelfTest};
use crate::{Error, Result, write_json};

/// The seed's `performance` block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Performance {
    /// Median milliseconds per query (greedy, batch 1, merged weights).
    pub latency_ms: f64,
    /// Peak memory of the process that measured it, GiB (on a CPU this is host memory;
    /// `phase7.memory_measure` says which).
    pub vram_gb: f64,
    /// Mean held-out greedy-exact accuracy over domains.
    pub overall_accuracy: f64,
    /// Alignment suite preference on held-out items.
    pub eudaimonia_score: f64,
    /// Mean held-out accuracy at each domain's learning-zone difficulty.
    pub edge_of_chaos: f64,
    /// Greedy tool-call rate on the held-out tool-use items.
    pub tool_use_rate: f64,
    /// Greedy persona rate on the held-out identity items.
    pub persona_consistency: f64,
}

/// The seed's `compression_notes` block, computed from the files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionNotes {
    /// Every z-vector is one-dimensional.
    pub z_vectors_are_1d: bool,
    /// Parameters of all experts (z entries).
    pub total_expert_params: usize,
    /// Parameters of the base model (tensor elements of its checkpoint).
    pub base_model_params: usize,
    /// `100 * total_expert_params / base_model_params`.
    pub adaptation_overhead_percent: f64,
    /// Free text.
    pub note: String,
}

/// What this pipeline adds beyond the seed's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// The float32 base folder.
    pub base_model: String,
    /// The mixture file.
    pub mixture_file: String,
    /// How alphas combine the experts (`delta`: see `svf::Composition::Delta`).
    pub composition: String,
    /// Alphas per expert or per expert and matrix.
    pub granularity: Granularity,
    /// Each expert's domains.
    pub expert_domains: BTreeMap<String, Vec<String>>,
    /// Whether the final self-test passed (when false, the mixture is the attempt with
    /// the most criteria held, and the self-test record says what failed).
    pub self_test_passed: bool,
    /// The base model's held-out overall accuracy, for comparison.
    pub base_overall_accuracy: f64,
    /// What `vram_gb` measured.
    pub memory_measure: String,
    /// Where latency was measured.
    pub device: String,
    /// Largest |logit| difference between the exported merged model (loaded afresh) and
    /// the factorized model that was measured, on a probe prompt.
    pub merged_max_logit_gap: f64,
}

/// `handoff.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handoff {
    /// The adapted model (merged folder).
    pub model: String,
    /// Element type of the exported weights.
    pub quantization: String,
    /// Size of the adapted model's weights, MiB.
    pub size_mb: f64,
    /// Expert name to file.
    pub expert_library: BTreeMap<String, String>,
    /// The chosen alphas (per expert; per expert and matrix, flattened expert-major,
    /// with the per-matrix granularity).
    pub optimal_mixture: Vec<f64>,
    /// How many experts stage 1 measured to be needed.
    pub num_experts_determined_by_model: usize,
    /// Measured performance.
    pub performance: Performance,
    /// Computed from the files.
    pub compression_notes: CompressionNotes,
    /// Provenance.
    pub phase7: Provenance,
}

/// The mixture file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixtureFile {
    /// Expert names, in alpha order.
    pub experts: Vec<String>,
    /// The alphas.
    pub alphas: Vec<f64>,
    /// `delta`.
    pub composition: String,
    /// Granularity.
    pub granularity: Granularity,
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Elements of every tensor in a safetensors file.
fn tensor_elements(path: &Path) -> Result<usize> {
    let bytes = bitnet_dequant::io::map_file(path).map_err(|e| file_error(path, e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| file_error(path, format!("not a valid safetensors file: {e}")))?;
    Ok(header
        .tensors()
        .values()
        .map(|info| info.shape.iter().product::<usize>())
        .sum())
}

fn performance(scores: &HeldOutScores) -> Performance {
    let rate = |name: &str| {
        scores
            .suites
            .get(name)
            .and_then(|s| s.behaviour_rate)
            .unwrap_or(0.0)
    };
    Performance {
        latency_ms: scores.latency_ms,
        vram_gb: scores.peak_rss_mb.unwrap_or(scores.model_mb) / 1024.0,
        overall_accuracy: scores.overall,
        eudaimonia_score: scores.suites.get("alignment").map_or(0.0, |s| s.preference),
        edge_of_chaos: scores.edge_of_chaos,
        tool_use_rate: rate("tool_use"),
        persona_consistency: rate("persona"),
    }
}

/// Writes the handoff of the self-test's chosen mixture to `out` (which must not exist)
/// from the base model folder `base_dir`.
pub fn export(
    problem: &MixtureProblem,
    base_dir: &Path,
    self_test: &SelfTest,
    num_experts_determined_by_model: usize,
    out: &Path,
) -> Result<Handoff> {
    if out.exists() {
        return Err(file_error(out, "already exists; choose another folder"));
    }
    let staging = out.with_file_name(format!(
        ".{}.partial-{}",
        out.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(staging.join("experts")).map_err(|e| file_error(&staging, e))?;
    let result = write_all(
        problem,
        base_dir,
        self_test,
        num_experts_determined_by_model,
        &staging,
    );
    match result {
        Ok(handoff) => {
            std::fs::rename(&staging, out).map_err(|e| file_error(out, e))?;
            if let Some(parent) = out.parent() {
                bitnet_dequant::io::sync_dir(parent).map_err(|e| file_error(parent, e))?;
            }
            Ok(handoff)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// Largest logit gap between the merged export and the measured factorized model.
/// Fails when they disagree: the handoff must be the model that was measured.
fn verify_merged(problem: &MixtureProblem, alphas: &[f64], merged_dir: &Path) -> Result<f64> {
    let probe = problem
        .tokenizer()
        .encode("Q: what is 12+30?\nA: 42", false)?;
    let ids = tch::Tensor::from_slice(&probe).view([1, probe.len() as i64]);
    let measured =
        problem.with_mixture(alphas, |model, _, _| Ok(model.forward(&ids, None, None)?))?;
    // On the device the mixture was measured on, so the two logits compare there.
    let merged = lm::CausalLm::load(merged_dir, measured.device(), tch::Kind::Float)?;
    let exported = merged.forward(&ids, None, None)?;
    let gap = (exported - measured).abs().max().double_value(&[]);
    // NaN fails too.
    if gap.is_nan() || gap >= 1e-4 {
        return Err(Error::Data(format!(
            "{}: the merged export does not reproduce the measured model (largest logit gap {gap:.3e}); \
             stage 3 must run on the dequantized float model (for BitNet, switch activation quantization off)",
            merged_dir.display()
        )));
    }
    Ok(gap)
}

fn write_all(
    problem: &MixtureProblem,
    base_dir: &Path,
    self_test: &SelfTest,
    num_experts_determined_by_model: usize,
    dir: &Path,
) -> Result<Handoff> {
    let chosen = self_test.chosen();
    convert(
        base_dir,
        &dir.join("base"),
        &ConvertOptions::default(),
        &mut NoProgress,
    )
    .map_err(|e| file_error(base_dir, e))?;
    let (library, total_expert_params, one_dimensional) =
        problem.with_mixture(&chosen.alphas, |_, svf, experts| {
            let mut library = BTreeMap::new();
            let mut params = 0usize;
            let mut one_dimensional = true;
            for e in experts {
                let file = format!("experts/{}.safetensors", e.name);
                e.save(&dir.join(&file))?;
                library.insert(e.name.clone(), file);
                for (_, z) in &e.z {
                    one_dimensional &= z.dim() == 1;
                    params += z.numel();
                }
            }
            svf.export_merged(base_dir, &dir.join("merged"))?;
            Ok((library, params, one_dimensional))
        })?;
    let merged_max_logit_gap = verify_merged(problem, &chosen.alphas, &dir.join("merged"))?;
    let roles = problem.roles();
    write_json(
        &dir.join("mixture.json"),
        &MixtureFile {
            experts: roles.iter().map(|r| r.name.clone()).collect(),
            alphas: chosen.alphas.clone(),
            composition: "delta".into(),
            granularity: problem.granularity(),
        },
    )?;
    let merged = dir.join("merged/model.safetensors");
    let size_mb = std::fs::metadata(&merged)
        .map_err(|e| file_error(&merged, e))?
        .len() as f64
        / (1024.0 * 1024.0);
    let base_model_params = tensor_elements(&dir.join("base/model.safetensors"))?;
    let handoff = Handoff {
        model: "merged".into(),
        quantization: "float32".into(),
        size_mb,
        expert_library: library,
        optimal_mixture: chosen.alphas.clone(),
        num_experts_determined_by_model,
        performance: performance(&chosen.scores),
        compression_notes: CompressionNotes {
            z_vectors_are_1d: one_dimensional,
            total_expert_params,
            base_model_params,
            adaptation_overhead_percent: 100.0 * total_expert_params as f64
                / base_model_params.max(1) as f64,
            note: "Dequantized to float32 for SVF; experts are z-vectors over the base's singular values, ready for Phase 8 re-compression".into(),
        },
        phase7: Provenance {
            base_model: "base".into(),
            mixture_file: "mixture.json".into(),
            composition: "delta".into(),
            granularity: problem.granularity(),
            expert_domains: roles
                .iter()
                .map(|r| (r.name.clone(), r.domains.clone()))
                .collect(),
            self_test_passed: self_test.passed,
            base_overall_accuracy: self_test.base.overall,
            memory_measure: if chosen.scores.peak_rss_mb.is_some() {
                "peak resident memory of the process while the mixture was measured (CPU host memory)".into()
            } else {
                "model parameter memory (the platform gave no peak memory)".into()
            },
            device: "cpu".into(),
            merged_max_logit_gap,
        },
    };
    write_json(&dir.join("handoff.json"), &handoff)?;
    Ok(handoff)
}
