//! File plumbing: memory maps, atomic writes, and a streaming safetensors writer.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::ops::Deref;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The bytes of an input: a read-only memory map of a file, or a buffer in memory.
pub enum Bytes {
    /// A mapped file.
    Mapped(memmap2::Mmap),
    /// Bytes owned in memory (tests, fuzzing, data from elsewhere).
    Owned(Vec<u8>),
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Mapped(map) => map,
            Self::Owned(bytes) => bytes,
        }
    }
}

impl Bytes {
    /// Tells the kernel the pages of `range` are not needed for now, so a reader that
    /// goes through a large file tensor by tensor does not keep the whole file resident.
    /// The bytes stay readable (they are read from the file again when touched).
    /// Does nothing for owned bytes.
    pub fn release(&self, range: std::ops::Range<usize>) {
        let Self::Mapped(map) = self else {
            return;
        };
        const PAGE: usize = 4096;
        let base = map.as_ptr() as usize;
        // Whole pages inside the range only: neighbours may still be in use.
        let start = (base + range.start).div_ceil(PAGE) * PAGE - base;
        let end = ((base + range.end.min(map.len())) / PAGE * PAGE).saturating_sub(base);
        if end > start {
            // SAFETY: the map is read-only and file-backed; dropping its pages loses no
            // data (they are faulted in again from the file), so live slices stay valid.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
}

/// Maps a file read-only.
pub fn map_file(path: &Path) -> Result<Bytes> {
    let file = File::open(path).map_err(|e| Error::io(path, "cannot open", e))?;
    // SAFETY: the map is read-only; a file changed by another process while mapped is
    // outside what any reader of model files can defend against (safetensors, llama.cpp
    // and transformers all map the same way).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, "cannot map", e))?;
    Ok(Bytes::Mapped(map))
}

/// A file written under a temporary name and renamed into place by [`AtomicFile::commit`];
/// dropped without commit, it removes itself, so a failed write leaves nothing behind.
pub struct AtomicFile {
    path: PathBuf,
    temporary: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Starts writing `path` (through a temporary file beside it).
    pub fn create(path: &Path) -> Result<Self> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temporary = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let file = File::create(&temporary).map_err(|e| Error::io(path, "cannot write", e))?;
        Ok(Self {
            path: path.to_path_buf(),
            temporary,
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// Appends bytes.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let writer = self.writer.as_mut().expect("written after commit");
        writer
            .write_all(bytes)
            .map_err(|e| Error::io(&self.path, "cannot write", e))
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(mut self) -> Result<()> {
        let writer = self.writer.take().expect("committed twice");
        let file = writer
            .into_inner()
            .map_err(|e| Error::io(&self.path, "cannot write", e.into_error()))?;
        file.sync_all()
            .map_err(|e| Error::io(&self.path, "cannot sync", e))?;
        fs::rename(&self.temporary, &self.path)
            .map_err(|e| Error::io(&self.path, "cannot rename into place", e))?;
        if let Some(parent) = self.path.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.is_some() {
            self.writer = None;
            let _ = fs::remove_file(&self.temporary);
        }
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes)?;
    file.commit()
}

/// Makes a directory's entries durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|e| Error::io(dir, "cannot sync", e))
}

/// The dtype names of safetensors headers that this crate writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StDtype {
    /// `F32`
    F32,
    /// `BF16`
    Bf16,
    /// `F16`
    F16,
    /// `U8`
    U8,
}

impl StDtype {
    fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::Bf16 => "BF16",
            Self::F16 => "F16",
            Self::U8 => "U8",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 | Self::F16 => 2,
            Self::U8 => 1,
        }
    }
}

/// A tensor's place in a safetensors file being written.
#[derive(Debug, Clone)]
pub struct StEntry {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: StDtype,
    /// Shape.
    pub shape: Vec<usize>,
}

