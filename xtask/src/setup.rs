//! `cargo xtask setup`: install libtorch once per user and link it into the repository.
//!
//! libtorch comes from the PyPI wheel `torch==2.11.0`, which carries the C++ headers,
//! `libtorch*.so` and (through its dependencies) the CUDA runtime libraries those link.
//! `pip install --target` puts it in a private folder, so no Python environment is
//! touched. The install happens in a `.partial-*` folder that is renamed into place only
//! once verified, so the cache never holds a half-installed libtorch: an interrupted or
//! failed run leaves at most a partial folder, which the next run removes.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The libtorch version tch 0.24 is built against.
pub const TORCH_VERSION: &str = "2.11.0";
/// Overrides the cache directory.
pub const CACHE_ENV: &str = "PHASE7_LIBTORCH_CACHE";
/// Overrides the Python interpreter used for the one-time install (default `python3`).
pub const PYTHON_ENV: &str = "PHASE7_PYTHON";

/// Written into an install once it has been verified; its presence marks a complete install.
const MARKER_FILE: &str = ".phase7-libtorch.json";
const PARTIAL_PREFIX: &str = ".partial-";
/// The shared libraries torch-sys links; each must exist and resolve all its own needs.
const LINKED_LIBRARIES: &[&str] = &[
    "libtorch.so",
    "libtorch_cpu.so",
    "libtorch_cuda.so",
    "libc10.so",
];
/// Headers torch-sys compiles its C++ shim against.
const HEADERS: &[&str] = &[
    "include/ATen/ATen.h",
    "include/torch/csrc/api/include/torch/torch.h",
];
const HEARTBEAT: Duration = Duration::from_secs(30);

/// What a set-up call found or did.
pub struct Report {
    install_dir: PathBuf,
    link: PathBuf,
    torch_version: String,
    installed_now: bool,
    elapsed: Duration,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.installed_now {
            "installed and verified"
        } else {
            "already installed, verified"
        };
        write!(
            f,
            "setup: libtorch {} {what} in {:.2} s at {} (linked at {})",
            self.torch_version,
            self.elapsed.as_secs_f64(),
            self.install_dir.display(),
            self.link.display()
        )
    }
}

#[derive(Serialize, Deserialize)]
struct Marker {
    torch_version: String,
    requirement: String,
    install_seconds: f64,
}

/// Ensures a verified libtorch is in the cache and linked at `<root>/.libtorch`.
pub fn run(root: &Path, force: bool) -> Result<Report> {
    let started = Instant::now();
    let cache = cache_root()?;
    let install_dir = cache.join(format!("torch-{TORCH_VERSION}"));
    let link = root.join(".libtorch");
    let report = |torch_version: String, installed_now: bool| Report {
        install_dir: install_dir.clone(),
        link: link.clone(),
        torch_version,
        installed_now,
        elapsed: started.elapsed(),
    };

    if !force && let Ok(version) = verify_install(&install_dir, true) {
        link_install(&link, &install_dir)?;
        return Ok(report(version, false));
    }

    let not_writable = || {
        format!(
            "the libtorch cache {} is not writable; set {CACHE_ENV} to a writable directory",
            cache.display()
        )
    };
    fs::create_dir_all(&cache).with_context(not_writable)?;
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cache.join(".lock"))
        .with_context(not_writable)?;
    if lock.try_lock().is_err() {
        eprintln!("setup: another set-up holds {}; waiting", cache.display());
        lock.lock()
            .with_context(|| format!("cannot lock {}", cache.display()))?;
    }
    // Another process may have completed the install while this one waited.
    if !force && let Ok(version) = verify_install(&install_dir, true) {
        link_install(&link, &install_dir)?;
        return Ok(report(version, false));
    }
    remove_stale_partials(&cache)?;

    let python = python_with_pip()?;
    let partial = PartialDir(cache.join(format!(
        "{PARTIAL_PREFIX}torch-{TORCH_VERSION}-{}",
        std::process::id()
    )));
    let log = cache.join(format!("pip-install-torch-{TORCH_VERSION}.log"));
    eprintln!(
        "setup: installing torch=={TORCH_VERSION} from PyPI into {} (one time, about 5 GB; log: {})",
        install_dir.display(),
        log.display()
    );
    let install_started = Instant::now();
    pip_install(&python, &partial.0, &log)?;
    let version = verify_install(&partial.0, false).context(
        "the installed torch wheel failed verification; run `cargo xtask setup --force` to retry",
    )?;
    write_marker(
        &partial.0,
        &Marker {
            torch_version: version.clone(),
            requirement: format!("torch=={TORCH_VERSION}"),
            install_seconds: install_started.elapsed().as_secs_f64(),
        },
    )?;
    if fs::symlink_metadata(&install_dir).is_ok() {
        // An unverifiable (or, with --force, a verified) old install: move it aside first so
        // the rename below is the single step that makes the new one visible.
        let old = cache.join(format!(
            "{PARTIAL_PREFIX}old-torch-{TORCH_VERSION}-{}",
            std::process::id()
        ));
        fs::rename(&install_dir, &old)
            .with_context(|| format!("cannot move the old {} aside", install_dir.display()))?;
        drop(PartialDir(old));
    }
    fs::rename(&partial.0, &install_dir).with_context(|| {
        format!(
            "cannot move the verified install into {}",
            install_dir.display()
        )
    })?;
    std::mem::forget(partial);
    sync_dir(&cache)?;
    link_install(&link, &install_dir)?;
    Ok(report(version, true))
}

