//! Our GGUF reader and codecs against llama.cpp's Python implementation (PyPI `gguf`
//! 0.19.0): fixtures written by `scripts/make_gguf_fixtures.py`.

use std::path::{Path, PathBuf};

use bitnet_dequant::gguf::{GgmlType, GgufFile, GgufWriter, Value};
use bitnet_dequant::{Checkpoint, Encoding, Error, codec};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn dequantization_equals_the_gguf_package_bit_for_bit() {
    let file = GgufFile::open(&fixture("ternary.gguf")).unwrap();
    let expected = GgufFile::open(&fixture("expected.gguf")).unwrap();
    assert_eq!(file.tensors().len(), 10);
    for info in file.tensors() {
        let mut ours = vec![0f32; info.numel()];
        file.dequantize_into(&info.name, &mut ours, false).unwrap();
        let mut theirs = vec![0f32; info.numel()];
        expected
            .dequantize_into(&format!("{}.expected", info.name), &mut theirs, false)
            .unwrap();
        let ours_bits: Vec<u32> = ours.iter().map(|v| v.to_bits()).collect();
        let theirs_bits: Vec<u32> = theirs.iter().map(|v| v.to_bits()).collect();
        assert_eq!(ours_bits, theirs_bits, "{}", info.name);
        // The parallel decoders give the same bits.
        let mut parallel = vec![0f32; info.numel()];
        file.dequantize_into(&info.name, &mut parallel, true)
            .unwrap();
        assert_eq!(
            parallel.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            ours_bits
        );
    }
}

#[test]
fn quantization_writes_the_same_bytes_as_the_gguf_package() {
    let file = GgufFile::open(&fixture("ternary.gguf")).unwrap();
    let expected = GgufFile::open(&fixture("expected.gguf")).unwrap();
    for info in file.tensors() {
        let mut input = vec![0f32; info.numel()];
        expected
            .dequantize_into(&format!("{}.input", info.name), &mut input, false)
            .unwrap();
        let ggml_type = file.ggml_type(&info.name).unwrap();
        let ours = GgufWriter::new()
            .quantized_tensor("t", &info.shape, ggml_type, &input)
            .unwrap()
            .to_bytes();
        let ours =
            GgufFile::from_bytes("ours".into(), bitnet_dequant::io::Bytes::Owned(ours)).unwrap();
        assert_eq!(
            ours.raw_bytes("t").unwrap(),
            file.raw_bytes(&info.name).unwrap(),
            "{}",
            info.name
        );
    }
}

#[test]
fn metadata_of_every_type_is_read() {
    let file = GgufFile::open(&fixture("ternary.gguf")).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(
        file.get("general.architecture"),
        Some(&Value::String("llama".into()))
    );
    assert_eq!(file.get("test.u32"), Some(&Value::U32(7)));
    assert_eq!(file.get("test.i32"), Some(&Value::I32(-7)));
    assert_eq!(file.get("test.f32"), Some(&Value::F32(0.25)));
    assert_eq!(file.get("test.bool"), Some(&Value::Bool(true)));
    assert_eq!(file.get("test.u64"), Some(&Value::U64(1 << 40)));
    assert_eq!(file.get("test.i8"), Some(&Value::I8(-3)));
    assert_eq!(file.get("test.f64"), Some(&Value::F64(1.0 / 3.0)));
    assert_eq!(
        file.get("test.strings"),
        Some(&Value::Array(vec![
            Value::String("a".into()),
            Value::String("bb".into()),
            Value::String("ccc".into())
        ]))
    );
    let ternary = file.ternary("blk.0.ffn_up.weight").unwrap().unwrap();
    assert!(ternary.codes.iter().all(|q| (-1..=1).contains(q)));
    assert_eq!(ternary.dequantize(), {
        let mut v = vec![0f32; 2048];
        file.dequantize_into("blk.0.ffn_up.weight", &mut v, false)
            .unwrap();
        v
    });
    assert!(file.ternary("token_embd.weight").unwrap().is_none());
}

fn i2s_file(architecture: &str) -> Vec<u8> {
    let values: Vec<f32> = (0..2 * 256).map(|i| [0.75, 0.0, -0.75][i % 3]).collect();
    GgufWriter::new()
        .metadata("general.architecture", Value::String(architecture.into()))
        .quantized_tensor("blk.0.attn_q.weight", &[2, 256], GgmlType::I2s, &values)
        .unwrap()
        .quantized_tensor(
            "token_embd.weight",
            &[2, 3],
            GgmlType::F16,
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        )
        .unwrap()
        .to_bytes()
}

