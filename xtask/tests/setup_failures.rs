//! `cargo xtask setup` when it cannot succeed: one actionable error line, exit non-zero,
//! and nothing half-installed left in the cache.
//!
//! Each test points the cache at a fresh temporary folder, and Python at a missing
//! binary or a stand-in script, so no test downloads anything or touches the real cache.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch folder removed at the end of the test.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn setup(cache: &Path, python: Option<&Path>, path_env: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command
        .arg("setup")
        .env("PHASE7_LIBTORCH_CACHE", cache)
        .env_remove("PHASE7_PYTHON");
    if let Some(python) = python {
        command.env("PHASE7_PYTHON", python);
    }
    if let Some(path) = path_env {
        command.env("PATH", path);
    }
    command.output().unwrap()
}

/// The run failed with exactly one error line, the last one; returns it.
fn single_error_line(output: &Output) -> String {
    assert!(!output.status.success(), "set-up unexpectedly succeeded");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line in:\n{stderr}");
    assert_eq!(stderr.lines().last(), Some(errors[0]), "{stderr}");
    errors[0].to_owned()
}

/// Nothing but the lock and the pip log may remain: no partial folder, no install.
fn assert_nothing_installed(cache: &Path) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    let names: Vec<String> = entries
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for name in &names {
        assert!(
            name == ".lock" || name.starts_with("pip-install-"),
            "unexpected {name} left in the cache: {names:?}"
        );
    }
}

/// A stand-in for `python3`: `-m pip --version` answers as told; `pip install` writes
/// `install_script` (shell, with $target set) and exits with `install_exit`.
fn fake_python(dir: &Path, pip_present: bool, install_script: &str, install_exit: i32) -> PathBuf {
    let path = dir.join("python3");
    let version_exit = if pip_present { 0 } else { 1 };
    fs::write(
        &path,
        format!(
            "#!/bin/sh\n\
             if [ \"$1 $2 $3\" = \"-m pip --version\" ]; then exit {version_exit}; fi\n\
             while [ $# -gt 0 ]; do [ \"$1\" = --target ] && target=\"$2\"; shift; done\n\
             {install_script}\n\
             exit {install_exit}\n"
        ),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn cache_below_a_file_is_reported_as_not_writable() {
    let scratch = Scratch::new("cache-file");
    let blocker = scratch.0.join("a-file");
    fs::write(&blocker, "not a folder").unwrap();
    let line = single_error_line(&setup(&blocker.join("cache"), None, None));
    assert!(line.contains("is not writable"), "{line}");
    assert!(line.contains("PHASE7_LIBTORCH_CACHE"), "{line}");
}

#[test]
fn cache_that_cannot_take_the_lock_file_is_reported_as_not_writable() {
    // Root ignores permission bits, so make the lock path a folder: opening it for
    // writing fails for every user.
    let scratch = Scratch::new("cache-lock");
    let cache = scratch.0.join("cache");
    fs::create_dir_all(cache.join(".lock")).unwrap();
    let line = single_error_line(&setup(&cache, None, None));
    assert!(line.contains("is not writable"), "{line}");
    let names: Vec<_> = fs::read_dir(&cache).unwrap().collect();
    assert_eq!(names.len(), 1, "only the pre-made .lock folder remains");
}

#[test]
fn missing_python_gives_an_actionable_line() {
    let scratch = Scratch::new("no-python");
    let empty_path = scratch.0.join("bin");
    fs::create_dir_all(&empty_path).unwrap();
    let cache = scratch.0.join("cache");
    let line = single_error_line(&setup(&cache, None, Some(&empty_path)));
    assert!(line.contains("`python3` was not found"), "{line}");
    assert!(line.contains("PHASE7_PYTHON"), "{line}");
    assert_nothing_installed(&cache);
}

#[test]
fn python_without_pip_gives_an_actionable_line() {
    let scratch = Scratch::new("no-pip");
    let python = fake_python(&scratch.0, false, "", 0);
    let cache = scratch.0.join("cache");
    let line = single_error_line(&setup(&cache, Some(&python), None));
    assert!(line.contains("-m pip` is not available"), "{line}");
    assert_nothing_installed(&cache);
}

#[test]
fn failed_download_leaves_no_partial_install() {
    let scratch = Scratch::new("pip-fails");
    let cache = scratch.0.join("cache");
    // A partial folder from an earlier, killed run: it must be cleaned up too.
    fs::create_dir_all(cache.join(".partial-torch-2.11.0-1/torch")).unwrap();
    let python = fake_python(
        &scratch.0,
        true,
        "mkdir -p \"$target/torch/lib\" && echo half > \"$target/torch/lib/libtorch_cpu.so\"\n\
         echo 'Collecting torch==2.11.0' \n\
         echo 'ERROR: Could not find a version that satisfies the requirement torch==2.11.0' >&2",
        1,
    );
    let line = single_error_line(&setup(&cache, Some(&python), None));
    assert!(
        line.contains("pip could not install torch==2.11.0"),
        "{line}"
    );
    assert!(line.contains("Could not find a version"), "{line}");
    assert!(line.contains("rerun `cargo xtask setup`"), "{line}");
    assert_nothing_installed(&cache);
}

#[test]
fn install_that_fails_verification_is_removed() {
    let scratch = Scratch::new("bad-wheel");
    let cache = scratch.0.join("cache");
    let python = fake_python(
        &scratch.0,
        true,
        "mkdir -p \"$target/torch\" && echo \"__version__ = '2.11.0+cpu'\" > \"$target/torch/version.py\"",
        0,
    );
    let line = single_error_line(&setup(&cache, Some(&python), None));
    assert!(line.contains("failed verification"), "{line}");
    assert!(line.contains("header"), "{line}");
    assert_nothing_installed(&cache);
}
