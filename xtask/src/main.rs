//! Project workflows, run as `cargo xtask <command>`.
//!
//! * `setup` installs libtorch 2.11.0 (from the PyPI `torch==2.11.0` wheel) into a
//!   per-user cache and links it at `.libtorch` in the repository.
//! * `test` runs set-up if needed, then formatting, lints, docs and the whole test suite.
//! * `phase7` runs the whole pipeline on the embedded default model, offline;
//!   `check-report RUN` opens its `report.html` in headless Chromium.
//! * `fetch-model NAME` fetches a real pretrained model (SmolLM2-135M-Instruct, GGUF) into
//!   the per-user cache, verified; `test --real-models` runs the opt-in checks on it.
//! * `slurm up|down|status` runs a real one-node Slurm cluster on this machine;
//!   `test --slurm` runs the Slurm executor's tests on it.
//! * `bench <name>` runs a benchmark that compares against a Python peer side by side.
//! * `make-default-model` trains the embedded default model (`assets/default-model`;
//!   `--test-size` for `assets/test-model`); `default-model-parity` checks it against
//!   transformers.
//!
//! xtask itself never links libtorch, so it builds on a machine that has none yet.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod default_model;
mod models;
mod phase7;
mod setup;
mod slurm;
mod test;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Workflows of the phase7 workspace",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install libtorch 2.11.0 into the per-user cache (once) and link it at `.libtorch`.
    ///
    /// The cache lives in $PHASE7_LIBTORCH_CACHE, else $XDG_CACHE_HOME/phase7/libtorch,
    /// else ~/.cache/phase7/libtorch. The install needs Python 3 with pip and about 5 GB.
    Setup {
        /// Reinstall even when a verified install is already in the cache.
        #[arg(long)]
        force: bool,
    },
    /// Run a benchmark against its peer, side by side (`dequant`: bitnet-dequant vs the
    /// gguf package's numpy and memcpy).
    Bench {
        /// Which benchmark.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(bench::BENCHES))]
        name: String,
    },
    /// Train the embedded default model from its recipe and seed (about 25 minutes on
    /// 2 CPU cores) into assets/default-model, replacing it once complete.
    MakeDefaultModel {
        /// Build the test-size variant (assets/test-model, under 200 KB, seconds).
        #[arg(long)]
        test_size: bool,
        /// Further arguments for the binary (`--recipe FILE`, `--print-recipe`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        extra: Vec<String>,
    },
    /// Check that transformers (BitNetForCausalLM, AutoTokenizer) gives the same greedy
    /// answers as our lm on the default model's held-out parity sample.
    DefaultModelParity {
        /// Check assets/test-model instead.
        #[arg(long)]
        test_size: bool,
    },
    /// The whole pipeline on the embedded default model, offline (`phase7 run`, release
    /// build; run directory runs/default-seed0, resumed when it exists).
    Phase7 {
        /// Further arguments for `phase7 run` (`--preset quick`, `--config F`,
        /// `--model DIR`, `--run-dir D`, `--seed N`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Open a run's report.html in headless Chromium (Debian's package, installed when
    /// missing and root) and fail on any console message, a figure that draws nothing
    /// or a broken image.
    CheckReport {
        /// The run directory.
        #[arg(default_value = "runs/default-seed0")]
        run: PathBuf,
    },
    /// Set up if needed, then: fmt --check, clippy -D warnings, docs, all tests.
    Test {
        /// Instead of the suite, the opt-in checks on real pretrained models: fetches
        /// SmolLM2-135M-Instruct (GGUF) and compares it with transformers' GGUF loader
        /// (tensors, config, token ids, chat renderings, logits, greedy answers).
        #[arg(long)]
        real_models: bool,
        /// Instead of the suite, the Slurm executor's tests on a real one-node cluster
        /// (`cargo xtask slurm up` first; stopped afterwards unless it was running).
        #[arg(long)]
        slurm: bool,
        /// Extra arguments passed to `cargo test` after `--workspace` (e.g. a filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_test_args: Vec<String>,
    },
    /// A real one-node Slurm cluster on this machine: `up` (installs Debian's packages
    /// when missing, as root), `down`, `status`.
    Slurm {
        /// `up`, `down` or `status`.
        #[arg(value_parser = ["up", "down", "status"])]
        action: String,
    },
    /// Fetch a real pretrained model into the per-user cache (once, checksum verified)
    /// and print its path: $PHASE7_MODEL_CACHE, else ~/.cache/phase7/models.
    FetchModel {
        /// Which model.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(models::NAMES))]
        name: String,
    },
}

/// The repository root: xtask's manifest lives one level below it.
fn repo_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = repo_root();
    let outcome = match cli.command {
        Command::Setup { force } => setup::run(&root, force).map(|report| {
            eprintln!("{report}");
        }),
        Command::Test {
            real_models: true, ..
        } => models::real_model_checks(&root),
        Command::Test { slurm: true, .. } => slurm::test(&root),
        Command::Slurm { action } => match action.as_str() {
            "up" => slurm::up(),
            "down" => slurm::down(),
            _ => slurm::status(),
        },
        Command::Test {
            cargo_test_args, ..
        } => test::run(&root, &cargo_test_args),
        Command::FetchModel { name } => {
            models::fetch(&name).map(|path| println!("{}", path.display()))
        }
        Command::Phase7 { args } => phase7::run(&root, &args),
        Command::CheckReport { run } => phase7::check_report(&root, &run),
        Command::Bench { name } => bench::run(&root, &name),
        Command::MakeDefaultModel { test_size, extra } => {
            default_model::run(&root, test_size, &extra)
        }
        Command::DefaultModelParity { test_size } => default_model::parity(&root, test_size),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, whole cause chain: the caller can act on it without scrolling.
            let line = format!("{error:#}").replace('\n', " ");
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}