impl StEntry {
    /// Bytes of data.
    pub fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// Writes a safetensors file tensor by tensor: the header goes first (it needs only
/// names, dtypes and shapes), then each tensor's bytes in the declared order, so at
/// most one tensor is ever held in memory. The file appears only on [`finish`].
///
/// [`finish`]: StreamingSafetensors::finish
pub struct StreamingSafetensors {
    file: AtomicFile,
    entries: Vec<StEntry>,
    next: usize,
}

impl StreamingSafetensors {
    /// Starts a file with these tensors, in this order, and optional `__metadata__`.
    pub fn create(
        path: &Path,
        entries: Vec<StEntry>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Self> {
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            header.insert(
                "__metadata__".into(),
                serde_json::to_value(metadata).unwrap_or_default(),
            );
        }
        let mut offset = 0usize;
        for entry in &entries {
            let end = offset + entry.bytes();
            header.insert(
                entry.name.clone(),
                serde_json::json!({
                    "dtype": entry.dtype.name(),
                    "shape": entry.shape,
                    "data_offsets": [offset, end],
                }),
            );
            offset = end;
        }
        let mut json = serde_json::to_vec(&header).map_err(|e| Error::Invalid(e.to_string()))?;
        // The data section starts 8-aligned, as the format's writers do.
        while (json.len() + 8) % 8 != 0 {
            json.push(b' ');
        }
        let mut file = AtomicFile::create(path)?;
        file.write_all(&(json.len() as u64).to_le_bytes())?;
        file.write_all(&json)?;
        Ok(Self {
            file,
            entries,
            next: 0,
        })
    }

    /// Writes the next tensor's bytes; `name` and size must match the declared order.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let Some(entry) = self.entries.get(self.next) else {
            return Err(Error::Invalid(format!(
                "tensor `{name}` written after all declared tensors"
            )));
        };
        if entry.name != name || entry.bytes() != bytes.len() {
            return Err(Error::Invalid(format!(
                "tensor `{name}` ({} bytes) written where `{}` ({} bytes) was declared",
                bytes.len(),
                entry.name,
                entry.bytes()
            )));
        }
        self.next += 1;
        self.file.write_all(bytes)
    }

    /// Checks every tensor was written, then commits the file.
    pub fn finish(self) -> Result<()> {
        if self.next != self.entries.len() {
            return Err(Error::Invalid(format!(
                "only {} of {} tensors were written",
                self.next,
                self.entries.len()
            )));
        }
        self.file.commit()
    }
}

/// f32 values as little-endian bytes (a view on little-endian machines).
pub fn f32_bytes(values: &[f32]) -> &[u8] {
    #[cfg(target_endian = "little")]
    {
        // SAFETY: f32 has no invalid bit patterns and a stricter alignment than u8.
        unsafe {
            std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
        }
    }
    #[cfg(not(target_endian = "little"))]
    compile_error!("bitnet-dequant assumes a little-endian machine, as the file formats do")
}

/// Reads little-endian f32 values.
pub fn read_f32(bytes: &[u8], out: &mut [f32]) {
    for (v, chunk) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *v = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
}

/// Reads little-endian bf16 values into f32 (exact).
pub fn read_bf16(bytes: &[u8], out: &mut [f32]) {
    for (v, chunk) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *v = f32::from_bits(u32::from(u16::from_le_bytes([chunk[0], chunk[1]])) << 16);
    }
}

/// Reads little-endian f16 values into f32 (exact).
pub fn read_f16(bytes: &[u8], out: &mut [f32]) {
    for (v, chunk) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *v = half::f16::from_le_bytes([chunk[0], chunk[1]]).to_f32();
    }
}

/// Rounds f32 values to bf16 in place: afterwards the first `2 * values.len()` bytes of
/// the buffer are the little-endian bf16 values (returned as a byte view). Conversion
/// runs front to back and element `i`'s result lands at bytes `2i..2i+2`, never past an
/// element not yet read, so no second buffer is needed.
pub fn bf16_in_place(values: &mut [f32]) -> &[u8] {
    let n = values.len();
    // SAFETY: u32 has the size and alignment of f32, and every bit pattern is valid.
    let slots: &mut [u32] =
        unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u32>(), n) };
    for pair in 0..n.div_ceil(2) {
        let low = half::bf16::from_f32(f32::from_bits(slots[2 * pair])).to_bits();
        let high = match slots.get(2 * pair + 1) {
            Some(&bits) => half::bf16::from_f32(f32::from_bits(bits)).to_bits(),
            None => 0,
        };
        slots[pair] = u32::from(low) | (u32::from(high) << 16);
    }
    // SAFETY: the first 2n bytes of the buffer are initialised u32 slots.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), 2 * n) }
}

/// f32 values rounded to bf16 (nearest, ties to even), as little-endian bytes.
pub fn bf16_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 2);
    for &v in values {
        out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn bf16_in_place_equals_the_copying_conversion() {
        for n in [0usize, 1, 2, 3, 7, 64, 101] {
            let values: Vec<f32> = (0..n).map(|i| (i as f32 - 50.3) * 1.37e-3).collect();
            let expected = super::bf16_bytes(&values);
            let mut buffer = values.clone();
            assert_eq!(
                super::bf16_in_place(&mut buffer),
                expected.as_slice(),
                "n = {n}"
            );
        }
    }
}
