//! HF BitNet checkpoints: both scale conventions, sharding, online latent weights,
//! conversion and verification, and every kind of bad input named in the errors.

use std::path::Path;

use bitnet_dequant::convert::{self, ConvertOptions, NoProgress, OutputDtype};
use bitnet_dequant::hf::{BitnetWriteOptions, HfTensor, LinearClass, write_bitnet_checkpoint};
use bitnet_dequant::io::{StDtype, StEntry, StreamingSafetensors};
use bitnet_dequant::{Checkpoint, Encoding, FloatDtype, Format, reference};
use serde_json::{Map, Value, json};

/// Research notes, 6.1.
const HAND_CODES: [i8; 24] = [
    1, 0, -1, 0, 1, 1, -1, -1, 0, 1, 1, 1, 0, 0, 0, -1, 1, 0, 1, -1, -1, 0, -1, 1,
];
const HAND_PACKED: [u8; 6] = [0x92, 0x11, 0x14, 0x49, 0x2a, 0x9a];

fn config(extra: Value) -> Map<String, Value> {
    let mut config = json!({
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "hidden_size": 3,
        "intermediate_size": 8,
        "num_attention_heads": 1,
        "num_key_value_heads": 1,
        "head_dim": 8,
    });
    if let (Value::Object(base), Value::Object(extra)) = (&mut config, extra) {
        base.extend(extra);
    }
    match config {
        Value::Object(map) => map,
        _ => unreachable!(),
    }
}

const NORM: [f32; 3] = [1.0, 0.5, 2.0];

fn write_hand_checkpoint(dir: &Path, linear_class: LinearClass, gamma: f32) {
    let tensors = [
        HfTensor::Ternary {
            name: "model.layers.0.mlp.up_proj.weight",
            shape: [8, 3],
            codes: &HAND_CODES,
            gamma,
        },
        HfTensor::Float {
            name: "model.norm.weight",
            shape: &[3],
            values: &NORM,
            dtype: FloatDtype::Bf16,
        },
    ];
    let options = BitnetWriteOptions {
        linear_class,
        scale_dtype: FloatDtype::Bf16,
    };
    write_bitnet_checkpoint(dir, &config(json!({})), &tensors, &options).unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{\"version\": \"1.0\"}").unwrap();
    std::fs::write(dir.join("generation_config.json"), "{\"do_sample\": false}").unwrap();
}

#[test]
fn both_scale_conventions_give_the_worked_values() {
    let expected_row0 = [0.5f32, 0.0, -0.5];
    let expected_row5 = [-0.5f32, 0.5, 0.0];
    for (class, gamma, scale_bytes) in [
        (LinearClass::AutoBitLinear, 0.5f32, [0x00u8, 0x3f]),
        (LinearClass::BitLinear, 0.5, [0x00, 0x40]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        write_hand_checkpoint(dir.path(), class, gamma);
        let checkpoint = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(checkpoint.format(), Format::HfPacked);
        let Checkpoint::Hf(hf) = &checkpoint else {
            panic!()
        };
        assert_eq!(
            hf.stored_bytes("model.layers.0.mlp.up_proj.weight")
                .unwrap(),
            HAND_PACKED
        );
        assert_eq!(
            hf.stored_bytes("model.layers.0.mlp.up_proj.weight_scale")
                .unwrap(),
            scale_bytes
        );
        // weight_scale is folded into its weight.
        assert_eq!(checkpoint.tensors().len(), 2);
        let weights = checkpoint
            .dequantize("model.layers.0.mlp.up_proj.weight")
            .unwrap();
        assert_eq!(&weights[..3], &expected_row0, "{class:?}");
        assert_eq!(&weights[15..18], &expected_row5, "{class:?}");
        let ternary = checkpoint
            .ternary("model.layers.0.mlp.up_proj.weight")
            .unwrap()
            .unwrap();
        assert_eq!(ternary.codes, HAND_CODES);
        assert_eq!(ternary.dequantize(), weights);
        assert_eq!(checkpoint.dequantize("model.norm.weight").unwrap(), NORM);
    }
}

#[test]
fn conversion_streams_verifies_and_keeps_companions() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_hand_checkpoint(&input, LinearClass::AutoBitLinear, 0.0234375);
    for dtype in [OutputDtype::F32, OutputDtype::Bf16] {
        let output = dir.path().join(format!("out-{dtype:?}"));
        let options = ConvertOptions {
            dtype,
            ..ConvertOptions::default()
        };
        let report = convert::convert(&input, &output, &options, &mut NoProgress).unwrap();
        assert_eq!(
            (report.tensors, report.ternary_tensors, report.shards),
            (2, 1, 1)
        );
        let converted = Checkpoint::open(&output).unwrap();
        assert_eq!(converted.format(), Format::HfFloat);
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(output.join("config.json")).unwrap())
                .unwrap();
        assert!(config.get("quantization_config").is_none());
        assert_eq!(config["model_type"], "bitnet");
        assert!(output.join("tokenizer.json").is_file());
        assert!(output.join("generation_config.json").is_file());
        let verification = convert::verify(&input, &output).unwrap();
        assert!(verification.ok(), "{verification:?}");
        // Nothing is left beside the output.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

#[test]
fn verification_catches_a_changed_weight() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let output = dir.path().join("out");
    write_hand_checkpoint(&input, LinearClass::BitLinear, 0.25);
    convert::convert(&input, &output, &ConvertOptions::default(), &mut NoProgress).unwrap();
    // Flip one bit of the first float of the packed weight's output.
    let file = output.join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    // Tensors are written in name order: the layer's data starts right after the header.
    bytes[8 + header] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let report = convert::verify(&input, &output).unwrap();
    assert!(!report.ok());
    let bad: Vec<_> = report.tensors.iter().filter(|t| !t.ok()).collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].name, "model.layers.0.mlp.up_proj.weight");
    assert_eq!(bad[0].mismatches, 1);
}

