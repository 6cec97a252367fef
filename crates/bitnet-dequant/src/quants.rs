//! llama.cpp's common quantization types, dequantized to f32 exactly as the `gguf`
//! Python package (gguf-py) does: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (blocks of 32) and the
//! K-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (super-blocks of 256).
//!
//! Every value is computed in f32 with one rounding per operation, in gguf-py's order
//! (`(d * sc) * q - (dmin * m)` for the K-quants, `(d * q) + m` for Q4_1/Q5_1) and never
//! fused into a multiply-add, so results equal gguf-py's bit for bit. Block layouts:
//! `../shared/research/gguf-llama.md` §1 and [`crate::reference`], which decodes one
//! element at a time from the same definitions and is what the tests and fuzz targets
//! compare these decoders with.
//!
//! The decoders are plain loops over a block; [`crate::simd::dispatch`] compiles them
//! once with AVX2 enabled and once portable and picks at run time, so the compiler's
//! vectorization of the AVX2 copy is what makes them fast. A block whose f16 scale is
//! infinite or NaN is refused: no checkpoint in use has one, and a NaN weight is worse
//! than a clear error naming the tensor.

use half::f16;
use serde::Serialize;

use crate::codec::{BlockFormat, CodecError, CodecResult, by_blocks};
use crate::simd;

/// A llama.cpp quantization type (its block layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[allow(non_camel_case_types)]
pub enum QuantType {
    /// ggml type 2: f16 `d`, 32 4-bit codes; `d * (q - 8)`.
    Q4_0,
    /// ggml type 3: f16 `d` and `m`, 32 4-bit codes; `d * q + m`.
    Q4_1,
    /// ggml type 6: f16 `d`, 32 5-bit codes; `d * (q - 16)`.
    Q5_0,
    /// ggml type 7: f16 `d` and `m`, 32 5-bit codes; `d * q + m`.
    Q5_1,
    /// ggml type 8: f16 `d`, 32 signed bytes; `q * d`.
    Q8_0,
    /// ggml type 10: 2-bit codes, 16 sub-blocks with 4-bit scales and mins.
    Q2_K,
    /// ggml type 11: 3-bit codes, 16 sub-blocks with signed 6-bit scales.
    Q3_K,
    /// ggml type 12: 4-bit codes, 8 sub-blocks with 6-bit scales and mins.
    Q4_K,
    /// ggml type 13: 5-bit codes, 8 sub-blocks with 6-bit scales and mins.
    Q5_K,
    /// ggml type 14: 6-bit codes, 16 sub-blocks with signed 8-bit scales.
    Q6_K,
}

impl QuantType {
    /// Every type, in ggml id order.
    pub const ALL: [Self; 10] = [
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q2_K,
        Self::Q3_K,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
    ];

    /// The ggml type id written in GGUF tensor infos.
    pub fn id(self) -> u32 {
        match self {
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q2_K => 10,
            Self::Q3_K => 11,
            Self::Q4_K => 12,
            Self::Q5_K => 13,
            Self::Q6_K => 14,
        }
    }

    /// The type of a ggml id, if it is one of these.
    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.id() == id)
    }

    /// Its name as llama.cpp writes it (`Q4_K`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q2_K => "Q2_K",
            Self::Q3_K => "Q3_K",
            Self::Q4_K => "Q4_K",
            Self::Q5_K => "Q5_K",
            Self::Q6_K => "Q6_K",
        }
    }

    /// Elements per block (32, or 256 for the K-quants).
    pub fn block_elements(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => 32,
            _ => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q2_K => 84,
            Self::Q3_K => 110,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
        }
    }
}

/// Dequantizes whole blocks of `kind`: `data.len()` is `block_bytes` times the number of
/// blocks, `out.len()` `block_elements` times it.
pub fn dequantize(kind: QuantType, data: &[u8], out: &mut [f32]) -> CodecResult<()> {
    dequantize_with(kind, data, out, false)
}

/// [`dequantize`] on all of rayon's threads (same bits).
pub fn dequantize_par(kind: QuantType, data: &[u8], out: &mut [f32]) -> CodecResult<()> {
    dequantize_with(kind, data, out, true)
}

