//! The `lm` command-line tool.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lm::device::{self, DeviceRequest};
use lm::{CausalLm, GenerateConfig, Sampling, Tokenizer};
use tch::{Kind, Tensor};

#[derive(Parser)]
#[command(name = "lm", about = "Causal language models on libtorch", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Dtype {
    F32,
    Bf16,
    F16,
}

#[derive(Args)]
struct ModelArgs {
    /// Model folder (config.json, safetensors, tokenizer.json) or a llama-family .gguf file.
    model: PathBuf,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
    /// Weight element type.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
    /// Also keep f32 copies of a GGUF model's Q4_0 / Q4_1 / Q8_0 tensors. Without it
    /// (every command here only runs the model) those tensors are kept as their blocks
    /// alone on the CPU: the same results in about a sixth of the memory (see
    /// `lm::LoadOptions::packed_only`). The library's `CausalLm::load` keeps both, for
    /// training.
    #[arg(long)]
    f32_weights: bool,
}

impl ModelArgs {
    fn load(&self) -> Result<CausalLm, lm::Error> {
        let kind = match self.dtype {
            Dtype::F32 => Kind::Float,
            Dtype::Bf16 => Kind::BFloat16,
            Dtype::F16 => Kind::Half,
        };
        let options = lm::LoadOptions {
            packed_only: !self.f32_weights,
        };
        CausalLm::load_with(&self.model, device::resolve(self.device)?, kind, options)
    }
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
    /// Describe a model: architecture, sizes, parameters, linear layers.
    Info {
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Continue a prompt.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// The prompt text.
        #[arg(long)]
        prompt: String,
        /// Most new tokens.
        #[arg(long, default_value_t = 32)]
        max_new_tokens: usize,
        /// Sample at this temperature (greedy when absent).
        #[arg(long)]
        temperature: Option<f64>,
        /// Nucleus mass when sampling.
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        /// Sampling seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Stop when the text contains this (repeatable).
        #[arg(long)]
        stop: Vec<String>,
        /// Send the prompt as a user message through the model's chat template.
        #[arg(long)]
        chat: bool,
        /// With --chat: a system message (else the template's default).
        #[arg(long, requires = "chat")]
        system: Option<String>,
        /// Print JSON (text, token ids, log-probs).
        #[arg(long)]
        json: bool,
    },
    /// Log-probability of a completion given a prompt, and whether greedy decoding
    /// produces it.
    Score {
        #[command(flatten)]
        model: ModelArgs,
        /// The prompt text (BOS added as the tokenizer config says).
        #[arg(long)]
        prompt: String,
        /// The completion text.
        #[arg(long)]
        completion: String,
    },
    /// Raw logits of token ids, written as a .npy file ([1, positions, vocab], f32).
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        /// Comma-separated token ids.
        #[arg(long, value_delimiter = ',')]
        ids: Vec<i64>,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// R2 check for BitNet models: top-1 agreement and mean KL between the forward with
    /// 8-bit activations and the dequantized float forward, over the lines of a text file.
    Agreement {
        #[command(flatten)]
        model: ModelArgs,
        /// A text file; each non-empty line is one sequence.
        #[arg(long)]
        text: PathBuf,
    },
}

fn main() -> ExitCode {
    // Before anything else touches libtorch: loads its CUDA backend when present.
    let runtime = device::runtime();
    let cli = Cli::parse();
    let result = match cli.command {
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
                if let Ok(resolved) = &resolved {
                    println!("device          {device} -> {resolved:?}");
                }
            }
            resolved.map(|_| ())
        }
        Command::Info { model } => info(&model),
        Command::Generate {
            model,
            prompt,
            max_new_tokens,
            temperature,
            top_p,
            seed,
            stop,
            chat,
            system,
            json,
        } => {
            let sampling = match temperature {
                Some(temperature) => Sampling::Temperature { temperature, top_p },
                None => Sampling::Greedy,
            };
            let config = GenerateConfig {
                max_new_tokens,
                sampling,
                seed,
                stop_tokens: None,
            };
            let format = if chat {
                lm::PromptFormat::Chat { system, shots: 0 }
            } else {
                lm::PromptFormat::Raw
            };
            generate(&model, &prompt, &format, &config, &stop, json)
        }
        Command::Score {
            model,
            prompt,
            completion,
        } => score(&model, &prompt, &completion),
        Command::Logits { model, ids, out } => logits(&model, &ids, &out),
        Command::Agreement { model, text } => agreement(&model, &text),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn info(args: &ModelArgs) -> Result<(), lm::Error> {
    let mut model = args.load()?;
    let config = model.config().clone();
    let layers = model.linear_layers_mut();
    let linear_parameters: i64 = layers.iter().map(|l| l.dense_weight().numel() as i64).sum();
    let bitlinear = layers.iter().filter(|l| l.bitlinear).count();
    let report = serde_json::json!({
        "model": args.model,
        "config": config,
        "linear_layers": layers.len(),
        "bitlinear_layers": bitlinear,
        "linear_parameters": linear_parameters,
        "tokenizer": Tokenizer::load(&args.model).is_ok(),
        "device": format!("{:?}", model.device()),
        "packed_block_bytes": model.packed_bytes(),
    });
    println!("{report:#}");
    Ok(())
}

