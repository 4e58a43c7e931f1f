//! The command line as a whole: `moco-train`'s subcommands, and the call each makes into the
//! library.

use clap::{CommandFactory, Parser, Subcommand};
use exporter::cli::ExportArgs;

use super::knn::KnnArgs;
use super::label_request::LabelRequestArgs;
use super::linear::LinearArgs;
use super::methods::MethodsArgs;
use super::plot::PlotArgs;
use super::pretrain::PretrainArgs;
use super::synth::SynthArgs;
use crate::runtime::isa;
use crate::runtime::stop::StopFlag;
use crate::{eval, labels, observe, train};

#[derive(Parser, Debug)]
#[command(
    name = "moco-train",
    version,
    about = "Self-supervised pretraining (MoCo v1/v2/v3, SimCLR, BYOL) on libtorch"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Self-supervised pretraining: MoCo v2 (default), MoCo v1/v3, SimCLR or BYOL.
    Pretrain(Box<PretrainArgs>),
    /// The pretraining methods and the recipe each fills the unset flags with.
    Methods(MethodsArgs),
    /// Linear evaluation of a frozen backbone (or fine-tuning with --finetune).
    Linear(LinearArgs),
    /// Weighted kNN accuracy of a frozen backbone (k=200, T=0.1 by default).
    Knn(KnnArgs),
    /// Choose unlabeled images to send for labeling (uncertainty, contrastive loss, diversity,
    /// class balance): a ranked CSV and the predicted class balance.
    LabelRequest(LabelRequestArgs),
    /// Which labeling strategy helps: requests of each strategy and of random baselines from a
    /// pool whose labels an oracle holds, merged, and a linear classifier scored on val.
    LabelStudy(super::label_study::LabelStudyArgs),
    /// A new dataset root: the old one plus the returned labels of a request.
    MergeLabels(super::merge_labels::MergeLabelsArgs),
    /// Originals beside two augmented views (aug+), as a PNG grid.
    PreviewAugment(super::preview::PreviewArgs),
    /// conv1 activations of one image as a grid.
    FeatureMaps(super::feature_maps::FeatureMapsArgs),
    /// Loss, lr and kNN curves of a run as a PNG.
    Plot(PlotArgs),
    /// Two runs of one algorithm held against each other (the same --init-from on two devices
    /// or in two precisions): per-step loss and every final tensor; fails past the bound.
    Compare(super::compare::CompareArgs),
    /// Write the embedded default dataset: deterministic 96×96 shape classes (folder layout).
    Synth(SynthArgs),
    /// Encoder + classifier → one ONNX file (the same as `moco-export`).
    Export(ExportArgs),
    /// Two-view images/s of the training data path (decoded store + aug+), for benchmarks.
    #[command(hide = true)]
    BenchData(super::bench::BenchDataArgs),
    /// Shell completions: `moco-train completions bash > /etc/bash_completion.d/moco-train`
    /// (or zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// One training step measured: images/s, host ms, ATen ops and host syncs per step, peak
    /// memory (the flags of pretrain, plus --warmup/--timed).
    BenchStep(Box<super::bench::BenchStepArgs>),
    /// One rank of `pretrain --nproc`: the launcher's configuration, read from its variable.
    #[command(hide = true, name = "pretrain-rank")]
    PretrainRank(RankArgs),
    /// libtorch's build facts: version, CUDA devices, threads (for checking a machine).
    #[command(hide = true)]
    Info,
}

/// SPEC: with `--json` the last line of stdout is the command's result.
pub fn report(r: anyhow::Result<serde_json::Value>, json: bool) -> anyhow::Result<()> {
    let v = r?;
    if json {
        println!("{v}");
    }
    Ok(())
}