fn dequantize_with(
    kind: QuantType,
    data: &[u8],
    out: &mut [f32],
    parallel: bool,
) -> CodecResult<()> {
    match kind {
        QuantType::Q4_0 => by_blocks(data, out, parallel, &Q4_0),
        QuantType::Q4_1 => by_blocks(data, out, parallel, &Q4_1),
        QuantType::Q5_0 => by_blocks(data, out, parallel, &Q5_0),
        QuantType::Q5_1 => by_blocks(data, out, parallel, &Q5_1),
        QuantType::Q8_0 => by_blocks(data, out, parallel, &Q8_0),
        QuantType::Q2_K => by_blocks(data, out, parallel, &Q2K),
        QuantType::Q3_K => by_blocks(data, out, parallel, &Q3K),
        QuantType::Q4_K => by_blocks(data, out, parallel, &Q4K),
        QuantType::Q5_K => by_blocks(data, out, parallel, &Q5K),
        QuantType::Q6_K => by_blocks(data, out, parallel, &Q6K),
    }
}

/// Quantizes to Q8_0 as gguf-py's `quantize_blocks` does: per block `d = max|x| / 127`
/// (stored f16), codes `round(x * (1 / d))` half away from zero (0 for an all-zero
/// block). `x.len()` must be a multiple of 32.
pub fn q8_0_quantize(x: &[f32]) -> CodecResult<Vec<u8>> {
    if !x.len().is_multiple_of(32) {
        return Err(CodecError::NotMultiple {
            what: "the element count",
            got: x.len(),
            multiple_of: 32,
        });
    }
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for block in x.chunks_exact(32) {
        let d = block.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|&v| (v * id).round() as i8 as u8));
    }
    Ok(out)
}

/// The f16 at `at`, widened; refused when infinite or NaN.
#[inline(always)]
fn half_at(block: &[u8], at: usize, what: &'static str) -> CodecResult<f32> {
    let value = f16::from_le_bytes([block[at], block[at + 1]]).to_f32();
    if value.is_finite() {
        Ok(value)
    } else {
        Err(CodecError::BadScale {
            what,
            value,
            nonzero: false,
        })
    }
}

/// Legacy 32-element blocks: element `j` is the low nibble of `qs[j]`, element `j + 16`
/// the high nibble.
#[inline(always)]
fn nibbles(qs: &[u8], y: &mut [f32], value: impl Fn(usize, u8) -> f32) {
    let (low, high) = y.split_at_mut(16);
    for (j, ((l, h), &q)) in low.iter_mut().zip(high.iter_mut()).zip(qs).enumerate() {
        *l = value(j, q & 0x0F);
        *h = value(j + 16, q >> 4);
    }
}

struct Q4_0;

impl BlockFormat for Q4_0 {
    const BYTES: usize = 18;
    const ELEMENTS: usize = 32;

    #[inline(always)]
    fn decode<E: simd::Expand>(&self, _: E, b: &[u8], y: &mut [f32], _: bool) -> CodecResult<()> {
        let d = half_at(b, 0, "a Q4_0 block scale")?;
        nibbles(&b[2..18], y, |_, q| d * (i32::from(q) - 8) as f32);
        Ok(())
    }
}

struct Q4_1;

impl BlockFormat for Q4_1 {
    const BYTES: usize = 20;
    const ELEMENTS: usize = 32;

    #[inline(always)]
    fn decode<E: simd::Expand>(&self, _: E, b: &[u8], y: &mut [f32], _: bool) -> CodecResult<()> {
        let d = half_at(b, 0, "a Q4_1 block scale")?;
        let m = half_at(b, 2, "a Q4_1 block minimum")?;
        nibbles(&b[4..20], y, |_, q| d * f32::from(q) + m);
        Ok(())
    }
}

struct Q5_0;

impl BlockFormat for Q5_0 {
    const BYTES: usize = 22;
    const ELEMENTS: usize = 32;

    #[inline(always)]
    fn decode<E: simd::Expand>(&self, _: E, b: &[u8], y: &mut [f32], _: bool) -> CodecResult<()> {
        let d = half_at(b, 0, "a Q5_0 block scale")?;
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        nibbles(&b[6..22], y, |e, q| {
            let q = q | (((qh >> e) & 1) as u8) << 4;
            d * (i32::from(q) - 16) as f32
        });
        Ok(())
    }
}

struct Q5_1;

impl BlockFormat for Q5_1 {
    const BYTES: usize = 24;
    const ELEMENTS: usize = 32;

    #[inline(always)]
    fn decode<E: simd::Expand>(&self, _: E, b: &[u8], y: &mut [f32], _: bool) -> CodecResult<()> {
        let d = half_at(b, 0, "a Q5_1 block scale")?;
        let m = half_at(b, 2, "a Q5_1 block minimum")?;
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        nibbles(&b[8..24], y, |e, q| {
            let q = q | (((qh >> e) & 1) as u8) << 4;
            d * f32::from(q) + m
        });
        Ok(())
    }
}

struct Q8_0;

