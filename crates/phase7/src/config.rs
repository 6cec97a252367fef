//! The run's configuration: one TOML file, every field documented with its default,
//! unknown keys refused with the key named, and presets.

use std::path::{Path, PathBuf};

use self_eval::mixture::{BoundsRule, ProblemConfig};
use self_eval::search::SearchConfig;
use self_eval::selftest::SelfTestConfig;
use self_eval::{ExpertConfig, PlannerConfig, ProfileConfig, SpecConfig, ValidationConfig};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Everything a run needs. Sections default independently: a file may set only what
/// it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The preset this started from (`default`, `quick` or `full`). Default `default`.
    pub preset: String,
    /// Seed of every random choice of the run. Default 0.
    pub seed: u64,
    /// The model.
    pub model: ModelSection,
    /// Budgets.
    pub budget: BudgetSection,
    /// R2: dequantization and its check.
    pub dequantize: DequantizeSection,
    /// Stage 1: the capability profile.
    pub profile: ProfileConfig,
    /// Stage 1: the expert plan.
    pub planner: PlannerSection,
    /// Stage 1: dataset specs and validated training problems.
    pub data: DataSection,
    /// Stage 2: training each expert.
    pub training: TrainingSection,
    /// Stage 3: the mixture search.
    pub search: SearchSection,
    /// Stage 3: the final self-test.
    pub self_test: SelfTestSection,
    /// How stage 2's experts are spread: `local` (default), `processes` or `slurm`.
    pub executor: crate::executor::ExecutorConfig,
    /// Run tracking (`run-tracking`): JSONL and TensorBoard files in `tracking/` always
    /// (TensorBoard can be switched off), MLflow when `tracking.mlflow.tracking_uri` is
    /// set (default `$MLFLOW_TRACKING_URI`), Weights & Biases when an API key is found
    /// (`WANDB_API_KEY` or `~/.netrc`).
    pub tracking: run_tracking::TrackerConfig,
}

/// The model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// The Phase 6 model: a Hugging Face folder (BitNet packed or float) or a
    /// llama-family `.gguf` file. Default `assets/default-model` (the embedded default
    /// model, relative to the working directory).
    pub path: PathBuf,
    /// The Phase 6 handoff JSON. Default: `phase6_handoff.json` in the model folder when
    /// it exists; a model without one (a GGUF file, a downloaded checkpoint) runs with
    /// the absence recorded and the behaviour baselines measured by this run. A file
    /// named here must exist and carry the required fields.
    pub handoff: Option<PathBuf>,
    /// R2's fallback: a pre-quantization checkpoint (folder or `.gguf`) used as the
    /// float model when the dequantized one agrees with the quantized forward on fewer
    /// than `dequantize.min_top1_agreement` of top-1 tokens. Default none: the run stops
    /// there.
    pub fallback: Option<PathBuf>,
    /// How problems are shown to the model in every stage (profile, plan, validation,
    /// training, search, self-test, dispatch). Default `raw`: the problem as it is,
    /// what the embedded default model was trained on. `few_shot` puts one solved
    /// train-split problem of every domain (difficulty 1, drawn with `seed`), a line
    /// each, before the problem: instruct models that answer raw prompts with prose
    /// then answer in the format. `wrap` puts a given `prefix` and `suffix` around it.
    pub prompt: TaskPrompt,
    /// Where the model runs in every stage: `cpu`, `cuda` (`cuda:0`), `cuda:N`, or
    /// `auto` (the first CUDA device when one is usable, else the CPU). Default `cpu`
    /// (`auto` in the `full` preset). Asking for CUDA where none is usable stops the run
    /// before its first stage. Results are reproducible per device, not across devices.
    pub device: lm::device::DeviceRequest,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            path: PathBuf::from("assets/default-model"),
            handoff: None,
            fallback: None,
            prompt: TaskPrompt::Raw,
            device: lm::device::DeviceRequest::Cpu,
        }
    }
}

/// How problems are shown to the model.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskPrompt {
    /// The problem as it is.
    #[default]
    Raw,
    /// One solved train-split problem of every domain first, a line each.
    FewShot {
        /// Seed of the examples. Default 0.
        #[serde(default)]
        seed: u64,
    },
    /// A fixed prefix and suffix around the problem.
    Wrap {
        /// Text before the problem.
        prefix: String,
        /// Text after it.
        #[serde(default)]
        suffix: String,
    },
}