#[test]
fn sharded_input_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let output = dir.path().join("out");
    write_hand_checkpoint(&input, LinearClass::AutoBitLinear, 1.5);
    // Split model.safetensors into two shards with an index, as transformers does.
    let single = Checkpoint::open(&input).unwrap();
    let Checkpoint::Hf(hf) = &single else {
        panic!()
    };
    let names = [
        (
            "model.layers.0.mlp.up_proj.weight",
            StDtype::U8,
            vec![2, 3],
            "model-00001-of-00002.safetensors",
        ),
        (
            "model.layers.0.mlp.up_proj.weight_scale",
            StDtype::Bf16,
            vec![1],
            "model-00002-of-00002.safetensors",
        ),
        (
            "model.norm.weight",
            StDtype::Bf16,
            vec![3],
            "model-00002-of-00002.safetensors",
        ),
    ];
    let mut weight_map = Map::new();
    for file in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        let entries: Vec<_> = names
            .iter()
            .filter(|n| n.3 == file)
            .map(|(name, dtype, shape, _)| StEntry {
                name: (*name).to_owned(),
                dtype: *dtype,
                shape: shape.clone(),
            })
            .collect();
        let mut writer =
            StreamingSafetensors::create(&input.join(file), entries.clone(), &Default::default())
                .unwrap();
        for entry in &entries {
            writer
                .write_tensor(&entry.name, hf.stored_bytes(&entry.name).unwrap())
                .unwrap();
            weight_map.insert(entry.name.clone(), Value::String(file.to_owned()));
        }
        writer.finish().unwrap();
    }
    drop(single);
    std::fs::remove_file(input.join("model.safetensors")).unwrap();
    std::fs::write(
        input.join("model.safetensors.index.json"),
        serde_json::to_string(&json!({"metadata": {}, "weight_map": weight_map})).unwrap(),
    )
    .unwrap();

    let sharded = Checkpoint::open(&input).unwrap();
    assert_eq!(sharded.format(), Format::HfPacked);
    assert_eq!(sharded.tensors().len(), 2);
    // Tiny shards force one file per tensor on output.
    let options = ConvertOptions {
        max_shard_bytes: 16,
        ..ConvertOptions::default()
    };
    let report = convert::convert(&input, &output, &options, &mut NoProgress).unwrap();
    assert_eq!(report.shards, 2);
    assert!(output.join("model.safetensors.index.json").is_file());
    assert!(output.join("model-00001-of-00002.safetensors").is_file());
    assert!(convert::verify(&input, &output).unwrap().ok());
}

