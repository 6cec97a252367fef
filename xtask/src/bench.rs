//! `cargo xtask bench <name>`: benchmarks that compare against a peer in Python, run side
//! by side in one process tree. The Python peers live in a private virtual environment
//! made once in the cache (`$PHASE7_BENCH_VENV`, else `~/.cache/phase7/bench-venv`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::setup;

/// Python packages of the peers, pinned.
const PEER_PACKAGES: &[&str] = &["gguf==0.19.0", "pymoo==0.6.2"];
/// Peers installed when they can be (pygmo has no wheel on some platforms).
const OPTIONAL_PEER_PACKAGES: &[&str] = &["pygmo==2.20.0"];

/// The benchmarks this command knows.
pub const BENCHES: &[&str] = &[
    "dequant",
    "convert-memory",
    "nsga2",
    "nsga2-scaling",
    "lm",
    "linear",
    "svf",
    "profile",
    "mixture",
    "tracking",
    "openrouter",
];

/// Runs `cargo <args>` in the repository with extra environment, failing on a non-zero exit.
fn cargo(root: &Path, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Result<()> {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.args(args).current_dir(root);
    for (key, value) in env {
        command.env(key, value);
    }
    let status = command.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// `cargo run --release --quiet -p <package> --example <example> -- <args>`.
fn run_example(
    root: &Path,
    package: &str,
    example: &str,
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> Result<()> {
    let mut all = vec![
        "run",
        "--release",
        "--quiet",
        "-p",
        package,
        "--example",
        example,
        "--",
    ];
    all.extend_from_slice(args);
    cargo(root, &all, env)
}

/// Runs benchmark `name`.
pub fn run(root: &Path, name: &str) -> Result<()> {
    match name {
        "dequant" => {
            let python = bench_python()?;
            run_example(
                root,
                "bitnet-dequant",
                "bench_dequant",
                &[],
                &[("PHASE7_BENCH_PYTHON", python.as_os_str())],
            )
        }
        "convert-memory" => convert_memory(root),
        "nsga2" => nsga2(root),
        "lm" => lm(root),
        "linear" => run_example(root, "lm", "bench_linear", &[], &[]),
        "svf" => {
            let models = setup::cache_dir("PHASE7_BENCH_MODELS", "bench-models")?;
            let generated: Vec<PathBuf> = ["tiny", "smollm-135m-shape"]
                .iter()
                .map(|name| models.join(name))
                .filter(|dir| dir.join("config.json").is_file())
                .collect();
            if generated.len() < 2 {
                bail!(
                    "the benchmark models are not in {} yet; `cargo xtask bench lm` makes them",
                    models.display()
                );
            }
            // The embedded default model first (a packed BitNet checkpoint, BitLinear).
            let default_model = root.join(crate::default_model::DEFAULT_DIR);
            let dirs: Vec<String> = std::iter::once(default_model)
                .filter(|dir| dir.join("config.json").is_file())
                .chain(generated)
                .map(|dir| dir.display().to_string())
                .collect();
            let args: Vec<&str> = dirs.iter().map(String::as_str).collect();
            run_example(root, "svf-experts", "bench_svf", &args, &[])
        }
        "nsga2-scaling" => run_example(root, "nsga2", "bench_scaling", &[], &[]),
        "profile" => {
            let default_model = root.join(crate::default_model::DEFAULT_DIR);
            let dir = default_model.display().to_string();
            run_example(root, "self-eval", "bench_profile", &[&dir, "7"], &[])
        }
        "mixture" => {
            let default_model = root.join(crate::default_model::DEFAULT_DIR);
            let dir = default_model.display().to_string();
            run_example(root, "self-eval", "bench_mixture", &[&dir, "7"], &[])
        }
        "tracking" => tracking(root),
        "openrouter" => openrouter(root),
        other => bail!("unknown benchmark `{other}`; known: {}", BENCHES.join(", ")),
    }
}

/// The venv's python, creating the venv (into a temporary folder, renamed when complete)
/// if it is missing.
fn bench_python() -> Result<PathBuf> {
    peer_python(
        "PHASE7_BENCH_VENV",
        "bench-venv",
        PEER_PACKAGES,
        OPTIONAL_PEER_PACKAGES,
    )
}

/// The python of a peer virtual environment with `packages` (and, where they install,
/// `optional`), made once in the cache (`$<env>` overrides its folder).
pub fn peer_python(env: &str, name: &str, packages: &[&str], optional: &[&str]) -> Result<PathBuf> {
    let venv = setup::cache_dir(env, name)?;
    let python = venv.join("bin").join("python");
    let marker = venv.join(".phase7-complete");
    let wanted = packages.join("\n");
    if python.is_file() && std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) {
        return Ok(python);
    }
    let system_python = setup::python_with_pip()?;
    let partial = venv.with_file_name(format!(
        "{}.partial-{}",
        venv.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&partial);
    eprintln!(
        "bench: creating the peer environment {} ({})",
        venv.display(),
        packages.join(", ")
    );
    let quiet = |command: &mut Command| -> Result<()> {
        let output = command
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {command:?}"))?;
        if !output.status.success() {
            let _ = std::fs::remove_dir_all(&partial);
            let stderr = String::from_utf8_lossy(&output.stderr);
            let line = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            bail!("{command:?} failed: {line}");
        }
        Ok(())
    };
    if let Some(parent) = venv.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    quiet(
        Command::new(&system_python)
            .args(["-m", "venv"])
            .arg(&partial),
    )?;
    // Only `bin/python` is used after the rename below: it finds its environment through
    // the pyvenv.cfg beside it (the pip scripts' shebangs keep the partial path).
    quiet(
        Command::new(partial.join("bin").join("python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(packages),
    )?;
    for optional in optional {
        let installed = Command::new(partial.join("bin").join("python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                optional,
            ])
            .stdin(Stdio::null())
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !installed {
            eprintln!(
                "bench: optional peer {optional} could not be installed; its columns will be missing"
            );
        }
    }
    std::fs::write(partial.join(".phase7-complete"), &wanted)?;
    let _ = std::fs::remove_dir_all(&venv);
    std::fs::rename(&partial, &venv)
        .with_context(|| format!("cannot move the environment to {}", venv.display()))?;
    Ok(python)
}

/// Peak resident memory of `bitnet-dequant convert` on a synthetic 2-layer checkpoint
/// with Llama-7B layer shapes, measured by `/usr/bin/time -v`, against the bound
/// 1.5 x (largest tensor as f32) + (input bytes, all of which may be mapped).
fn convert_memory(root: &Path) -> Result<()> {
    let time = Path::new("/usr/bin/time");
    if !time.is_file() {
        bail!(
            "/usr/bin/time is needed to measure peak memory (Debian/Ubuntu: apt-get install time)"
        );
    }
    cargo(
        root,
        &[
            "build",
            "--release",
            "--quiet",
            "-p",
            "bitnet-dequant",
            "--bin",
            "bitnet-dequant",
            "--example",
            "synthetic_checkpoint",
        ],
        &[],
    )?;
    let release = root.join("target").join("release");
    let scratch = std::env::temp_dir().join(format!("convert-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let result = (|| -> Result<()> {
        let input = scratch.join("input");
        let made = Command::new(release.join("examples").join("synthetic_checkpoint"))
            .arg(&input)
            .output()?;
        if !made.status.success() {
            bail!(
                "synthetic_checkpoint failed: {}",
                String::from_utf8_lossy(&made.stderr)
            );
        }
        print!("{}", String::from_utf8_lossy(&made.stdout));
        let inspect = Command::new(release.join("bitnet-dequant"))
            .args(["inspect", "--json"])
            .arg(&input)
            .output()?;
        let report: serde_json::Value = serde_json::from_slice(&inspect.stdout)
            .context("bitnet-dequant inspect --json gave no JSON")?;
        let largest = report["tensors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                t["shape"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|d| d.as_u64())
                    .product::<u64>()
            })
            .max()
            .unwrap_or(0);
        let input_bytes = std::fs::metadata(input.join("model.safetensors"))?.len();
        let bound = 1.5 * (largest * 4) as f64 + input_bytes as f64;
        println!(
            "largest tensor {:.1} MB as f32, input {:.1} MB; bound 1.5 x largest + input = {:.1} MB",
            (largest * 4) as f64 / 1e6,
            input_bytes as f64 / 1e6,
            bound / 1e6
        );
        for dtype in ["f32", "bf16"] {
            let output = scratch.join(format!("out-{dtype}"));
            let run = Command::new(time)
                .arg("-v")
                .arg(release.join("bitnet-dequant"))
                .arg("convert")
                .arg(&input)
                .arg(&output)
                .args(["--dtype", dtype])
                .output()?;
            if !run.status.success() {
                bail!("convert failed: {}", String::from_utf8_lossy(&run.stderr));
            }
            let stderr = String::from_utf8_lossy(&run.stderr);
            let peak_kb: f64 = stderr
                .lines()
                .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
                .and_then(|v| v.trim().parse().ok())
                .context("no peak memory in /usr/bin/time's output")?;
            let wall = stderr
                .lines()
                .find_map(|l| {
                    l.trim()
                        .strip_prefix("Elapsed (wall clock) time (h:mm:ss or m:ss):")
                })
                .unwrap_or("?")
                .trim()
                .to_owned();
            let peak = peak_kb * 1024.0;
            println!(
                "convert --dtype {dtype:<4}: peak RSS {:.1} MB = {:.2} x bound ({}), wall {wall}",
                peak / 1e6,
                peak / bound,
                if peak <= bound { "within" } else { "OVER" }
            );
            std::fs::remove_dir_all(&output)?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// nsga2 against pymoo (and pygmo) on ZDT1-3: the peers run first (their fronts and times
/// go to a JSON file), then our example scores everyone the same way.
fn nsga2(root: &Path) -> Result<()> {
    let python = bench_python()?;
    let seeds = std::env::var("PHASE7_BENCH_SEEDS").unwrap_or_else(|_| "11".into());
    let peers = std::env::temp_dir().join(format!("nsga2-peers-{}.json", std::process::id()));
    eprintln!("bench: running pymoo and pygmo ({seeds} seeds per problem; about a minute)");
    let status = Command::new(&python)
        .arg(root.join("crates/nsga2/scripts/bench_peers.py"))
        .arg(&peers)
        .args([seeds.as_str(), "200"])
        .env("OMP_NUM_THREADS", "1")
        .env("OPENBLAS_NUM_THREADS", "1")
        .status()
        .context("cannot run the peers' script")?;
    if !status.success() {
        bail!("the peers' script failed ({status})");
    }
    let peers_arg = peers.display().to_string();
    let mut result = Ok(());
    for crowding in ["unique", "standard", "pruning"] {
        let args = [
            "--seeds",
            seeds.as_str(),
            "--crowding",
            crowding,
            "--peers",
            peers_arg.as_str(),
        ];
        if let Err(error) = run_example(root, "nsga2", "bench_zdt", &args, &[]) {
            result = Err(error);
        }
    }
    let _ = std::fs::remove_file(&peers);
    result
}

/// lm against transformers' `generate` (CPU, f32, two threads): transformers runs first
/// and writes its timings, prompts and outputs; our example then runs the same work.
/// The python of the transformers peer environment (transformers' BitNet quantizer
/// needs accelerate to load a packed checkpoint).
pub fn transformers_python() -> Result<PathBuf> {
    peer_python(
        "PHASE7_BENCH_TRANSFORMERS_VENV",
        "bench-venv-transformers",
        &[
            "torch==2.11.0",
            "transformers==5.24.0",
            "safetensors",
            "accelerate==1.15.0",
            "gguf==0.19.0",
        ],
        &[],
    )
}

fn lm(root: &Path) -> Result<()> {
    let python = transformers_python()?;
    let gguf = crate::models::fetch("smollm2-135m-instruct")?;
    let work = setup::cache_dir("PHASE7_BENCH_MODELS", "bench-models")?;
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let peer = work.join("transformers.json");
    eprintln!(
        "bench: running transformers (random SmolLM-135M-shaped and tiny models, made once in {}, and SmolLM2-135M-Instruct from its GGUF)",
        work.display()
    );
    let status = Command::new(&python)
        .arg(root.join("crates/lm/scripts/bench_transformers.py"))
        .arg(&work)
        .arg(&peer)
        .arg("2")
        .arg(&gguf)
        .status()
        .context("cannot run the transformers script")?;
    if !status.success() {
        bail!("the transformers script failed ({status})");
    }
    let work_arg = work.display().to_string();
    let peer_arg = peer.display().to_string();
    run_example(
        root,
        "lm",
        "bench_generate",
        &[work_arg.as_str(), peer_arg.as_str()],
        &[],
    )
}

/// run-tracking's logging against TensorBoard's own event writer (Python), alternating,
/// three rounds each: the calling thread's cost per scalar and scalars per second that
/// reach the file, 10 scalars per call for 3 s; ours also writes the JSONL.
fn tracking(root: &Path) -> Result<()> {
    let python = crate::test::tracking_python()?;
    cargo(
        root,
        &["build", "--release", "--quiet", "-p", "run-tracking"],
        &[],
    )?;
    let ours = root.join("target/release/run-tracking");
    let peer_script = root.join("crates/run-tracking/scripts/bench_peer.py");
    let scratch =
        std::env::temp_dir().join(format!("phase7-bench-tracking-{}", std::process::id()));
    let measure = |command: &mut Command, dir: &Path| -> Result<serde_json::Value> {
        let _ = std::fs::remove_dir_all(dir);
        let output = command.output().context("cannot run the benchmark")?;
        let _ = std::fs::remove_dir_all(dir);
        if !output.status.success() {
            bail!("{}", String::from_utf8_lossy(&output.stderr));
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let line = text.lines().last().unwrap_or_default();
        serde_json::from_str(line).with_context(|| format!("unexpected output: {text}"))
    };
    let (mut rows_ours, mut rows_peer) = (Vec::new(), Vec::new());
    for round in 0..3 {
        let dir = scratch.join(format!("ours-{round}"));
        rows_ours.push(measure(
            Command::new(&ours).arg("bench").arg(&dir).args([
                "--seconds",
                "3",
                "--metrics-per-call",
                "10",
            ]),
            &dir,
        )?);
        let dir = scratch.join(format!("peer-{round}"));
        rows_peer.push(measure(
            Command::new(&python)
                .arg(&peer_script)
                .arg(&dir)
                .args(["3", "10"]),
            &dir,
        )?);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    println!(
        "| measure | run-tracking (3 rounds) | TensorBoard EventFileWriter, Python (3 rounds) | ratio (median) |\n|---|---|---|---|"
    );
    for (key, label, higher_is_better) in [
        (
            "hot_path_ns_per_scalar",
            "calling thread, ns per scalar",
            false,
        ),
        ("scalars_per_second", "scalars per second on disk", true),
    ] {
        println!(
            "{}",
            comparison_row(
                label,
                &column(&rows_ours, key),
                &column(&rows_peer, key),
                higher_is_better
            )
        );
    }
    println!(
        "\nTargets: at most 2000 ns per scalar on the calling thread, at least 100,000 scalars/s to the JSONL."
    );
    Ok(())
}

/// openrouter-gen's client against a minimal Python client (http.client, a persistent
/// connection per thread), alternating, three rounds each: 20,000 chat completions
/// with 16 in flight to the loopback mock (`openrouter-gen mock`, its own process, so
/// the CPU measured is the client's alone).
fn openrouter(root: &Path) -> Result<()> {
    cargo(
        root,
        &["build", "--release", "--quiet", "-p", "openrouter-gen"],
        &[],
    )?;
    let binary = root.join("target/release/openrouter-gen");
    let mut mock = Command::new(&binary)
        .args(["mock", "--port", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the mock server")?;
    let url = {
        use std::io::BufRead;
        let stdout = mock.stdout.take().context("mock stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        line.trim().to_owned()
    };
    let result = (|| -> Result<()> {
        let measure = |command: &mut Command| -> Result<serde_json::Value> {
            let output = command.output().context("cannot run the benchmark")?;
            if !output.status.success() {
                bail!("{}", String::from_utf8_lossy(&output.stderr));
            }
            let text = String::from_utf8_lossy(&output.stdout);
            serde_json::from_str(text.lines().last().unwrap_or_default())
                .with_context(|| format!("unexpected output: {text}"))
        };
        let peer = root.join("crates/openrouter-gen/scripts/bench_peer.py");
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            ours.push(measure(Command::new(&binary).args([
                "bench-client",
                "--base-url",
                &url,
                "--requests",
                "20000",
                "--in-flight",
                "16",
            ]))?);
            theirs.push(measure(Command::new("python3").arg(&peer).args([
                url.as_str(),
                "20000",
                "16",
            ]))?);
        }
        println!(
            "| measure | openrouter-gen client (3 rounds) | Python http.client (3 rounds) | ratio (median) |\n|---|---|---|---|"
        );
        for (key, label, higher_is_better) in [
            (
                "requests_per_second",
                "requests per second, 16 in flight",
                true,
            ),
            ("cpu_us_per_request", "client CPU per request, µs", false),
        ] {
            println!(
                "{}",
                comparison_row(
                    label,
                    &column(&ours, key),
                    &column(&theirs, key),
                    higher_is_better
                )
            );
        }
        println!(
            "\nTarget: at least 1,000 requests/s with 16 in flight, so the API is always the bottleneck."
        );
        Ok(())
    })();
    let _ = mock.kill();
    let _ = mock.wait();
    result
}

/// One measure of every round (`NaN` where a row lacks it).
fn column(rows: &[serde_json::Value], key: &str) -> Vec<f64> {
    rows.iter()
        .map(|r| r[key].as_f64().unwrap_or(f64::NAN))
        .collect()
}

/// A Markdown row: our rounds, the peer's, and the ratio of the medians oriented so
/// that above 1 means ours is better.
fn comparison_row(label: &str, ours: &[f64], peer: &[f64], higher_is_better: bool) -> String {
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratio = if higher_is_better {
        median(ours) / median(peer)
    } else {
        median(peer) / median(ours)
    };
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "| {label} | {} | {} | {ratio:.2}x ours better |",
        list(ours),
        list(peer)
    )
}