/// `$PHASE7_LIBTORCH_CACHE`, else `$XDG_CACHE_HOME/phase7/libtorch`, else `~/.cache/...`.
fn cache_root() -> Result<PathBuf> {
    cache_dir(CACHE_ENV, "libtorch")
}

/// `$<override_env>`, else `$XDG_CACHE_HOME/phase7/<name>`, else `~/.cache/phase7/<name>`.
pub fn cache_dir(override_env: &str, name: &str) -> Result<PathBuf> {
    let from_env = |key: &str| {
        std::env::var_os(key)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = from_env(override_env) {
        return Ok(dir);
    }
    if let Some(dir) = from_env("XDG_CACHE_HOME").filter(|dir| dir.is_absolute()) {
        return Ok(dir.join("phase7").join(name));
    }
    match from_env("HOME") {
        Some(home) => Ok(home.join(".cache").join("phase7").join(name)),
        None => {
            bail!("cannot choose a cache folder for {name}: HOME is not set; set {override_env}")
        }
    }
}

/// A folder removed when dropped: partial installs never outlive a failed run.
struct PartialDir(PathBuf);

impl Drop for PartialDir {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.0)
            && error.kind() != io::ErrorKind::NotFound
        {
            eprintln!(
                "setup: warning: could not remove {}: {error}",
                self.0.display()
            );
        }
    }
}

