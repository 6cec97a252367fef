//! GGUF (versions 2 and 3): metadata, tensor directory, the ternary types and llama.cpp's
//! common block types.
//!
//! Readable tensor types: F32 (0), F16 (1), BF16 (30), Q4_0 (2), Q4_1 (3), Q5_0 (6),
//! Q5_1 (7), Q8_0 (8), Q2_K to Q6_K (10 to 14; see [`crate::quants`]), TQ1_0 (34),
//! TQ2_0 (35), and I2_S (36) in files written by bitnet.cpp. Type 36 means I2_S only there: upstream
//! ggml used 36 for the since-removed IQ4_NL_4_4, so a 36 is accepted only when
//! `general.architecture` names a BitNet model (`bitnet`, `bitnet-25`, `bitnet-b1.58`,
//! ...) or `general.file_type` is bitnet.cpp's `MOSTLY_I2_S` (40).
//!
//! GGUF lists dimensions fastest-first (`ne0` is the row length); [`TensorInfo::shape`]
//! reverses them into the row-major order PyTorch and safetensors use.

use std::path::{Path, PathBuf};

use crate::codec::{
    self, I2S_BLOCK_ELEMENTS, TQ_BLOCK_ELEMENTS, TQ1_0_BLOCK_BYTES, TQ2_0_BLOCK_BYTES,
};
use crate::io::{AtomicFile, Bytes, map_file};
use crate::quants::{self, QuantType};
use crate::tensor::{Encoding, FloatDtype, TensorInfo, Ternary, TernaryScales};
use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: usize = 32;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: usize = 4;
/// bitnet.cpp's `LLAMA_FTYPE_MOSTLY_I2_S`.
const FILE_TYPE_I2_S: u32 = 40;

/// ggml tensor types this crate reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 0
    F32,
    /// 1
    F16,
    /// 30
    Bf16,
    /// 34
    Tq1_0,
    /// 35
    Tq2_0,
    /// 36 in bitnet.cpp files.
    I2s,
    /// llama.cpp's block types (2, 3, 6, 7, 8, 10 to 14).
    Quant(QuantType),
}

impl GgmlType {
    /// The type id written in files.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Bf16 => 30,
            Self::Tq1_0 => 34,
            Self::Tq2_0 => 35,
            Self::I2s => 36,
            Self::Quant(kind) => kind.id(),
        }
    }

    /// Bytes of a tensor with `ne0` elements per row and `n` elements in all, or why the
    /// shape does not fit the type.
    pub fn tensor_bytes(self, ne0: usize, n: usize) -> std::result::Result<usize, String> {
        match self {
            Self::F32 => n.checked_mul(4).ok_or_else(|| "size overflows".to_owned()),
            Self::F16 | Self::Bf16 => n.checked_mul(2).ok_or_else(|| "size overflows".to_owned()),
            Self::Tq1_0 | Self::Tq2_0 => {
                if !ne0.is_multiple_of(TQ_BLOCK_ELEMENTS) {
                    return Err(format!(
                        "row length (ne0) {ne0} is not a multiple of {TQ_BLOCK_ELEMENTS}, as {self:?} requires"
                    ));
                }
                let block = if self == Self::Tq1_0 {
                    TQ1_0_BLOCK_BYTES
                } else {
                    TQ2_0_BLOCK_BYTES
                };
                Ok(n / TQ_BLOCK_ELEMENTS * block)
            }
            Self::I2s => {
                if !n.is_multiple_of(I2S_BLOCK_ELEMENTS) {
                    return Err(format!(
                        "element count {n} is not a multiple of {I2S_BLOCK_ELEMENTS}, as I2_S requires"
                    ));
                }
                Ok(codec::i2s_bytes(n))
            }
            Self::Quant(kind) => {
                let block = kind.block_elements();
                if !ne0.is_multiple_of(block) {
                    return Err(format!(
                        "row length (ne0) {ne0} is not a multiple of {block}, as {} requires",
                        kind.name()
                    ));
                }
                // Q8_0 and Q5_1 take more bytes than elements/4: a lying header can overflow.
                (n / block)
                    .checked_mul(kind.block_bytes())
                    .ok_or_else(|| "size overflows".to_owned())
            }
        }
    }

    fn encoding(self) -> Encoding {
        match self {
            Self::F32 => Encoding::Float {
                dtype: FloatDtype::F32,
            },
            Self::F16 => Encoding::Float {
                dtype: FloatDtype::F16,
            },
            Self::Bf16 => Encoding::Float {
                dtype: FloatDtype::Bf16,
            },
            Self::Tq1_0 => Encoding::Tq1_0,
            Self::Tq2_0 => Encoding::Tq2_0,
            Self::I2s => Encoding::I2s,
            Self::Quant(format) => Encoding::Quant { format },
        }
    }
}

