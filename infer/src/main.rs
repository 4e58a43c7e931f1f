//! `moco-infer`: ONNX model + eval set → accuracy, predictions, throughput.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "moco-infer",
    version,
    about = "Classify images with an exported ONNX model",
    arg_required_else_help = true
)]
struct Cli {
    /// The exported model.
    #[arg(long)]
    model: std::path::PathBuf,
}

fn main() {
    let _ = Cli::parse();
}
