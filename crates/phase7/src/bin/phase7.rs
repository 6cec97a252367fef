//! `phase7`: run the pipeline over a run directory.
//!
//! ```sh
//! phase7 run [--config F] [--preset default|quick|full] [--model DIR|FILE.gguf] [--handoff F] [--run-dir runs/ID]
//! phase7 resume RUN          # continue an interrupted run with its own config.toml
//! phase7 status RUN          # stages done, their time and files
//! phase7 report RUN          # report.md from the run's files
//! phase7 stage NAME --run RUN
//! phase7 config --print-default [--preset quick|full]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use phase7::run::RunDir;
use phase7::{Config, run_pipeline, run_stage};

#[derive(Parser)]
#[command(
    version,
    about = "One command from a Phase 6 model to a Phase 8 handoff"
)]
struct Cli {
    /// One JSON event per line on stdout (started, progress, done, skipped, log)
    /// instead of progress bars or plain lines on stderr.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a run (or continue the one in --run-dir with the same settings).
    Run {
        /// A TOML configuration (its `preset` key picks the base).
        #[arg(long)]
        config: Option<PathBuf>,
        /// A preset when no file is given: default, quick or full.
        #[arg(long, default_value = "default")]
        preset: String,
        /// The Phase 6 model: a Hugging Face folder or a llama-family .gguf file
        /// (overrides model.path).
        #[arg(long)]
        model: Option<PathBuf>,
        /// The Phase 6 handoff JSON (overrides model.handoff).
        #[arg(long)]
        handoff: Option<PathBuf>,
        /// R2's pre-quantization fallback checkpoint (overrides model.fallback).
        #[arg(long)]
        fallback: Option<PathBuf>,
        /// The run directory; default runs/<preset>-seed<seed>.
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// Overrides the seed.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Continue a run with the configuration it was started with.
    Resume {
        /// The run directory.
        run: PathBuf,
    },
    /// What a run has done.
    Status {
        /// The run directory.
        run: PathBuf,
    },
    /// Write the run's report.md, report.html and report/*.svg from its files; print the Markdown.
    Report {
        /// The run directory.
        run: PathBuf,
    },
    /// Run one stage of a run (its inputs must be done).
    Stage {
        /// handoff, dequantize, profile, plan, data, expert-K, search, validate or export.
        name: String,
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
    },
    /// Print the configuration.
    Config {
        /// Print the default configuration (of --preset) as TOML.
        #[arg(long)]
        print_default: bool,
        /// Preset.
        #[arg(long, default_value = "default")]
        preset: String,
    },
}

fn saved_config(run: &RunDir) -> phase7::Result<Config> {
    Config::load(&run.root.join("config.toml"))
}

fn main_result() -> phase7::Result<()> {
    let cli = Cli::parse();
    phase7::executor::apply_thread_env()?;
    let mut console = phase7::console::Console::new(cli.json);
    let mut sink = |line: &str| console.line(line);
    match cli.command {
        Command::Run {
            config,
            preset,
            model,
            handoff,
            fallback,
            run_dir,
            seed,
        } => {
            let mut config = match config {
                Some(path) => Config::load(&path)?,
                None => Config::preset(&preset)?,
            };
            if let Some(model) = model {
                config.model.path = model;
            }
            if handoff.is_some() {
                config.model.handoff = handoff;
            }
            if fallback.is_some() {
                config.model.fallback = fallback;
            }
            if let Some(seed) = seed {
                config.seed = seed;
            }
            config.check()?;
            config.check_model()?;
            let root = run_dir.unwrap_or_else(|| {
                PathBuf::from("runs").join(format!("{}-seed{}", config.preset, config.seed))
            });
            let run = RunDir::create(&root)?;
            let text = config.to_toml()?;
            bitnet_dequant::io::write_atomic(&root.join("config.toml"), text.as_bytes()).map_err(
                |e| phase7::Error::Io {
                    path: root.join("config.toml"),
                    message: e.to_string(),
                },
            )?;
            sink(&format!("run directory {}", root.display()));
            run_pipeline(&run, &config, &mut sink)?;
            sink(&format!(
                "finished: {}",
                root.join("export/handoff/handoff.json").display()
            ));
        }
        Command::Resume { run } => {
            let run = RunDir::open(&run)?;
            let config = saved_config(&run)?;
            run_pipeline(&run, &config, &mut sink)?;
            sink(&format!(
                "finished: {}",
                run.root.join("export/handoff/handoff.json").display()
            ));
        }
        Command::Status { run } => {
            let run = RunDir::open(&run)?;
            let manifest = run.manifest()?;
            let experts = if run.stage_dir("plan").join("plan.json").is_file() {
                phase7::stages::roles(&run)?.len()
            } else {
                0
            };
            let names = phase7::stage_names(experts);
            for name in &names {
                match manifest.stages.get(name) {
                    Some(record) => println!(
                        "{name:<12} done in {:>7.1} s, {} files",
                        record.seconds,
                        record.outputs.len()
                    ),
                    None => println!("{name:<12} not done"),
                }
            }
            let total: f64 = manifest.stages.values().map(|r| r.seconds).sum();
            println!(
                "{} of {} stages done{}, {total:.1} s in all",
                manifest.stages.len(),
                names.len(),
                if experts == 0 {
                    " (expert stages known once the plan exists)"
                } else {
                    ""
                }
            );
        }
        Command::Report { run } => {
            let run = RunDir::open(&run)?;
            print!("{}", phase7::report::write_report(&run)?.markdown());
        }
        Command::Stage { name, run } => {
            let run = RunDir::open(&run)?;
            let config = saved_config(&run)?;
            run_stage(&run, &config, &name, &mut sink)?;
        }
        Command::Config {
            print_default,
            preset,
        } => {
            if !print_default {
                return Err(phase7::Error::Input(
                    "nothing to do; pass --print-default".into(),
                ));
            }
            print!("{}", Config::preset(&preset)?.to_toml()?);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match main_result() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("phase7: {e}");
            ExitCode::FAILURE
        }
    }
}
