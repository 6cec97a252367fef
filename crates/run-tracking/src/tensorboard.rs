//! TensorBoard event files with scalars, written by hand: the format is small (a
//! length-and-CRC framing around two protobuf messages), and the crates that write it
//! are unmaintained or need `protoc` at build time.
//!
//! Framing per record: `u64 LE length`, `u32 LE masked CRC-32C of those 8 bytes`, the
//! data, `u32 LE masked CRC-32C of the data`, with `mask(c) = ((c >> 15) | (c << 17)) +
//! 0xA282EAD8`. Data: an `Event` (`wall_time` = 1 double, `step` = 2 int64,
//! `file_version` = 3 string, `summary` = 5) whose `Summary` holds `Value`s (`tag` = 1,
//! `simple_value` = 2 float). TensorBoard stores scalars as f32.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crc::{CRC_32_ISCSI, Crc};

use crate::{Result, io_error};

const CASTAGNOLI: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

fn masked_crc(bytes: &[u8]) -> u32 {
    let c = CASTAGNOLI.checksum(bytes);
    c.rotate_right(15).wrapping_add(0xA282_EAD8)
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    varint(out, u64::from(field << 3 | 2));
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn event(wall_time: f64, step: u64, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(0x09); // field 1, 64-bit
    out.extend_from_slice(&wall_time.to_le_bytes());
    if step != 0 {
        out.push(0x10); // field 2, varint
        varint(&mut out, step);
    }
    body(&mut out);
    out
}

/// Writes one run's scalars to an event file in a folder.
pub struct EventWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

impl EventWriter {
    /// Creates `events.out.tfevents.<unix seconds>.<host>.<pid>.<n>` in `dir` (a new file
    /// per process: TensorBoard reads every file of the folder as one run).
    pub fn create(dir: &Path, wall_time: f64) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let mut n = 0;
        let path = loop {
            let name = format!(
                "events.out.tfevents.{:010}.{host}.{}.{n}",
                wall_time as u64,
                std::process::id()
            );
            let path = dir.join(name);
            if !path.exists() {
                break path;
            }
            n += 1;
        };
        let file = File::create(&path).map_err(|e| io_error(&path, e))?;
        let mut writer = Self {
            path,
            file: BufWriter::new(file),
        };
        let version = event(wall_time, 0, |out| bytes_field(out, 3, b"brain.Event:2"));
        writer.record(&version)?;
        Ok(writer)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let length = (data.len() as u64).to_le_bytes();
        let mut framed = Vec::with_capacity(data.len() + 16);
        framed.extend_from_slice(&length);
        framed.extend_from_slice(&masked_crc(&length).to_le_bytes());
        framed.extend_from_slice(data);
        framed.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file
            .write_all(&framed)
            .map_err(|e| io_error(&self.path, e))
    }

    /// Writes the scalars of one step as one event (values as f32).
    pub fn scalars(&mut self, step: u64, wall_time: f64, metrics: &[(String, f64)]) -> Result<()> {
        let data = event(wall_time, step, |out| {
            let mut summary = Vec::with_capacity(metrics.len() * 24);
            for (tag, value) in metrics {
                let mut v = Vec::with_capacity(tag.len() + 8);
                bytes_field(&mut v, 1, tag.as_bytes());
                v.push(0x15); // field 2, 32-bit
                v.extend_from_slice(&(*value as f32).to_le_bytes());
                bytes_field(&mut summary, 1, &v);
            }
            bytes_field(out, 5, &summary);
        });
        self.record(&data)
    }

    /// Hands buffered events to the operating system.
    pub fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(|e| io_error(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crc_is_castagnoli_masked() {
        // CRC-32C of "123456789" is 0xE3069283 (the standard check value).
        assert_eq!(CASTAGNOLI.checksum(b"123456789"), 0xE306_9283);
        // Masked as TensorBoard masks it (worked out by hand from the formula).
        assert_eq!(masked_crc(b"123456789"), 0xC78A_B0E5);
    }

    #[test]
    fn records_are_framed_and_the_first_is_the_file_version() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = EventWriter::create(dir.path(), 1_700_000_000.5).unwrap();
        writer
            .scalars(3, 1_700_000_001.0, &[("loss".into(), 0.25)])
            .unwrap();
        writer.flush().unwrap();
        let bytes = std::fs::read(writer.path()).unwrap();
        let mut rest = bytes.as_slice();
        let mut records = Vec::new();
        while !rest.is_empty() {
            let length = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            assert_eq!(
                u32::from_le_bytes(rest[8..12].try_into().unwrap()),
                masked_crc(&rest[..8])
            );
            let data = &rest[12..12 + length];
            assert_eq!(
                u32::from_le_bytes(rest[12 + length..16 + length].try_into().unwrap()),
                masked_crc(data)
            );
            records.push(data.to_vec());
            rest = &rest[16 + length..];
        }
        assert_eq!(records.len(), 2);
        assert!(records[0].ends_with(b"brain.Event:2"));
        let scalar = &records[1];
        assert!(scalar.windows(4).any(|w| w == b"loss"));
        assert!(scalar.windows(4).any(|w| w == 0.25f32.to_le_bytes()));
    }
}