fn generate(
    args: &ModelArgs,
    prompt: &str,
    format: &lm::PromptFormat,
    config: &GenerateConfig,
    stop: &[String],
    json: bool,
) -> Result<(), lm::Error> {
    let model = args.load()?;
    let tokenizer = Tokenizer::load(&args.model)?;
    let template = match format {
        lm::PromptFormat::Chat { .. } => Some(tokenizer.chat_template()?),
        _ => None,
    };
    let prompt = format.render(prompt, &[], template.as_ref())?;
    let (text, generated) = model
        .generate_text(&tokenizer, &[prompt.as_str()], config, stop)?
        .pop()
        .expect("one prompt, one result");
    if json {
        let report = serde_json::json!({
            "text": text,
            "tokens": generated.tokens,
            "log_probs": generated.log_probs,
            "finish": format!("{:?}", generated.finish),
        });
        println!("{report:#}");
    } else {
        println!("{text}");
    }
    Ok(())
}

fn score(args: &ModelArgs, prompt: &str, completion: &str) -> Result<(), lm::Error> {
    let model = args.load()?;
    let tokenizer = Tokenizer::load(&args.model)?;
    let pair = (
        tokenizer.encode(prompt, true)?,
        tokenizer.encode(completion, false)?,
    );
    let score = model.score(&[pair])?.pop().expect("one pair, one score");
    let report = serde_json::json!({
        "sum_log_prob": score.sum,
        "mean_log_prob": score.mean,
        "greedy_exact": score.greedy_exact,
        "token_log_probs": score.token_log_probs,
    });
    println!("{report:#}");
    Ok(())
}

fn logits(args: &ModelArgs, ids: &[i64], out: &Path) -> Result<(), lm::Error> {
    if ids.is_empty() {
        return Err(lm::Error::Input("--ids needs at least one token id".into()));
    }
    let model = args.load()?;
    let input = Tensor::from_slice(ids).view([1, ids.len() as i64]);
    let logits = tch::no_grad(|| model.forward(&input, None, None))?;
    logits.to_device(tch::Device::Cpu).write_npy(out)?;
    println!("wrote {} ({:?}, f32)", out.display(), logits.size());
    Ok(())
}

fn agreement(args: &ModelArgs, text: &Path) -> Result<(), lm::Error> {
    let mut model = args.load()?;
    let tokenizer = Tokenizer::load(&args.model)?;
    let content = std::fs::read_to_string(text).map_err(|source| lm::Error::Io {
        path: text.to_path_buf(),
        source,
    })?;
    let (mut agree, mut positions, mut kl_sum) = (0i64, 0i64, 0f64);
    let _guard = tch::no_grad_guard();
    for line in content.lines().filter(|l| !l.trim().is_empty()) {
        let ids = tokenizer.encode(line, true)?;
        let input = Tensor::from_slice(&ids).view([1, ids.len() as i64]);
        model.set_activation_quantization(true);
        let ternary = model
            .forward(&input, None, None)?
            .log_softmax(-1, Kind::Float);
        model.set_activation_quantization(false);
        let float = model
            .forward(&input, None, None)?
            .log_softmax(-1, Kind::Float);
        agree += ternary
            .argmax(-1, false)
            .eq_tensor(&float.argmax(-1, false))
            .sum(Kind::Int64)
            .int64_value(&[]);
        positions += ids.len() as i64;
        // KL(ternary || float), summed over the vocabulary, per position.
        let kl = (ternary.exp() * (&ternary - &float)).sum_dim_intlist(
            [-1i64].as_slice(),
            false,
            Kind::Float,
        );
        kl_sum += kl.sum(Kind::Double).double_value(&[]);
    }
    if positions == 0 {
        return Err(lm::Error::Input(format!("{} has no text", text.display())));
    }
    let report = serde_json::json!({
        "positions": positions,
        "top1_agreement": agree as f64 / positions as f64,
        "mean_kl_ternary_to_float": kl_sum / positions as f64,
    });
    println!("{report:#}");
    Ok(())
}