impl Command {
    /// Runs the command; `command_line` is what its config.json records (`config_file`).
    pub fn run(self, command_line: Vec<String>) -> anyhow::Result<()> {
        match self {
            Command::Pretrain(a) if a.nproc > 1 => {
                // Refused here once, rather than by each rank.
                let cfg = a.to_config()?.recorded(command_line);
                cfg.validate(a.nproc)?;
                cfg.run.compute.check_local_ranks(a.nproc)?;
                train::launch::launch_local(&cfg, a.nproc, a.json)
            }
            Command::Pretrain(a) => report(
                a.to_config()
                    .map(|c| c.recorded(command_line))
                    .and_then(|c| train::run(&c, StopFlag::from_signals()?)),
                a.json,
            ),
            Command::Methods(a) => report(a.run(), a.json),
            Command::PretrainRank(a) => report(
                rank_config(&a.out).and_then(|c| train::run(&c, StopFlag::from_signals()?)),
                a.json,
            ),
            Command::Linear(a) => report(
                a.to_config()
                    .map(|c| eval::linear::LinearConfig { command_line, ..c })
                    .and_then(|c| eval::linear::run(&c, StopFlag::from_signals()?)),
                a.json,
            ),
            Command::BenchData(a) => report(
                a.to_config().and_then(|c| train::bench_data::run(&c)),
                a.json,
            ),
            Command::BenchStep(a) => report(
                a.to_config().and_then(|c| train::bench_step::run(&c)),
                a.pretrain.json,
            ),
            Command::FeatureMaps(a) => report(
                a.to_config().and_then(|c| eval::feature_maps::run(&c)),
                a.json,
            ),
            Command::Knn(a) => report(a.to_config().and_then(|c| eval::knn::run(&c)), a.json),
            Command::LabelRequest(a) => report(labels::request::run(&a.to_config()), a.json),
            Command::LabelStudy(a) => {
                report(a.to_config().and_then(|c| labels::study::run(&c)), a.json)
            }
            Command::MergeLabels(a) => report(
                a.to_config().and_then(|c| datasets::merge_labels::run(&c)),
                a.json,
            ),
            Command::PreviewAugment(a) => report(
                a.to_config().and_then(|c| observe::preview::run(&c)),
                a.json,
            ),
            Command::Plot(a) => report(a.run(), a.json),
            Command::Compare(a) => report(train::compare::run(&a.to_config()), a.json),
            Command::Synth(args) => args.run(),
            Command::Export(args) => args.run_and_report().map_err(anyhow::Error::from),
            Command::Completions { shell } => {
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "moco-train",
                    &mut std::io::stdout(),
                );
                Ok(())
            }
            Command::Info => {
                print_info();
                Ok(())
            }
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct RankArgs {
    /// The run directory, as in the configuration: it names the run in `ps`.
    #[arg(long)]
    pub out: std::path::PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// The configuration `pretrain --nproc` built and handed to this rank.
fn rank_config(out: &std::path::Path) -> anyhow::Result<crate::config::PretrainConfig> {
    use anyhow::Context;
    let var = train::launch::CONFIG_ENV;
    let text = std::env::var(var).with_context(|| format!("{var}: not set (started by hand?)"))?;
    let cfg: crate::config::PretrainConfig = serde_json::from_str(&text)
        .with_context(|| format!("{var}: not a pretraining configuration"))?;
    if cfg.run.out != out {
        anyhow::bail!(
            "--out {}: the configuration is of {}",
            out.display(),
            cfg.run.out.display()
        );
    }
    Ok(cfg)
}

/// `moco-train info`: libtorch's build facts as one JSON line.
fn print_info() {
    println!(
        "{}",
        serde_json::json!({
            "cuda_available": tch::Cuda::is_available(),
            "cuda_devices": tch::Cuda::device_count(),
            "cudnn_available": tch::Cuda::cudnn_is_available(),
            "has_cuda_build": tch::utils::has_cuda(),
            "threads": tch::get_num_threads(),
            "distributed_gloo": cfg!(moco_gloo),
            "host_loops_available": isa::names(&isa::IsaPath::available()),
            "host_loops_active": isa::IsaPath::active().name(),
        })
    );
}
