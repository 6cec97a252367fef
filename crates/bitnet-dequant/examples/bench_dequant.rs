//! Dequantization throughput for a 4096x4096 ternary tensor in each format, next to a
//! plain memcpy of the output and the `gguf` Python package's numpy dequantization of
//! the same bytes (run side by side, same machine, same moment).
//!
//! ```sh
//! cargo xtask bench dequant        # sets up a Python venv with gguf, then runs this
//! cargo run --release -p bitnet-dequant --example bench_dequant   # Rust columns only,
//!                                  # unless $PHASE7_BENCH_PYTHON has numpy and gguf
//! ```
//!
//! Throughput is output bytes (f32) per second; each figure is the median of several
//! runs into a buffer that was already written once (no page faults in the timing).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use bitnet_dequant::codec;

const ROWS: usize = 4096;
const COLS: usize = 4096;
const REPEATS: usize = 15;

type Decoder = fn(&[u8], &mut [f32]) -> codec::CodecResult<()>;

fn median_seconds(mut run: impl FnMut()) -> f64 {
    run();
    let mut times: Vec<f64> = (0..REPEATS)
        .map(|_| {
            let started = Instant::now();
            run();
            started.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[REPEATS / 2]
}

fn main() {
    let n = ROWS * COLS;
    let out_bytes = (n * 4) as f64;
    // Seeded ternary codes (xorshift), gamma as in a 2B-4T layer.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let codes: Vec<i8> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 3) as i8 - 1
        })
        .collect();
    let gamma = 1.5546875f32;
    let weights: Vec<f32> = codes.iter().map(|&q| f32::from(q) * gamma).collect();
    let hf = codec::hf_pack(&codes, ROWS, COLS).expect("pack");
    let tq1 = codec::tq1_0_quantize(&weights).expect("tq1_0");
    let tq2 = codec::tq2_0_quantize(&weights).expect("tq2_0");
    let i2s = codec::i2s_quantize(&weights).expect("i2_s");

    let mut out = vec![1f32; n];
    let source = weights.clone();
    let memcpy = median_seconds(|| out.copy_from_slice(&source));
    let fill = median_seconds(|| out.fill(0.5));

    let hf_serial: Decoder = |b, o| codec::hf_dequantize(b, COLS, 1.5546875, o);
    let hf_parallel: Decoder = |b, o| codec::hf_dequantize_par(b, COLS, 1.5546875, o);
    let formats: [(&str, &[u8], Decoder, Decoder); 4] = [
        ("hf_packed", &hf, hf_serial, hf_parallel),
        (
            "tq1_0",
            &tq1,
            codec::tq1_0_dequantize,
            codec::tq1_0_dequantize_par,
        ),
        (
            "tq2_0",
            &tq2,
            codec::tq2_0_dequantize,
            codec::tq2_0_dequantize_par,
        ),
        (
            "i2_s",
            &i2s,
            codec::i2s_dequantize,
            codec::i2s_dequantize_par,
        ),
    ];

    let numpy = numpy_times(&hf, &tq1, &tq2, &i2s);
    let threads = rayon::current_num_threads();
    println!(
        "dequantization of a {ROWS}x{COLS} ternary tensor to f32 ({:.0} MB out); memcpy {:.2} GB/s, \
         fill (stores only) {:.2} GB/s; AVX2 kernels: {}",
        out_bytes / 1e6,
        out_bytes / memcpy / 1e9,
        out_bytes / fill / 1e9,
        if bitnet_dequant::simd::avx2() {
            "yes"
        } else {
            "no"
        }
    );
    println!(
        "{:<10} {:>12} {:>10} {:>14} {:>12} {:>12} {:>10}",
        "format",
        "1 thread",
        "of memcpy",
        format!("{threads} threads"),
        "numpy",
        "1T / numpy",
        "verified"
    );
    for (name, bytes, serial, parallel) in formats {
        let single = median_seconds(|| serial(bytes, &mut out).expect("decodes"));
        let exact = out == weights;
        let multi = median_seconds(|| parallel(bytes, &mut out).expect("decodes"));
        let exact = exact && out == weights;
        let numpy_column = match numpy
            .as_ref()
            .and_then(|t| t.get(name))
            .and_then(|v| v.as_f64())
        {
            Some(seconds) => (
                format!("{:.2} GB/s", out_bytes / seconds / 1e9),
                format!("{:.1}x", seconds / single),
            ),
            None => ("n/a".to_owned(), "n/a".to_owned()),
        };
        println!(
            "{name:<10} {:>7.2} GB/s {:>9.0}% {:>9.2} GB/s {:>12} {:>12} {:>10}",
            out_bytes / single / 1e9,
            100.0 * memcpy / single,
            out_bytes / multi / 1e9,
            numpy_column.0,
            numpy_column.1,
            if exact { "exact" } else { "WRONG" }
        );
    }
    if let Some(times) = &numpy
        && times["consistent"] != serde_json::Value::Bool(true)
    {
        println!("WARNING: the numpy paths did not all decode the same tensor");
    }
    if numpy.is_none() {
        println!(
            "numpy columns need a Python with numpy and gguf in $PHASE7_BENCH_PYTHON \
             (`cargo xtask bench dequant` sets one up)"
        );
    }
}

/// Runs `scripts/bench_numpy.py` on the same bytes; `None` when no suitable Python.
fn numpy_times(hf: &[u8], tq1: &[u8], tq2: &[u8], i2s: &[u8]) -> Option<serde_json::Value> {
    let python = std::env::var("PHASE7_BENCH_PYTHON").ok()?;
    let dir = std::env::temp_dir().join(format!("bench-dequant-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    for (name, bytes) in [
        ("hf_packed", hf),
        ("tq1_0", tq1),
        ("tq2_0", tq2),
        ("i2_s", i2s),
    ] {
        std::fs::write(dir.join(format!("{name}.bin")), bytes).ok()?;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_numpy.py");
    let output = Command::new(python)
        .arg(script)
        .arg(&dir)
        .args([ROWS.to_string(), COLS.to_string(), REPEATS.to_string()])
        // One thread, like the Rust single-thread column.
        .env("OMP_NUM_THREADS", "1")
        .env("OPENBLAS_NUM_THREADS", "1")
        .output()
        .ok();
    let _ = std::fs::remove_dir_all(&dir);
    let output = output?;
    if !output.status.success() {
        eprintln!(
            "numpy benchmark failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        return None;
    }
    serde_json::from_slice(&output.stdout).ok()
}