#[test]
fn i2s_is_read_in_bitnet_cpp_files_only() {
    let bytes = i2s_file("bitnet-b1.58");
    let file = GgufFile::from_bytes(
        "bitnet.gguf".into(),
        bitnet_dequant::io::Bytes::Owned(bytes),
    )
    .unwrap();
    assert_eq!(file.tensors()[0].encoding, Encoding::I2s);
    let mut out = vec![0f32; 512];
    file.dequantize_into("blk.0.attn_q.weight", &mut out, false)
        .unwrap();
    let expected: Vec<f32> = (0..512).map(|i| [0.75, 0.0, -0.75][i % 3]).collect();
    assert_eq!(out, expected);

    let error = GgufFile::from_bytes(
        "llama.gguf".into(),
        bitnet_dequant::io::Bytes::Owned(i2s_file("llama")),
    )
    .err()
    .unwrap();
    let message = error.to_string();
    assert!(message.contains("llama.gguf"), "{message}");
    assert!(message.contains("blk.0.attn_q.weight"), "{message}");
    assert!(message.contains("type 36"), "{message}");
}

fn open_bytes(bytes: Vec<u8>) -> Result<GgufFile, Error> {
    GgufFile::from_bytes("bad.gguf".into(), bitnet_dequant::io::Bytes::Owned(bytes))
}

#[test]
fn damaged_files_name_file_and_tensor() {
    let good = std::fs::read(fixture("ternary.gguf")).unwrap();

    // Truncated anywhere before the end of the last tensor: a clear error, not a panic.
    let file = GgufFile::open(&fixture("ternary.gguf")).unwrap();
    let data_end = file
        .tensors()
        .iter()
        .map(|t| file.stored_range(&t.name).unwrap().end)
        .max()
        .unwrap();
    for cut in [0, 3, 10, 30, 200, data_end / 2, data_end - 1] {
        let error = open_bytes(good[..cut].to_vec())
            .err()
            .expect("truncated file rejected");
        assert!(error.to_string().starts_with("bad.gguf"), "{error}");
    }

    // An unknown ggml type: find the first tensor's type field and set it to IQ2_XXS (16).
    let name = &file.tensors()[0].name;
    let at = good
        .windows(name.len())
        .position(|w| w == name.as_bytes())
        .unwrap()
        + name.len();
    let type_at = at + 4 + 8 * file.tensors()[0].shape.len();
    let mut wrong_type = good.clone();
    wrong_type[type_at..type_at + 4].copy_from_slice(&16u32.to_le_bytes());
    let message = open_bytes(wrong_type).err().unwrap().to_string();
    assert!(
        message.contains(name.as_str()) && message.contains("ggml type 16"),
        "{message}"
    );

    // A header that lies: ne0 not a multiple of 256 for a TQ tensor.
    let mut bad_rows = good.clone();
    bad_rows[at + 4..at + 12].copy_from_slice(&100u64.to_le_bytes());
    let message = open_bytes(bad_rows).err().unwrap().to_string();
    assert!(message.contains("not a multiple of 256"), "{message}");

    // A header that lies about sizes: a huge dimension puts the data past the end.
    let mut huge = good.clone();
    huge[at + 12..at + 20].copy_from_slice(&(1u64 << 30).to_le_bytes());
    let message = open_bytes(huge).err().unwrap().to_string();
    assert!(message.contains("beyond the end of the file"), "{message}");

    // A NaN block scale fails at dequantization, naming the tensor.
    let mut nan = good.clone();
    let offset = file.stored_range(name).unwrap().start;
    nan[offset + 64..offset + 66].copy_from_slice(&half::f16::NAN.to_le_bytes());
    let nan_file = open_bytes(nan).unwrap();
    let mut out = vec![0f32; nan_file.tensors()[0].numel()];
    let message = nan_file
        .dequantize_into(name, &mut out, false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        message.contains(name.as_str()) && message.contains("NaN"),
        "{message}"
    );
}

#[test]
fn checkpoint_open_recognises_gguf_by_magic() {
    let checkpoint = Checkpoint::open(&fixture("ternary.gguf")).unwrap();
    assert_eq!(checkpoint.format(), bitnet_dequant::Format::Gguf);
    assert_eq!(checkpoint.parameter_count(), 6481);
    let values = checkpoint.dequantize("blk.3.zeros.weight").unwrap();
    assert!(values.iter().all(|&v| v == 0.0));
    // Tensor ties: quantized with half away from zero by ggml.
    let ties = checkpoint.ternary("blk.2.ties.weight").unwrap().unwrap();
    assert_eq!(&ties.codes[..4], &[1, -1, 1, 0]);
    assert!(matches!(
        codec::tq2_0_dequantize(&[0; 66], &mut [0f32; 255]),
        Err(codec::CodecError::NotMultiple { .. })
    ));
}

