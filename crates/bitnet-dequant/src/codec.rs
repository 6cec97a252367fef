//! Bit-level codecs of the ternary formats: decode to codes or floats, encode from floats.
//!
//! Every function works on plain slices and knows nothing of files; errors say *where in
//! the slice* something is wrong, and the file readers add which file and tensor.
//!
//! | format | unit | bytes | element of a unit | scale |
//! |---|---|---|---|---|
//! | HF `bitnet` packed | 4 rows per byte, along dim 0 | `[out/4, in]` | row `i*R + r` at bits `2i..2i+1` of `packed[r][c]` (LSB first) | one per tensor, `weight_scale` |
//! | GGUF TQ2_0 | 256 | 66: `qs[64]`, f16 `d` | `e` at `qs[32*(e/128) + e%32]`, bits `2*((e%128)/32)` | f16 `d` per block |
//! | GGUF TQ1_0 | 256 | 54: `qs[48]`, `qh[4]`, f16 `d` | base-3 digits, 5 per `qs` byte, 4 per `qh` byte | f16 `d` per block |
//! | bitnet.cpp I2_S | 128 | 32 + one 32-byte tail | `128b+p` at bits 7-6 of byte `32b+p`, `+32` at 5-4, ... (MSB first) | f32 per tensor, in the tail |
//!
//! Stored codes are `value + 1` (0 = -1, 1 = 0, 2 = +1). Code 3 is never written by any
//! quantizer; decoders reject it rather than guess (HF would read it as +2, some
//! converters as 0).
//!
//! Decoders compute `(code - 1) as f32 * scale` in f32, the same operation as ggml's C,
//! the `gguf` Python package and transformers, so their outputs agree bit for bit.

use half::f16;
use rayon::prelude::*;

use crate::simd;

/// Elements per TQ1_0 / TQ2_0 block.
pub const TQ_BLOCK_ELEMENTS: usize = 256;
/// Bytes per TQ1_0 block: `qs[48]`, `qh[4]`, f16 `d`.
pub const TQ1_0_BLOCK_BYTES: usize = 54;
/// Bytes per TQ2_0 block: `qs[64]`, f16 `d`.
pub const TQ2_0_BLOCK_BYTES: usize = 66;
/// Elements per I2_S block (x86 layout of bitnet.cpp).
pub const I2S_BLOCK_ELEMENTS: usize = 128;
/// Bytes after the packed I2_S codes: the f32 scale, then padding.
pub const I2S_TAIL_BYTES: usize = 32;

/// What is wrong inside a buffer, by position.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// A 2-bit field holds code 3, which no ternary quantizer writes.
    #[error("byte {byte_index} (0x{value:02x}) holds the unused code 3")]
    InvalidCode {
        /// Offset of the byte in the buffer.
        byte_index: usize,
        /// The byte.
        value: u8,
    },
    /// A buffer of the wrong size.
    #[error("expected {expected} {what}, got {got}")]
    Length {
        /// What was counted (bytes, elements, ...).
        what: &'static str,
        /// The size the layout needs.
        expected: usize,
        /// The size given.
        got: usize,
    },
    /// A dimension that the layout requires to be a multiple of something.
    #[error("{what} is {got}, which is not a multiple of {multiple_of}")]
    NotMultiple {
        /// Which dimension.
        what: &'static str,
        /// Its value.
        got: usize,
        /// The required factor.
        multiple_of: usize,
    },
    /// A scale that is NaN or infinite (or zero, where a per-tensor scale is required).
    #[error("{what} is {value}, expected a finite{} number", if *.nonzero { " non-zero" } else { "" })]
    BadScale {
        /// Which scale.
        what: &'static str,
        /// Its value.
        value: f32,
        /// Whether zero is also rejected.
        nonzero: bool,
    },
    /// A code outside {-1, 0, 1} given to an encoder.
    #[error("element {index} is {value}, expected -1, 0 or 1")]
    NotTernary {
        /// Position of the element.
        index: usize,
        /// Its value.
        value: i8,
    },
}

/// `Result` of the codecs.
pub type CodecResult<T> = std::result::Result<T, CodecError>;

fn check_len(what: &'static str, expected: usize, got: usize) -> CodecResult<()> {
    if expected == got {
        Ok(())
    } else {
        Err(CodecError::Length {
            what,
            expected,
            got,
        })
    }
}

