//! `moco-train`: MoCo v2 pretraining, linear evaluation and export on libtorch (tch).
//! Subcommands arrive with their issues; see docs/ARCHITECTURE.md for the map.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "moco-train",
    version,
    about = "MoCo v2 self-supervised pretraining on libtorch",
    arg_required_else_help = true
)]
struct Cli {
    /// Print libtorch's build facts (version, CUDA devices) and exit.
    #[arg(long)]
    libtorch_info: bool,
}

fn main() {
    let cli = Cli::parse();
    if cli.libtorch_info {
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
    }
}
