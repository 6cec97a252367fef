//! Transformer² singular-value fine-tuning (SVF) experts for `lm` models.
//!
//! An expert rescales the singular values of selected weight matrices:
//! `W' = U diag(s * f(z)) V^T`, one vector `z` per matrix. This crate
//!
//! * decomposes the selected weights once ([`Decomposition`], cached in a safetensors
//!   file keyed by a hash of the weights and the selection),
//! * stores experts as named z-vectors with metadata ([`Expert`]),
//! * composes them as the reference code does (`f = sigmoid`, then the nuclear norm
//!   restored) or as the paper writes (`f(z) = z`, nothing else), alone or as mixtures
//!   `f = sum_k alpha_k f(z_k)` with one alpha per expert or per expert and matrix
//!   ([`Composition`], [`Mixture`]),
//! * applies them either factorized — `y = ((x V) * m) U^T`, no dense `W'` built,
//!   differentiable in z and alpha, a new mixture costs nothing — or merged into dense
//!   weights for deployment ([`Svf`]).
//!
//! ```
//! use svf::{Composition, Decomposition, Expert, Mixture, Selection, Svf};
//! use tch::{Device, Kind, Tensor};
//!
//! # let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../lm/tests/fixtures/llama");
//! let mut model = lm::CausalLm::load(&dir, Device::Cpu, Kind::Float)?;
//! let ids = Tensor::from_slice(&[5i64, 9, 14, 3]).view([1, 4]);
//! let base = model.forward(&ids, None, None)?;
//!
//! let decomposition = Decomposition::compute(&mut model, &Selection::mlp(), false)?;
//! let (z_params, lora_params) = svf::parameter_counts(&decomposition, 16);
//! assert!(z_params * 10 < lora_params);
//! let math = Expert::random(&decomposition, "math", 0.1, 1.0, 7);
//! let mut svf = Svf::install(&mut model, decomposition, Composition::Reference)?;
//! svf.set_experts(&[&math], &Mixture::uniform(1))?;
//! svf.refresh()?; // factorized: y = ((x V) * m) U^T
//! let adapted = model.forward(&ids, None, None)?;
//! assert!((&adapted - &base).abs().max().double_value(&[]) > 1e-4);
//! svf.merge(&mut model)?; // the same model as dense weights
//! let merged = model.forward(&ids, None, None)?;
//! assert!((&adapted - &merged).abs().max().double_value(&[]) < 1e-4);
//! # Ok::<(), svf::Error>(())
//! ```

#![doc(test(attr(deny(warnings))))]

mod apply;
mod compose;
mod decompose;
mod error;
mod expert;

pub use apply::Svf;

/// The `__metadata__` of one of this crate's safetensors files, with errors that name it.
pub(crate) struct FileMetadata {
    path: std::path::PathBuf,
    fields: std::collections::HashMap<String, String>,
}

impl FileMetadata {
    /// Reads the metadata of `path` and checks its `format` and `version`.
    pub(crate) fn read(path: &std::path::Path, format: &str, version: &str) -> Result<Self> {
        let error = |message: String| Error::File {
            path: path.to_path_buf(),
            message,
        };
        let bytes = bitnet_dequant::io::map_file(path).map_err(|e| error(e.to_string()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| error(format!("not a valid safetensors file: {e}")))?;
        let fields = header.metadata().clone().unwrap_or_default();
        if fields.get("format").map(String::as_str) != Some(format)
            || fields.get("version").map(String::as_str) != Some(version)
        {
            return Err(error(format!("not a {format} version {version} file")));
        }
        Ok(Self {
            path: path.to_path_buf(),
            fields,
        })
    }

    /// An error about this file.
    pub(crate) fn error(&self, message: String) -> Error {
        Error::File {
            path: self.path.clone(),
            message,
        }
    }

    /// A field's text.
    pub(crate) fn field(&self, key: &str) -> Result<String> {
        self.fields
            .get(key)
            .cloned()
            .ok_or_else(|| self.error(format!("metadata `{key}` is missing")))
    }

    /// A field holding JSON, parsed.
    pub(crate) fn parse<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<T> {
        serde_json::from_str(&self.field(key)?)
            .map_err(|e| self.error(format!("metadata `{key}` is invalid: {e}")))
    }
}

pub use compose::{Composition, Mixture};
pub use decompose::{Decomposition, Factors, Selection};
pub use error::{Error, Result};
pub use expert::Expert;

/// Parameters of a LoRA adapter of `rank` on the same matrices (`rank * (in + out)` each),
/// next to the z parameters (`min(in, out)` each): the accounting of R8.
pub fn parameter_counts(decomposition: &Decomposition, rank: usize) -> (usize, usize) {
    decomposition
        .factors()
        .iter()
        .map(|f| (f.rank(), rank * (f.rows() + f.cols())))
        .fold((0, 0), |(z, lora), (a, b)| (z + a, lora + b))
}