/// Removes partial folders left by runs that were killed (the caller holds the lock).
fn remove_stale_partials(cache: &Path) -> Result<()> {
    for entry in fs::read_dir(cache).with_context(|| format!("cannot list {}", cache.display()))? {
        let entry = entry?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(PARTIAL_PREFIX)
        {
            eprintln!(
                "setup: removing {} left by an interrupted set-up",
                entry.path().display()
            );
            fs::remove_dir_all(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
        }
    }
    Ok(())
}

pub fn python_with_pip() -> Result<String> {
    let python = std::env::var(PYTHON_ENV).unwrap_or_else(|_| "python3".to_owned());
    let probe = Command::new(&python)
        .args(["-m", "pip", "--version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match probe {
        Err(error) if error.kind() == io::ErrorKind::NotFound => bail!(
            "libtorch is installed once from PyPI with pip, but `{python}` was not found: \
             install Python 3 with pip (Debian/Ubuntu: apt-get install python3-pip) or set \
             {PYTHON_ENV} to a Python 3 interpreter, then rerun `cargo xtask setup`"
        ),
        Err(error) => bail!(
            "cannot run `{python}`: {error}; set {PYTHON_ENV} to a Python 3 interpreter with pip"
        ),
        Ok(status) if !status.success() => bail!(
            "`{python} -m pip` is not available: install pip (Debian/Ubuntu: apt-get install \
             python3-pip, or `{python} -m ensurepip`) or set {PYTHON_ENV} to a Python 3 \
             interpreter that has it, then rerun `cargo xtask setup`"
        ),
        Ok(_) => Ok(python),
    }
}

fn pip_install(python: &str, target: &Path, log_path: &Path) -> Result<()> {
    let log = File::create(log_path)
        .with_context(|| format!("cannot write the pip log {}", log_path.display()))?;
    let mut child = Command::new(python)
        .args(["-m", "pip", "install", "--target"])
        .arg(target)
        .args([
            "--no-input",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--progress-bar",
            "off",
        ])
        .arg(format!("torch=={TORCH_VERSION}"))
        // A user's pip config must not turn this into a --user or virtualenv-only install.
        .env("PIP_USER", "0")
        .env("PIP_REQUIRE_VIRTUALENV", "0")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start `{python} -m pip`"))?;
    let started = Instant::now();
    let mut next_heartbeat = HEARTBEAT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(250));
        if started.elapsed() >= next_heartbeat {
            next_heartbeat += HEARTBEAT;
            eprintln!(
                "setup: still installing ({} s, {:.2} GB in place; pip: {})",
                started.elapsed().as_secs(),
                dir_size(target) as f64 / 1e9,
                last_line(log_path, 100)
            );
        }
    };
    if !status.success() {
        let log_text = fs::read_to_string(log_path).unwrap_or_default();
        let reason = log_text
            .lines()
            .rev()
            .find(|line| line.starts_with("ERROR:"))
            .or_else(|| log_text.lines().rev().find(|line| !line.trim().is_empty()))
            .unwrap_or("no output")
            .trim()
            .to_owned();
        bail!(
            "pip could not install torch=={TORCH_VERSION} ({status}): {reason} \
             [full log: {}]; check that PyPI is reachable and rerun `cargo xtask setup`",
            log_path.display()
        );
    }
    Ok(())
}

/// The last non-empty line of a log, cut to `max_chars`, for progress lines.
fn last_line(path: &Path, max_chars: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let line = text
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("")
        .trim();
    line.chars().take(max_chars).collect()
}

