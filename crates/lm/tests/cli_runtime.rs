//! The `lm runtime` command as a user runs it: a report, and clear errors for bad or
//! unavailable devices (exit code, one line, never a panic).

use std::process::{Command, Output};

fn lm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lm"))
        .args(args)
        .output()
        .expect("the lm binary runs")
}

#[test]
fn json_report_matches_the_library_view() {
    let output = lm(&["runtime", "--device", "cpu", "--json"]);
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let runtime = lm::device::runtime();
    assert_eq!(report["requested_device"], "cpu");
    assert_eq!(report["device"], "Cpu");
    assert_eq!(report["runtime"]["cuda_available"], runtime.cuda_available);
    assert_eq!(
        report["runtime"]["cuda_device_count"],
        runtime.cuda_device_count
    );
    let version = report["runtime"]["torch_version"].as_str().unwrap();
    assert!(version.starts_with("2.11.0"), "{version}");
}

#[test]
fn unavailable_cuda_is_an_error_line_not_a_panic() {
    let count = lm::device::runtime().cuda_device_count;
    // Beyond the last device on a GPU machine; any CUDA device on a CPU machine.
    let device = format!("cuda:{count}");
    let output = lm(&["runtime", "--device", &device]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("error: device {device}")) || stderr.contains(&device),
        "{stderr}"
    );
}

#[test]
fn malformed_device_is_rejected_with_the_accepted_forms() {
    let output = lm(&["runtime", "--device", "gpu0"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid device `gpu0`"), "{stderr}");
    assert!(stderr.contains("auto, cpu, cuda or cuda:N"), "{stderr}");
}
