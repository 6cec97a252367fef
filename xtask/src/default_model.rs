//! `cargo xtask make-default-model`: set-up if needed, then the `make-default-model`
//! binary of the `default-model` crate, built in release mode (xtask never links
//! libtorch itself).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::setup;

/// Where the two variants live in the repository.
pub const DEFAULT_DIR: &str = "assets/default-model";
/// See [`DEFAULT_DIR`].
pub const TEST_DIR: &str = "assets/test-model";

/// Builds (and replaces) `assets/default-model`, or `assets/test-model` with
/// `test_size`; `extra` goes to the binary (`--recipe FILE`, `--print-recipe`).
pub fn run(root: &Path, test_size: bool, extra: &[String]) -> Result<()> {
    let report = setup::run(root, false)?;
    eprintln!("{report}");
    let out = root.join(if test_size { TEST_DIR } else { DEFAULT_DIR });
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args([
            "run",
            "--release",
            "--locked",
            "--quiet",
            "--package",
            "default-model",
            "--bin",
            "make-default-model",
            "--",
            "--out",
        ])
        .arg(&out)
        .args(test_size.then_some("--test-size"))
        .args(extra)
        .current_dir(root);
    let status = command
        .status()
        .context("cannot run cargo for make-default-model")?;
    if !status.success() {
        bail!("make-default-model failed ({status}); its output is above");
    }
    Ok(())
}

/// Runs the transformers parity script on `assets/default-model` (or the test variant)
/// in the transformers peer environment (made once in the cache).
pub fn parity(root: &Path, test_size: bool) -> Result<()> {
    let python = crate::bench::transformers_python()?;
    let dir = root.join(if test_size { TEST_DIR } else { DEFAULT_DIR });
    let status = Command::new(&python)
        .arg(root.join("crates/default-model/scripts/transformers_parity.py"))
        .arg(&dir)
        .status()
        .context("cannot run the transformers parity script")?;
    if !status.success() {
        bail!(
            "transformers and lm disagree on {} ({status}); the mismatches are above",
            dir.display()
        );
    }
    Ok(())
}
