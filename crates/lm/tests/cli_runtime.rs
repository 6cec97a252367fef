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

fn fixture(name: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn model_commands_work_end_to_end() {
    let info = lm(&["info", &fixture("qwen2"), "--device", "cpu"]);
    assert!(info.status.success(), "{info:?}");
    let report: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(report["config"]["architecture"], "Qwen2");
    assert_eq!(report["linear_layers"], 14);

    let generate = lm(&[
        "generate",
        &fixture("llama"),
        "--prompt",
        "the cat",
        "--max-new-tokens",
        "5",
        "--json",
    ]);
    assert!(generate.status.success(), "{generate:?}");
    let report: serde_json::Value = serde_json::from_slice(&generate.stdout).unwrap();
    assert_eq!(report["tokens"].as_array().unwrap().len(), 5);

    // The greedy continuation is greedy-exact when scored.
    let text = report["text"].as_str().unwrap();
    let score = lm(&[
        "score",
        &fixture("llama"),
        "--prompt",
        "the cat",
        "--completion",
        text,
    ]);
    assert!(score.status.success(), "{score:?}");

    let dir = tempfile_dir();
    let out = dir.join("logits.npy");
    let logits = lm(&[
        "logits",
        &fixture("mistral"),
        "--ids",
        "1,5,9,14",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(logits.status.success(), "{logits:?}");
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    assert!(bytes.len() > 4 * 64 * 4);

    let probe = dir.join("probe.txt");
    std::fs::write(&probe, "the cat sat on the mat\nwhat is two plus three\n").unwrap();
    let agreement = lm(&[
        "agreement",
        &fixture("bitnet"),
        "--text",
        probe.to_str().unwrap(),
    ]);
    assert!(agreement.status.success(), "{agreement:?}");
    let report: serde_json::Value = serde_json::from_slice(&agreement.stdout).unwrap();
    let top1 = report["top1_agreement"].as_f64().unwrap();
    assert!((0.5..=1.0).contains(&top1), "{report}");
    std::fs::remove_dir_all(&dir).unwrap();

    // A GGUF model runs from its blocks alone unless asked to keep f32 copies too; it
    // is the same model either way.
    let gguf = fixture("gguf/tiny.gguf");
    let blocks = lm(&["info", &gguf, "--device", "cpu"]);
    let both = lm(&["info", &gguf, "--device", "cpu", "--f32-weights"]);
    assert!(
        blocks.status.success() && both.status.success(),
        "{blocks:?} {both:?}"
    );
    let blocks: serde_json::Value = serde_json::from_slice(&blocks.stdout).unwrap();
    let both: serde_json::Value = serde_json::from_slice(&both.stdout).unwrap();
    // With the blocks alone the embeddings are looked up from theirs too.
    let block_bytes = |report: &serde_json::Value| report["packed_block_bytes"].as_u64().unwrap();
    assert!(block_bytes(&both) > 0, "{both}");
    assert!(block_bytes(&blocks) > block_bytes(&both), "{blocks} {both}");
    assert_eq!(blocks["linear_parameters"], both["linear_parameters"]);
    let continuation = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            gguf.as_str(),
            "--device",
            "cpu",
            "--prompt",
            "the cat",
            "--max-new-tokens",
            "6",
            "--json",
        ];
        args.extend_from_slice(extra);
        let output = lm(&args);
        assert!(output.status.success(), "{output:?}");
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        (report["tokens"].clone(), report["log_probs"].clone())
    };
    assert_eq!(continuation(&[]), continuation(&["--f32-weights"]));

    let missing = lm(&["info", "/nonexistent/model"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/model"));
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lm-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