impl BlockFormat for Q8_0 {
    const BYTES: usize = 34;
    const ELEMENTS: usize = 32;

    #[inline(always)]
    fn decode<E: simd::Expand>(&self, _: E, b: &[u8], y: &mut [f32], _: bool) -> CodecResult<()> {
        let d = half_at(b, 0, "a Q8_0 block scale")?;
        for (out, &q) in y.iter_mut().zip(&b[2..34]) {
            *out = f32::from(q as i8) * d;
        }
        Ok(())
    }
}

/// Q4_K/Q5_K's eight 6-bit scales and mins packed in 12 bytes.
#[inline(always)]
fn scale_min_k4(scales: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = scales[j] & 63;
        mn[j] = scales[j + 4] & 63;
        sc[j + 4] = (scales[j + 8] & 0x0F) | ((scales[j] >> 6) << 4);
        mn[j + 4] = (scales[j + 8] >> 4) | ((scales[j + 4] >> 6) << 4);
    }
    (sc, mn)
}

struct Q2K;

impl BlockFormat for Q2K {
    const BYTES: usize = 84;
    const ELEMENTS: usize = 256;

    #[inline(always)]
    fn decode<E: simd::Expand>(&self, _: E, b: &[u8], y: &mut [f32], _: bool) -> CodecResult<()> {
        let d = half_at(b, 80, "a Q2_K super-block scale")?;
        let dmin = half_at(b, 82, "a Q2_K super-block minimum scale")?;
        let (scales, qs) = (&b[..16], &b[16..80]);
        // e = 128h + 32s + l: code (qs[32h + l] >> 2s) & 3, sub-block e / 16.
        for (chunk, y) in y.chunks_exact_mut(32).enumerate() {
            let (h, s) = (chunk / 4, chunk % 4);
            let q = &qs[32 * h..32 * h + 32];
            for (half, y) in y.chunks_exact_mut(16).enumerate() {
                let j = 2 * chunk + half;
                let dl = d * f32::from(scales[j] & 0x0F);
                let ml = dmin * f32::from(scales[j] >> 4);
                for (out, &byte) in y.iter_mut().zip(&q[16 * half..16 * half + 16]) {
                    *out = dl * f32::from((byte >> (2 * s)) & 3) - ml;
                }
            }
        }
        Ok(())
    }
}

struct Q3K;

impl BlockFormat for Q3K {
    const BYTES: usize = 110;
    const ELEMENTS: usize = 256;

    #[inline(always)]
    fn decode<E: simd::Expand>(&self, _: E, b: &[u8], y: &mut [f32], _: bool) -> CodecResult<()> {
        let d = half_at(b, 108, "a Q3_K super-block scale")?;
        let (hmask, qs, scales) = (&b[..32], &b[32..96], &b[96..108]);
        for (chunk, y) in y.chunks_exact_mut(32).enumerate() {
            let (h, s) = (chunk / 4, chunk % 4);
            let q = &qs[32 * h..32 * h + 32];
            for (half, y) in y.chunks_exact_mut(16).enumerate() {
                let j = 2 * chunk + half;
                let low4 = if j < 8 {
                    scales[j] & 0x0F
                } else {
                    scales[j - 8] >> 4
                };
                let high2 = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
                let dl = d * f32::from((low4 | (high2 << 4)) as i8 - 32);
                let at = 16 * half;
                for (l, out) in y.iter_mut().enumerate() {
                    let low2 = ((q[at + l] >> (2 * s)) & 3) as i8;
                    // A set high bit means no offset.
                    let high = (hmask[at + l] >> chunk) & 1;
                    let code = low2 - if high == 1 { 0 } else { 4 };
                    *out = dl * f32::from(code);
                }
            }
        }
        Ok(())
    }
}

/// Q4_K and Q5_K: `e = 64c + 32t + l`, nibble `(qs[32c + l] >> 4t) & 15`, sub-block
/// `j = e / 32`; Q5_K's fifth bit is `(qh[l] >> j) & 1`.
#[inline(always)]
fn decode_k4(d: f32, dmin: f32, scales: &[u8], qs: &[u8], qh: Option<&[u8]>, y: &mut [f32]) {
    let (sc, mn) = scale_min_k4(scales);
    for (j, y) in y.chunks_exact_mut(32).enumerate() {
        let (c, t) = (j / 2, j % 2);
        let dl = d * f32::from(sc[j]);
        let ml = dmin * f32::from(mn[j]);
        let q = &qs[32 * c..32 * c + 32];
        match qh {
            None => {
                for (out, &byte) in y.iter_mut().zip(q) {
                    *out = dl * f32::from((byte >> (4 * t)) & 0x0F) - ml;
                }
            }
            Some(qh) => {
                for ((out, &byte), &high) in y.iter_mut().zip(q).zip(qh) {
                    let code = ((byte >> (4 * t)) & 0x0F) | (((high >> j) & 1) << 4);
                    *out = dl * f32::from(code) - ml;
                }
            }
        }
    }
}