/// Checks that no 2-bit field of `bytes` holds code 3.
pub fn check_codes(bytes: &[u8]) -> CodecResult<()> {
    // A field is 3 when both its bits are set: b & (b >> 1) has bit 0 of the field set.
    // OR-folding first keeps the common (valid) case a branch-free, vectorised pass.
    let any = bytes
        .iter()
        .fold(0u8, |acc, &b| acc | (b & (b >> 1) & 0x55));
    if any == 0 {
        return Ok(());
    }
    let byte_index = bytes
        .iter()
        .position(|&b| b & (b >> 1) & 0x55 != 0)
        .unwrap_or(0);
    Err(CodecError::InvalidCode {
        byte_index,
        value: bytes[byte_index],
    })
}

/// A per-tensor scale must be finite and non-zero.
pub fn check_tensor_scale(what: &'static str, value: f32) -> CodecResult<()> {
    if value.is_finite() && value != 0.0 {
        Ok(())
    } else {
        Err(CodecError::BadScale {
            what,
            value,
            nonzero: true,
        })
    }
}

// ---------------------------------------------------------------------------------------
// HF transformers `bitnet` packing
// ---------------------------------------------------------------------------------------

/// Dequantizes an HF packed weight `[rows/4, cols]` into `out` (`[rows, cols]`, row-major):
/// `out[i*R + r][c] = (((packed[r][c] >> 2i) & 3) - 1) * multiplier`.
///
/// `multiplier` is `weight_scale` for `autobitlinear` checkpoints and `1 / weight_scale`
/// for `bitlinear` ones (see [`crate::ScaleConvention`]).
pub fn hf_dequantize(
    packed: &[u8],
    cols: usize,
    multiplier: f32,
    out: &mut [f32],
) -> CodecResult<()> {
    hf_dequantize_with(packed, cols, multiplier, out, false)
}

/// [`hf_dequantize`] on all of rayon's threads.
pub fn hf_dequantize_par(
    packed: &[u8],
    cols: usize,
    multiplier: f32,
    out: &mut [f32],
) -> CodecResult<()> {
    hf_dequantize_with(packed, cols, multiplier, out, true)
}

fn hf_dequantize_with(
    packed: &[u8],
    cols: usize,
    multiplier: f32,
    out: &mut [f32],
    parallel: bool,
) -> CodecResult<()> {
    check_codes(packed)?;
    let packed_rows = packed.len().checked_div(cols).unwrap_or(0);
    check_len("packed bytes", packed_rows * cols, packed.len())?;
    check_len("output elements", 4 * packed.len(), out.len())?;
    if packed.is_empty() {
        return Ok(());
    }
    let lut = simd::code_table(multiplier);
    let stream = out.len() * 4 >= simd::STREAM_MIN_BYTES;
    // Row i*R + r of the output comes from row r of the packed bytes, field i: the output
    // is four contiguous slices, each a decode of the whole packed buffer.
    for (i, out_slice) in out.chunks_exact_mut(packed.len()).enumerate() {
        let shift = 2 * i as u32;
        if parallel {
            packed
                .par_chunks(PARALLEL_TASK_BYTES)
                .zip(out_slice.par_chunks_mut(PARALLEL_TASK_BYTES))
                .for_each(|(bytes, y)| {
                    simd::expand_field(bytes, shift, &lut, y, stream);
                    simd::store_fence();
                });
        } else {
            simd::expand_field(packed, shift, &lut, out_slice, stream);
        }
    }
    simd::store_fence();
    Ok(())
}

/// Unpacks an HF packed weight into codes in {-1, 0, 1}, `[4 * packed_rows, cols]`.
pub fn hf_codes(packed: &[u8], out: &mut [i8]) -> CodecResult<()> {
    check_codes(packed)?;
    check_len("output elements", 4 * packed.len(), out.len())?;
    for (i, out_slice) in out.chunks_exact_mut(packed.len().max(1)).enumerate() {
        for (y, &b) in out_slice.iter_mut().zip(packed) {
            *y = ((b >> (2 * i)) & 3) as i8 - 1;
        }
    }
    Ok(())
}

