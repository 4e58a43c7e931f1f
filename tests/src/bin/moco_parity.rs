//! `moco-parity`: the Rust side of the torchvision parity check as a command, so it can run where
//! cargo does not (the GPU machine). Exits non-zero when any quantity is outside tolerance.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use moco_tests::compare::summarize;
use moco_tests::parity::{mutants, ResnetReference};
use models::{Arch, ResNetDesc};
use models_tch::parse_device;

#[derive(Parser, Debug)]
#[command(about = "Compare models_tch against torchvision on fixed random weights")]
struct Args {
    /// Architecture to generate a reference for (with --generate).
    #[arg(long, default_value = "resnet18")]
    arch: Arch,
    /// Directory holding (or receiving, with --generate) the Python reference.
    #[arg(long = "ref")]
    reference: PathBuf,
    /// Run tests/python/torchvision_parity.py first ($MOCO_PYTHON or .venv/bin/python3).
    #[arg(long)]
    generate: bool,
    /// auto, cpu, cuda or cuda:N. On CUDA, set NVIDIA_TF32_OVERRIDE=0: cuDNN's TF32 convolutions
    /// are ~1e-3 off by design.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Also run the mutated descriptions and require each to fail.
    #[arg(long)]
    mutants: bool,
    /// Print every check as JSON on the last line of stdout.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("moco-parity: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<bool> {
    let device = parse_device(&args.device).map_err(anyhow::Error::msg)?;
    let reference = if args.generate {
        ResnetReference::generate(args.arch, &args.reference, 0)?
    } else {
        ResnetReference::load(&args.reference)?
    };
    let checks = reference.run(&ResNetDesc::new(reference.arch), device)?;
    let ok = checks.iter().all(|c| c.ok);
    eprintln!("{} on {device:?}: {}", reference.arch, summarize(&checks));
    let mut caught = Vec::new();
    if args.mutants {
        for (name, desc) in mutants(reference.arch) {
            let m = reference.run(&desc, device)?;
            let failed = m.iter().filter(|c| !c.ok).count();
            eprintln!("mutant `{name}`: {failed} of {} checks fail", m.len());
            caught.push(serde_json::json!({"mutant": name, "failed_checks": failed}));
        }
    }
    let all_caught = caught.iter().all(|c| c["failed_checks"].as_u64() > Some(0));
    if args.json {
        println!(
            "{}",
            serde_json::json!({"arch": reference.arch.name(), "device": format!("{device:?}"),
                "ok": ok, "checks": checks, "mutants": caught})
        );
    }
    Ok(ok && all_caught)
}
