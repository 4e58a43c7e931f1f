//! `moco-export`: checkpoint (safetensors) → ONNX, without libtorch.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "moco-export",
    version,
    about = "Checkpoint (safetensors) to ONNX, without libtorch",
    arg_required_else_help = true
)]
struct Cli {
    /// The backbone checkpoint (RUN/encoder.safetensors).
    #[arg(long)]
    encoder: std::path::PathBuf,
}

fn main() {
    let _ = Cli::parse();
}
