//! Weights kept in their checkpoint's 32-element blocks (llama.cpp's Q4_0, Q4_1 and
//! Q8_0) for [`super::packed_linear`].
//!
//! Decoding a token reads every weight once, so a batch-1 step on the CPU is bound by
//! how many bytes of weights cross the memory bus: 4 per value as f32, 0.625 as Q4_1.
//! The packed kernel decodes each 4-row tile of `W` into an L1 buffer with the same
//! arithmetic as `bitnet_dequant::quants` (f16 scales widened exactly, one rounding per
//! operation, never fused) and then runs the f32 kernel's own tile on it, so its output
//! is the f32 product's, bit for bit. [`PackedMatrix::decodes_to`] checks that against
//! the f32 weights before a model relies on it.

use tch::{Device, Kind, Tensor};

use super::kernels::{BlockKind, Blocks};

/// A block format the packed kernel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum PackFormat {
    /// f16 `d`, 32 4-bit codes: `d * (q - 8)`.
    Q4_0,
    /// f16 `d` and `m`, 32 4-bit codes: `d * q + m`.
    Q4_1,
    /// f16 `d`, 32 signed 8-bit codes: `q * d`.
    Q8_0,
}

impl PackFormat {
    /// The format of a llama.cpp quantization type, if the kernel reads it.
    pub fn of(kind: bitnet_dequant::quants::QuantType) -> Option<Self> {
        use bitnet_dequant::quants::QuantType;
        match kind {
            QuantType::Q4_0 => Some(Self::Q4_0),
            QuantType::Q4_1 => Some(Self::Q4_1),
            QuantType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// The llama.cpp quantization type.
    pub fn quant_type(self) -> bitnet_dequant::quants::QuantType {
        use bitnet_dequant::quants::QuantType;
        match self {
            Self::Q4_0 => QuantType::Q4_0,
            Self::Q4_1 => QuantType::Q4_1,
            Self::Q8_0 => QuantType::Q8_0,
        }
    }

    fn kind(self) -> BlockKind {
        match self {
            Self::Q4_0 => BlockKind::Q4_0,
            Self::Q4_1 => BlockKind::Q4_1,
            Self::Q8_0 => BlockKind::Q8_0,
        }
    }

    /// Bytes per block of 32 values.
    pub fn block_bytes(self) -> usize {
        self.kind().bytes()
    }
}

/// A `[rows, cols]` matrix as rows of blocks (row `r` is `cols / 32` consecutive blocks).
pub struct PackedMatrix {
    pub(super) rows: usize,
    pub(super) cols: usize,
    format: PackFormat,
    bytes: Vec<u8>,
}

impl PackedMatrix {
    /// Takes `bytes` (row-major blocks) as a `[rows, cols]` matrix; `cols` must be a
    /// whole number of blocks and `bytes` exactly `rows` rows of them.
    pub fn new(
        format: PackFormat,
        rows: usize,
        cols: usize,
        bytes: Vec<u8>,
    ) -> Result<Self, String> {
        if cols == 0 || !cols.is_multiple_of(BlockKind::ELEMENTS) {
            return Err(format!(
                "rows of {cols} values are not whole blocks of {}",
                BlockKind::ELEMENTS
            ));
        }
        let expected = rows * cols / BlockKind::ELEMENTS * format.block_bytes();
        if bytes.len() != expected {
            return Err(format!(
                "{} bytes for a [{rows}, {cols}] {format:?} matrix, expected {expected}",
                bytes.len()
            ));
        }
        Ok(Self {
            rows,
            cols,
            format,
            bytes,
        })
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Its block format.
    pub fn format(&self) -> PackFormat {
        self.format
    }

    /// Bytes held.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    pub(super) fn blocks(&self) -> Blocks<'_> {
        Blocks {
            kind: self.format.kind(),
            bytes: &self.bytes,
            k: self.cols,
        }
    }

    /// Whether the kernel's decoder turns these blocks into exactly `weight` (a CPU f32
    /// `[rows, cols]` tensor), bit for bit; `false` too where there is no kernel here.
    pub fn decodes_to(&self, weight: &Tensor) -> bool {
        if weight.device() != Device::Cpu
            || weight.kind() != Kind::Float
            || weight.size() != [self.rows as i64, self.cols as i64]
        {
            return false;
        }
        let weight = weight.contiguous();
        // SAFETY: a contiguous f32 tensor of rows x cols values, alive for this call.
        let expected = unsafe {
            std::slice::from_raw_parts(
                weight.data_ptr().cast::<f32>().cast_const(),
                self.rows * self.cols,
            )
        };
        let cols = self.cols;
        self.decodes_as(&mut |begin, end, out| {
            out.copy_from_slice(&expected[begin * cols..end * cols]);
        })
    }

    /// Whether the kernel's decoder gives exactly what `bitnet_dequant::quants` decodes
    /// these blocks to (the f32 weights a checkpoint loader makes of them), bit for bit;
    /// `false` where there is no kernel here or the reference refuses a block.
    pub fn decodes_as_the_reference(&self) -> bool {
        let row_bytes = self.cols / BlockKind::ELEMENTS * self.format.block_bytes();
        let kind = self.format.quant_type();
        let mut refused = false;
        let agrees = self.decodes_as(&mut |begin, end, out| {
            let bytes = &self.bytes[begin * row_bytes..end * row_bytes];
            if bitnet_dequant::quants::dequantize(kind, bytes, out).is_err() {
                refused = true;
                out.fill(f32::NAN);
            }
        });
        agrees && !refused
    }

    /// Compares the kernel's decoding with `expected(begin, end, out)`, which writes rows
    /// `[begin, end)` into `out`, a bounded number of rows at a time.
    fn decodes_as(&self, expected: &mut dyn FnMut(usize, usize, &mut [f32])) -> bool {
        let Some(isa) = super::enabled_isa() else {
            return false;
        };
        let blocks = self.blocks();
        let rows_per_piece = (1 << 16) / self.cols + 1;
        let mut decoded = vec![0f32; rows_per_piece * self.cols];
        let mut want = vec![0f32; rows_per_piece * self.cols];
        let mut begin = 0;
        while begin < self.rows {
            let end = (begin + rows_per_piece).min(self.rows);
            let values = &mut decoded[..(end - begin) * self.cols];
            // SAFETY: `isa` was detected here; rows begin..end exist.
            unsafe { isa.decode_rows(&blocks, begin, end, values) };
            let want = &mut want[..(end - begin) * self.cols];
            expected(begin, end, want);
            if values
                .iter()
                .zip(want.iter())
                .any(|(a, b)| a.to_bits() != b.to_bits())
            {
                return false;
            }
            begin = end;
        }
        true
    }

    /// Rows `ids` decoded (an embedding lookup): `[ids.len(), cols]` f32 values, row by
    /// row, with the kernel's decoder, or `None` where there is none here or an id is
    /// outside the rows.
    pub fn decode_rows(&self, ids: &[i64]) -> Option<Vec<f32>> {
        let isa = super::enabled_isa()?;
        let blocks = self.blocks();
        let mut out = vec![0f32; ids.len() * self.cols];
        for (&id, row) in ids.iter().zip(out.chunks_exact_mut(self.cols)) {
            let id = usize::try_from(id).ok().filter(|&id| id < self.rows)?;
            // SAFETY: `isa` was detected here; row `id` exists (checked above).
            unsafe { isa.decode_rows(&blocks, id, id + 1, row) };
        }
        Some(out)
    }

    /// The whole matrix as f32 values (`bitnet_dequant`'s decoder), row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        // Blocks are only kept once their decoding was checked, so this cannot fail; a
        // refused block would have left them out.
        if bitnet_dequant::quants::dequantize(self.format.quant_type(), &self.bytes, &mut out)
            .is_err()
        {
            out.fill(f32::NAN);
        }
        out
    }
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("format", &self.format)
            .field("shape", &self.shape())
            .field("bytes", &self.bytes.len())
            .finish()
    }
}
