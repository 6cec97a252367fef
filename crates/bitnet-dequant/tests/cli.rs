//! The `bitnet-dequant` command as a user runs it.

use std::path::Path;
use std::process::{Command, Output};

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bitnet-dequant"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn fixture() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ternary.gguf")
        .display()
        .to_string()
}

#[test]
fn inspect_convert_verify_round_trip() {
    let inspect = cli(&["inspect", &fixture()]);
    assert!(inspect.status.success(), "{inspect:?}");
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.contains("format      Gguf"), "{text}");
    assert!(text.contains("parameters  6481"), "{text}");
    assert!(
        text.contains("blk.0.ffn_up.weight") && text.contains("TQ2_0"),
        "{text}"
    );

    let json = cli(&["inspect", "--json", &fixture()]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["parameters"], 6481);
    assert_eq!(report["metadata"]["test.u32"], 7);

    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out");
    let output_arg = output.display().to_string();
    let convert = cli(&["convert", &fixture(), &output_arg, "--dtype", "bf16"]);
    assert!(convert.status.success(), "{convert:?}");
    let text = String::from_utf8_lossy(&convert.stdout);
    assert!(
        text.contains("10 tensors (7 ternary and 0 block-quantized dequantized)"),
        "{text}"
    );

    let verify = cli(&["verify", &fixture(), &output_arg]);
    assert!(verify.status.success(), "{verify:?}");
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(
        text.contains("verified: 10 tensors, 6481 elements"),
        "{text}"
    );

    // Converting onto an existing output is refused; the output stays as it was.
    let again = cli(&["convert", &fixture(), &output_arg]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn errors_are_one_line_naming_the_file() {
    let missing = cli(&["inspect", "/nonexistent/model.gguf"]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/model.gguf"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let truncated = dir.path().join("cut.gguf");
    let bytes = std::fs::read(fixture()).unwrap();
    std::fs::write(&truncated, &bytes[..100]).unwrap();
    let result = cli(&["inspect", &truncated.display().to_string()]);
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("cut.gguf") && stderr.contains("truncated"),
        "{stderr}"
    );

    let bad_size = cli(&["convert", &fixture(), "x", "--max-shard-size", "lots"]);
    assert!(!bad_size.status.success());
    assert!(String::from_utf8_lossy(&bad_size.stderr).contains("not a size like 500MB"));
}
