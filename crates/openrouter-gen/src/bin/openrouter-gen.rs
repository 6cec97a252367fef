//! `openrouter-gen`: estimate, generate and report training problems.
//!
//! ```sh
//! openrouter-gen estimate --specs specs.json [--config gen.toml]
//! openrouter-gen generate --specs specs.json --out DIR [--source auto|api|procedural|file] [--file curated.jsonl]
//! openrouter-gen report DIR
//! openrouter-gen mock [--port 8089]          # a loopback server that writes problems
//! openrouter-gen bench-client --base-url URL [--requests 20000] [--in-flight 16]
//! ```
//!
//! The key comes from `$OPENROUTER_API_KEY` (the variable's name is
//! `client.api_key_env` in the config); with `--source auto` (the default) and no key,
//! problems come from `synth-tasks`' procedural generators.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use openrouter_gen::client::{ApiKey, Client, Pricing};
use openrouter_gen::generate::{ApiSource, GeneratorConfig};
use openrouter_gen::mock::{MockServer, problem_writer};
use openrouter_gen::report::CostReport;
use openrouter_gen::source::{FileSource, ProblemSource, ProceduralSource, SourcedProblem};
use openrouter_gen::spec::{GenerationSpec, read_specs};
use openrouter_gen::{Error, Result};
use synth_tasks::dedup::DuplicateIndex;

#[derive(Parser)]
#[command(
    version,
    about = "Training problems from an OpenAI-compatible API, with a hard budget, a cache and offline fallbacks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SourceChoice {
    /// The API when its key is set, else procedural.
    Auto,
    /// The API (fails without a key unless the server needs none).
    Api,
    /// `synth-tasks`' procedural generators.
    Procedural,
    /// A JSONL file of curated problems (`--file`).
    File,
}

