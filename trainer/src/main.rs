//! `moco-train`: self-supervised pretraining, linear evaluation and export on libtorch (tch).
//! The commands live in `cli::command`; this file parses, runs and maps the result to an exit
//! status.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use trainer::cli::command::Cli;
use trainer::cli::config_file;
use trainer::runtime::{isa, stop};

fn main() -> ExitCode {
    atomic_io::report_file_size_limit_as_error();
    if std::env::var_os("MOCO_HELP_MARKDOWN").is_some() {
        // docs/cli.md, generated from these definitions (trainer/tests/cli_docs.rs checks it).
        print!("{}", clap_markdown::help_markdown::<Cli>());
        return ExitCode::SUCCESS;
    }
    let command = Cli::command();
    let argv = match config_file::expand(&command, std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("moco-train: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let recorded = config_file::command_line(&command, &argv);
    let matches = command.get_matches_from(&argv);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = isa::IsaPath::from_env().and_then(|_| cli.command.run(recorded));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<stop::Preempted>() => {
            eprintln!("moco-train: {e:#}");
            ExitCode::from(stop::PREEMPTED_EXIT)
        }
        Err(e) => {
            eprintln!("moco-train: {e:#}");
            ExitCode::FAILURE
        }
    }
}
