//! Differential fuzzing of the block decoders (ternary and llama.cpp's Q4_0 ... Q6_K): on
//! any bytes, each fast decoder (AVX2 or portable, serial or parallel) either rejects the
//! input or agrees bit for bit with the element-by-element reference decoder.
#![no_main]

use bitnet_dequant::quants::{self, QuantType};
use bitnet_dequant::{codec, reference};
use libfuzzer_sys::fuzz_target;

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

fn check(fast: &[f32], reference: impl Fn(usize) -> (u8, f32)) {
    for (e, &value) in fast.iter().enumerate() {
        let (code, scale) = reference(e);
        assert_ne!(code, 3, "a decoder accepted code 3 at element {e}");
        let expected = (i32::from(code) - 1) as f32 * scale;
        assert_eq!(value.to_bits(), expected.to_bits(), "element {e}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    match selector % 5 {
        4 => {
            let kind = QuantType::ALL[usize::from(selector / 5) % QuantType::ALL.len()];
            let blocks = bytes.len() / kind.block_bytes();
            let bytes = &bytes[..blocks * kind.block_bytes()];
            let mut out = vec![0f32; blocks * kind.block_elements()];
            let serial = quants::dequantize(kind, bytes, &mut out);
            let mut parallel = vec![0f32; out.len()];
            assert_eq!(
                serial.is_ok(),
                quants::dequantize_par(kind, bytes, &mut parallel).is_ok()
            );
            if serial.is_ok() {
                for (e, value) in out.iter().enumerate() {
                    let expected = reference::quant(kind, bytes, e);
                    assert_eq!(value.to_bits(), expected.to_bits(), "{} element {e}", kind.name());
                }
                assert_eq!(bits(&parallel), bits(&out));
            }
        }
        0 => {
            let n = bytes.len() / 54 * 256;
            let bytes = &bytes[..n / 256 * 54];
            let mut out = vec![0f32; n];
            if codec::tq1_0_dequantize(bytes, &mut out).is_ok() {
                check(&out, |e| reference::tq1_0(bytes, e));
                let mut parallel = vec![0f32; n];
                codec::tq1_0_dequantize_par(bytes, &mut parallel).unwrap();
                assert_eq!(bits(&parallel), bits(&out));
            }
        }
        1 => {
            let n = bytes.len() / 66 * 256;
            let bytes = &bytes[..n / 256 * 66];
            let mut out = vec![0f32; n];
            if codec::tq2_0_dequantize(bytes, &mut out).is_ok() {
                check(&out, |e| reference::tq2_0(bytes, e));
            }
        }
        2 => {
            let n = bytes.len().saturating_sub(32) / 32 * 128;
            let bytes = &bytes[..(n / 4 + 32).min(bytes.len())];
            let mut out = vec![0f32; n];
            if codec::i2s_dequantize(bytes, &mut out).is_ok() {
                check(&out, |e| reference::i2s(bytes, n, e));
            }
        }
        _ => {
            let Some((&cols, packed)) = bytes.split_first() else {
                return;
            };
            let cols = usize::from(cols).max(1);
            let packed = &packed[..packed.len() / cols * cols];
            let mut out = vec![0f32; packed.len() * 4];
            if codec::hf_dequantize(packed, cols, 0.75, &mut out).is_ok() {
                check(&out, |e| reference::hf_packed(packed, cols, 0.75, e));
                let mut parallel = vec![0f32; out.len()];
                codec::hf_dequantize_par(packed, cols, 0.75, &mut parallel).unwrap();
                assert_eq!(bits(&parallel), bits(&out));
            }
        }
    }
});