struct Q4K;

impl BlockFormat for Q4K {
    const BYTES: usize = 144;
    const ELEMENTS: usize = 256;

    #[inline(always)]
    fn decode<E: simd::Expand>(&self, _: E, b: &[u8], y: &mut [f32], _: bool) -> CodecResult<()> {
        let d = half_at(b, 0, "a Q4_K super-block scale")?;
        let dmin = half_at(b, 2, "a Q4_K super-block minimum scale")?;
        decode_k4(d, dmin, &b[4..16], &b[16..144], None, y);
        Ok(())
    }
}

struct Q5K;

impl BlockFormat for Q5K {
    const BYTES: usize = 176;
    const ELEMENTS: usize = 256;

    #[inline(always)]
    fn decode<E: simd::Expand>(&self, _: E, b: &[u8], y: &mut [f32], _: bool) -> CodecResult<()> {
        let d = half_at(b, 0, "a Q5_K super-block scale")?;
        let dmin = half_at(b, 2, "a Q5_K super-block minimum scale")?;
        decode_k4(d, dmin, &b[4..16], &b[48..176], Some(&b[16..48]), y);
        Ok(())
    }
}

struct Q6K;

impl BlockFormat for Q6K {
    const BYTES: usize = 210;
    const ELEMENTS: usize = 256;

    #[inline(always)]
    fn decode<E: simd::Expand>(&self, _: E, b: &[u8], y: &mut [f32], _: bool) -> CodecResult<()> {
        let d = half_at(b, 208, "a Q6_K super-block scale")?;
        let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
        // e = 128h + r: low nibble (ql[64h + r % 64] >> 4(r / 64)) & 15, high bits
        // (qh[32h + r % 32] >> 2(r / 32)) & 3, sub-block e / 16.
        for (chunk, y) in y.chunks_exact_mut(32).enumerate() {
            let (h, r0) = (chunk / 4, 32 * (chunk % 4));
            let low = &ql[64 * h + r0 % 64..64 * h + r0 % 64 + 32];
            let high = &qh[32 * h..32 * h + 32];
            let (low_shift, high_shift) = (4 * (r0 / 64), 2 * (r0 / 32));
            for (half, y) in y.chunks_exact_mut(16).enumerate() {
                let dl = d * f32::from(scales[2 * chunk + half] as i8);
                let at = 16 * half;
                for (l, out) in y.iter_mut().enumerate() {
                    let code = ((low[at + l] >> low_shift) & 0x0F)
                        | (((high[at + l] >> high_shift) & 3) << 4);
                    *out = dl * f32::from(code as i8 - 32);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sizes_and_names_round_trip() {
        for kind in QuantType::ALL {
            assert_eq!(QuantType::from_id(kind.id()), Some(kind));
            assert!(kind.block_bytes() < kind.block_elements() * 4);
            assert!(kind.name().starts_with('Q'));
        }
        assert_eq!(QuantType::from_id(9), None, "Q8_1 never appears in files");
        assert_eq!(QuantType::from_id(15), None, "Q8_K never appears in files");
    }

    #[test]
    fn hand_made_q4_0_block_decodes_low_nibbles_then_high() {
        let mut block = vec![0u8; 18];
        block[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        block[2] = 0xF0; // element 0: 0 - 8, element 16: 15 - 8
        block[3] = 0x19; // element 1: 9 - 8, element 17: 1 - 8
        let mut y = vec![0f32; 32];
        dequantize(QuantType::Q4_0, &block, &mut y).unwrap();
        assert_eq!((y[0], y[16], y[1], y[17]), (-4.0, 3.5, 0.5, -3.5));
    }

    #[test]
    fn infinite_scales_and_wrong_lengths_are_refused() {
        let mut block = vec![0u8; 34];
        block[..2].copy_from_slice(&f16::INFINITY.to_le_bytes());
        let mut y = vec![0f32; 32];
        assert!(matches!(
            dequantize(QuantType::Q8_0, &block, &mut y),
            Err(CodecError::BadScale { .. })
        ));
        assert!(dequantize(QuantType::Q8_0, &block[..33], &mut y).is_err());
        assert!(dequantize(QuantType::Q6_K, &[0u8; 210], &mut y).is_err());
    }
}
