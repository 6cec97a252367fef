//! Read every public BitNet b1.58 checkpoint format, dequantize it exactly, convert it to
//! a float Hugging Face checkpoint, and verify the result.
//!
//! Formats:
//!
//! * **HF packed** (`quantization_config.quant_method = "bitnet"`): U8 `[out/4, in]`
//!   weights with a per-tensor `weight_scale`; `linear_class` decides whether the scale
//!   multiplies (`autobitlinear`) or divides (`bitlinear`, the default). Sharded
//!   checkpoints are read through `model.safetensors.index.json`.
//! * **HF online** (`quantization_mode = "online"`): bf16/f32 latent weights,
//!   ternarized per tensor with absmean and round-half-to-even, as transformers does.
//! * **GGUF** TQ1_0 and TQ2_0, bitnet.cpp's I2_S, and F32/F16/BF16 pass-through.
//!
//! Every dequantized weight is exactly `code * scale` in f32, the value transformers,
//! ggml and the `gguf` Python package compute, so results can be compared with `==`.
//! Writers for every format ([`hf::write_bitnet_checkpoint`], [`gguf::GgufWriter`]) make
//! fixtures and round trips possible. Nothing here needs libtorch.
//!
//! ```
//! use bitnet_dequant::Checkpoint;
//! use bitnet_dequant::gguf::{GgmlType, GgufWriter};
//!
//! # let dir = std::env::temp_dir().join(format!("bitnet-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! // A 2x256 ternary weight (values -0.5, 0, 0.5) stored as TQ2_0.
//! let weights: Vec<f32> = (0..512).map(|i| [-0.5, 0.0, 0.5][i % 3]).collect();
//! let path = dir.join("tiny.gguf");
//! GgufWriter::new()
//!     .quantized_tensor("blk.0.ffn_up.weight", &[2, 256], GgmlType::Tq2_0, &weights)?
//!     .write(&path)?;
//!
//! let checkpoint = Checkpoint::open(&path)?;
//! assert_eq!(checkpoint.tensors()[0].shape, vec![2, 256]);
//! assert_eq!(checkpoint.dequantize("blk.0.ffn_up.weight")?, weights);
//! let ternary = checkpoint.ternary("blk.0.ffn_up.weight")?.expect("a ternary tensor");
//! assert_eq!(&ternary.codes[..3], &[-1, 0, 1]);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), bitnet_dequant::Error>(())
//! ```
#![doc(test(attr(deny(warnings))))]

pub mod codec;
pub mod convert;
mod error;
pub mod gguf;
pub mod gguf_model;
pub mod hf;
pub mod io;
pub mod quants;
pub mod reference;
pub mod simd;
mod tensor;

use std::path::{Path, PathBuf};

pub use error::{Error, Result};
pub use tensor::{Encoding, FloatDtype, ScaleConvention, TensorInfo, Ternary, TernaryScales};

/// Whether `path` is a file that starts with the GGUF magic bytes (whatever its name).
pub fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    path.is_file()
        && std::fs::File::open(path)
            .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut magic))
            .is_ok()
        && &magic == b"GGUF"
}

/// Which container a checkpoint came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Format {
    /// Hugging Face safetensors with BitNet packed weights.
    HfPacked,
    /// Hugging Face safetensors with latent weights of an `online` BitNet config.
    HfOnline,
    /// Hugging Face safetensors without BitNet quantization (plain float).
    HfFloat,
    /// GGUF.
    Gguf,
}

/// Any checkpoint this crate reads.
pub enum Checkpoint {
    /// A Hugging Face folder or safetensors file.
    Hf(hf::HfCheckpoint),
    /// A GGUF file of loose tensors (GGUF names).
    Gguf(gguf::GgufFile),
    /// A llama-family GGUF model, seen with Hugging Face names (see [`gguf_model`]).
    GgufModel(gguf_model::GgufModel),
}

