//! The `lm` command-line tool.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lm::device::{self, DeviceRequest};

#[derive(Parser)]
#[command(name = "lm", about = "Causal language models on libtorch", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Report the libtorch runtime (version, CUDA, CPU threads) and resolve a device.
    Runtime {
        /// auto, cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: DeviceRequest,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // Before anything else touches libtorch: loads its CUDA backend when present.
    let runtime = device::runtime();
    let cli = Cli::parse();
    match cli.command {
        Command::Runtime { device, json } => {
            let resolved = device::resolve(device);
            if json {
                let report = serde_json::json!({
                    "runtime": runtime,
                    "requested_device": device,
                    "device": resolved.as_ref().ok().map(|d| format!("{d:?}")),
                    "error": resolved.as_ref().err().map(ToString::to_string),
                });
                println!("{report:#}");
            } else {
                println!("{runtime}");
            }
            match resolved {
                Ok(resolved) => {
                    if !json {
                        println!("device          {device} -> {resolved:?}");
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