impl TaskPrompt {
    /// The prompt format the stages use.
    pub fn format(&self) -> eudaimonia_gate::PromptFormat {
        match self {
            TaskPrompt::Raw => eudaimonia_gate::PromptFormat::Raw,
            TaskPrompt::FewShot { seed } => {
                let mut rng = synth_tasks::Rng::new(seed ^ 0x5407);
                let prefix = synth_tasks::Domain::ALL
                    .iter()
                    .map(|&d| {
                        let p = synth_tasks::generate_in(d, 1, synth_tasks::Split::Train, &mut rng);
                        format!("{}{}\n", p.prompt, p.answer)
                    })
                    .collect();
                eudaimonia_gate::PromptFormat::Wrap {
                    prefix,
                    suffix: String::new(),
                }
            }
            TaskPrompt::Wrap { prefix, suffix } => eudaimonia_gate::PromptFormat::Wrap {
                prefix: prefix.clone(),
                suffix: suffix.clone(),
            },
        }
    }
}

/// Budgets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetSection {
    /// Most wall-clock minutes for the whole run; a stage that would start after it is
    /// spent is not started. Default 120.
    pub wall_minutes: f64,
    /// Most US dollars for paid API calls (problem generation through
    /// `openrouter-gen`): a hard cap, each request's worst case reserved before it is
    /// sent. Default 0: the run is offline (problems come from `synth-tasks`).
    pub usd: f64,
}

impl Default for BudgetSection {
    fn default() -> Self {
        Self {
            wall_minutes: 120.0,
            usd: 0.0,
        }
    }
}

/// R2: the float model's check against the quantized forward (`model.fallback` says
/// what happens when it falls short).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DequantizeSection {
    /// Least top-1 agreement between the quantized forward and the dequantized float
    /// model on the probe prompts. Default 0.99.
    pub min_top1_agreement: f64,
    /// Probe prompts per domain (held-out problems). Default 32.
    pub probe_prompts: usize,
}

impl Default for DequantizeSection {
    fn default() -> Self {
        Self {
            min_top1_agreement: 0.99,
            probe_prompts: 32,
        }
    }
}

/// The planner and its gradients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlannerSection {
    /// The planner.
    pub planner: PlannerConfig,
    /// Problems per domain behind the gradients. Default 32.
    pub gradient_problems: usize,
    /// Rollouts per problem. Default 8.
    pub samples: usize,
}

impl Default for PlannerSection {
    fn default() -> Self {
        Self {
            planner: PlannerConfig::default(),
            gradient_problems: 32,
            samples: 8,
        }
    }
}

/// Stage 1's data: a spec per planned expert and its problems, each validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// How many problems each expert gets and at which difficulty (from the profile).
    /// `confidence_band` and `learning_zone` are also validation's band and zone.
    pub spec: SpecConfig,
    /// Per-problem validation. Its `band`, `learning_zone` and `seed` are set from
    /// `spec` and the run's seed; other fields as documented there, except
    /// `max_candidates_factor`, 6 here (3 in `self-eval`): on the default model the
    /// seed's band rejects most weak-domain candidates as too hard, and at 3x the
    /// arithmetic+multi_step dataset stopped at 207 of 426 problems.
    pub validation: ValidationConfig,
    /// Train-split alignment pairs behind the alignment direction each problem's
    /// gradient is compared with. Default 64.
    pub alignment_items: usize,
    /// Held-out problems per domain (at its profiled and its learning-zone difficulty)
    /// that no training problem may duplicate or nearly duplicate. Default 300.
    pub held_out_per_domain: usize,
    /// Fewest accepted problems an expert may train on; fewer stop the run with the
    /// validation report named. Default 32.
    pub min_problems: usize,
    /// Where candidate problems come from. Default `auto`: the API when its key is set
    /// (`data.api.client.api_key_env`, default `$OPENROUTER_API_KEY`) and `budget.usd`
    /// is above 0, else `synth-tasks`' procedural generators.
    pub source: DataSource,
    /// The curated problems of `source = "file"`: JSONL, one `{"prompt", "answer",
    /// "domain", "difficulty"?}` per line. Default none.
    pub file: Option<PathBuf>,
    /// API generation (`openrouter-gen`: model, fallbacks, concurrency, cache, prices,
    /// retries). Its `budget_usd` is replaced by `budget.usd`, the run's cap.
    pub api: openrouter_gen::generate::GeneratorConfig,
}

