//! Records and the JSONL file that holds them: one line per `log` call,
//! `{"seq":N,"step":S,"time":T,"metrics":{"key":value,...}}`. Non-finite values are
//! written as the strings `"NaN"`, `"Infinity"` and `"-Infinity"` (JSON has no such
//! numbers). Lines are only ever appended; a line cut short by a killed process is
//! removed when the file is opened again, so every complete line is a record.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result, io_error};

/// One `log` call.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Its place in the run's history, from 0, without gaps.
    pub seq: u64,
    /// The caller's step.
    pub step: u64,
    /// Unix time in seconds.
    pub time: f64,
    /// Metric keys and values, in the order logged.
    pub metrics: Vec<(String, f64)>,
}

fn write_number(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("\"NaN\"");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 {
            "\"Infinity\""
        } else {
            "\"-Infinity\""
        });
    } else {
        // `{}` on f64 round-trips exactly and never uses an exponent: valid JSON.
        let _ = write!(out, "{value}");
    }
}

impl Record {
    /// The record as one JSON line (with its newline).
    pub fn to_line(&self) -> String {
        let mut out = String::with_capacity(48 + self.metrics.len() * 32);
        let _ = write!(
            out,
            "{{\"seq\":{},\"step\":{},\"time\":{:.6},\"metrics\":{{",
            self.seq, self.step, self.time
        );
        for (i, (key, value)) in self.metrics.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::Value::String(key.clone()).to_string());
            out.push(':');
            write_number(&mut out, *value);
        }
        out.push_str("}}\n");
        out
    }

    /// Parses one line.
    pub fn from_line(line: &str) -> std::result::Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let number = |key: &str| {
            value[key]
                .as_f64()
                .ok_or(format!("`{key}` is not a number"))
        };
        let metrics = value["metrics"]
            .as_object()
            .ok_or("`metrics` is not an object")?
            .iter()
            .map(|(k, v)| {
                let x = match v {
                    serde_json::Value::Number(n) => n.as_f64(),
                    serde_json::Value::String(s) => match s.as_str() {
                        "NaN" => Some(f64::NAN),
                        "Infinity" => Some(f64::INFINITY),
                        "-Infinity" => Some(f64::NEG_INFINITY),
                        _ => None,
                    },
                    _ => None,
                };
                x.map(|x| (k.clone(), x))
                    .ok_or(format!("metric `{k}` is {v}, not a number"))
            })
            .collect::<std::result::Result<_, String>>()?;
        Ok(Self {
            seq: value["seq"].as_u64().ok_or("`seq` is not an integer")?,
            step: value["step"].as_u64().ok_or("`step` is not an integer")?,
            time: number("time")?,
            metrics,
        })
    }
}

/// Appends records to a JSONL file.
pub struct JsonlWriter {
    path: PathBuf,
    file: BufWriter<File>,
    next_seq: u64,
}

impl JsonlWriter {
    /// Opens (or creates) the file; a cut-short last line is removed; numbering continues
    /// after the last record.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(|e| io_error(path, e))?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(|e| io_error(path, e))?;
        let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < text.len() {
            file.set_len(complete as u64)
                .map_err(|e| io_error(path, e))?;
        }
        let next_seq = match text[..complete]
            .split(|&b| b == b'\n')
            .rfind(|l| !l.is_empty())
        {
            Some(last) => {
                let line = String::from_utf8_lossy(last);
                Record::from_line(&line)
                    .map_err(|e| io_error(path, format!("last record: {e}")))?
                    .seq
                    + 1
            }
            None => 0,
        };
        file.seek(SeekFrom::End(0)).map_err(|e| io_error(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file: BufWriter::with_capacity(1 << 16, file),
            next_seq,
        })
    }

    /// The number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends a record, numbering it; returns its number.
    pub fn append(&mut self, step: u64, time: f64, metrics: Vec<(String, f64)>) -> Result<u64> {
        let record = Record {
            seq: self.next_seq,
            step,
            time,
            metrics,
        };
        self.file
            .write_all(record.to_line().as_bytes())
            .map_err(|e| io_error(&self.path, e))?;
        self.next_seq += 1;
        Ok(record.seq)
    }

    /// Hands buffered lines to the operating system (they survive the process then).
    pub fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(|e| io_error(&self.path, e))
    }

    /// Flushes and waits until the lines are on disk.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.file
            .get_ref()
            .sync_data()
            .map_err(|e| io_error(&self.path, e))
    }
}

/// Reads the complete records after byte `offset`; returns them with the byte offset
/// after each.
pub fn read_from(path: &Path, offset: u64) -> Result<Vec<(Record, u64)>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(path, e)),
    };
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| io_error(path, e))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| io_error(path, e))?;
    let mut out = Vec::new();
    let mut position = offset;
    let mut rest = bytes.as_slice();
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(&rest[..end]);
        position += end as u64 + 1;
        if !line.trim().is_empty() {
            let record = Record::from_line(&line).map_err(|e| {
                Error::Data(format!(
                    "{}: the line ending at byte {position}: {e}",
                    path.display()
                ))
            })?;
            out.push((record, position));
        }
        rest = &rest[end + 1..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_non_finite_values() {
        let record = Record {
            seq: 3,
            step: 7,
            time: 1.5,
            metrics: vec![
                ("a/b".into(), 0.1),
                ("nan".into(), f64::NAN),
                ("inf".into(), f64::NEG_INFINITY),
                ("quote\"d".into(), 2.0),
            ],
        };
        let line = record.to_line();
        assert!(line.ends_with('\n'));
        let back = Record::from_line(line.trim_end()).unwrap();
        assert_eq!(back.seq, 3);
        assert_eq!(back.metrics[0], ("a/b".into(), 0.1));
        assert!(back.metrics[1].1.is_nan());
        assert_eq!(back.metrics[2].1, f64::NEG_INFINITY);
        assert_eq!(back.metrics[3].0, "quote\"d");
    }

    #[test]
    fn a_cut_short_line_is_dropped_and_numbering_continues() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut writer = JsonlWriter::open(&path).unwrap();
        writer.append(0, 1.0, vec![("x".into(), 1.0)]).unwrap();
        writer.append(1, 2.0, vec![("x".into(), 2.0)]).unwrap();
        writer.flush().unwrap();
        drop(writer);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"{\"seq\":2,\"ste");
        std::fs::write(&path, &bytes).unwrap();
        let mut writer = JsonlWriter::open(&path).unwrap();
        assert_eq!(writer.next_seq(), 2);
        writer.append(5, 3.0, vec![("x".into(), 3.0)]).unwrap();
        writer.flush().unwrap();
        let records = read_from(&path, 0).unwrap();
        assert_eq!(
            records.iter().map(|r| r.0.seq).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        let (_, after_first) = records[0];
        let rest = read_from(&path, after_first).unwrap();
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[1].0.step, 5);
    }
}