#[test]
fn online_latent_weights_are_ternarized_like_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let latent: Vec<f32> = (0..24)
        .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.013)
        .collect();
    let mut config = config(json!({}));
    config.insert(
        "quantization_config".into(),
        json!({"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}),
    );
    let entries = vec![
        StEntry {
            name: "lm_head.weight".into(),
            dtype: StDtype::F32,
            shape: vec![8, 3],
        },
        StEntry {
            name: "model.embed_tokens.weight".into(),
            dtype: StDtype::F32,
            shape: vec![8, 3],
        },
        StEntry {
            name: "model.layers.0.mlp.up_proj.weight".into(),
            dtype: StDtype::Bf16,
            shape: vec![8, 3],
        },
    ];
    let mut writer = StreamingSafetensors::create(
        &dir.path().join("model.safetensors"),
        entries,
        &Default::default(),
    )
    .unwrap();
    let f32_bytes = bitnet_dequant::io::f32_bytes(&latent).to_vec();
    writer.write_tensor("lm_head.weight", &f32_bytes).unwrap();
    writer
        .write_tensor("model.embed_tokens.weight", &f32_bytes)
        .unwrap();
    writer
        .write_tensor(
            "model.layers.0.mlp.up_proj.weight",
            &bitnet_dequant::io::bf16_bytes(&latent),
        )
        .unwrap();
    writer.finish().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        Value::Object(config).to_string(),
    )
    .unwrap();

    let checkpoint = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(checkpoint.format(), Format::HfOnline);
    let encoding = |name: &str| checkpoint.tensor(name).unwrap().encoding.clone();
    assert_eq!(
        encoding("lm_head.weight"),
        Encoding::Float {
            dtype: FloatDtype::F32
        }
    );
    assert_eq!(
        encoding("model.embed_tokens.weight"),
        Encoding::Float {
            dtype: FloatDtype::F32
        }
    );
    assert_eq!(
        encoding("model.layers.0.mlp.up_proj.weight"),
        Encoding::Latent {
            dtype: FloatDtype::Bf16
        }
    );
    let bf16_latent: Vec<f32> = latent
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_f32())
        .collect();
    let weights = checkpoint
        .dequantize("model.layers.0.mlp.up_proj.weight")
        .unwrap();
    assert_eq!(weights, reference::absmean(&bf16_latent));
    let distinct: std::collections::BTreeSet<u32> =
        weights.iter().map(|v| v.abs().to_bits()).collect();
    assert_eq!(distinct.len(), 2, "values are 0 and +-gamma: {weights:?}");
    assert_eq!(checkpoint.dequantize("lm_head.weight").unwrap(), latent);
}

/// Writes model.safetensors (U8 weight `[rows, 3]` + scale) and config.json by hand.
fn write_raw(
    dir: &Path,
    packed: &[u8],
    rows: usize,
    scale: Option<f32>,
    config: Option<Map<String, Value>>,
) {
    let mut entries = vec![StEntry {
        name: "model.layers.0.mlp.up_proj.weight".into(),
        dtype: StDtype::U8,
        shape: vec![rows, 3],
    }];
    if scale.is_some() {
        entries.push(StEntry {
            name: "model.layers.0.mlp.up_proj.weight_scale".into(),
            dtype: StDtype::F32,
            shape: vec![1],
        });
    }
    let mut writer =
        StreamingSafetensors::create(&dir.join("model.safetensors"), entries, &Default::default())
            .unwrap();
    writer
        .write_tensor("model.layers.0.mlp.up_proj.weight", packed)
        .unwrap();
    if let Some(scale) = scale {
        writer
            .write_tensor(
                "model.layers.0.mlp.up_proj.weight_scale",
                &scale.to_le_bytes(),
            )
            .unwrap();
    }
    writer.finish().unwrap();
    if let Some(config) = config {
        std::fs::write(dir.join("config.json"), Value::Object(config).to_string()).unwrap();
    }
}

fn bitnet_config() -> Map<String, Value> {
    config(
        json!({"quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear"}}),
    )
}

fn open_error(dir: &Path) -> String {
    match Checkpoint::open(dir) {
        Ok(_) => panic!("{} opened", dir.display()),
        Err(error) => error.to_string(),
    }
}

