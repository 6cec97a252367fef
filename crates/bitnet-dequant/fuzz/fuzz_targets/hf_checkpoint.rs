//! Any bytes as an HF checkpoint: the first byte picks a config (none, the two BitNet
//! conventions, online mode, a Llama shape check), the rest is model.safetensors.
//! Opening, dequantizing and the ternary view must never panic.
#![no_main]

use bitnet_dequant::hf::HfCheckpoint;
use bitnet_dequant::io::Bytes;
use libfuzzer_sys::fuzz_target;

const CONFIGS: [Option<&str>; 5] = [
    None,
    Some(r#"{"quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear"}}"#),
    Some(r#"{"quantization_config": {"quant_method": "bitnet"}}"#),
    Some(r#"{"quantization_config": {"quant_method": "bitnet", "quantization_mode": "online"}}"#),
    Some(
        r#"{"hidden_size": 8, "intermediate_size": 16, "num_attention_heads": 2,
            "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear"}}"#,
    ),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let config = CONFIGS[usize::from(selector) % CONFIGS.len()];
    let shards = vec![("model.safetensors".into(), Bytes::Owned(rest.to_vec()))];
    let Ok(checkpoint) = HfCheckpoint::from_parts("fuzz".into(), config, shards) else {
        return;
    };
    for info in checkpoint.tensors().to_vec() {
        let mut out = vec![0f32; info.numel()];
        let _ = checkpoint.dequantize_into(&info.name, &mut out, false);
        let _ = checkpoint.ternary(&info.name);
    }
});
