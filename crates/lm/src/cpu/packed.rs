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
        let Some(isa) = super::enabled_isa() else {
            return false;
        };
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
        let blocks = self.blocks();
        // A few hundred rows at a time: a bounded buffer however large the matrix.
        let rows_per_piece = (1 << 16) / self.cols + 1;
        let mut decoded = vec![0f32; rows_per_piece * self.cols];
        let mut begin = 0;
        while begin < self.rows {
            let end = (begin + rows_per_piece).min(self.rows);
            let values = &mut decoded[..(end - begin) * self.cols];
            // SAFETY: `isa` was detected here; rows begin..end exist.
            unsafe { isa.decode_rows(&blocks, begin, end, values) };
            let want = &expected[begin * self.cols..end * self.cols];
            if values
                .iter()
                .zip(want)
                .any(|(a, b)| a.to_bits() != b.to_bits())
            {
                return false;
            }
            begin = end;
        }
        true
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
