//! `cargo xtask test`: the whole suite, as CI runs it.
//!
//! Cheapest checks first, so a formatting slip fails in seconds rather than after a
//! full build. `--locked` everywhere: the committed `Cargo.lock` is what CI builds.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::setup;

/// Runs set-up, fmt, clippy, docs and tests; prints each step's time.
pub fn run(root: &Path, cargo_test_args: &[String]) -> Result<()> {
    let mut timings: Vec<(&str, Duration)> = Vec::new();

    let started = Instant::now();
    let report = setup::run(root, false)?;
    eprintln!("{report}");
    timings.push(("setup", started.elapsed()));

    let started = Instant::now();
    let tracking_python = tracking_python()?;
    timings.push(("tracking-peer", started.elapsed()));

    let mut test = vec!["test", "--workspace", "--locked"];
    test.extend(cargo_test_args.iter().map(String::as_str));
    let steps = [
        Step::new("fmt", &["fmt", "--all", "--check"]),
        Step::new(
            "clippy",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--locked",
                "--",
                "-D",
                "warnings",
            ],
        ),
        Step::new("doc", &["doc", "--workspace", "--no-deps", "--locked"])
            .with_env("RUSTDOCFLAGS", "-D warnings"),
        test_step(&test),
        // The tracking sinks against a real MLflow server and TensorBoard's own reader
        // (the peer environment is made once, into the cache).
        Step::new(
            "tracking-servers",
            &[
                "test",
                "--locked",
                "-p",
                "run-tracking",
                "--test",
                "servers",
                "--",
                "--ignored",
            ],
        )
        .with_env(
            "PHASE7_TRACKING_PYTHON",
            tracking_python.to_string_lossy().into_owned(),
        ),
    ];
    for step in steps {
        eprintln!("xtask test: {}: cargo {}", step.name, step.args.join(" "));
        let started = Instant::now();
        let mut command = Command::new(cargo());
        command.args(&step.args).current_dir(root);
        for (key, value) in &step.env {
            command.env(key, value);
        }
        let status = command
            .status()
            .with_context(|| format!("cannot run cargo for step `{}`", step.name))?;
        timings.push((step.name, started.elapsed()));
        if !status.success() {
            bail!(
                "step `{}` failed ({status}); its output is above",
                step.name
            );
        }
    }

    let summary: Vec<String> = timings
        .iter()
        .map(|(name, time)| format!("{name} {:.1} s", time.as_secs_f64()))
        .collect();
    let total: Duration = timings.iter().map(|(_, time)| *time).sum();
    eprintln!(
        "xtask test: all steps passed in {:.1} s ({})",
        total.as_secs_f64(),
        summary.join(", ")
    );
    Ok(())
}

/// One cargo invocation of the suite.
struct Step<'a> {
    name: &'static str,
    args: Vec<&'a str>,
    env: Vec<(&'static str, String)>,
}

impl<'a> Step<'a> {
    fn new(name: &'static str, args: &[&'a str]) -> Self {
        Self {
            name,
            args: args.to_vec(),
            env: Vec::new(),
        }
    }

    fn with_env(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.env.push((key, value.into()));
        self
    }
}

/// The cargo that launched xtask (so the toolchain stays the same), else `cargo`.
/// The test step. Property tests draw their cases from a fixed seed unless the caller
/// chose one (`PROPTEST_RNG_SEED`), so a CI run is reproducible; plain `cargo test`
/// keeps exploring new cases (and records failures in `proptest-regressions/`).
fn test_step<'a>(args: &[&'a str]) -> Step<'a> {
    let step = Step::new("test", args);
    if std::env::var_os(PROPTEST_SEED_ENV).is_some() {
        step
    } else {
        step.with_env(PROPTEST_SEED_ENV, PROPTEST_SEED)
    }
}

const PROPTEST_SEED_ENV: &str = "PROPTEST_RNG_SEED";
const PROPTEST_SEED: &str = "20261126";

/// The Python of the tracking peer environment (an MLflow server and TensorBoard's
/// reader), made once in the cache (`$PHASE7_TRACKING_VENV` overrides its folder).
pub fn tracking_python() -> Result<std::path::PathBuf> {
    crate::bench::peer_python(
        "PHASE7_TRACKING_VENV",
        "tracking-venv",
        &["mlflow==3.17.2", "tensorboard==2.21.0"],
        &[],
    )
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}
