//! Loading checkpoints that do not match their config: clear errors naming the tensor.

use std::path::Path;

use lm::CausalLm;
use tch::{Device, Kind, Tensor};

fn copy_fixture(name: &str, to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn load_error(dir: &Path) -> String {
    match CausalLm::load(dir, Device::Cpu, Kind::Float) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(error) => error.to_string(),
    }
}

/// Rewrites model.safetensors through `edit` (name, tensor) -> kept tensors.
fn edit_weights(dir: &Path, edit: impl Fn(String, Tensor) -> Vec<(String, Tensor)>) {
    let file = dir.join("model.safetensors");
    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(&file)
        .unwrap()
        .into_iter()
        .flat_map(|(name, tensor)| edit(name, tensor))
        .collect();
    Tensor::write_safetensors(&tensors, &file).unwrap();
}

#[test]
fn missing_misshaped_and_unexpected_tensors_are_named() {
    let dir = tempfile_dir("missing");
    copy_fixture("qwen2", &dir);
    edit_weights(&dir, |name, t| {
        if name == "model.layers.1.mlp.up_proj.weight" {
            vec![]
        } else {
            vec![(name, t)]
        }
    });
    let message = load_error(&dir);
    assert!(
        message.contains("model.layers.1.mlp.up_proj.weight") && message.contains("missing"),
        "{message}"
    );

    copy_fixture("qwen2", &dir);
    edit_weights(&dir, |name, t| {
        if name == "model.layers.0.self_attn.k_proj.bias" {
            vec![(name, t.narrow(0, 0, 8))]
        } else {
            vec![(name, t)]
        }
    });
    let message = load_error(&dir);
    assert!(
        message.contains("k_proj.bias") && message.contains("has shape [8]"),
        "{message}"
    );

    copy_fixture("qwen2", &dir);
    edit_weights(&dir, |name, t| {
        let extra = (format!("{name}.extra"), t.shallow_clone());
        if name == "model.norm.weight" {
            vec![(name, t), extra]
        } else {
            vec![(name, t)]
        }
    });
    let message = load_error(&dir);
    assert!(
        message.contains("model.norm.weight.extra") && message.contains("not part of the model"),
        "{message}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unsupported_architectures_list_the_supported_ones() {
    let dir = tempfile_dir("arch");
    copy_fixture("llama", &dir);
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        config.replace("\"llama\"", "\"gpt_neox\""),
    )
    .unwrap();
    let message = load_error(&dir);
    assert!(
        message.contains("config.json") && message.contains("`gpt_neox`"),
        "{message}"
    );
    assert!(
        message.contains("llama, qwen2, mistral, bitnet"),
        "{message}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bitnet_activation_quantization_can_be_switched_off() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bitnet");
    let mut model = CausalLm::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let ids = Tensor::from_slice(&[5i64, 9, 14, 3, 27]).view([1, 5]);
    let quantized = model.forward(&ids, None, None).unwrap();
    model.set_activation_quantization(false);
    let float = model.forward(&ids, None, None).unwrap();
    let difference = (&quantized - &float).abs().max().double_value(&[]);
    // 8-bit activations move the logits a little, not a lot.
    assert!(difference > 0.0 && difference < 0.5, "{difference}");
    let names: Vec<String> = model
        .linear_layers_mut()
        .iter()
        .map(|l| l.name.clone())
        .collect();
    assert_eq!(names.len(), 14);
    assert_eq!(names[4], "model.layers.0.mlp.gate_proj");
    assert!(model.linear_layers_mut().iter().all(|l| l.bitlinear));
}

fn tempfile_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lm-loading-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn half_precision_weights_load_and_stay_close_to_f32() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama");
    let ids = Tensor::from_slice(&[5i64, 9, 14, 3, 27, 33]).view([1, 6]);
    let reference = CausalLm::load(&dir, Device::Cpu, Kind::Float)
        .unwrap()
        .forward(&ids, None, None)
        .unwrap();
    for kind in [Kind::BFloat16, Kind::Half] {
        let model = CausalLm::load(&dir, Device::Cpu, kind).unwrap();
        assert_eq!(model.kind(), kind);
        let logits = model.forward(&ids, None, None).unwrap();
        assert_eq!(logits.kind(), Kind::Float, "logits come back as f32");
        let difference = (&logits - &reference).abs().max().double_value(&[]);
        let scale = reference.abs().max().double_value(&[]);
        assert!(
            difference < 0.05 * scale,
            "{kind:?}: {difference} of {scale}"
        );
    }
}

#[test]
fn a_float_bitnet_checkpoint_has_plain_linear_layers() {
    // transformers runs BitNet weights without a bitnet quantization_config as nn.Linear.
    let dir = std::env::temp_dir().join(format!("lm-float-bitnet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bitnet");
    let options = bitnet_dequant::convert::ConvertOptions::default();
    bitnet_dequant::convert::convert(
        &input,
        &dir,
        &options,
        &mut bitnet_dequant::convert::NoProgress,
    )
    .unwrap();
    let mut float = CausalLm::load(&dir, Device::Cpu, Kind::Float).unwrap();
    assert!(float.linear_layers_mut().iter().all(|l| !l.bitlinear));
    // Its forward equals the packed model's with activation quantization off.
    let mut packed = CausalLm::load(&input, Device::Cpu, Kind::Float).unwrap();
    packed.set_activation_quantization(false);
    let ids = Tensor::from_slice(&[5i64, 9, 14, 3]).view([1, 4]);
    let difference = (float.forward(&ids, None, None).unwrap()
        - packed.forward(&ids, None, None).unwrap())
    .abs()
    .max()
    .double_value(&[]);
    assert!(difference < 1e-5, "{difference}");
    std::fs::remove_dir_all(&dir).unwrap();
}
