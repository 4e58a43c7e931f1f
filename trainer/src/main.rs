//! `moco-train`: MoCo v2 pretraining, linear evaluation and export on libtorch (tch).
//! Subcommands arrive with their issues; see docs/ARCHITECTURE.md for the map.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
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

#[derive(Subcommand, Debug)]
enum Command {
    /// Encoder + classifier → one ONNX file (the same as `moco-export`).
    Export(ExportArgs),
    /// libtorch's build facts: version, CUDA devices, threads (for checking a machine).
    #[command(hide = true)]
    Info,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
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
