//! What a checkpoint holds, format-independently: tensors, how each is stored, and
//! ternary codes with their scales.

use serde::Serialize;

/// A plain floating-point element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FloatDtype {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    Bf16,
}

impl FloatDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }

    /// Decodes little-endian values into f32 (exact for every dtype).
    pub fn decode(self, bytes: &[u8], out: &mut [f32]) {
        match self {
            Self::F32 => crate::io::read_f32(bytes, out),
            Self::F16 => crate::io::read_f16(bytes, out),
            Self::Bf16 => crate::io::read_bf16(bytes, out),
        }
    }
}

/// Whether a stored per-tensor `weight_scale` multiplies or divides the codes.
///
/// transformers' `AutoBitLinear` (`linear_class: "autobitlinear"`, e.g.
/// microsoft/bitnet-b1.58-2B-4T) stores `gamma` and computes `W = q * weight_scale`;
/// `BitLinear` (`"bitlinear"` or no `linear_class`, e.g. onebitllms / Falcon-E) stores
/// `1 / gamma` and computes `W = q / weight_scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ScaleConvention {
    /// `W = q * weight_scale`.
    Multiply,
    /// `W = q / weight_scale`.
    Divide,
}

impl ScaleConvention {
    /// The factor that turns codes into weights for a stored scale. For `Divide` this is
    /// the f32 reciprocal: `q * (1/s)` has the same bits as `q / s` for q in {-1, 0, 1}.
    pub fn multiplier(self, stored_scale: f32) -> f32 {
        match self {
            Self::Multiply => stored_scale,
            Self::Divide => 1.0 / stored_scale,
        }
    }
}

/// How a tensor is stored, which decides how it is dequantized.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Encoding {
    /// A float tensor that passes through unchanged.
    Float {
        /// Its element type.
        dtype: FloatDtype,
    },
    /// HF `bitnet` packed U8 weight with a per-tensor `weight_scale`.
    HfPacked {
        /// The scale's tensor name (`<weight>_scale`).
        scale_tensor: String,
        /// The stored scale, as f32.
        stored_scale: f32,
        /// How the scale applies.
        convention: ScaleConvention,
    },
    /// A latent float weight of an `online` checkpoint, ternarized with absmean on read.
    Latent {
        /// Its element type.
        dtype: FloatDtype,
    },
    /// GGUF TQ1_0 (ggml type 34).
    Tq1_0,
    /// GGUF TQ2_0 (ggml type 35).
    Tq2_0,
    /// bitnet.cpp I2_S (ggml type 36 in bitnet.cpp files).
    I2s,
    /// One of llama.cpp's block types (Q4_0 ... Q6_K): not ternary.
    Quant {
        /// The block layout.
        format: crate::quants::QuantType,
    },
}

impl Encoding {
    /// Whether the tensor holds ternary codes.
    pub fn is_ternary(&self) -> bool {
        !matches!(self, Self::Float { .. } | Self::Quant { .. })
    }

    /// A short name for reports.
    pub fn label(&self) -> String {
        match self {
            Self::Float { dtype } => format!("{dtype:?}").to_uppercase(),
            Self::HfPacked { convention, .. } => format!("U8 packed ({convention:?})"),
            Self::Latent { dtype } => format!("{} latent", format!("{dtype:?}").to_uppercase()),
            Self::Tq1_0 => "TQ1_0".to_owned(),
            Self::Tq2_0 => "TQ2_0".to_owned(),
            Self::I2s => "I2_S".to_owned(),
            Self::Quant { format } => format.name().to_owned(),
        }
    }
}

/// One logical tensor of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorInfo {
    /// Its name in the checkpoint.
    pub name: String,
    /// Its logical shape, row-major (PyTorch order; GGUF dims are reversed into this).
    pub shape: Vec<usize>,
    /// How it is stored.
    pub encoding: Encoding,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Scales of a ternary tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum TernaryScales {
    /// One factor for the whole tensor (HF, online, I2_S).
    PerTensor(f32),
    /// One factor per block of consecutive elements (TQ1_0, TQ2_0: 256).
    PerBlock {
        /// Elements per block.
        block_elements: usize,
        /// The factor of each block.
        scales: Vec<f32>,
    },
}

/// A ternary tensor as codes in {-1, 0, 1} and the scales that turn them into weights;
/// what a BitLinear forward (8-bit activations times ternary weights) needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Ternary {
    /// Logical shape, row-major.
    pub shape: Vec<usize>,
    /// One code per element, row-major.
    pub codes: Vec<i8>,
    /// Factors: weight = code * scale.
    pub scales: TernaryScales,
}

impl Ternary {
    /// The factor that applies to element `index`.
    pub fn scale_of(&self, index: usize) -> f32 {
        match &self.scales {
            TernaryScales::PerTensor(scale) => *scale,
            TernaryScales::PerBlock {
                block_elements,
                scales,
            } => scales[index / block_elements],
        }
    }

    /// Weights, `code * scale` per element.
    pub fn dequantize(&self) -> Vec<f32> {
        self.codes
            .iter()
            .enumerate()
            .map(|(i, &q)| f32::from(q) * self.scale_of(i))
            .collect()
    }
}
