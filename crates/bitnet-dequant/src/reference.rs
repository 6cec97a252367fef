//! Element-by-element decoders written straight from each format's definition.
//!
//! They are slow and deliberately share nothing with the block decoders of
//! [`crate::codec`]: `verify` and the tests use them as an independent oracle.

use half::f16;

/// The stored 2-bit (or base-3) code of element `e`, in {0, 1, 2, 3}, and the factor
/// that applies to it. Weight = (code - 1) * factor.
pub type CodeAndScale = (u8, f32);

/// Element `e` of an HF packed weight with `cols` columns.
pub fn hf_packed(packed: &[u8], cols: usize, multiplier: f32, e: usize) -> CodeAndScale {
    let packed_rows = packed.len() / cols;
    let (row, col) = (e / cols, e % cols);
    let (i, r) = (row / packed_rows, row % packed_rows);
    ((packed[r * cols + col] >> (2 * i)) & 3, multiplier)
}

/// Element `e` of TQ2_0 data.
pub fn tq2_0(bytes: &[u8], e: usize) -> CodeAndScale {
    let block = &bytes[66 * (e / 256)..66 * (e / 256) + 66];
    let k = e % 256;
    let byte = block[32 * (k / 128) + k % 32];
    let code = (byte >> (2 * ((k % 128) / 32))) & 3;
    (code, f16::from_le_bytes([block[64], block[65]]).to_f32())
}

/// Element `e` of TQ1_0 data.
pub fn tq1_0(bytes: &[u8], e: usize) -> CodeAndScale {
    let block = &bytes[54 * (e / 256)..54 * (e / 256) + 54];
    let k = e % 256;
    let (byte, digit) = if k < 160 {
        (block[k % 32], k / 32)
    } else if k < 240 {
        (block[32 + (k - 160) % 16], (k - 160) / 16)
    } else {
        (block[48 + (k - 240) % 4], (k - 240) / 4)
    };
    // Multiplying by 3^digit (mod 256) brings that digit to the top; *3 >> 8 reads it.
    let shifted = byte.wrapping_mul(3u8.pow(digit as u32));
    let code = ((u16::from(shifted) * 3) >> 8) as u8;
    (code, f16::from_le_bytes([block[52], block[53]]).to_f32())
}

/// Element `e` of an I2_S tensor of `n` elements.
pub fn i2s(bytes: &[u8], n: usize, e: usize) -> CodeAndScale {
    let (b, p) = (e / 128, e % 128);
    let code = (bytes[32 * b + p % 32] >> (6 - 2 * (p / 32))) & 3;
    let scale = f32::from_le_bytes([
        bytes[n / 4],
        bytes[n / 4 + 1],
        bytes[n / 4 + 2],
        bytes[n / 4 + 3],
    ]);
    (code, scale)
}

/// Absmean ternarization of a latent weight as transformers' `WeightQuant`, element by
/// element: returns `round_half_even(w*s).clamp(-1, 1) / s` for every element, with
/// `s = 1 / max(mean|w|, 1e-5)` and the mean summed pairwise in f32 as numpy does.
pub fn absmean(latent: &[f32]) -> Vec<f32> {
    let mean = if latent.is_empty() {
        0.0
    } else {
        numpy_pairwise(latent) / latent.len() as f32
    };
    let s = 1.0f32 / if mean > 1e-5 { mean } else { 1e-5 };
    latent
        .iter()
        .map(|&w| (w * s).round_ties_even().clamp(-1.0, 1.0) / s)
        .collect()
}

/// numpy's `pairwise_sum` for float32, transcribed branch by branch, over |x|.
fn numpy_pairwise(x: &[f32]) -> f32 {
    let n = x.len();
    if n < 8 {
        let mut res = 0.0f32;
        for v in x {
            res += v.abs();
        }
        return res;
    }
    if n <= 128 {
        let mut r: Vec<f32> = x[..8].iter().map(|v| v.abs()).collect();
        let mut i = 8;
        while i < n - n % 8 {
            for j in 0..8 {
                r[j] += x[i + j].abs();
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += x[i].abs();
            i += 1;
        }
        return res;
    }
    let mut n2 = n / 2;
    n2 -= n2 % 8;
    numpy_pairwise(&x[..n2]) + numpy_pairwise(&x[n2..])
}

fn half_at(block: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}

/// Q4_K/Q5_K's 6-bit scale and min of sub-block `j` from the 12 packed bytes.
fn k4_scale_min(b: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (b[j] & 63, b[j + 4] & 63)
    } else {
        (
            (b[j + 4] & 0x0F) | ((b[j - 4] >> 6) << 4),
            (b[j + 4] >> 4) | ((b[j] >> 6) << 4),
        )
    }
}