#[derive(clap::Args)]
struct Common {
    /// Dataset specs (JSON: one spec or an array, e.g. phase7's data/specs.json).
    #[arg(long)]
    specs: PathBuf,
    /// Generator settings (TOML; unknown keys are errors). Defaults otherwise.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Model (overrides the config).
    #[arg(long)]
    model: Option<String>,
    /// API base URL (overrides the config).
    #[arg(long)]
    base_url: Option<String>,
    /// Run budget in USD (overrides the config).
    #[arg(long)]
    budget_usd: Option<f64>,
    /// Requests in flight (overrides the config).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Cache folder (overrides the config).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Requests and USD the specs would take, before any generation request.
    Estimate {
        #[command(flatten)]
        common: Common,
    },
    /// Generate, check and deduplicate problems; write one JSONL per spec and the
    /// cost report into `--out`.
    Generate {
        #[command(flatten)]
        common: Common,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Where problems come from.
        #[arg(long, value_enum, default_value = "auto")]
        source: SourceChoice,
        /// The curated problems file of `--source file`.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Held-out prompts to stay away from (one per line, raw or `{"prompt": ...}`).
        #[arg(long)]
        held_out: Option<PathBuf>,
        /// Seed of the procedural source.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Plain progress lines instead of a bar.
        #[arg(long)]
        plain: bool,
    },
    /// Print the cost report of an output folder.
    Report {
        /// The folder `generate` wrote.
        dir: PathBuf,
    },
    /// Serve a loopback mock API that writes problems of `synth-tasks` domains.
    Mock {
        /// Port (0: any free one; the URL is printed).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Model name it answers as.
        #[arg(long, default_value = "mock/problem-writer")]
        model: String,
    },
    /// Client overhead: requests/s and CPU per request against a server (the mock).
    BenchClient {
        /// API base URL.
        #[arg(long)]
        base_url: String,
        /// Requests to send.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Requests in flight.
        #[arg(long, default_value_t = 16)]
        in_flight: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("openrouter-gen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Estimate { common } => {
            let (config, specs) = load(&common)?;
            let source = ApiSource::new(config, DuplicateIndex::default())?;
            let estimate = source.estimate(&specs)?;
            println!("| expert | requests | expected USD | worst case USD |\n|---|---:|---:|---:|");
            for (name, requests, expected, worst) in &estimate.per_expert {
                println!("| {name} | {requests} | {expected:.4} | {worst:.4} |");
            }
            println!(
                "| total | {} | {:.4} | {:.4} |\nrun cap ${:.2}: generation stops cleanly when the next request's worst case would pass it",
                estimate.requests, estimate.expected_usd, estimate.worst_case_usd, estimate.cap_usd
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate {
            common,
            out,
            source,
            file,
            held_out,
            seed,
            plain,
        } => generate(&common, &out, source, file, held_out, seed, plain),
        Command::Report { dir } => {
            let path = dir.join("report.json");
            let text = std::fs::read_to_string(&path).map_err(|e| file_error(&path, e))?;
            let report: CostReport = serde_json::from_str(&text)
                .map_err(|e| file_error(&path, format!("not a cost report: {e}")))?;
            print!("{}", report.to_markdown());
            Ok(ExitCode::SUCCESS)
        }
        Command::Mock { port, model } => {
            let price = Pricing {
                prompt: 1e-7,
                completion: 4e-7,
                request: 0.0,
            };
            let server = MockServer::start_on(
                &format!("127.0.0.1:{port}"),
                problem_writer(&model, price),
                false,
            )
            .map_err(|e| Error::Config(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
            println!("{}", server.base_url());
            server.wait();
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchClient {
            base_url,
            requests,
            in_flight,
        } => bench_client(&base_url, requests, in_flight),
    }
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::Config(format!("{}: {message}", path.display()))
}

fn load(common: &Common) -> Result<(GeneratorConfig, Vec<GenerationSpec>)> {
    let mut config = match &common.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
            toml::from_str(&text).map_err(|e| file_error(path, e))?
        }
        None => GeneratorConfig::default(),
    };
    if let Some(m) = &common.model {
        config.model = m.clone();
    }
    if let Some(u) = &common.base_url {
        config.client.base_url = u.clone();
    }
    if let Some(b) = common.budget_usd {
        config.budget_usd = b;
    }
    if let Some(c) = common.concurrency {
        config.concurrency = c;
    }
    if let Some(d) = &common.cache_dir {
        config.cache_dir = d.clone();
    }
    config.check()?;
    let specs = read_specs(&common.specs)?;
    Ok((config, specs))
}

fn read_held_out(path: Option<&Path>) -> Result<DuplicateIndex> {
    let Some(path) = path else {
        return Ok(DuplicateIndex::default());
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
    let mut index = DuplicateIndex::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let prompt = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) if v.get("prompt").and_then(|p| p.as_str()).is_some() => {
                v["prompt"].as_str().unwrap_or_default().to_owned()
            }
            _ => line.to_owned(),
        };
        index.add_held_out(&prompt);
    }
    Ok(index)
}

#[allow(clippy::too_many_arguments)]
fn generate(
    common: &Common,
    out: &Path,
    choice: SourceChoice,
    file: Option<PathBuf>,
    held_out: Option<PathBuf>,
    seed: u64,
    plain: bool,
) -> Result<ExitCode> {
    let (config, specs) = load(common)?;
    let held_out = read_held_out(held_out.as_deref())?;
    let has_key = ApiKey::from_env(&config.client.api_key_env).is_some();
    let choice = match choice {
        SourceChoice::Auto if has_key => SourceChoice::Api,
        SourceChoice::Auto => {
            eprintln!(
                "openrouter-gen: ${} is not set: problems come from synth-tasks' procedural generators",
                config.client.api_key_env
            );
            SourceChoice::Procedural
        }
        other => other,
    };
    let total: usize = specs.iter().map(|s| s.num_examples).sum();
    let bar = if plain || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {pos}/{len} requests ({eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    };
    let mut source: Box<dyn ProblemSource> = match choice {
        SourceChoice::Api => {
            let client = Client::new(config.client.clone())?;
            let mut api = ApiSource::with_client(config.clone(), client, held_out)?;
            let estimate = api.estimate(&specs)?;
            eprintln!(
                "openrouter-gen: {} problems from {} in about {} requests: expected ${:.4}, worst case ${:.4}, cap ${:.2}",
                total,
                config.model,
                estimate.requests,
                estimate.expected_usd,
                estimate.worst_case_usd,
                config.budget_usd
            );
            let bar = bar.clone();
            api.on_progress(move |p| {
                bar.set_length(p.requests_planned as u64);
                bar.set_position(p.requests_done as u64);
                bar.set_message(format!("{} ${:.4}", p.expert, p.spent_usd));
                if bar.is_hidden() {
                    eprintln!(
                        "progress {} {}/{} requests, ${:.4} spent",
                        p.expert, p.requests_done, p.requests_planned, p.spent_usd
                    );
                }
            });
            Box::new(api)
        }
        SourceChoice::Procedural => {
            Box::new(ProceduralSource::new(seed, held_out, config.near_duplicate))
        }
        SourceChoice::File => {
            let path =
                file.ok_or_else(|| Error::Config("--source file needs --file PATH".into()))?;
            Box::new(FileSource::open(&path, held_out, config.near_duplicate)?)
        }
        SourceChoice::Auto => unreachable!("resolved above"),
    };
    let started = Instant::now();
    let mut stop_error = None;
    for spec in &specs {
        bar.reset();
        let problems = source.problems(spec, spec.num_examples)?;
        write_problems(
            &out.join(format!("problems_{}.jsonl", spec.expert_id)),
            &problems,
        )?;
        eprintln!(
            "openrouter-gen: expert {} `{}`: {} of {} problems ({:.1} s)",
            spec.expert_id,
            spec.expert_name,
            problems.len(),
            spec.num_examples,
            started.elapsed().as_secs_f64()
        );
        let report = source.report();
        if let Some(stopped) = &report.stopped {
            stop_error = Some(stopped.clone());
            break;
        }
    }
    bar.finish_and_clear();
    let report = source.report();
    let json = serde_json::to_vec_pretty(&report).map_err(|e| Error::Config(e.to_string()))?;
    write_file(&out.join("report.json"), &json)?;
    write_file(&out.join("report.md"), report.to_markdown().as_bytes())?;
    eprintln!(
        "openrouter-gen: {} problems accepted, {} requests sent, {} from the cache, ${:.4} spent; report in {}",
        report.total.accepted,
        report.total.requests,
        report.total.cache_hits,
        report.total.usd,
        out.join("report.md").display()
    );
    match stop_error {
        Some(reason) => {
            eprintln!(
                "openrouter-gen: stopped early, everything generated so far is kept: {reason}"
            );
            // Running out of budget is a clean stop; a refusal (401, 402, ...) is a failure.
            if reason.starts_with("budget") {
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::FAILURE)
            }
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

fn write_problems(path: &Path, problems: &[SourcedProblem]) -> Result<()> {
    let mut text = String::new();
    for p in problems {
        text.push_str(&serde_json::to_string(p).map_err(|e| Error::Config(e.to_string()))?);
        text.push('\n');
    }
    write_file(path, text.as_bytes())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| file_error(parent, e))?;
    }
    let temporary = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&temporary)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&temporary, path)
    };
    write().map_err(|e| file_error(path, e))
}

