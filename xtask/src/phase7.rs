//! `cargo xtask phase7`: the whole pipeline on the embedded default model, offline.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::setup;

/// Sets up libtorch if needed, then `phase7 run` (release build) with `args`, from the
/// repository root; the run directory defaults to `runs/default-seed0`.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let report = setup::run(root, false)?;
    eprintln!("{report}");
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "phase7",
            "--bin",
            "phase7",
            "--",
            "run",
        ])
        .args(args)
        .current_dir(root);
    let status = command.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("phase7 run failed ({status})");
    }
    Ok(())
}
