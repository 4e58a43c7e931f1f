//! `moco-export`: checkpoint (safetensors) → ONNX, without libtorch.

use std::process::ExitCode;

use clap::Parser;
use moco_exporter::cli::ExportArgs;

#[derive(Parser, Debug)]
#[command(
    name = "moco-export",
    version,
    about = "Encoder + classifier checkpoint (safetensors) to one ONNX file, without libtorch"
)]
struct Cli {
    #[command(flatten)]
    args: ExportArgs,
}

fn main() -> ExitCode {
    atomic_io::report_file_size_limit_as_error();
    if std::env::var_os("MOCO_HELP_MARKDOWN").is_some() {
        // docs/cli.md, generated from these definitions (trainer/tests/cli_docs.rs checks it).
        print!("{}", clap_markdown::help_markdown::<Cli>());
        return ExitCode::SUCCESS;
    }
    match Cli::parse().args.run_and_report() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moco-export: {e}");
            ExitCode::FAILURE
        }
    }
}