/// Packs codes `[rows, cols]` (rows a multiple of 4) into the HF layout `[rows/4, cols]`.
pub fn hf_pack(codes: &[i8], rows: usize, cols: usize) -> CodecResult<Vec<u8>> {
    check_len("codes", rows * cols, codes.len())?;
    if !rows.is_multiple_of(4) {
        return Err(CodecError::NotMultiple {
            what: "out_features",
            got: rows,
            multiple_of: 4,
        });
    }
    check_ternary(codes)?;
    let slice_len = rows / 4 * cols;
    let mut packed = vec![0u8; slice_len];
    for (i, slice) in codes.chunks_exact(slice_len.max(1)).enumerate() {
        for (p, &q) in packed.iter_mut().zip(slice) {
            *p |= ((q + 1) as u8) << (2 * i);
        }
    }
    Ok(packed)
}

fn check_ternary(codes: &[i8]) -> CodecResult<()> {
    match codes.iter().position(|q| !(-1..=1).contains(q)) {
        None => Ok(()),
        Some(index) => Err(CodecError::NotTernary {
            index,
            value: codes[index],
        }),
    }
}

// ---------------------------------------------------------------------------------------
// Absmean ternarization (BitNet b1.58; transformers' WeightQuant)
// ---------------------------------------------------------------------------------------

/// Ternarizes a latent weight as transformers' `WeightQuant` does:
/// `s = 1 / max(mean|W|, 1e-5)`, `q = clamp(round_half_even(W * s), -1, 1)`.
/// Returns the codes and `s`; the dequantized weight is `q / s`.
///
/// The mean is an f32 pairwise sum (numpy's algorithm) divided by the count in f32.
/// torch's own f32 sum is a SIMD cascade whose last bit depends on the CPU's vector
/// width, so no fixed algorithm reproduces it everywhere; pairwise summation agreed with
/// torch 2.11 on 77% of 200 random tensors here (f64 accumulation: 68%), and where they
/// differ `s` differs by one ulp, which changes a code only on an exact rounding tie.
pub fn absmean_ternarize(weights: &[f32]) -> (Vec<i8>, f32) {
    let s = absmean_scale(weights);
    let codes = weights
        .iter()
        .map(|&w| (w * s).round_ties_even().clamp(-1.0, 1.0) as i8)
        .collect();
    (codes, s)
}

/// `s = 1 / max(mean|W|, 1e-5)` of [`absmean_ternarize`].
pub fn absmean_scale(weights: &[f32]) -> f32 {
    let mean = if weights.is_empty() {
        0.0
    } else {
        pairwise_abs_sum(weights) / weights.len() as f32
    };
    1.0f32 / mean.max(1e-5)
}

/// Replaces latent weights by their dequantized ternary values in place, computed as
/// transformers does, `round(W*s).clamp(-1, 1) / s` in f32 (so a small negative weight
/// becomes -0.0, as in torch).
pub fn absmean_dequantize(weights: &mut [f32]) {
    let s = absmean_scale(weights);
    for w in weights.iter_mut() {
        *w = (*w * s).round_ties_even().clamp(-1.0, 1.0) / s;
    }
}

/// Sum of |x| in f32, in numpy's pairwise order (8 accumulators per block of up to 128,
/// halves split on multiples of 8).
pub fn pairwise_abs_sum(x: &[f32]) -> f32 {
    let n = x.len();
    if n < 8 {
        x.iter().fold(0.0f32, |acc, v| acc + v.abs())
    } else if n <= 128 {
        let mut r = [0f32; 8];
        for (acc, v) in r.iter_mut().zip(x) {
            *acc = v.abs();
        }
        let whole = n - n % 8;
        for chunk in x[8..whole].chunks_exact(8) {
            for (acc, v) in r.iter_mut().zip(chunk) {
                *acc += v.abs();
            }
        }
        let mut total = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for v in &x[whole..] {
            total += v.abs();
        }
        total
    } else {
        let half = n / 2;
        let half = half - half % 8;
        pairwise_abs_sum(&x[..half]) + pairwise_abs_sum(&x[half..])
    }
}

// ---------------------------------------------------------------------------------------
// GGUF TQ2_0
// ---------------------------------------------------------------------------------------

/// Dequantizes TQ2_0 blocks: `data.len() == 66 * n_blocks`, `out.len() == 256 * n_blocks`.
pub fn tq2_0_dequantize(data: &[u8], out: &mut [f32]) -> CodecResult<()> {
    by_blocks(data, out, false, &Tq2_0)
}

