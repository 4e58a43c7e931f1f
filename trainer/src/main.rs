//! `moco-train`: MoCo v2 pretraining, linear evaluation and export on libtorch (tch).
//! Subcommands arrive with their issues; see docs/ARCHITECTURE.md for the map.

use std::process::ExitCode;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use datasets::synth::SynthConfig;
use exporter::cli::ExportArgs;

#[derive(Parser, Debug)]
#[command(
    name = "moco-train",
    version,
    about = "MoCo v2 self-supervised pretraining on libtorch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct SynthArgs {
    /// Output directory (must not exist; written to a temp directory, then renamed).
    #[arg(long)]
    out: PathBuf,
    /// Number of classes (shape families), 1..=10.
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Labeled training images per class.
    #[arg(long, default_value_t = 100)]
    train_per_class: usize,
    /// Validation images per class.
    #[arg(long, default_value_t = 50)]
    val_per_class: usize,
    /// Unlabeled images (classes drawn uniformly).
    #[arg(long, default_value_t = 2000)]
    unlabeled: usize,
    /// Seed; the same seed writes the same bytes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the result as one JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
}

impl SynthArgs {
    fn run(&self) -> anyhow::Result<()> {
        let cfg = SynthConfig {
            classes: self.classes,
            train_per_class: self.train_per_class,
            val_per_class: self.val_per_class,
            unlabeled: self.unlabeled,
            seed: self.seed,
        };
        let s = datasets::synth::write_dataset(&self.out, &cfg, true)?;
        eprintln!(
            "synth: {} classes, {} train, {} val, {} unlabeled images in {}",
            s.classes, s.train, s.val, s.unlabeled, s.out
        );
        if self.json {
            println!("{}", serde_json::to_string(&s)?);
        }
        Ok(())
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write the embedded default dataset: deterministic 96×96 shape classes (folder layout).
    Synth(SynthArgs),
    /// Encoder + classifier → one ONNX file (the same as `moco-export`).
    Export(ExportArgs),
    /// libtorch's build facts: version, CUDA devices, threads (for checking a machine).
    #[command(hide = true)]
    Info,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Synth(args) => args.run(),
        Command::Export(args) => args.run_and_report().map_err(anyhow::Error::from),
        Command::Info => {
            println!(
                "{}",
                serde_json::json!({
                    "cuda_available": tch::Cuda::is_available(),
                    "cuda_devices": tch::Cuda::device_count(),
                    "cudnn_available": tch::Cuda::cudnn_is_available(),
                    "has_cuda_build": tch::utils::has_cuda(),
                    "threads": tch::get_num_threads(),
                })
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moco-train: {e:#}");
            ExitCode::FAILURE
        }
    }
}
