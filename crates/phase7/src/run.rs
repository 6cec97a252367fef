//! The run directory, the source of truth: `config.toml`, `manifest.json` and one folder
//! per stage. The manifest records, per stage, a key over its configuration and inputs,
//! its output files with their SHA-256, and its timing. A stage whose key is unchanged
//! and whose outputs are all present with their recorded hashes is skipped, so a run
//! started again after an interruption continues where it stopped.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// One stage's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// SHA-256 over the stage's name, configuration and input hashes.
    pub key: String,
    /// Output files (relative to the run directory) and their SHA-256.
    pub outputs: BTreeMap<String, String>,
    /// Wall time of the stage.
    pub seconds: f64,
    /// Paid API cost in US dollars (0 offline).
    pub cost_usd: f64,
}

/// `manifest.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Completed stages by name.
    pub stages: BTreeMap<String, StageRecord>,
}

/// A run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// Its root.
    pub root: PathBuf,
}

/// SHA-256 of a file, hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(|e| io_error(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// SHA-256 of bytes, hex.
pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn io_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Every file under `dir`, relative to `base`, sorted.
fn files_under(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io_error(dir, e))?
        .collect::<std::io::Result<_>>()
        .map_err(|e| io_error(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, base, out)?;
        } else if !entry.file_name().to_string_lossy().starts_with('.') {
            out.push(path.strip_prefix(base).unwrap_or(&path).to_path_buf());
        }
    }
    Ok(())
}

impl RunDir {
    /// Creates (or opens) a run directory, checking that it is writable.
    pub fn create(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| io_error(root, e))?;
        let probe = root.join(".write-probe");
        std::fs::write(&probe, b"").map_err(|e| io_error(root, format!("not writable: {e}")))?;
        let _ = std::fs::remove_file(&probe);
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Opens an existing run directory.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.join("config.toml").is_file() {
            return Err(io_error(root, "not a run directory (no config.toml)"));
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// The manifest (empty when none was written yet).
    pub fn manifest(&self) -> Result<Manifest> {
        let path = self.root.join("manifest.json");
        if !path.exists() {
            return Ok(Manifest::default());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| io_error(&path, e))?;
        serde_json::from_str(&text).map_err(|e| io_error(&path, format!("not a manifest: {e}")))
    }

    /// An exclusive lock on the manifest (`.manifest.lock`), released when dropped.
    fn lock_manifest(&self) -> Result<std::fs::File> {
        let path = self.root.join(".manifest.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        file.lock()
            .map_err(|e| io_error(&path, format!("cannot lock: {e}")))?;
        Ok(file)
    }

    fn save_manifest(&self, manifest: &Manifest) -> Result<()> {
        let path = self.root.join("manifest.json");
        let text = serde_json::to_vec_pretty(manifest).map_err(|e| io_error(&path, e))?;
        bitnet_dequant::io::write_atomic(&path, &text).map_err(|e| io_error(&path, e))
    }

    /// A stage's folder.
    pub fn stage_dir(&self, stage: &str) -> PathBuf {
        self.root.join(stage)
    }

    /// The key of a stage: its name, its configuration (as JSON) and its inputs' hashes.
    pub fn stage_key(
        &self,
        stage: &str,
        config: &impl Serialize,
        inputs: &[&Path],
    ) -> Result<String> {
        let mut text = format!("{stage}\n");
        text.push_str(&serde_json::to_string(config).map_err(|e| Error::Config(e.to_string()))?);
        for input in inputs {
            let mut files = Vec::new();
            if input.is_dir() {
                files_under(input, input, &mut files)?;
                for f in files {
                    text.push_str(&format!(
                        "\n{}:{}",
                        f.display(),
                        file_sha256(&input.join(&f))?
                    ));
                }
            } else {
                text.push_str(&format!("\n{}", file_sha256(input)?));
            }
        }
        Ok(sha256(text.as_bytes()))
    }

    /// Whether `stage` finished with `key` and its outputs are intact.
    pub fn is_done(&self, stage: &str, key: &str) -> Result<bool> {
        let manifest = self.manifest()?;
        let Some(record) = manifest.stages.get(stage) else {
            return Ok(false);
        };
        if record.key != key {
            return Ok(false);
        }
        for (file, hash) in &record.outputs {
            let path = self.root.join(file);
            if !path.is_file() || file_sha256(&path)? != *hash {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Records `stage` as done: hashes every file in its folder; its cost is what its
    /// `generation_report.json` (paid problem generation) says was spent.
    pub fn finish(&self, stage: &str, key: String, seconds: f64) -> Result<StageRecord> {
        let dir = self.stage_dir(stage);
        let mut files = Vec::new();
        files_under(&dir, &self.root, &mut files)?;
        let mut outputs = BTreeMap::new();
        for f in files {
            outputs.insert(f.display().to_string(), file_sha256(&self.root.join(&f))?);
        }
        let record = StageRecord {
            key,
            outputs,
            seconds,
            cost_usd: stage_cost_usd(&dir),
        };
        // Stages of one run may finish at once in different processes (or Slurm
        // tasks on other nodes of a shared filesystem): the read-modify-write of the
        // manifest holds an exclusive lock, so no stage's record is lost.
        let _lock = self.lock_manifest()?;
        let mut manifest = self.manifest()?;
        manifest.stages.insert(stage.to_owned(), record.clone());
        self.save_manifest(&manifest)?;
        Ok(record)
    }

    /// Empties a stage's folder before it runs (a stage's outputs are all its own).
    pub fn clear_stage(&self, stage: &str) -> Result<PathBuf> {
        let dir = self.stage_dir(stage);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        Ok(dir)
    }
}

/// USD a stage spent on paid APIs: `total.usd` of its `generation_report.json` (written
/// by the data stage when problems came from an API), else 0.
pub fn stage_cost_usd(dir: &Path) -> f64 {
    std::fs::read_to_string(dir.join("generation_report.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["total"]["usd"].as_f64())
        .filter(|c| c.is_finite() && *c >= 0.0)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_is_done_only_with_its_key_and_intact_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        let input = dir.path().join("input.txt");
        std::fs::write(&input, "a").unwrap();
        let key = run.stage_key("s", &1u32, &[&input]).unwrap();
        assert!(!run.is_done("s", &key).unwrap());
        let out = run.clear_stage("s").unwrap();
        std::fs::write(out.join("result.json"), "{}").unwrap();
        let record = run.finish("s", key.clone(), 0.5).unwrap();
        assert!(record.outputs.contains_key("s/result.json"));
        assert!(run.is_done("s", &key).unwrap());
        // Another configuration or input is another key.
        assert_ne!(run.stage_key("s", &2u32, &[&input]).unwrap(), key);
        std::fs::write(&input, "b").unwrap();
        assert_ne!(run.stage_key("s", &1u32, &[&input]).unwrap(), key);
        // A damaged output means the stage runs again.
        std::fs::write(out.join("result.json"), "{\"x\":1}").unwrap();
        assert!(!run.is_done("s", &key).unwrap());
    }
}