#[test]
fn common_block_types_equal_the_gguf_package_bit_for_bit() {
    let file = GgufFile::open(&fixture("quants.gguf")).unwrap();
    let expected = GgufFile::open(&fixture("quants_expected.gguf")).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for info in file.tensors() {
        let Some(GgmlType::Quant(kind)) = file.ggml_type(&info.name) else {
            panic!("{} is not a block type", info.name);
        };
        seen.insert(kind.name());
        assert_eq!(info.encoding, Encoding::Quant { format: kind });
        assert!(!info.encoding.is_ternary());
        let theirs = read(&expected, &format!("{}.expected", info.name));
        let mut ours = vec![0f32; info.numel()];
        file.dequantize_into(&info.name, &mut ours, false).unwrap();
        assert_eq!(bits(&ours), bits(&theirs), "{}", info.name);
        let mut parallel = vec![0f32; info.numel()];
        file.dequantize_into(&info.name, &mut parallel, true)
            .unwrap();
        assert_eq!(bits(&parallel), bits(&theirs), "{} (parallel)", info.name);
        let bytes = file.raw_bytes(&info.name).unwrap();
        let reference: Vec<f32> = (0..info.numel())
            .map(|e| bitnet_dequant::reference::quant(kind, bytes, e))
            .collect();
        assert_eq!(bits(&reference), bits(&theirs), "{} (reference)", info.name);
        assert!(file.ternary(&info.name).unwrap().is_none());
    }
    assert_eq!(seen.len(), 10, "every type is covered: {seen:?}");
}

#[test]
fn q8_0_quantization_writes_the_same_bytes_as_the_gguf_package() {
    let file = GgufFile::open(&fixture("quants.gguf")).unwrap();
    let expected = GgufFile::open(&fixture("quants_expected.gguf")).unwrap();
    let input = read(&expected, "blk.0.q8_0.weight.input");
    let ours = bitnet_dequant::quants::q8_0_quantize(&input).unwrap();
    assert_eq!(ours, file.raw_bytes("blk.0.q8_0.weight").unwrap());
    // The writer refuses types it cannot quantize, naming the tensor.
    let error = GgufWriter::new()
        .quantized_tensor(
            "w",
            &[1, 256],
            GgmlType::Quant(bitnet_dequant::quants::QuantType::Q4_K),
            &[0.0; 256],
        )
        .err()
        .unwrap();
    assert!(error.to_string().contains("`w`") && error.to_string().contains("Q4_K"));
}

fn read(file: &GgufFile, name: &str) -> Vec<f32> {
    let info = file.tensors().iter().find(|t| t.name == name).unwrap();
    let mut values = vec![0f32; info.numel()];
    file.dequantize_into(name, &mut values, false).unwrap();
    values
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

fn one_tensor_header(dims: &[u64], type_id: u32) -> Vec<u8> {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes()); // one tensor
    bytes.extend_from_slice(&0u64.to_le_bytes()); // no metadata
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.push(b't');
    bytes.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for dim in dims {
        bytes.extend_from_slice(&dim.to_le_bytes());
    }
    bytes.extend_from_slice(&type_id.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes
}

#[test]
fn a_q8_0_header_whose_byte_size_overflows_is_refused() {
    // Found by `cargo fuzz run gguf`: almost 2^64 elements fit in a usize, their Q8_0
    // bytes (34 per 32 elements) do not.
    let bytes = one_tensor_header(&[1 << 32, (1 << 32) - 1], 8);
    let message = GgufFile::from_bytes("q8.gguf".into(), bitnet_dequant::io::Bytes::Owned(bytes))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        message.contains("q8.gguf") && message.contains("overflows"),
        "{message}"
    );
}

#[test]
fn a_zero_dimension_cannot_hide_an_overflowing_shape() {
    // Found by `cargo fuzz run gguf`: dims [0, 2^40, 2^40] multiply to 0 left to right but
    // overflow in the row-major order `numel` uses.
    let bytes = one_tensor_header(&[0, 1 << 40, 1 << 40], 0);
    let message = GgufFile::from_bytes("big.gguf".into(), bitnet_dequant::io::Bytes::Owned(bytes))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        message.contains("big.gguf") && message.contains("overflows"),
        "{message}"
    );
}