/// Bytes under `dir`, for progress lines; unreadable entries count as zero.
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_size(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// Checks version, headers and libraries of an install; returns torch's full version
/// string (e.g. `2.11.0+cu130`). With `require_marker`, the install must also carry the
/// marker that only a completed set-up writes.
pub fn verify_install(dir: &Path, require_marker: bool) -> Result<String> {
    if require_marker {
        let marker_path = dir.join(MARKER_FILE);
        let text = fs::read_to_string(&marker_path)
            .with_context(|| format!("no completed install at {}", dir.display()))?;
        let marker: Marker = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid marker", marker_path.display()))?;
        if release_of(&marker.torch_version) != TORCH_VERSION {
            bail!(
                "{} records torch {}, expected {TORCH_VERSION}",
                marker_path.display(),
                marker.torch_version
            );
        }
    }
    let torch = dir.join("torch");
    let version_file = torch.join("version.py");
    let version_text = fs::read_to_string(&version_file)
        .with_context(|| format!("cannot read {}", version_file.display()))?;
    let version = parse_version_py(&version_text)
        .with_context(|| format!("no __version__ in {}", version_file.display()))?;
    if release_of(&version) != TORCH_VERSION {
        bail!(
            "{} says torch {version}, expected {TORCH_VERSION}",
            version_file.display()
        );
    }
    for header in HEADERS {
        let path = torch.join(header);
        if !path.is_file() {
            bail!("header {} is missing", path.display());
        }
    }
    for library in LINKED_LIBRARIES {
        let path = torch.join("lib").join(library);
        if !path.is_file() {
            bail!("library {} is missing", path.display());
        }
    }
    // libtorch.so needs all the others, so one ldd walks the whole closure, CUDA runtime
    // libraries included, through the wheel's own $ORIGIN run paths.
    let libtorch = torch.join("lib").join("libtorch.so");
    let output = Command::new("ldd")
        .arg(&libtorch)
        .env_remove("LD_LIBRARY_PATH")
        .stdin(Stdio::null())
        .output()
        .context("cannot run ldd to check the libraries")?;
    let listing = String::from_utf8_lossy(&output.stdout);
    if let Some(line) = listing.lines().find(|line| line.contains("not found")) {
        bail!(
            "{} cannot load: {} (the install lacks a library it links)",
            libtorch.display(),
            line.trim()
        );
    }
    if !output.status.success() {
        bail!(
            "ldd rejected {}: {}",
            libtorch.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(version)
}

/// `2.11.0+cu130` -> `2.11.0`.
fn release_of(version: &str) -> &str {
    version.split('+').next().unwrap_or(version).trim()
}

/// Reads `__version__ = '2.11.0+cu130'` from torch's `version.py`.
fn parse_version_py(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix("__version__")?.trim_start();
        let value = value.strip_prefix('=')?.trim();
        let unquoted = value
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .or_else(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')))?;
        Some(unquoted.to_owned())
    })
}

fn write_marker(dir: &Path, marker: &Marker) -> Result<()> {
    let path = dir.join(MARKER_FILE);
    let temporary = dir.join(format!("{MARKER_FILE}.tmp"));
    let mut file = File::create(&temporary)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    serde_json::to_writer_pretty(&mut file, marker)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    fs::rename(&temporary, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

/// Points `link` at `target`, replacing an older link in one rename.
fn link_install(link: &Path, target: &Path) -> Result<()> {
    match fs::symlink_metadata(link) {
        Ok(meta) if meta.file_type().is_symlink() => {
            if fs::read_link(link).ok().as_deref() == Some(target) {
                return Ok(());
            }
        }
        Ok(_) => bail!(
            "{} exists and is not a symbolic link; move it away so set-up can link libtorch there",
            link.display()
        ),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(error).with_context(|| format!("cannot inspect {}", link.display()));
        }
    }
    let temporary = link.with_file_name(format!(".libtorch.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&temporary);
    std::os::unix::fs::symlink(target, &temporary)
        .with_context(|| format!("cannot create the link {}", temporary.display()))?;
    fs::rename(&temporary, link).with_context(|| format!("cannot create {}", link.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_py_is_parsed_with_either_quote() {
        let text = "from typing import Optional\n__version__ = '2.11.0+cu130'\ndebug = False\n";
        assert_eq!(parse_version_py(text).as_deref(), Some("2.11.0+cu130"));
        assert_eq!(
            parse_version_py("__version__=\"2.11.0\"").as_deref(),
            Some("2.11.0")
        );
        assert_eq!(parse_version_py("version = '2.11.0'"), None);
        assert_eq!(parse_version_py("__version__ = 2.11"), None);
    }

    #[test]
    fn release_drops_the_local_part() {
        assert_eq!(release_of("2.11.0+cu130"), "2.11.0");
        assert_eq!(release_of("2.11.0"), "2.11.0");
    }

    #[test]
    fn an_empty_folder_is_not_an_install() {
        let dir = std::env::temp_dir().join(format!("xtask-verify-{}", std::process::id()));
        fs::create_dir_all(dir.join("torch")).unwrap();
        let error = verify_install(&dir, false).unwrap_err();
        assert!(format!("{error:#}").contains("version.py"), "{error:#}");
        fs::write(dir.join("torch/version.py"), "__version__ = '2.10.0+cpu'\n").unwrap();
        let error = verify_install(&dir, false).unwrap_err();
        assert!(
            format!("{error:#}").contains("expected 2.11.0"),
            "{error:#}"
        );
        fs::write(dir.join("torch/version.py"), "__version__ = '2.11.0+cpu'\n").unwrap();
        let error = verify_install(&dir, false).unwrap_err();
        assert!(format!("{error:#}").contains("header"), "{error:#}");
        let error = verify_install(&dir, true).unwrap_err();
        assert!(
            format!("{error:#}").contains("no completed install"),
            "{error:#}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn link_replaces_an_old_link_but_never_a_folder() {
        let dir = std::env::temp_dir().join(format!("xtask-link-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let link = dir.join(".libtorch");
        link_install(&link, Path::new("/first")).unwrap();
        link_install(&link, Path::new("/second")).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("/second"));
        fs::remove_file(&link).unwrap();
        fs::create_dir(&link).unwrap();
        let error = link_install(&link, Path::new("/second")).unwrap_err();
        assert!(error.to_string().contains("not a symbolic link"), "{error}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
