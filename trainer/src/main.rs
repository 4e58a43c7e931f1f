//! `moco-train`: self-supervised pretraining, linear evaluation and export on libtorch (tch).
//! Subcommands arrive with their issues; see docs/ARCHITECTURE.md for the map.

use std::process::ExitCode;

use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use datasets::synth::SynthConfig;
use exporter::cli::ExportArgs;
use trainer::cli::knn::KnnArgs;
use trainer::cli::label_request::LabelRequestArgs;
use trainer::cli::linear::LinearArgs;
use trainer::cli::pretrain::PretrainArgs;
use trainer::stop::StopFlag;
use trainer::{bench, feature_maps, isa, knn, label_request, linear, plot, preview, stop, train};

#[derive(Parser, Debug)]
#[command(
    name = "moco-train",
    version,
    about = "Self-supervised pretraining (MoCo v1/v2/v3, SimCLR, BYOL) on libtorch"
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
    /// Number of classes, 1..=10000: ten texture families; beyond ten each family repeats in
    /// bands of period and grey level (`--classes 800` for the competition's shape).
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Labeled training images per class (500: kNN's k=200 needs more than 100 per class).
    #[arg(long, default_value_t = 500)]
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
    /// `folder` (class folders and classes.txt) or `competition` (numbered PNGs, shuffled across
    /// classes, and torch.save label tensors).
    #[arg(long, default_value = "folder")]
    layout: datasets::Format,
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
            layout: self.layout,
        };
        let s = datasets::synth::write_dataset(&self.out, &cfg, true)?;
        eprintln!(
            "synth: {} classes, {} train, {} val, {} unlabeled images in {} ({} layout)",
            s.classes,
            s.train,
            s.val,
            s.unlabeled,
            s.out,
            s.layout.name()
        );
        if self.json {
            println!("{}", serde_json::to_string(&s)?);
        }
        Ok(())
    }
}