/// Where stage 1's candidate problems come from (every source's problems are then
/// validated the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataSource {
    /// The API when a key is set and `budget.usd` > 0, else procedural.
    Auto,
    /// `synth-tasks`' procedural generators (offline, free).
    Procedural,
    /// An OpenAI-compatible API through `openrouter-gen`.
    Api,
    /// A user's JSONL file of curated problems (`data.file`).
    File,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            spec: SpecConfig::default(),
            validation: ValidationConfig {
                max_candidates_factor: 6.0,
                ..ValidationConfig::default()
            },
            alignment_items: 64,
            held_out_per_domain: 300,
            min_problems: 32,
            source: DataSource::Auto,
            file: None,
            api: openrouter_gen::generate::GeneratorConfig::default(),
        }
    }
}

/// Stage 2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingSection {
    /// One expert's training.
    pub expert: ExpertConfig,
    /// Validation problems per expert. Default 200.
    pub validation_problems: usize,
    /// Held-out problems per domain for the before/after report. Default 100.
    pub held_out: usize,
    /// Items per behaviour suite in the gate. Default 64.
    pub suite_items: usize,
}

impl Default for TrainingSection {
    fn default() -> Self {
        Self {
            expert: ExpertConfig::default(),
            validation_problems: 200,
            held_out: 100,
            suite_items: 64,
        }
    }
}

/// Stage 3's search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchSection {
    /// NSGA-II and guidance.
    pub search: SearchConfig,
    /// Objectives, constraints, cache.
    pub problem: ProblemConfig,
    /// Alpha bounds from the profile.
    pub bounds: BoundsRule,
    /// Search-set problems per domain (training split). Default 32.
    pub problems: usize,
    /// Search-set items per behaviour suite. Default 16.
    pub suite_items: usize,
}

impl Default for SearchSection {
    fn default() -> Self {
        Self {
            search: SearchConfig::default(),
            problem: ProblemConfig::default(),
            bounds: BoundsRule::default(),
            problems: 32,
            suite_items: 16,
        }
    }
}

/// Stage 3's self-test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelfTestSection {
    /// Criteria and budgets.
    pub criteria: SelfTestConfig,
    /// Held-out problems per domain. Default 100.
    pub problems: usize,
    /// Held-out items per behaviour suite. Default 64.
    pub suite_items: usize,
}

impl Default for SelfTestSection {
    fn default() -> Self {
        Self {
            criteria: SelfTestConfig::default(),
            problems: 100,
            suite_items: 64,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            preset: "default".into(),
            seed: 0,
            model: ModelSection::default(),
            budget: BudgetSection::default(),
            executor: crate::executor::ExecutorConfig::default(),
            dequantize: DequantizeSection::default(),
            data: DataSection::default(),
            profile: ProfileConfig::default(),
            planner: PlannerSection::default(),
            training: TrainingSection::default(),
            search: SearchSection::default(),
            self_test: SelfTestSection::default(),
            tracking: run_tracking::TrackerConfig::default(),
        }
    }
}

/// The presets' names.
pub const PRESETS: &[&str] = &["default", "quick", "full"];

impl Config {
    /// A preset: `default` (the seed's settings on the embedded model), `quick` (fewer
    /// epochs, generations and problems: minutes, for trying things out) or `full` (the
    /// seed's settings for a real pretrained model, given with `--model`: the first
    /// CUDA device when one is usable, problems shown few-shot, as instruct models
    /// answer raw problems with prose).
    pub fn preset(name: &str) -> Result<Self> {
        let mut config = Self::default();
        match name {
            "default" => {}
            "quick" => {
                config.preset = "quick".into();
                config.training.expert.trainer.epochs = 4;
                config.training.expert.trainer.patience = 2;
                config.data.spec.min_examples = 100;
                config.data.spec.max_examples = 200;
                config.data.validation.max_candidates_factor = 2.0;
                config.data.held_out_per_domain = 100;
                config.training.validation_problems = 96;
                config.training.held_out = 50;
                config.training.suite_items = 32;
                config.search.search.population = 24;
                config.search.search.generations = 20;
                config.search.problems = 24;
                config.search.suite_items = 8;
                config.self_test.problems = 50;
                config.self_test.suite_items = 32;
                config.self_test.criteria.max_attempts = 3;
            }
            "full" => {
                config.preset = "full".into();
                config.model.device = lm::device::DeviceRequest::Auto;
                config.model.prompt = TaskPrompt::FewShot { seed: 0 };
            }
            other => {
                return Err(Error::Config(format!(
                    "unknown preset `{other}`; expected one of {PRESETS:?}"
                )));
            }
        }
        Ok(config)
    }