impl Checkpoint {
    /// Opens a checkpoint folder, a `.safetensors` file or a GGUF file (recognised by its
    /// magic bytes, whatever its name).
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::io(
                path,
                "cannot open",
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        if is_gguf(path) {
            let file = gguf::GgufFile::open(path)?;
            if gguf_model::GgufModel::is_model(&file) {
                return Ok(Self::GgufModel(gguf_model::GgufModel::from_file(file)?));
            }
            return Ok(Self::Gguf(file));
        }
        Ok(Self::Hf(hf::HfCheckpoint::open(path)?))
    }

    /// The container and, for HF, which kind of BitNet checkpoint.
    pub fn format(&self) -> Format {
        match self {
            Self::Gguf(_) | Self::GgufModel(_) => Format::Gguf,
            Self::Hf(hf) => {
                let tensors = hf.tensors();
                if tensors
                    .iter()
                    .any(|t| matches!(t.encoding, Encoding::HfPacked { .. }))
                {
                    Format::HfPacked
                } else if tensors
                    .iter()
                    .any(|t| matches!(t.encoding, Encoding::Latent { .. }))
                {
                    Format::HfOnline
                } else {
                    Format::HfFloat
                }
            }
        }
    }

    /// Where the checkpoint is (its folder or file).
    pub fn path(&self) -> PathBuf {
        match self {
            Self::Hf(hf) => hf.root().to_path_buf(),
            Self::Gguf(file) => file.path().to_path_buf(),
            Self::GgufModel(model) => model.gguf().path().to_path_buf(),
        }
    }

    /// Its logical tensors.
    pub fn tensors(&self) -> &[TensorInfo] {
        match self {
            Self::Hf(hf) => hf.tensors(),
            Self::Gguf(file) => file.tensors(),
            Self::GgufModel(model) => model.tensors(),
        }
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors()
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::NoSuchTensor {
                path: self.path(),
                tensor: name.to_owned(),
            })
    }

    /// Dequantizes a tensor into `out`; `parallel` spreads the work over rayon's threads.
    pub fn dequantize_into(&self, name: &str, out: &mut [f32], parallel: bool) -> Result<()> {
        match self {
            Self::Hf(hf) => hf.dequantize_into(name, out, parallel),
            Self::Gguf(file) => file.dequantize_into(name, out, parallel),
            Self::GgufModel(model) => model.dequantize_into(name, out, parallel),
        }
    }

    /// Dequantizes a tensor into a new vector.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.tensor(name)?.numel()];
        self.dequantize_into(name, &mut out, false)?;
        Ok(out)
    }

    /// Codes and scales of a ternary tensor (`None` for float tensors): what a BitLinear
    /// forward with 8-bit activations needs.
    pub fn ternary(&self, name: &str) -> Result<Option<Ternary>> {
        match self {
            Self::Hf(hf) => hf.ternary(name),
            Self::Gguf(file) => file.ternary(name),
            // The model types read here hold no ternary tensors.
            Self::GgufModel(model) => model.tensor(name).map(|_| None),
        }
    }

    /// A tensor's bytes as stored in the file (for a [`Checkpoint::GgufModel`], its GGUF
    /// source's, whose Q/K rows are in GGUF order).
    pub fn stored_bytes(&self, name: &str) -> Result<&[u8]> {
        match self {
            Self::Hf(hf) => hf.stored_bytes(name),
            Self::Gguf(file) => file.raw_bytes(name),
            Self::GgufModel(model) => model.raw_bytes(name),
        }
    }

    /// Releases a tensor's mapped pages once it has been read (a hint: the bytes stay
    /// readable), so reading a checkpoint tensor by tensor keeps little of it resident.
    pub fn release(&self, name: &str) {
        match self {
            Self::Hf(hf) => hf.release(name),
            Self::Gguf(file) => file.release(name),
            Self::GgufModel(model) => model.release(name),
        }
    }

    /// Total elements over all tensors.
    pub fn parameter_count(&self) -> usize {
        self.tensors().iter().map(TensorInfo::numel).sum()
    }
}