#[test]
fn bad_inputs_are_named() {
    // Missing weight_scale.
    let dir = tempfile::tempdir().unwrap();
    write_raw(dir.path(), &HAND_PACKED, 2, None, Some(bitnet_config()));
    let message = open_error(dir.path());
    assert!(
        message.contains("model.safetensors") && message.contains("up_proj.weight"),
        "{message}"
    );
    assert!(
        message.contains("no `model.layers.0.mlp.up_proj.weight_scale`"),
        "{message}"
    );

    // Zero, NaN and infinite scales.
    for bad in [0.0f32, f32::NAN, f32::INFINITY] {
        let dir = tempfile::tempdir().unwrap();
        write_raw(
            dir.path(),
            &HAND_PACKED,
            2,
            Some(bad),
            Some(bitnet_config()),
        );
        let message = open_error(dir.path());
        assert!(
            message.contains("weight_scale") && message.contains("finite non-zero"),
            "{message}"
        );
    }

    // Packed rows x 4 that do not match the config (intermediate_size 8 -> 2 packed rows).
    let dir = tempfile::tempdir().unwrap();
    write_raw(dir.path(), &[0x55; 9], 3, Some(1.0), Some(bitnet_config()));
    let message = open_error(dir.path());
    assert!(
        message.contains("unpacks to [12, 3]") && message.contains("[8, 3]"),
        "{message}"
    );

    // U8 weights without a bitnet quantization_config.
    let dir = tempfile::tempdir().unwrap();
    write_raw(
        dir.path(),
        &HAND_PACKED,
        2,
        Some(1.0),
        Some(config(json!({}))),
    );
    assert!(open_error(dir.path()).contains("no quantization_config"));

    // Code 3 in a packed byte: found when dequantizing, named with file and tensor.
    let dir = tempfile::tempdir().unwrap();
    let mut packed = HAND_PACKED;
    packed[4] = 0xFF;
    write_raw(dir.path(), &packed, 2, Some(1.0), Some(bitnet_config()));
    let checkpoint = Checkpoint::open(dir.path()).unwrap();
    let message = checkpoint
        .dequantize("model.layers.0.mlp.up_proj.weight")
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("model.safetensors") && message.contains("up_proj.weight"),
        "{message}"
    );
    assert!(
        message.contains("byte 4 (0xff) holds the unused code 3"),
        "{message}"
    );
    // ... and conversion fails without leaving an output behind.
    let output = dir.path().join("converted");
    assert!(
        convert::convert(
            dir.path(),
            &output,
            &ConvertOptions::default(),
            &mut NoProgress
        )
        .is_err()
    );
    assert!(!output.exists());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "only the input files remain: {names:?}");

    // Truncated safetensors, and a header that lies about sizes.
    let dir = tempfile::tempdir().unwrap();
    write_raw(
        dir.path(),
        &HAND_PACKED,
        2,
        Some(1.0),
        Some(bitnet_config()),
    );
    let file = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 2]).unwrap();
    let message = open_error(dir.path());
    assert!(
        message.contains("model.safetensors") && message.contains("not a valid safetensors"),
        "{message}"
    );
    let lying = String::from_utf8_lossy(&bytes)
        .replace("[2,3]", "[4,3]")
        .into_bytes();
    std::fs::write(&file, lying).unwrap();
    assert!(open_error(dir.path()).contains("not a valid safetensors"));

    // A bad config.json.
    std::fs::write(&file, &bytes).unwrap();
    std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
    let message = open_error(dir.path());
    assert!(
        message.contains("config.json") && message.contains("invalid JSON"),
        "{message}"
    );
    let mut wrong_class = bitnet_config();
    wrong_class["quantization_config"]["linear_class"] = json!("ternarylinear");
    std::fs::write(
        dir.path().join("config.json"),
        Value::Object(wrong_class).to_string(),
    )
    .unwrap();
    assert!(open_error(dir.path()).contains("expected `bitlinear` or `autobitlinear`"));
}

#[test]
fn output_that_exists_or_cannot_be_written_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    write_hand_checkpoint(&input, LinearClass::AutoBitLinear, 0.5);
    let existing = dir.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    std::fs::write(existing.join("keep.txt"), "precious").unwrap();
    let message = convert::convert(
        &input,
        &existing,
        &ConvertOptions::default(),
        &mut NoProgress,
    )
    .unwrap_err()
    .to_string();
    assert!(message.contains("already exists"), "{message}");
    assert_eq!(
        std::fs::read_to_string(existing.join("keep.txt")).unwrap(),
        "precious"
    );

    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "x").unwrap();
    let message = convert::convert(
        &input,
        &blocker.join("out"),
        &ConvertOptions::default(),
        &mut NoProgress,
    )
    .unwrap_err()
    .to_string();
    assert!(
        message.contains("a-file/out") && message.contains("cannot create"),
        "{message}"
    );

    // --overwrite replaces it only once the new one is complete.
    let options = ConvertOptions {
        overwrite: true,
        ..ConvertOptions::default()
    };
    convert::convert(&input, &existing, &options, &mut NoProgress).unwrap();
    assert!(!existing.join("keep.txt").exists());
    assert!(convert::verify(&input, &existing).unwrap().ok());
}

#[test]
fn gguf_converts_to_safetensors_with_its_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ternary.gguf");
    let output = dir.path().join("out");
    let report =
        convert::convert(&input, &output, &ConvertOptions::default(), &mut NoProgress).unwrap();
    assert_eq!(report.tensors, 10);
    assert_eq!(report.ternary_tensors, 7);
    let metadata: Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("gguf_metadata.json")).unwrap())
            .unwrap();
    assert_eq!(metadata["general.architecture"], "llama");
    assert!(convert::verify(&input, &output).unwrap().ok());
}