    /// Reads a TOML file; unknown keys are refused with their name and place.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::parse(&text).map_err(|e| match e {
            Error::Config(message) => Error::Config(format!("{}: {message}", path.display())),
            other => other,
        })
    }

    /// Parses TOML text over the preset it names (`preset = "quick"`), else `default`.
    pub fn parse(text: &str) -> Result<Self> {
        // Parsed once as it stands, for errors that point at the line and key.
        toml::from_str::<Self>(text)
            .map_err(|e| Error::Config(e.to_string().trim_end().to_owned()))?;
        let value: toml::Table = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        let preset = match value.get("preset") {
            Some(toml::Value::String(name)) => name.clone(),
            Some(other) => {
                return Err(Error::Config(format!(
                    "`preset` is {other}, expected a string"
                )));
            }
            None => "default".into(),
        };
        let mut base = toml::Table::try_from(Self::preset(&preset)?)
            .map_err(|e| Error::Config(e.to_string()))?;
        merge(&mut base, value);
        let config: Self = toml::Value::Table(base)
            .try_into()
            .map_err(|e: toml::de::Error| Error::Config(e.message().to_owned()))?;
        config.check()?;
        Ok(config)
    }

    /// The whole configuration as TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::Config(e.to_string()))
    }

    /// Whether the model (and the fallback, when set) exist and look like models, and
    /// whether `model.device` is usable here.
    pub fn check_model(&self) -> Result<()> {
        check_model_path("model.path", &self.model.path)?;
        if let Some(fallback) = &self.model.fallback {
            check_model_path("model.fallback", fallback)?;
        }
        self.device().map(|_| ())
    }

    /// The device `model.device` names on this machine.
    pub fn device(&self) -> Result<tch::Device> {
        lm::device::resolve(self.model.device)
            .map_err(|e| Error::Config(format!("model.device = \"{}\": {e}", self.model.device)))
    }

    /// Settings that cannot work.
    pub fn check(&self) -> Result<()> {
        let d = &self.dequantize;
        if !(0.0..=1.0).contains(&d.min_top1_agreement) {
            return Err(Error::Config(format!(
                "dequantize.min_top1_agreement is {}, expected a share in [0, 1]",
                d.min_top1_agreement
            )));
        }
        if self.budget.wall_minutes.is_nan() || self.budget.wall_minutes <= 0.0 {
            return Err(Error::Config(format!(
                "budget.wall_minutes is {}, expected a positive number",
                self.budget.wall_minutes
            )));
        }
        if self.budget.usd.is_nan() || self.budget.usd < 0.0 || self.budget.usd.is_infinite() {
            return Err(Error::Config(format!(
                "budget.usd is {}, expected a finite number of US dollars >= 0",
                self.budget.usd
            )));
        }
        for (name, format) in [
            ("training.expert.format", &self.training.expert.format),
            ("search.problem.format", &self.search.problem.format),
        ] {
            if *format != eudaimonia_gate::PromptFormat::Raw {
                return Err(Error::Config(format!(
                    "{name} is set: phase7 shows problems the same way in every stage; set model.prompt instead"
                )));
            }
        }
        self.executor.check()?;
        if self.data.source == DataSource::File && self.data.file.is_none() {
            return Err(Error::Config(
                "data.source is \"file\" but data.file is not set".into(),
            ));
        }
        self.data
            .api
            .check()
            .map_err(|e| Error::Config(format!("data.api: {e}")))?;
        let spec = &self.data.spec;
        if spec.min_examples == 0 || spec.min_examples > spec.max_examples {
            return Err(Error::Config(format!(
                "data.spec.min_examples is {} and data.spec.max_examples {}: expected 1 <= min <= max",
                spec.min_examples, spec.max_examples
            )));
        }
        for (name, [low, high]) in [
            ("data.spec.confidence_band", spec.confidence_band),
            ("data.spec.learning_zone", spec.learning_zone),
        ] {
            if !(0.0..=1.0).contains(&low) || !(low..=1.0).contains(&high) {
                return Err(Error::Config(format!(
                    "{name} is [{low}, {high}], expected 0 <= low <= high <= 1"
                )));
            }
        }
        for (name, n) in [
            ("data.min_problems", self.data.min_problems),
            (
                "training.validation_problems",
                self.training.validation_problems,
            ),
            ("training.held_out", self.training.held_out),
            ("search.problems", self.search.problems),
            ("self_test.problems", self.self_test.problems),
        ] {
            if n == 0 {
                return Err(Error::Config(format!("{name} is 0, expected at least 1")));
            }
        }
        Ok(())
    }
}

