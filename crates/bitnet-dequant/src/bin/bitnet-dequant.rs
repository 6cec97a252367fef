//! `bitnet-dequant`: inspect, convert and verify BitNet b1.58 checkpoints.

use std::path::PathBuf;
use std::process::ExitCode;

use bitnet_dequant::convert::{self, ConvertOptions, OutputDtype, Progress};
use bitnet_dequant::{Checkpoint, Encoding, Error, TernaryScales};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "bitnet-dequant",
    version,
    about = "Inspect, dequantize and verify BitNet b1.58 checkpoints (HF packed or online, GGUF TQ1_0/TQ2_0/I2_S)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Dtype {
    F32,
    Bf16,
}

#[derive(Subcommand)]
enum Command {
    /// Show format, tensors, dtypes, scales and parameter count.
    Inspect {
        /// A checkpoint folder, a .safetensors file or a .gguf file.
        path: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a float HF checkpoint (folder) with every ternary weight dequantized.
    Convert {
        /// The checkpoint to convert.
        input: PathBuf,
        /// The output folder (must not exist unless --overwrite).
        output: PathBuf,
        /// Output element type.
        #[arg(long, value_enum, default_value = "f32")]
        dtype: Dtype,
        /// Largest shard, in bytes (suffixes KB, MB, GB accepted).
        #[arg(long, default_value = "5GB", value_parser = parse_size)]
        max_shard_size: u64,
        /// Replace an existing output folder once the new one is complete.
        #[arg(long)]
        overwrite: bool,
        /// Decode on one thread.
        #[arg(long)]
        single_thread: bool,
    },
    /// Check that every output weight equals what the input encodes (code x scale).
    Verify {
        /// The original checkpoint.
        input: PathBuf,
        /// The converted checkpoint.
        output: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_size(text: &str) -> Result<u64, String> {
    let upper = text.trim().to_ascii_uppercase();
    let (digits, factor) = [
        ("GB", 1_000_000_000u64),
        ("MB", 1_000_000),
        ("KB", 1_000),
        ("B", 1),
    ]
    .iter()
    .find_map(|(suffix, factor)| upper.strip_suffix(suffix).map(|d| (d.to_owned(), *factor)))
    .unwrap_or((upper.clone(), 1));
    let value: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a size like 500MB or 5GB"))?;
    if value == 0 {
        return Err("the shard size must be positive".to_owned());
    }
    Ok(value * factor)
}

struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn start(&mut self, bytes_total: u64) {
        self.0.set_length(bytes_total);
    }

    fn tensor_done(&mut self, name: &str, bytes: u64) {
        self.0.set_message(name.to_owned());
        self.0.inc(bytes);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Inspect { path, json } => inspect(&path, json),
        Command::Convert {
            input,
            output,
            dtype,
            max_shard_size,
            overwrite,
            single_thread,
        } => {
            let options = ConvertOptions {
                dtype: match dtype {
                    Dtype::F32 => OutputDtype::F32,
                    Dtype::Bf16 => OutputDtype::Bf16,
                },
                max_shard_bytes: max_shard_size,
                overwrite,
                parallel: !single_thread,
            };
            let bar = indicatif::ProgressBar::new(0).with_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {wide_msg}",
                )
                .expect("a valid template"),
            );
            let mut progress = Bar(bar);
            let result = convert::convert(&input, &output, &options, &mut progress);
            progress.0.finish_and_clear();
            result.map(|report| {
                println!(
                    "wrote {} ({:?} input): {} tensors ({} ternary and {} block-quantized dequantized), {} parameters, {:.1} MB in {} shard(s), {:.2} s; files: {}",
                    output.display(),
                    report.format,
                    report.tensors,
                    report.ternary_tensors,
                    report.quantized_tensors,
                    report.parameters,
                    report.bytes as f64 / 1e6,
                    report.shards,
                    report.seconds,
                    report.files.join(", ")
                );
                true
            })
        }
        Command::Verify {
            input,
            output,
            json,
        } => verify(&input, &output, json),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn inspect(path: &std::path::Path, json: bool) -> Result<bool, Error> {
    let checkpoint = Checkpoint::open(path)?;
    let mut rows = Vec::new();
    for info in checkpoint.tensors() {
        let scale = match &info.encoding {
            Encoding::HfPacked {
                stored_scale,
                convention,
                ..
            } => format!("weight_scale {stored_scale} ({convention:?})"),
            Encoding::Latent { .. } | Encoding::Tq1_0 | Encoding::Tq2_0 | Encoding::I2s => {
                match checkpoint.ternary(&info.name)?.map(|t| t.scales) {
                    Some(TernaryScales::PerTensor(s)) => format!("scale {s}"),
                    Some(TernaryScales::PerBlock { scales, .. }) => {
                        let min = scales.iter().copied().fold(f32::INFINITY, f32::min);
                        let max = scales.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        format!("{} block scales in [{min}, {max}]", scales.len())
                    }
                    None => String::new(),
                }
            }
            Encoding::Float { .. } | Encoding::Quant { .. } => String::new(),
        };
        rows.push((info, scale));
    }
    if json {
        let tensors: Vec<_> = rows
            .iter()
            .map(|(info, scale)| {
                serde_json::json!({
                    "name": info.name, "shape": info.shape,
                    "encoding": info.encoding.label(), "scale": scale,
                })
            })
            .collect();
        let mut report = serde_json::json!({
            "path": checkpoint.path(),
            "format": checkpoint.format(),
            "parameters": checkpoint.parameter_count(),
            "tensors": tensors,
        });
        if let Checkpoint::Gguf(file) = &checkpoint {
            report["metadata"] = serde_json::to_value(
                file.metadata()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<std::collections::BTreeMap<_, _>>(),
            )
            .unwrap_or_default();
        }
        println!("{report:#}");
        return Ok(true);
    }
    println!("{}", checkpoint.path().display());
    println!("format      {:?}", checkpoint.format());
    println!("tensors     {}", rows.len());
    println!("parameters  {}", checkpoint.parameter_count());
    if let Checkpoint::Gguf(file) = &checkpoint {
        println!(
            "gguf        version {}, alignment {}",
            file.version(),
            file.alignment()
        );
        for (key, value) in file.metadata() {
            let shown = match value {
                bitnet_dequant::gguf::Value::Array(items) => format!("[{} items]", items.len()),
                other => serde_json::to_string(other).unwrap_or_default(),
            };
            println!("  {key} = {shown}");
        }
    }
    if let Checkpoint::Hf(hf) = &checkpoint
        && let Some(quant) = hf.quantization()
    {
        println!(
            "bitnet      linear_class {:?}, mode {:?}, not converted {:?}",
            quant.linear_class, quant.mode, quant.modules_to_not_convert
        );
    }
    let width = rows.iter().map(|(i, _)| i.name.len()).max().unwrap_or(0);
    for (info, scale) in rows {
        println!(
            "{:width$}  {:<20} {:<18} {scale}",
            info.name,
            format!("{:?}", info.shape),
            info.encoding.label()
        );
    }
    Ok(true)
}

fn verify(input: &std::path::Path, output: &std::path::Path, json: bool) -> Result<bool, Error> {
    let report = convert::verify(input, output)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return Ok(report.ok());
    }
    let width = report
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(0);
    for check in &report.tensors {
        let status = if check.ok() { "ok" } else { "FAIL" };
        let detail = match (&check.problem, check.first_mismatch) {
            (Some(problem), _) => problem.clone(),
            (None, Some((index, want, got))) => format!(
                "{} mismatches; first at {index}: expected {want}, found {got}",
                check.mismatches
            ),
            (None, None) => String::new(),
        };
        println!(
            "{status:4}  {:width$}  {:<18} {:>12} elements  {detail}",
            check.name, check.encoding, check.elements
        );
    }
    for name in &report.unexpected {
        println!("FAIL  {name}: in the output but not in the input");
    }
    let bad = report.tensors.iter().filter(|t| !t.ok()).count() + report.unexpected.len();
    let elements: usize = report.tensors.iter().map(|t| t.elements).sum();
    if bad == 0 {
        println!(
            "verified: {} tensors, {elements} elements, every value bit-exact",
            report.tensors.len()
        );
    } else {
        println!("verification FAILED: {bad} tensor(s) differ or are missing");
    }
    Ok(bad == 0)
}