/// Sends `requests` chat completions with `in_flight` threads; prints requests/s and
/// this process's CPU per request (user + system, from /proc/self/stat).
fn bench_client(base_url: &str, requests: usize, in_flight: usize) -> Result<ExitCode> {
    let config = openrouter_gen::client::ClientConfig {
        base_url: base_url.to_owned(),
        ..Default::default()
    };
    let client = Arc::new(Client::with_key(config, Some(ApiKey::new("sk-bench")))?);
    let body = serde_json::json!({
        "model": "mock/problem-writer",
        "messages": [{"role": "user", "content": "Domain: arithmetic\nDifficulty: 1\nWrite exactly 1 new problems"}],
        "seed": 1,
    });
    // Warm the connections.
    client.chat_once(&body)?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    let workers: Vec<_> = (0..in_flight)
        .map(|_| {
            let (client, next, body) = (client.clone(), next.clone(), body.clone());
            std::thread::spawn(move || -> std::result::Result<(), String> {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                    client.chat_once(&body).map_err(|e| e.to_string())?;
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| Error::Config("a bench worker panicked".into()))?
            .map_err(Error::Config)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu_before;
    println!(
        "{{\"requests\": {requests}, \"in_flight\": {in_flight}, \"seconds\": {seconds:.3}, \"requests_per_second\": {:.1}, \"cpu_us_per_request\": {:.1}}}",
        requests as f64 / seconds,
        cpu / requests as f64 * 1e6
    );
    Ok(ExitCode::SUCCESS)
}

/// User + system CPU seconds of this process (Linux; 0 elsewhere).
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at ") ".
    let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}