/// A GGUF metadata value.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Value {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 6.
    F32(f32),
    /// Type 7.
    Bool(bool),
    /// Type 8.
    String(String),
    /// Type 9.
    Array(Vec<Value>),
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 12.
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, if it is one.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    fn type_id(&self) -> u32 {
        match self {
            Self::U8(_) => 0,
            Self::I8(_) => 1,
            Self::U16(_) => 2,
            Self::I16(_) => 3,
            Self::U32(_) => 4,
            Self::I32(_) => 5,
            Self::F32(_) => 6,
            Self::Bool(_) => 7,
            Self::String(_) => 8,
            Self::Array(_) => 9,
            Self::U64(_) => 10,
            Self::I64(_) => 11,
            Self::F64(_) => 12,
        }
    }
}

struct GgufTensor {
    ggml_type: GgmlType,
    /// Absolute byte range in the file.
    start: usize,
    end: usize,
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    bytes: Bytes,
    version: u32,
    alignment: usize,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    stored: Vec<GgufTensor>,
}

/// A bounds-checked reader over the header.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        match end {
            Some(end) => {
                let slice = &self.bytes[self.at..end];
                self.at = end;
                Ok(slice)
            }
            None => Err(Error::malformed(
                self.path,
                format!(
                    "truncated: {what} needs {n} bytes at offset {}, the file has {}",
                    self.at,
                    self.bytes.len()
                ),
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("length checked"))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count that must fit in what is left of the file at `min_item_bytes` per item.
    fn count(&mut self, what: &str, min_item_bytes: usize) -> Result<usize> {
        let count = self.u64(what)?;
        let left = (self.bytes.len() - self.at) as u64;
        if count.saturating_mul(min_item_bytes.max(1) as u64) > left {
            return Err(Error::malformed(
                self.path,
                format!(
                    "truncated or corrupt: {what} is {count}, more than the {left} bytes left \
                     in the file can hold"
                ),
            ));
        }
        Ok(count as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.count(what, 1)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::malformed(self.path, format!("{what} is not UTF-8")))
    }

    fn value(&mut self, type_id: u32, key: &str, depth: usize) -> Result<Value> {
        Ok(match type_id {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(i8::from_le_bytes(self.array(key)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                other => {
                    return Err(Error::malformed(
                        self.path,
                        format!("metadata `{key}`: bool byte is {other}, expected 0 or 1"),
                    ));
                }
            },
            8 => Value::String(self.string(key)?),
            9 => {
                if depth > 0 {
                    return Err(Error::malformed(
                        self.path,
                        format!("metadata `{key}`: nested arrays are not part of GGUF"),
                    ));
                }
                let element_type = self.u32(key)?;
                let min_bytes = match element_type {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    _ => 8,
                };
                let len = self.count(key, min_bytes)?;
                let mut items = Vec::with_capacity(len);
                for _ in 0..len {
                    items.push(self.value(element_type, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            other => {
                return Err(Error::malformed(
                    self.path,
                    format!("metadata `{key}` has value type {other}, expected 0..=12"),
                ));
            }
        })
    }
}

impl GgufFile {
    /// Opens and memory-maps a GGUF file.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = map_file(path)?;
        Self::from_bytes(path.to_path_buf(), bytes)
    }

    /// Parses GGUF bytes already in hand; `path` names them in errors.
    pub fn from_bytes(path: PathBuf, bytes: Bytes) -> Result<Self> {
        let mut cursor = Cursor {
            bytes: &bytes,
            at: 0,
            path: &path,
        };
        if cursor.array::<4>("the magic")? != *MAGIC {
            return Err(Error::malformed(
                &path,
                "is not a GGUF file (no `GGUF` magic)",
            ));
        }
        let version = cursor.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::Unsupported {
                path: path.clone(),
                message: format!("GGUF version {version}; versions 2 and 3 are read"),
            });
        }
        // A tensor info takes at least 8 (name length) + 4 + 4 + 8 bytes.
        let tensor_count = cursor.count("the tensor count", 24)?;
        let kv_count = cursor.count("the metadata count", 12)?;
        let mut metadata = Vec::with_capacity(kv_count);
        for _ in 0..kv_count {
            let key = cursor.string("a metadata key")?;
            let type_id = cursor.u32(&key)?;
            let value = cursor.value(type_id, &key, 0)?;
            metadata.push((key, value));
        }
        let lookup = |key: &str| metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        let alignment = match lookup("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(value) => match value.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a as usize,
                _ => {
                    return Err(Error::malformed(
                        &path,
                        format!("general.alignment is {value:?}, expected a power of two"),
                    ));
                }
            },
        };
        let architecture = lookup("general.architecture")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let file_type = lookup("general.file_type").and_then(Value::as_u64);
        let bitnet_cpp =
            architecture.starts_with("bitnet") || file_type == Some(u64::from(FILE_TYPE_I2_S));

        struct Raw {
            name: String,
            dims: Vec<usize>,
            type_id: u32,
            offset: u64,
        }
        let mut raw = Vec::with_capacity(tensor_count);
        for _ in 0..tensor_count {
            let name = cursor.string("a tensor name")?;
            let n_dims = cursor.u32(&name)? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(Error::tensor(
                    &path,
                    name,
                    format!("has {n_dims} dimensions, expected 1 to {MAX_DIMS}"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                let dim = cursor.u64(&name)?;
                dims.push(usize::try_from(dim).map_err(|_| {
                    Error::tensor(&path, name.clone(), format!("dimension {dim} is too large"))
                })?);
            }
            let type_id = cursor.u32(&name)?;
            let offset = cursor.u64(&name)?;
            raw.push(Raw {
                name,
                dims,
                type_id,
                offset,
            });
        }
        let data_start = cursor.at.div_ceil(alignment) * alignment;

        let mut tensors = Vec::with_capacity(raw.len());
        let mut stored = Vec::with_capacity(raw.len());
        let mut names = std::collections::HashSet::new();
        for Raw {
            name,
            dims,
            type_id,
            offset,
        } in raw
        {
            if !names.insert(name.clone()) {
                return Err(Error::tensor(&path, name, "appears twice"));
            }
            let ggml_type = match type_id {
                0 => GgmlType::F32,
                1 => GgmlType::F16,
                30 => GgmlType::Bf16,
                34 => GgmlType::Tq1_0,
                35 => GgmlType::Tq2_0,
                36 if bitnet_cpp => GgmlType::I2s,
                36 => {
                    return Err(Error::Unsupported {
                        path: path.clone(),
                        message: format!(
                            "tensor `{name}` has ggml type 36, which is I2_S only in bitnet.cpp \
                             files, and this file's architecture `{architecture}` (file type \
                             {file_type:?}) is not one"
                        ),
                    });
                }
                other => match QuantType::from_id(other) {
                    Some(kind) => GgmlType::Quant(kind),
                    None => {
                        return Err(Error::Unsupported {
                            path: path.clone(),
                            message: format!(
                                "tensor `{name}` has ggml type {other}; bitnet-dequant reads F32 \
                                 (0), F16 (1), BF16 (30), Q4_0 (2), Q4_1 (3), Q5_0 (6), Q5_1 (7), \
                                 Q8_0 (8), Q2_K to Q6_K (10 to 14), TQ1_0 (34), TQ2_0 (35) and \
                                 bitnet.cpp's I2_S (36); the IQ types are not read"
                            ),
                        });
                    }
                },
            };
            // The product of the non-zero dimensions must fit: then every partial product,
            // in any order (`TensorInfo::numel` multiplies the reversed shape), fits too,
            // even when a zero dimension makes the total 0.
            dims.iter()
                .filter(|&&d| d != 0)
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| Error::tensor(&path, name.clone(), "element count overflows"))?;
            let n: usize = dims.iter().product();
            let size = ggml_type
                .tensor_bytes(dims[0], n)
                .map_err(|message| Error::tensor(&path, name.clone(), message))?;
            if offset % alignment as u64 != 0 {
                return Err(Error::tensor(
                    &path,
                    name,
                    format!("data offset {offset} is not a multiple of the alignment {alignment}"),
                ));
            }
            let start = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(data_start));
            let end = start.and_then(|s| s.checked_add(size));
            let (Some(start), Some(end)) = (start, end) else {
                return Err(Error::tensor(&path, name, "data offset overflows"));
            };
            if end > bytes.len() {
                return Err(Error::tensor(
                    &path,
                    name,
                    format!(
                        "data at bytes {start}..{end} lies beyond the end of the file ({} bytes): \
                         the file is truncated or its header lies about sizes",
                        bytes.len()
                    ),
                ));
            }
            let mut shape = dims;
            shape.reverse();
            tensors.push(TensorInfo {
                name,
                shape,
                encoding: ggml_type.encoding(),
            });
            stored.push(GgufTensor {
                ggml_type,
                start,
                end,
            });
        }
        Ok(Self {
            path,
            bytes,
            version,
            alignment,
            metadata,
            tensors,
            stored,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment.
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The ggml type of a tensor.
    pub fn ggml_type(&self, name: &str) -> Option<GgmlType> {
        self.index(name).ok().map(|i| self.stored[i].ggml_type)
    }

    /// A tensor's stored bytes.
    pub fn raw_bytes(&self, name: &str) -> Result<&[u8]> {
        let i = self.index(name)?;
        Ok(&self.bytes[self.stored[i].start..self.stored[i].end])
    }

    /// Releases the mapped pages of a tensor once read; see [`Bytes::release`].
    pub fn release(&self, name: &str) {
        if let Ok(range) = self.stored_range(name) {
            self.bytes.release(range);
        }
    }

    /// Where a tensor's bytes lie in the file (absolute offsets).
    pub fn stored_range(&self, name: &str) -> Result<std::ops::Range<usize>> {
        let i = self.index(name)?;
        Ok(self.stored[i].start..self.stored[i].end)
    }

    fn index(&self, name: &str) -> Result<usize> {
        self.tensors
            .iter()
            .position(|t| t.name == name)
            .ok_or_else(|| Error::NoSuchTensor {
                path: self.path.clone(),
                tensor: name.to_owned(),
            })
    }

    /// Dequantizes a tensor into `out` (`numel` f32 values, row-major).
    pub fn dequantize_into(&self, name: &str, out: &mut [f32], parallel: bool) -> Result<()> {
        let i = self.index(name)?;
        let numel = self.tensors[i].numel();
        if out.len() != numel {
            return Err(Error::Invalid(format!(
                "output for `{name}` holds {} values, the tensor has {numel}",
                out.len()
            )));
        }
        let bytes = &self.bytes[self.stored[i].start..self.stored[i].end];
        let result = match (self.stored[i].ggml_type, parallel) {
            (GgmlType::F32, _) => {
                FloatDtype::F32.decode(bytes, out);
                Ok(())
            }
            (GgmlType::F16, _) => {
                FloatDtype::F16.decode(bytes, out);
                Ok(())
            }
            (GgmlType::Bf16, _) => {
                FloatDtype::Bf16.decode(bytes, out);
                Ok(())
            }
            (GgmlType::Tq1_0, false) => codec::tq1_0_dequantize(bytes, out),
            (GgmlType::Tq1_0, true) => codec::tq1_0_dequantize_par(bytes, out),
            (GgmlType::Tq2_0, false) => codec::tq2_0_dequantize(bytes, out),
            (GgmlType::Tq2_0, true) => codec::tq2_0_dequantize_par(bytes, out),
            (GgmlType::I2s, false) => codec::i2s_dequantize(bytes, out),
            (GgmlType::I2s, true) => codec::i2s_dequantize_par(bytes, out),
            (GgmlType::Quant(kind), false) => quants::dequantize(kind, bytes, out),
            (GgmlType::Quant(kind), true) => quants::dequantize_par(kind, bytes, out),
        };
        result.map_err(|e| Error::codec(&self.path, name, e))
    }

    /// Codes and scales of a ternary tensor; `None` for a float one.
    pub fn ternary(&self, name: &str) -> Result<Option<Ternary>> {
        let i = self.index(name)?;
        let info = &self.tensors[i];
        let ggml_type = self.stored[i].ggml_type;
        if !info.encoding.is_ternary() {
            return Ok(None);
        }
        // Decode with a unit scale in place of each real one, then read the scales
        // separately: codes come out as exact -1.0 / 0.0 / 1.0.
        let bytes = &self.bytes[self.stored[i].start..self.stored[i].end];
        let mut unit = bytes.to_vec();
        let mut scales = Vec::new();
        let map_err = |e| Error::codec(&self.path, name, e);
        match ggml_type {
            GgmlType::Tq1_0 | GgmlType::Tq2_0 => {
                let block = if ggml_type == GgmlType::Tq1_0 {
                    TQ1_0_BLOCK_BYTES
                } else {
                    TQ2_0_BLOCK_BYTES
                };
                for chunk in unit.chunks_exact_mut(block) {
                    let d = half::f16::from_le_bytes([chunk[block - 2], chunk[block - 1]]);
                    scales.push(d.to_f32());
                    chunk[block - 2..].copy_from_slice(&half::f16::ONE.to_le_bytes());
                }
            }
            GgmlType::I2s => {
                let at = info.numel() / 4;
                scales.push(codec::i2s_scale(bytes, info.numel()).map_err(map_err)?);
                unit[at..at + 4].copy_from_slice(&1f32.to_le_bytes());
            }
            _ => unreachable!("float types returned above"),
        }
        let mut values = vec![0f32; info.numel()];
        match ggml_type {
            GgmlType::Tq1_0 => codec::tq1_0_dequantize(&unit, &mut values),
            GgmlType::Tq2_0 => codec::tq2_0_dequantize(&unit, &mut values),
            _ => codec::i2s_dequantize(&unit, &mut values),
        }
        .map_err(map_err)?;
        if let Some(bad) = scales.iter().find(|s| !s.is_finite()) {
            return Err(Error::codec(
                &self.path,
                name,
                codec::CodecError::BadScale {
                    what: "a block scale",
                    value: *bad,
                    nonzero: false,
                },
            ));
        }
        let scales = if ggml_type == GgmlType::I2s {
            TernaryScales::PerTensor(scales[0])
        } else {
            TernaryScales::PerBlock {
                block_elements: TQ_BLOCK_ELEMENTS,
                scales,
            }
        };
        Ok(Some(Ternary {
            shape: info.shape.clone(),
            codes: values.iter().map(|&v| v as i8).collect(),
            scales,
        }))
    }
}

/// Writes GGUF version 3 files (atomically).
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<usize>, GgmlType, Vec<u8>)>,
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata entry.
    pub fn metadata(mut self, key: &str, value: Value) -> Self {
        self.metadata.push((key.to_owned(), value));
        self
    }

    /// Adds a tensor of row-major `shape` whose bytes are already encoded as `ggml_type`.
    pub fn tensor(
        mut self,
        name: &str,
        shape: &[usize],
        ggml_type: GgmlType,
        data: Vec<u8>,
    ) -> Result<Self> {
        let n: usize = shape.iter().product();
        let ne0 = shape.last().copied().unwrap_or(1);
        let expected = ggml_type
            .tensor_bytes(ne0, n)
            .map_err(|m| Error::Invalid(format!("tensor `{name}`: {m}")))?;
        if expected != data.len() {
            return Err(Error::Invalid(format!(
                "tensor `{name}`: {ggml_type:?} {shape:?} needs {expected} bytes, got {}",
                data.len()
            )));
        }
        self.tensors
            .push((name.to_owned(), shape.to_vec(), ggml_type, data));
        Ok(self)
    }

    /// Quantizes f32 weights of row-major `shape` into `ggml_type` and adds them.
    pub fn quantized_tensor(
        self,
        name: &str,
        shape: &[usize],
        ggml_type: GgmlType,
        values: &[f32],
    ) -> Result<Self> {
        let invalid = |e: codec::CodecError| Error::Invalid(format!("tensor `{name}`: {e}"));
        let data = match ggml_type {
            GgmlType::F32 => crate::io::f32_bytes(values).to_vec(),
            GgmlType::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            GgmlType::Bf16 => crate::io::bf16_bytes(values),
            GgmlType::Tq1_0 => codec::tq1_0_quantize(values).map_err(invalid)?,
            GgmlType::Tq2_0 => codec::tq2_0_quantize(values).map_err(invalid)?,
            GgmlType::I2s => codec::i2s_quantize(values).map_err(invalid)?,
            GgmlType::Quant(QuantType::Q8_0) => quants::q8_0_quantize(values).map_err(invalid)?,
            GgmlType::Quant(kind) => {
                return Err(Error::Invalid(format!(
                    "tensor `{name}`: quantizing to {} is not implemented (Q8_0 is); add bytes \
                     already quantized with `GgufWriter::tensor`",
                    kind.name()
                )));
            }
        };
        self.tensor(name, shape, ggml_type, data)
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        let put_string = |out: &mut Vec<u8>, s: &str| {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        };
        fn put_value(out: &mut Vec<u8>, value: &Value) {
            match value {
                Value::U8(v) => out.push(*v),
                Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
                Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
                Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
                Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
                Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
                Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
                Value::Bool(v) => out.push(u8::from(*v)),
                Value::String(s) => {
                    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
                Value::Array(items) => {
                    let element_type = items.first().map_or(0, Value::type_id);
                    out.extend_from_slice(&element_type.to_le_bytes());
                    out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                    for item in items {
                        put_value(out, item);
                    }
                }
                Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
                Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
                Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
            }
        }
        for (key, value) in &self.metadata {
            put_string(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            put_value(&mut out, value);
        }
        let mut offset = 0usize;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for (name, shape, ggml_type, data) in &self.tensors {
            put_string(&mut out, name);
            out.extend_from_slice(&(shape.len() as u32).to_le_bytes());
            for dim in shape.iter().rev() {
                out.extend_from_slice(&(*dim as u64).to_le_bytes());
            }
            out.extend_from_slice(&ggml_type.id().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len()).div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
        }
        out.resize(out.len().div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT, 0);
        let data_start = out.len();
        for ((_, _, _, data), offset) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + offset, 0);
            out.extend_from_slice(data);
        }
        out
    }

    /// Writes the file atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut file = AtomicFile::create(path)?;
        file.write_all(&self.to_bytes())?;
        file.commit()
    }
}