/// Element `e` of a tensor stored as `kind`, from the definitions in
/// `../shared/research/gguf-llama.md` §1 (one f32 rounding per operation, in order).
pub fn quant(kind: crate::quants::QuantType, bytes: &[u8], e: usize) -> f32 {
    use crate::quants::QuantType as Q;
    let block = &bytes[e / kind.block_elements() * kind.block_bytes()..][..kind.block_bytes()];
    let e = e % kind.block_elements();
    // Legacy blocks: element j < 16 in the low nibble of qs[j], j >= 16 in the high one.
    let nibble = |qs: &[u8]| {
        if e < 16 {
            qs[e] & 0x0F
        } else {
            qs[e - 16] >> 4
        }
    };
    let fifth_bit = |qh: &[u8]| ((u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]) >> e) & 1) as u8;
    match kind {
        Q::Q4_0 => half_at(block, 0) * (i32::from(nibble(&block[2..])) - 8) as f32,
        Q::Q4_1 => half_at(block, 0) * f32::from(nibble(&block[4..])) + half_at(block, 2),
        Q::Q5_0 => {
            let q = nibble(&block[6..]) | fifth_bit(&block[2..]) << 4;
            half_at(block, 0) * (i32::from(q) - 16) as f32
        }
        Q::Q5_1 => {
            let q = nibble(&block[8..]) | fifth_bit(&block[4..]) << 4;
            half_at(block, 0) * f32::from(q) + half_at(block, 2)
        }
        Q::Q8_0 => f32::from(block[2 + e] as i8) * half_at(block, 0),
        Q::Q2_K => {
            let (h, s, l) = (e / 128, (e % 128) / 32, e % 32);
            let q = (block[16 + 32 * h + l] >> (2 * s)) & 3;
            let j = e / 16;
            let (sc, mn) = (block[j] & 0x0F, block[j] >> 4);
            (half_at(block, 80) * f32::from(sc)) * f32::from(q) - half_at(block, 82) * f32::from(mn)
        }
        Q::Q3_K => {
            let (h, s, l) = (e / 128, (e % 128) / 32, e % 32);
            let low2 = ((block[32 + 32 * h + l] >> (2 * s)) & 3) as i32;
            let high = (block[e % 32] >> (e / 32)) & 1;
            let q = low2 - if high == 1 { 0 } else { 4 };
            let j = e / 16;
            let scales = &block[96..108];
            let low4 = if j < 8 {
                scales[j] & 0x0F
            } else {
                scales[j - 8] >> 4
            };
            let high2 = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
            let s = i32::from(low4 | high2 << 4) - 32;
            (half_at(block, 108) * s as f32) * q as f32
        }
        Q::Q4_K | Q::Q5_K => {
            let (c, t, l) = (e / 64, (e % 64) / 32, e % 32);
            let j = e / 32;
            let (qs, fifth) = if kind == Q::Q4_K {
                (&block[16..144], 0)
            } else {
                (&block[48..176], ((block[16 + l] >> j) & 1) << 4)
            };
            let q = ((qs[32 * c + l] >> (4 * t)) & 0x0F) | fifth;
            let (sc, mn) = k4_scale_min(&block[4..16], j);
            (half_at(block, 0) * f32::from(sc)) * f32::from(q) - half_at(block, 2) * f32::from(mn)
        }
        Q::Q6_K => {
            let (h, r) = (e / 128, e % 128);
            let low = (block[64 * h + r % 64] >> (4 * (r / 64))) & 0x0F;
            let high = (block[128 + 32 * h + r % 32] >> (2 * (r / 32))) & 3;
            let q = i32::from(low | high << 4) - 32;
            let sc = block[192 + e / 16] as i8;
            (half_at(block, 208) * f32::from(sc)) * q as f32
        }
    }
}
