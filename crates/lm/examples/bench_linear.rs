//! `lm::cpu::linear` (this crate's kernel on libtorch's OpenMP threads) against
//! libtorch's own `linear` (MKL on x86 wheels), side by side in one process, on the
//! shapes of decoding and prefill: rows of input `m`, weight `[n, k]`, f32, CPU.
//! Prints libtorch's time over ours (above 1: ours is faster).
//!
//! ```sh
//! cargo xtask bench linear
//! cargo run --release -p lm --example bench_linear -- [THREADS]
//! ```

use std::time::Instant;

use tch::{Device, Kind, Tensor};

/// Median of `repeats` timings of `run`, after a warm-up, in microseconds.
fn median_micros(repeats: usize, run: &dyn Fn() -> Tensor) -> f64 {
    for _ in 0..3 {
        let _ = run();
    }
    let mut samples: Vec<f64> = (0..repeats)
        .map(|_| {
            let started = Instant::now();
            let _ = run();
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[repeats / 2]
}

fn main() {
    let threads: i32 = std::env::args()
        .nth(1)
        .map_or(2, |t| t.parse().expect("THREADS is a number"));
    tch::set_num_threads(threads);
    if !lm::cpu::kernel_available() {
        println!("no kernel on this processor: lm::cpu::linear is libtorch's linear here");
        return;
    }
    let rows = [1i64, 4, 16, 64, 256, 1024, 2048];
    println!("CPU, f32, {threads} threads; libtorch time / ours (median of 15), per rows m");
    println!(
        "{:<18}{}",
        "weight [n, k]",
        rows.iter()
            .map(|m| format!("{:>9}", format!("m={m}")))
            .collect::<String>()
    );
    let shapes = [
        // The default model (hidden 128, MLP 384), SmolLM-135M (576, 1536), its output
        // projection, and a 1B-class width.
        (128i64, 128i64),
        (384, 128),
        (128, 384),
        (576, 576),
        (1536, 576),
        (576, 1536),
        (49152, 576),
        (2048, 2048),
    ];
    for (n, k) in shapes {
        let w = Tensor::randn([n, k], (Kind::Float, Device::Cpu));
        let mut line = format!("{:<18}", format!("[{n}, {k}]"));
        for m in rows {
            let x = Tensor::randn([m, k], (Kind::Float, Device::Cpu));
            let ours = median_micros(15, &|| lm::cpu::linear(&x, &w, None));
            let torch = median_micros(15, &|| x.linear(&w, None::<&Tensor>));
            line += &format!("{:>9.2}", torch / ours);
        }
        println!("{line}");
    }

    // The packed kernel (GGUF Q4_1 blocks, as SmolLM2's layers are stored) against the
    // f32 kernel on the same weights: where reading 5.6x fewer bytes pays for decoding.
    println!("\nQ4_1 blocks: f32 kernel time / packed kernel time (same results, bit for bit)");
    for (n, k) in shapes {
        let rows_q4 = n as usize;
        let cols = k as usize;
        let bytes = random_q4_1(rows_q4 * cols / 32);
        let mut values = vec![0f32; rows_q4 * cols];
        bitnet_dequant::quants::dequantize(
            bitnet_dequant::quants::QuantType::Q4_1,
            &bytes,
            &mut values,
        )
        .expect("decodes");
        let w = Tensor::from_slice(&values).view([n, k]);
        let packed = lm::cpu::PackedMatrix::new(lm::cpu::PackFormat::Q4_1, rows_q4, cols, bytes)
            .expect("whole blocks");
        let mut line = format!("{:<18}", format!("[{n}, {k}]"));
        for m in rows {
            let x = Tensor::randn([m, k], (Kind::Float, Device::Cpu));
            let f32s = median_micros(15, &|| lm::cpu::linear(&x, &w, None));
            let blocks = median_micros(15, &|| {
                lm::cpu::packed_linear(&x, &packed, None).expect("the kernel applies")
            });
            line += &format!("{:>9.2}", f32s / blocks);
        }
        println!("{line}");
    }
}

/// `blocks` Q4_1 blocks with small finite f16 scales and offsets and random codes.
fn random_q4_1(blocks: usize) -> Vec<u8> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = Vec::with_capacity(blocks * 20);
    for _ in 0..blocks {
        for _ in 0..2 {
            let value = ((next() % 2001) as f32 - 1000.0) / 50_000.0;
            out.extend_from_slice(&half::f16::from_f32(value).to_le_bytes());
        }
        out.extend((0..16).map(|_| next() as u8));
    }
    out
}