/// Checks that `path` (the value of the setting `key`) is a model: a folder with a
/// `config.json`, or a GGUF file.
pub fn check_model_path(key: &str, path: &Path) -> Result<()> {
    let problem = if path.is_dir() {
        (!path.join("config.json").is_file()).then_some("a folder without config.json")
    } else if path.is_file() {
        (!bitnet_dequant::is_gguf(path)).then_some("a file that is not GGUF (no GGUF magic)")
    } else {
        Some("not found")
    };
    match problem {
        None => Ok(()),
        Some(what) => Err(Error::Input(format!(
            "{key} = {}: {what}; expected a Hugging Face model folder (config.json, weights, tokenizer.json) or a llama-family .gguf file",
            path.display()
        ))),
    }
}

/// Overlays `over` on `base`, table by table.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_configs_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(&path).unwrap().check().unwrap();
                seen += 1;
            }
        }
        assert!(seen > 0);
    }

    #[test]
    fn the_default_round_trips_through_toml() {
        let text = Config::default().to_toml().unwrap();
        assert_eq!(Config::parse(&text).unwrap(), Config::default());
        for name in PRESETS {
            let preset = Config::preset(name).unwrap();
            assert_eq!(preset.preset, *name);
            assert_eq!(Config::parse(&preset.to_toml().unwrap()).unwrap(), preset);
        }
    }

    #[test]
    fn the_device_is_a_setting_checked_before_anything_runs() {
        assert_eq!(Config::default().device().unwrap(), tch::Device::Cpu);
        let full = Config::preset("full").unwrap();
        assert_eq!(full.model.device, lm::device::DeviceRequest::Auto);
        assert_ne!(full.model.prompt, TaskPrompt::Raw);
        // `auto` is the CPU exactly when no CUDA device is usable.
        let runtime = lm::device::runtime();
        assert_eq!(
            full.device().unwrap().is_cuda(),
            runtime.cuda_available && runtime.cuda_device_count > 0
        );
        let message = Config::parse("[model]\ndevice = \"tpu\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("device") && message.contains("tpu"),
            "{message}"
        );
        if !runtime.cuda_available {
            let config = Config::parse("[model]\ndevice = \"cuda:0\"\n").unwrap();
            let message = config.device().unwrap_err().to_string();
            assert!(message.contains("model.device = \"cuda:0\""), "{message}");
        }
    }

    #[test]
    fn files_override_their_preset() {
        let config =
            Config::parse("preset = \"quick\"\nseed = 4\n[search.search]\ngenerations = 7\n")
                .unwrap();
        assert_eq!(config.seed, 4);
        assert_eq!(config.search.search.generations, 7);
        assert_eq!(
            config.search.search.population, 24,
            "the preset's value stays"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let message = Config::parse("[search.search]\ngeneratoins = 7\n")
            .unwrap_err()
            .to_string();
        assert!(message.contains("generatoins"), "{message}");
        let message = Config::parse("preset = \"huge\"\n")
            .unwrap_err()
            .to_string();
        assert!(message.contains("huge"), "{message}");
        let message = Config::parse("[dequantize]\nmin_top1_agreement = 1.5\n")
            .unwrap_err()
            .to_string();
        assert!(message.contains("min_top1_agreement"), "{message}");
        let message = Config::parse("[budget]\nusd = -1.0\n")
            .unwrap_err()
            .to_string();
        assert!(message.contains("budget.usd"), "{message}");
        let message = Config::parse("[data]\nsource = \"file\"\n")
            .unwrap_err()
            .to_string();
        assert!(message.contains("data.file"), "{message}");
        let message = Config::parse("[data.api]\nconcurrency = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("data.api") && message.contains("concurrency"),
            "{message}"
        );
        let few_shot = Config::parse("[model.prompt]\nkind = \"few_shot\"\nseed = 3\n").unwrap();
        let eudaimonia_gate::PromptFormat::Wrap { prefix, suffix } = few_shot.model.prompt.format()
        else {
            panic!("few_shot renders as a prefix");
        };
        assert_eq!(prefix.lines().count(), 8);
        assert!(suffix.is_empty());
        for line in prefix.lines() {
            // Every example is a solved train-split problem.
            let domain = synth_tasks::Domain::ALL
                .into_iter()
                .find(|&d| {
                    (1..line.len()).any(|cut| {
                        synth_tasks::solve(d, &line[..cut]).as_deref() == Some(&line[cut..])
                    })
                })
                .unwrap_or_else(|| panic!("`{line}` is not a solved problem"));
            let _ = domain;
        }
        let message = Config::parse(
            "[training.expert.format]\nkind = \"wrap\"\nprefix = \"Q: \"\nsuffix = \"\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(message.contains("model.prompt"), "{message}");
        let message = Config::parse("[data.api]\nmodle = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(message.contains("modle"), "{message}");
    }
}
