//! Property tests: every format round-trips, and the block decoders agree with the
//! element-by-element reference decoders on arbitrary valid bytes.

use bitnet_dequant::gguf::{GgmlType, GgufFile, GgufWriter, Value};
use bitnet_dequant::io::Bytes;
use bitnet_dequant::quants::{self, QuantType};
use bitnet_dequant::{codec, reference};
use proptest::prelude::*;

fn codes(len: usize) -> impl Strategy<Value = Vec<i8>> {
    proptest::collection::vec(-1i8..=1, len)
}

/// A positive finite f16 scale, as f32 (exact in f16, so TQ round trips are exact).
fn f16_scale() -> impl Strategy<Value = f32> {
    (0x0400u16..0x7BFF).prop_map(|bits| half::f16::from_bits(bits).to_f32())
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// Finite f16 bit patterns of any sign and magnitude, subnormals and zeros included.
fn finite_f16_bits() -> impl Strategy<Value = [u8; 2]> {
    any::<u16>().prop_map(|bits| {
        let bits = if half::f16::from_bits(bits).is_finite() {
            bits
        } else {
            bits & 0x83FF
        };
        bits.to_le_bytes()
    })
}

/// Offsets of the f16 scale fields in one block of each llama.cpp type.
fn scale_offsets(kind: QuantType) -> &'static [usize] {
    match kind {
        QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => &[0],
        QuantType::Q4_1 | QuantType::Q5_1 | QuantType::Q4_K | QuantType::Q5_K => &[0, 2],
        QuantType::Q2_K => &[80, 82],
        QuantType::Q3_K => &[108],
        QuantType::Q6_K => &[208],
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn quant_decoders_match_the_reference_on_any_bytes(
        kind in proptest::sample::select(QuantType::ALL.to_vec()),
        blocks in 1usize..5,
        seed in any::<u64>(),
        scales in proptest::collection::vec(finite_f16_bits(), 8),
    ) {
        let size = kind.block_bytes();
        let mut bytes: Vec<u8> = (0..blocks * size)
            .map(|i| (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D) >> 29) as u8)
            .collect();
        for (b, block) in bytes.chunks_exact_mut(size).enumerate() {
            for (k, &at) in scale_offsets(kind).iter().enumerate() {
                block[at..at + 2].copy_from_slice(&scales[(2 * b + k) % scales.len()]);
            }
        }
        let n = blocks * kind.block_elements();
        let mut fast = vec![0f32; n];
        quants::dequantize(kind, &bytes, &mut fast).unwrap();
        let slow: Vec<f32> = (0..n).map(|e| reference::quant(kind, &bytes, e)).collect();
        prop_assert_eq!(bits(&fast), bits(&slow), "{}", kind.name());
        let mut parallel = vec![0f32; n];
        quants::dequantize_par(kind, &bytes, &mut parallel).unwrap();
        prop_assert_eq!(bits(&parallel), bits(&fast));
    }

    #[test]
    fn q8_0_round_trips_its_own_codes(codes in proptest::collection::vec(-127i8..=127, 32..=32), d in finite_f16_bits()) {
        // Codes times an f16 scale whose block maximum is 127 come back exactly.
        let d = half::f16::from_le_bytes(d).to_f32().abs();
        prop_assume!(d.is_normal() && d > 1e-3 && d < 100.0);
        let mut codes = codes;
        codes[0] = 127;
        let x: Vec<f32> = codes.iter().map(|&q| f32::from(q) * d).collect();
        let bytes = quants::q8_0_quantize(&x).unwrap();
        prop_assert_eq!(bytes.len(), 34);
        let stored: Vec<i8> = bytes[2..].iter().map(|&b| b as i8).collect();
        prop_assert_eq!(&stored, &codes);
    }

    #[test]
    fn hf_packing_round_trips(rows4 in 1usize..16, cols in 1usize..40, seed in any::<u64>(), scale in 1e-4f32..10.0) {
        let rows = 4 * rows4;
        let codes: Vec<i8> = (0..rows * cols).map(|i| ((seed.wrapping_mul(i as u64 + 1) >> 7) % 3) as i8 - 1).collect();
        let packed = codec::hf_pack(&codes, rows, cols).unwrap();
        prop_assert_eq!(packed.len(), rows / 4 * cols);
        let mut back = vec![0i8; codes.len()];
        codec::hf_codes(&packed, &mut back).unwrap();
        prop_assert_eq!(&back, &codes);
        let mut fast = vec![0f32; codes.len()];
        codec::hf_dequantize(&packed, cols, scale, &mut fast).unwrap();
        let slow: Vec<f32> = (0..codes.len())
            .map(|e| { let (q, s) = reference::hf_packed(&packed, cols, scale, e); (i32::from(q) - 1) as f32 * s })
            .collect();
        prop_assert_eq!(bits(&fast), bits(&slow));
        let mut parallel = vec![0f32; codes.len()];
        codec::hf_dequantize_par(&packed, cols, scale, &mut parallel).unwrap();
        prop_assert_eq!(bits(&parallel), bits(&fast));
    }

    #[test]
    fn tq2_0_round_trips(blocks in proptest::collection::vec((codes(256), f16_scale()), 1..6)) {
        let x: Vec<f32> = blocks.iter().flat_map(|(c, d)| c.iter().map(move |&q| f32::from(q) * d)).collect();
        let bytes = codec::tq2_0_quantize(&x).unwrap();
        let mut back = vec![0f32; x.len()];
        codec::tq2_0_dequantize(&bytes, &mut back).unwrap();
        prop_assert_eq!(bits(&back), bits(&x));
    }

    #[test]
    fn tq1_0_round_trips(blocks in proptest::collection::vec((codes(256), f16_scale()), 1..6)) {
        let x: Vec<f32> = blocks.iter().flat_map(|(c, d)| c.iter().map(move |&q| f32::from(q) * d)).collect();
        let bytes = codec::tq1_0_quantize(&x).unwrap();
        let mut back = vec![0f32; x.len()];
        codec::tq1_0_dequantize(&bytes, &mut back).unwrap();
        prop_assert_eq!(bits(&back), bits(&x));
    }

    #[test]
    fn i2s_round_trips(blocks in 1usize..8, seed in any::<u64>(), scale in 1e-4f32..100.0) {
        let n = 128 * blocks;
        let mut codes: Vec<i8> = (0..n).map(|i| ((seed.wrapping_mul(2 * i as u64 + 1) >> 11) % 3) as i8 - 1).collect();
        codes[0] = 1; // the scale is max|x|, so one element must reach it
        let x: Vec<f32> = codes.iter().map(|&q| f32::from(q) * scale).collect();
        let bytes = codec::i2s_quantize(&x).unwrap();
        prop_assert_eq!(bytes.len(), n / 4 + 32);
        let mut back = vec![0f32; n];
        codec::i2s_dequantize(&bytes, &mut back).unwrap();
        prop_assert_eq!(bits(&back), bits(&x));
    }

    #[test]
    fn tq1_0_decoder_matches_the_reference_on_any_bytes(raw in proptest::collection::vec(any::<u8>(), 54 * 3), scales in proptest::collection::vec(f16_scale(), 3)) {
        let mut bytes = raw;
        for (block, d) in bytes.chunks_exact_mut(54).zip(&scales) {
            block[52..].copy_from_slice(&half::f16::from_f32(*d).to_le_bytes());
        }
        let mut fast = vec![0f32; 768];
        codec::tq1_0_dequantize(&bytes, &mut fast).unwrap();
        let slow: Vec<f32> = (0..768).map(|e| { let (q, s) = reference::tq1_0(&bytes, e); (i32::from(q) - 1) as f32 * s }).collect();
        prop_assert_eq!(bits(&fast), bits(&slow));
        let mut parallel = vec![0f32; 768];
        codec::tq1_0_dequantize_par(&bytes, &mut parallel).unwrap();
        prop_assert_eq!(bits(&parallel), bits(&fast));
    }

    #[test]
    fn tq2_0_and_i2s_decoders_match_the_reference(raw in proptest::collection::vec(any::<u8>(), 66 * 4), d in f16_scale()) {
        // Clear the high bit of every field whose two bits are both set: code 3 -> 1.
        let valid = |b: u8| b & !((b & (b >> 1) & 0x55) << 1);
        let mut tq2: Vec<u8> = raw.iter().map(|&b| valid(b)).collect();
        for block in tq2.chunks_exact_mut(66) {
            block[64..].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
        }
        let mut fast = vec![0f32; 1024];
        codec::tq2_0_dequantize(&tq2, &mut fast).unwrap();
        let slow: Vec<f32> = (0..1024).map(|e| { let (q, s) = reference::tq2_0(&tq2, e); (i32::from(q) - 1) as f32 * s }).collect();
        prop_assert_eq!(bits(&fast), bits(&slow));

        let n = 512;
        let mut i2s: Vec<u8> = raw[..n / 4].iter().map(|&b| valid(b)).collect();
        i2s.extend_from_slice(&d.to_le_bytes());
        i2s.resize(n / 4 + 32, 0);
        let mut fast = vec![0f32; n];
        codec::i2s_dequantize(&i2s, &mut fast).unwrap();
        let slow: Vec<f32> = (0..n).map(|e| { let (q, s) = reference::i2s(&i2s, n, e); (i32::from(q) - 1) as f32 * s }).collect();
        prop_assert_eq!(bits(&fast), bits(&slow));
        let mut parallel = vec![0f32; n];
        codec::i2s_dequantize_par(&i2s, &mut parallel).unwrap();
        prop_assert_eq!(bits(&parallel), bits(&fast));
    }

    #[test]
    fn absmean_matches_the_reference(latent in proptest::collection::vec(-3.0f32..3.0, 1..700)) {
        let mut fast = latent.clone();
        codec::absmean_dequantize(&mut fast);
        prop_assert_eq!(bits(&fast), bits(&reference::absmean(&latent)));
        // The codes agree with the values up to the sign of zero.
        let (codes, s) = codec::absmean_ternarize(&latent);
        let from_codes: Vec<f32> = codes.iter().map(|&q| f32::from(q) / s).collect();
        prop_assert_eq!(from_codes, fast);
    }

    #[test]
    fn gguf_files_round_trip(values in proptest::collection::vec(-100f32..100.0, 1..40), key in "[a-z.]{1,20}", number in any::<u64>(), text in ".{0,30}") {
        let bytes = GgufWriter::new()
            .metadata(&key, Value::U64(number))
            .metadata("general.name", Value::String(text.clone()))
            .metadata("list", Value::Array(vec![Value::I32(-1), Value::I32(2)]))
            .quantized_tensor("a", &[values.len()], GgmlType::F32, &values).unwrap()
            .quantized_tensor("b", &[1, values.len()], GgmlType::Bf16, &values).unwrap()
            .to_bytes();
        let file = GgufFile::from_bytes("roundtrip.gguf".into(), Bytes::Owned(bytes)).unwrap();
        prop_assert_eq!(file.get("general.name"), Some(&Value::String(text)));
        prop_assert_eq!(file.tensors()[1].shape.clone(), vec![1, values.len()]);
        let mut back = vec![0f32; values.len()];
        file.dequantize_into("a", &mut back, false).unwrap();
        prop_assert_eq!(bits(&back), bits(&values));
        file.dequantize_into("b", &mut back, false).unwrap();
        let rounded: Vec<f32> = values.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
        prop_assert_eq!(bits(&back), bits(&rounded));
    }
}