/// [`tq2_0_dequantize`] on all of rayon's threads.
pub fn tq2_0_dequantize_par(data: &[u8], out: &mut [f32]) -> CodecResult<()> {
    by_blocks(data, out, true, &Tq2_0)
}

/// TQ2_0: 64 code bytes (each holds elements k, k+32, k+64, k+96 of its half), f16 d.
struct Tq2_0;

impl BlockFormat for Tq2_0 {
    const BYTES: usize = TQ2_0_BLOCK_BYTES;
    const ELEMENTS: usize = TQ_BLOCK_ELEMENTS;

    #[inline(always)]
    fn decode<E: simd::Expand>(
        &self,
        e: E,
        block: &[u8],
        y: &mut [f32],
        stream: bool,
    ) -> CodecResult<()> {
        let qs = &block[..64];
        check_codes(qs)?;
        let lut = simd::code_table(block_scale(block, 64)?);
        for half in 0..2 {
            let q = &qs[32 * half..32 * half + 32];
            for l in 0..4 {
                let at = 128 * half + 32 * l;
                e.field(q, 2 * l as u32, &lut, &mut y[at..at + 32], stream);
            }
        }
        Ok(())
    }
}

/// Quantizes to TQ2_0 as ggml's `quantize_row_tq2_0_ref` (per-block absmax `d`, stored
/// f16; `lroundf`, i.e. half away from zero). `x.len()` must be a multiple of 256.
pub fn tq2_0_quantize(x: &[f32]) -> CodecResult<Vec<u8>> {
    let mut out = Vec::with_capacity(x.len() / TQ_BLOCK_ELEMENTS * TQ2_0_BLOCK_BYTES);
    for block in tq_blocks(x)? {
        let (d, id) = block_absmax(block);
        let mut qs = [0u8; 64];
        for half in 0..2 {
            let xs = &block[128 * half..128 * half + 128];
            for m in 0..32 {
                let mut q = 0u8;
                for n in 0..4 {
                    let xi = ((xs[m + 32 * n] * id).round() as i32 + 1) as u8;
                    q += (xi & 3) << (2 * n);
                }
                qs[32 * half + m] = q;
            }
        }
        out.extend_from_slice(&qs);
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// GGUF TQ1_0
// ---------------------------------------------------------------------------------------

/// Dequantizes TQ1_0 blocks: `data.len() == 54 * n_blocks`, `out.len() == 256 * n_blocks`.
/// Every byte decodes to valid digits, so only sizes and scales can be wrong.
pub fn tq1_0_dequantize(data: &[u8], out: &mut [f32]) -> CodecResult<()> {
    by_blocks(data, out, false, &Tq1_0)
}

/// [`tq1_0_dequantize`] on all of rayon's threads.
pub fn tq1_0_dequantize_par(data: &[u8], out: &mut [f32]) -> CodecResult<()> {
    by_blocks(data, out, true, &Tq1_0)
}

/// TQ1_0: 48 bytes of five base-3 digits, 4 bytes of four, f16 d.
struct Tq1_0;

impl BlockFormat for Tq1_0 {
    const BYTES: usize = TQ1_0_BLOCK_BYTES;
    const ELEMENTS: usize = TQ_BLOCK_ELEMENTS;

    #[inline(always)]
    fn decode<E: simd::Expand>(
        &self,
        e: E,
        block: &[u8],
        y: &mut [f32],
        stream: bool,
    ) -> CodecResult<()> {
        let lut = simd::code_table(block_scale(block, 52)?);
        let (qs, rest) = block.split_at(48);
        let qh = &rest[..4];
        for n in 0..5u32 {
            let at = 32 * n as usize;
            e.trits(&qs[..32], n, &lut, &mut y[at..at + 32], stream);
        }
        for n in 0..5u32 {
            let at = 160 + 16 * n as usize;
            e.trits(&qs[32..], n, &lut, &mut y[at..at + 16], stream);
        }
        let qh: &[u8; 4] = qh.try_into().expect("4 bytes");
        let tail: &mut [f32; 16] = (&mut y[240..256]).try_into().expect("16 values");
        e.trits_tail(qh, &lut, tail, stream);
        Ok(())
    }
}

/// Quantizes to TQ1_0 as ggml's `quantize_row_tq1_0_ref`. `x.len()` must be a multiple
/// of 256.
pub fn tq1_0_quantize(x: &[f32]) -> CodecResult<Vec<u8>> {
    let mut out = Vec::with_capacity(x.len() / TQ_BLOCK_ELEMENTS * TQ1_0_BLOCK_BYTES);
    let digit = |v: f32, id: f32| ((v * id).round() as i32 + 1) as u8;
    // ceil(N * 256 / 243): spreads the 243 five-trit numbers over the byte range.
    let to_byte = |n: u8| (u16::from(n) * 256).div_ceil(243) as u8;
    for block in tq_blocks(x)? {
        let (d, id) = block_absmax(block);
        for m in 0..32 {
            let n = (0..5).fold(0u8, |q, k| q * 3 + digit(block[m + 32 * k], id));
            out.push(to_byte(n));
        }
        for m in 0..16 {
            let n = (0..5).fold(0u8, |q, k| q * 3 + digit(block[160 + m + 16 * k], id));
            out.push(to_byte(n));
        }
        for j in 0..4 {
            let n = (0..4).fold(0u8, |q, k| q * 3 + digit(block[240 + j + 4 * k], id));
            out.push(to_byte(n * 3));
        }
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// bitnet.cpp I2_S (x86 layout: blocks of 128, 32 bytes each)
// ---------------------------------------------------------------------------------------

/// Bytes an I2_S tensor of `n` elements occupies: `n / 4` codes plus the 32-byte tail.
pub fn i2s_bytes(n: usize) -> usize {
    n / 4 + I2S_TAIL_BYTES
}

/// The per-tensor f32 scale stored after the codes of an I2_S tensor of `n` elements.
pub fn i2s_scale(data: &[u8], n: usize) -> CodecResult<f32> {
    check_i2s_len(data, n)?;
    let at = n / 4;
    let scale = f32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
    check_tensor_scale("the I2_S scale", scale)?;
    Ok(scale)
}

fn check_i2s_len(data: &[u8], n: usize) -> CodecResult<()> {
    if !n.is_multiple_of(I2S_BLOCK_ELEMENTS) {
        return Err(CodecError::NotMultiple {
            what: "the element count",
            got: n,
            multiple_of: I2S_BLOCK_ELEMENTS,
        });
    }
    check_len("bytes", i2s_bytes(n), data.len())
}

/// Dequantizes an I2_S tensor of `out.len()` elements: `W = (q - 1) * scale`.
pub fn i2s_dequantize(data: &[u8], out: &mut [f32]) -> CodecResult<()> {
    i2s_dequantize_with(data, out, false)
}

/// [`i2s_dequantize`] on all of rayon's threads.
pub fn i2s_dequantize_par(data: &[u8], out: &mut [f32]) -> CodecResult<()> {
    i2s_dequantize_with(data, out, true)
}

fn i2s_dequantize_with(data: &[u8], out: &mut [f32], parallel: bool) -> CodecResult<()> {
    let scale = i2s_scale(data, out.len())?;
    let codes = &data[..out.len() / 4];
    by_blocks(
        codes,
        out,
        parallel,
        &I2s {
            lut: simd::code_table(scale),
        },
    )
}

/// I2_S: 32 bytes per 128 elements, fields MSB first; one scale for the tensor.
struct I2s {
    lut: [f32; 4],
}

impl BlockFormat for I2s {
    const BYTES: usize = 32;
    const ELEMENTS: usize = I2S_BLOCK_ELEMENTS;

    #[inline(always)]
    fn decode<E: simd::Expand>(
        &self,
        e: E,
        q: &[u8],
        y: &mut [f32],
        stream: bool,
    ) -> CodecResult<()> {
        check_codes(q)?;
        for g in 0..4 {
            e.field(
                q,
                6 - 2 * g as u32,
                &self.lut,
                &mut y[32 * g..32 * g + 32],
                stream,
            );
        }
        Ok(())
    }
}

/// Quantizes to I2_S as bitnet.cpp's `quantize_i2_s`: one scale `max|x|` per tensor,
/// codes from the sign (`|x| < 1e-6` is 0). The tail holds the scale, then zeros.
pub fn i2s_quantize(x: &[f32]) -> CodecResult<Vec<u8>> {
    if !x.len().is_multiple_of(I2S_BLOCK_ELEMENTS) {
        return Err(CodecError::NotMultiple {
            what: "the element count",
            got: x.len(),
            multiple_of: I2S_BLOCK_ELEMENTS,
        });
    }
    let max = x.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    let mut out = vec![0u8; i2s_bytes(x.len())];
    for (block, q) in x.chunks_exact(128).zip(out.chunks_exact_mut(32)) {
        for (j, &v) in block.iter().enumerate() {
            let code: u8 = if f64::from(v).abs() < 1e-6 {
                1
            } else if f64::from(v) * max > 0.0 {
                2
            } else {
                0
            };
            q[j % 32] |= code << (6 - 2 * (j / 32));
        }
    }
    let at = x.len() / 4;
    out[at..at + 4].copy_from_slice(&(max as f32).to_le_bytes());
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------

/// Bytes of packed data a parallel task decodes: large enough to amortise scheduling,
/// small enough to balance load.
const PARALLEL_TASK_BYTES: usize = 64 * 1024;

/// A block format: how one block of bytes decodes into its elements.
pub(crate) trait BlockFormat: Sync {
    const BYTES: usize;
    const ELEMENTS: usize;
    fn decode<E: simd::Expand>(
        &self,
        e: E,
        block: &[u8],
        y: &mut [f32],
        stream: bool,
    ) -> CodecResult<()>;
}

/// A run of consecutive blocks, decoded as one [`simd::Kernel`].
struct BlockRun<'a, F> {
    format: &'a F,
    first_block: usize,
    bytes: &'a [u8],
    values: &'a mut [f32],
    stream: bool,
}

impl<F: BlockFormat> simd::Kernel for BlockRun<'_, F> {
    type Output = CodecResult<()>;

    #[inline(always)]
    fn run<E: simd::Expand>(self, e: E) -> CodecResult<()> {
        let result = self
            .bytes
            .chunks_exact(F::BYTES)
            .zip(self.values.chunks_exact_mut(F::ELEMENTS))
            .enumerate()
            .try_for_each(|(j, (block, y))| {
                self.format
                    .decode(e, block, y, self.stream)
                    .map_err(|error| offset_code_error(error, (self.first_block + j) * F::BYTES))
            });
        simd::store_fence();
        result
    }
}

/// Decodes whole blocks, serially or on rayon's threads; a codec error is reported with
/// the byte offset of its block added.
pub(crate) fn by_blocks<F: BlockFormat>(
    data: &[u8],
    out: &mut [f32],
    parallel: bool,
    format: &F,
) -> CodecResult<()> {
    if !out.len().is_multiple_of(F::ELEMENTS) {
        return Err(CodecError::NotMultiple {
            what: "the element count",
            got: out.len(),
            multiple_of: F::ELEMENTS,
        });
    }
    check_len("bytes", out.len() / F::ELEMENTS * F::BYTES, data.len())?;
    let stream = out.len() * 4 >= simd::STREAM_MIN_BYTES;
    if parallel {
        let task_blocks = (PARALLEL_TASK_BYTES / F::BYTES).max(1);
        data.par_chunks(task_blocks * F::BYTES)
            .zip(out.par_chunks_mut(task_blocks * F::ELEMENTS))
            .enumerate()
            .try_for_each(|(task, (bytes, values))| {
                simd::dispatch(BlockRun {
                    format,
                    first_block: task * task_blocks,
                    bytes,
                    values,
                    stream,
                })
            })
    } else {
        simd::dispatch(BlockRun {
            format,
            first_block: 0,
            bytes: data,
            values: out,
            stream,
        })
    }
}

fn tq_blocks(x: &[f32]) -> CodecResult<std::slice::ChunksExact<'_, f32>> {
    if !x.len().is_multiple_of(TQ_BLOCK_ELEMENTS) {
        return Err(CodecError::NotMultiple {
            what: "the element count",
            got: x.len(),
            multiple_of: TQ_BLOCK_ELEMENTS,
        });
    }
    Ok(x.chunks_exact(TQ_BLOCK_ELEMENTS))
}

/// The block scale `d` stored as f16 at `at`; zero is allowed (an all-zero block).
#[inline]
fn block_scale(block: &[u8], at: usize) -> CodecResult<f32> {
    let d = f16::from_le_bytes([block[at], block[at + 1]]).to_f32();
    if d.is_finite() {
        Ok(d)
    } else {
        Err(CodecError::BadScale {
            what: "a block scale",
            value: d,
            nonzero: false,
        })
    }
}

/// ggml's block scale: `d = max|x|`, `id = 1/d` (0 for an all-zero block), from the f32 `d`.
fn block_absmax(block: &[f32]) -> (f32, f32) {
    let d = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (d, id)
}

fn offset_code_error(error: CodecError, offset: usize) -> CodecError {
    match error {
        CodecError::InvalidCode { byte_index, value } => CodecError::InvalidCode {
            byte_index: byte_index + offset,
            value,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Research notes, 6.1: an 8x3 matrix, packed by hand.
    const HAND_CODES: [[i8; 3]; 8] = [
        [1, 0, -1],
        [0, 1, 1],
        [-1, -1, 0],
        [1, 1, 1],
        [0, 0, 0],
        [-1, 1, 0],
        [1, -1, -1],
        [0, -1, 1],
    ];
    const HAND_PACKED: [u8; 6] = [0x92, 0x11, 0x14, 0x49, 0x2a, 0x9a];

    #[test]
    fn hf_hand_vector_packs_and_unpacks() {
        let codes: Vec<i8> = HAND_CODES.iter().flatten().copied().collect();
        assert_eq!(hf_pack(&codes, 8, 3).unwrap(), HAND_PACKED);
        let mut unpacked = vec![0i8; 24];
        hf_codes(&HAND_PACKED, &mut unpacked).unwrap();
        assert_eq!(unpacked, codes);
        let mut weights = vec![0f32; 24];
        hf_dequantize(&HAND_PACKED, 3, 0.5, &mut weights).unwrap();
        assert_eq!(&weights[..3], &[0.5, 0.0, -0.5]);
        assert_eq!(&weights[15..18], &[-0.5, 0.5, 0.0]);
    }

    /// Research notes, 6.2: the docstring example of transformers' `unpack_weights`.
    #[test]
    fn hf_docstring_vector_unpacks() {
        let packed = [0b1010_0001u8, 0b0001_1000, 0b1001_0000, 0b0000_1010];
        let expected: [[i8; 2]; 8] = [
            [0, -1],
            [-1, 1],
            [-1, 1],
            [-1, 1],
            [1, 0],
            [0, -1],
            [1, -1],
            [1, -1],
        ];
        let mut unpacked = vec![0i8; 16];
        hf_codes(&packed, &mut unpacked).unwrap();
        assert_eq!(
            unpacked,
            expected.iter().flatten().copied().collect::<Vec<_>>()
        );
    }

    #[test]
    fn code_three_is_rejected_with_its_position() {
        let mut packed = HAND_PACKED;
        packed[4] = 0xFF;
        let mut out = vec![0f32; 24];
        assert_eq!(
            hf_dequantize(&packed, 3, 1.0, &mut out),
            Err(CodecError::InvalidCode {
                byte_index: 4,
                value: 0xFF
            })
        );
        // Code 3 in the highest field only.
        packed[4] = 0b1100_0000;
        assert!(check_codes(&packed).is_err());
        for valid in [0x00u8, 0x55, 0xAA, 0x96, 0x69] {
            assert!(check_codes(&[valid]).is_ok(), "{valid:#x}");
        }
    }

    #[test]
    fn hf_pack_rejects_rows_not_multiple_of_four_and_non_ternary_codes() {
        assert!(matches!(
            hf_pack(&[0; 6], 6, 1),
            Err(CodecError::NotMultiple { .. })
        ));
        assert!(matches!(
            hf_pack(&[0, 2, 0, 0], 4, 1),
            Err(CodecError::NotTernary { index: 1, value: 2 })
        ));
    }

    /// Research notes, 6.5.
    #[test]
    fn absmean_matches_the_worked_vectors() {
        let w = [0.3f32, -1.2, 0.05, 0.9, -0.6, 0.0, 2.1, -0.45];
        let (codes, s) = absmean_ternarize(&w);
        assert_eq!(codes, [0, -1, 0, 1, -1, 0, 1, -1]);
        // The notes' mean, 0.70000005, is numpy's pairwise f32 sum / 8.
        let mean = pairwise_abs_sum(&w) / 8.0;
        assert_eq!(mean.to_bits(), 0x3F33_3334);
        assert_eq!(s, 1.0 / mean);
        // Ties: half to even, as torch.round.
        let (codes, s) = absmean_ternarize(&[0.5, 1.5, -1.0, 1.0]);
        assert_eq!(s, 1.0);
        assert_eq!(codes, [0, 1, -1, 1]);
    }

    /// Research notes, 6.4: all-zero blocks.
    #[test]
    fn all_zero_blocks_have_the_documented_bytes() {
        let zeros = [0f32; 256];
        let tq2 = tq2_0_quantize(&zeros).unwrap();
        assert_eq!(&tq2[..64], &[0x55; 64]);
        assert_eq!(&tq2[64..], &[0, 0]);
        let tq1 = tq1_0_quantize(&zeros).unwrap();
        assert_eq!(&tq1[..48], &[0x80; 48]);
        assert_eq!(&tq1[48..52], &[0x7f; 4]);
        assert_eq!(&tq1[52..], &[0, 0]);
        let mut out = [1f32; 256];
        tq1_0_dequantize(&tq1, &mut out).unwrap();
        assert!(out.iter().all(|&v| v == 0.0));
        tq2_0_dequantize(&tq2, &mut out).unwrap();
        assert!(out.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn every_five_trit_pattern_survives_tq1_0() {
        // 243 patterns in the 32 leading bytes, padded with zeros to whole blocks.
        let mut x = vec![0f32; 256 * 8];
        for (pattern, block) in (0..243u32)
            .collect::<Vec<_>>()
            .chunks(32)
            .zip(x.chunks_mut(256))
        {
            for (m, &p) in pattern.iter().enumerate() {
                let mut rest = p;
                for n in (0..5).rev() {
                    block[m + 32 * n] = (rest % 3) as f32 - 1.0;
                    rest /= 3;
                }
            }
        }
        let bytes = tq1_0_quantize(&x).unwrap();
        let mut back = vec![0f32; x.len()];
        tq1_0_dequantize(&bytes, &mut back).unwrap();
        assert_eq!(back, x);
    }

    #[test]
    fn i2s_layout_is_msb_first_in_groups_of_32() {
        let mut x = vec![0f32; 128];
        x[0] = 1.0; // byte 0 bits 7-6 -> code 2
        x[32] = -1.0; // byte 0 bits 5-4 -> code 0
        x[97] = 1.0; // byte 1 bits 1-0 -> code 2
        let bytes = i2s_quantize(&x).unwrap();
        assert_eq!(bytes.len(), 64);
        assert_eq!(bytes[0], 0b10_00_01_01);
        assert_eq!(bytes[1], 0b01_01_01_10);
        assert_eq!(bytes[2], 0b01_01_01_01);
        assert_eq!(f32::from_le_bytes(bytes[32..36].try_into().unwrap()), 1.0);
        let mut back = vec![0f32; 128];
        i2s_dequantize(&bytes, &mut back).unwrap();
        assert_eq!(back, x);
    }

    #[test]
    fn bad_sizes_and_scales_are_errors() {
        let mut out = vec![0f32; 256];
        assert!(matches!(
            tq2_0_dequantize(&[0; 65], &mut out),
            Err(CodecError::Length { .. })
        ));
        assert!(matches!(
            tq1_0_dequantize(&[0; 54], &mut out[..255]),
            Err(CodecError::NotMultiple { .. })
        ));
        let mut block = tq2_0_quantize(&[0.5; 256]).unwrap();
        block[64..66].copy_from_slice(&f16::INFINITY.to_le_bytes());
        assert!(matches!(
            tq2_0_dequantize(&block, &mut out),
            Err(CodecError::BadScale { .. })
        ));
        let mut i2s = i2s_quantize(&[1.0; 128]).unwrap();
        i2s[32..36].copy_from_slice(&0f32.to_le_bytes());
        assert!(matches!(
            i2s_dequantize(&i2s, &mut out[..128]),
            Err(CodecError::BadScale { .. })
        ));
        i2s[32..36].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(i2s_scale(&i2s, 128).is_err());
        assert!(matches!(
            i2s_dequantize(&i2s[..63], &mut out[..128]),
            Err(CodecError::Length { .. })
        ));
    }
}
