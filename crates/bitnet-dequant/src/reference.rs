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