#[derive(Args, Debug)]
struct PlotArgs {
    /// Run directory (reads RUN/metrics.jsonl); several runs are drawn together against the
    /// epoch (loss, kNN, drift of the queued keys) and need --out.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Output PNG (default RUN/curves.png for one run).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A random-init kNN accuracy (fraction) to draw as the floor.
    #[arg(long)]
    floor: Option<f64>,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct MethodsArgs {
    /// The backbone the recipes are for (the heads' widths follow its features).
    #[arg(long, default_value = "resnet18")]
    arch: models::Arch,
    #[arg(long)]
    json: bool,
}

impl MethodsArgs {
    fn run(&self) -> anyhow::Result<serde_json::Value> {
        let all = trainer::methods::describe(self.arch);
        if !self.json {
            for m in all["methods"].as_array().into_iter().flatten() {
                eprintln!(
                    "{:8} {}",
                    m["name"].as_str().unwrap_or_default(),
                    m["about"].as_str().unwrap_or_default()
                );
                eprintln!("         {}", m["recipe"]);
            }
        }
        Ok(all)
    }
}

#[derive(Subcommand, Debug)]
enum Command {
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
    LabelStudy(trainer::cli::label_study::LabelStudyArgs),
    /// A new dataset root: the old one plus the returned labels of a request.
    MergeLabels(trainer::cli::merge_labels::MergeLabelsArgs),
    /// Originals beside two augmented views (aug+), as a PNG grid.
    PreviewAugment(trainer::cli::preview::PreviewArgs),
    /// conv1 activations of one image as a grid.
    FeatureMaps(trainer::cli::feature_maps::FeatureMapsArgs),
    /// Loss, lr and kNN curves of a run as a PNG.
    Plot(PlotArgs),
    /// Two runs of one algorithm held against each other (the same --init-from on two devices
    /// or in two precisions): per-step loss and every final tensor; fails past the bound.
    Compare(trainer::cli::compare::CompareArgs),
    /// Write the embedded default dataset: deterministic 96×96 shape classes (folder layout).
    Synth(SynthArgs),
    /// Encoder + classifier → one ONNX file (the same as `moco-export`).
    Export(ExportArgs),
    /// Two-view images/s of the training data path (decoded store + aug+), for benchmarks.
    #[command(hide = true)]
    BenchData(trainer::cli::bench::BenchDataArgs),
    /// Shell completions: `moco-train completions bash > /etc/bash_completion.d/moco-train`
    /// (or zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// One training step measured: images/s, host ms, ATen ops and host syncs per step, peak
    /// memory (the flags of pretrain, plus --warmup/--timed).
    BenchStep(Box<trainer::cli::bench::BenchStepArgs>),
    /// libtorch's build facts: version, CUDA devices, threads (for checking a machine).
    #[command(hide = true)]
    Info,
}

/// SPEC: with `--json` the last line of stdout is the command's result.
fn report(r: anyhow::Result<serde_json::Value>, json: bool) -> anyhow::Result<()> {
    let v = r?;
    if json {
        println!("{v}");
    }
    Ok(())
}

fn main() -> ExitCode {
    atomic_io::report_file_size_limit_as_error();
    if std::env::var_os("MOCO_HELP_MARKDOWN").is_some() {
        // docs/cli.md, generated from these definitions (trainer/tests/cli_docs.rs checks it).
        print!("{}", clap_markdown::help_markdown::<Cli>());
        return ExitCode::SUCCESS;
    }
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = isa::IsaPath::from_env().and_then(|_| dispatch(cli.command));
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

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Pretrain(a) if a.nproc > 1 => {
            // Refused here once, rather than by each rank.
            let cfg = a.to_config()?;
            cfg.validate(a.nproc)?;
            cfg.run.compute.check_local_ranks(a.nproc)?;
            train::launch::launch_local(a.nproc)
        }
        Command::Pretrain(a) => report(
            a.to_config()
                .and_then(|c| train::run(&c, StopFlag::from_signals()?)),
            a.json,
        ),
        Command::Methods(a) => report(a.run(), a.json),
        Command::Linear(a) => report(
            a.to_config()
                .and_then(|c| linear::run(&c, StopFlag::from_signals()?)),
            a.json,
        ),
        Command::BenchData(a) => report(a.to_config().and_then(|c| bench::run(&c)), a.json),
        Command::BenchStep(a) => report(
            a.to_config().and_then(|c| train::bench_step::run(&c)),
            a.pretrain.json,
        ),
        Command::FeatureMaps(a) => {
            report(a.to_config().and_then(|c| feature_maps::run(&c)), a.json)
        }
        Command::Knn(a) => report(a.to_config().and_then(|c| knn::run(&c)), a.json),
        Command::LabelRequest(a) => report(label_request::run(&a.to_config()), a.json),
        Command::LabelStudy(a) => report(
            a.to_config().and_then(|c| trainer::label_study::run(&c)),
            a.json,
        ),
        Command::MergeLabels(a) => report(
            a.to_config().and_then(|c| datasets::merge_labels::run(&c)),
            a.json,
        ),
        Command::PreviewAugment(a) => report(a.to_config().and_then(|c| preview::run(&c)), a.json),
        Command::Plot(a) => report(plot_runs(&a), a.json),
        Command::Compare(a) => report(trainer::compare::run(&a.to_config()), a.json),
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
            Ok(())
        }
    }
}

fn plot_runs(a: &PlotArgs) -> anyhow::Result<serde_json::Value> {
    let out = match (&a.out, a.runs.as_slice()) {
        (Some(out), _) => out.clone(),
        (None, [run]) => run.join("curves.png"),
        (None, _) => anyhow::bail!("--out: needed when plotting several runs"),
    };
    if let [run] = a.runs.as_slice() {
        plot::curves_with_floor(&run.join("metrics.jsonl"), &out, a.floor)?;
    } else {
        let label = |r: &PathBuf| {
            r.file_name()
                .map_or_else(|| r.display().to_string(), |n| n.to_string_lossy().into())
        };
        let metrics: Vec<PathBuf> = a.runs.iter().map(|r| r.join("metrics.jsonl")).collect();
        let runs: Vec<(String, &std::path::Path)> = a
            .runs
            .iter()
            .zip(&metrics)
            .map(|(r, m)| (label(r), m.as_path()))
            .collect();
        plot::compare(&runs, &out, a.floor)?;
    }
    Ok(serde_json::json!({"out": out.display().to_string()}))
}
