//! `make-default-model`: trains the embedded default model from its recipe and writes
//! the finished folder (`cargo xtask make-default-model` runs this).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use default_model::{BuildOptions, Recipe, build_with};

#[derive(Parser)]
#[command(name = "make-default-model", version, about)]
struct Cli {
    /// Output folder (replaced only once the new one is complete).
    #[arg(long)]
    out: PathBuf,
    /// Build the test-size variant (under 200 KB, a few hundred steps).
    #[arg(long, conflicts_with = "recipe")]
    test_size: bool,
    /// A recipe JSON file instead of the default recipe.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Print the recipe as JSON and exit.
    #[arg(long)]
    print_recipe: bool,
    /// Save the latent weights after every stage in this folder (to resume from).
    #[arg(long)]
    save_stages: Option<PathBuf>,
    /// Resume from a saved `stage-<index>.safetensors` (same recipe up to that stage).
    #[arg(long)]
    resume_from: Option<PathBuf>,
}

fn run(cli: &Cli) -> Result<(), String> {
    let recipe = match &cli.recipe {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            serde_json::from_str::<Recipe>(&text)
                .map_err(|e| format!("{}: not a recipe: {e}", path.display()))?
        }
        None if cli.test_size => Recipe::test_model(),
        None => Recipe::default_model(),
    };
    if cli.print_recipe {
        let text = serde_json::to_string_pretty(&recipe).map_err(|e| e.to_string())?;
        println!("{text}");
        return Ok(());
    }
    let options = BuildOptions {
        save_stages: cli.save_stages.clone(),
        resume_from: cli.resume_from.clone(),
    };
    let summary = build_with(&recipe, &cli.out, &options).map_err(|e| e.to_string())?;
    let r = &summary.report;
    eprintln!(
        "wrote {} ({:.3} MB) in {:.1} min (training {:.1} min): aggregate accuracy {:.3}, agreement {:.4}",
        summary.dir.display(),
        r.folder_bytes as f64 / 1e6,
        r.total_seconds / 60.0,
        r.training_seconds / 60.0,
        r.final_evaluation.aggregate_accuracy,
        r.agreement.top1
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
