//! `moco-infer`: ONNX model + eval set → accuracy, predictions, throughput. No Python, no
//! libtorch: ONNX Runtime (CPU or CUDA) or tract (CPU, pure Rust).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use datasets::{Format, Split};
use infer::backend::{self, BackendKind, DeviceKind};
use infer::pipeline::{run_split, RunConfig};
use infer::{metrics, parse_model_info, predictions, InferError};

#[derive(Parser, Debug)]
#[command(
    name = "moco-infer",
    version,
    about = "Classify 96×96 center-cropped images with an exported ONNX model"
)]
struct Cli {
    /// ONNX model written by `moco-export` / `moco-train export` (preprocessing read from its metadata).
    #[arg(long)]
    model: PathBuf,
    /// Dataset root (folder, competition or stl10 layout; auto-detected).
    #[arg(long)]
    data: PathBuf,
    /// Split to classify: train, val, test or unlabeled (stl10: val means test).
    #[arg(long, default_value = "val")]
    split: Split,
    /// Override layout detection: folder, competition or stl10.
    #[arg(long)]
    format: Option<Format>,
    /// ort (ONNX Runtime) or tract (pure Rust, CPU).
    #[arg(long, value_enum, default_value = "ort")]
    backend: BackendKind,
    /// cpu or cuda (ort only; needs an ONNX Runtime with the CUDA execution provider).
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceKind,
    /// Images per inference call.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Inference threads in all (split over --workers; ort intra-op / tract matrix-product threads).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Concurrent inference sessions, each with threads/workers threads. Default: one per thread
    /// (up to 4), which is fastest for 96×96 inputs.
    #[arg(long)]
    workers: Option<usize>,
    /// Threads decoding and preprocessing images, overlapped with inference.
    #[arg(long, default_value_t = 1)]
    decode_threads: usize,
    /// Classify only the first N images of the split (0 = all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Write `image,prediction,label` rows (dataset order) to this CSV.
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// Skip images that cannot be decoded (counted and reported) instead of stopping.
    #[arg(long)]
    skip_bad: bool,
    /// Print the result as one JSON object on the last line of stdout.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    atomic_io::report_file_size_limit_as_error();
    if std::env::var_os("MOCO_HELP_MARKDOWN").is_some() {
        // docs/cli.md, generated from these definitions (trainer/tests/cli_docs.rs checks it).
        print!("{}", clap_markdown::help_markdown::<Cli>());
        return ExitCode::SUCCESS;
    }
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moco-infer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), InferError> {
    if cli.batch_size == 0 {
        return Err(InferError::Usage("--batch-size must be at least 1".into()));
    }
    if let Some(p) = &cli.predictions {
        predictions::check_writable(p)?;
    }
    let bytes = std::fs::read(&cli.model)
        .map_err(|e| InferError::Model(format!("--model {}: {e}", cli.model.display())))?;
    let info = parse_model_info(&bytes, &cli.model)?;
    drop(bytes);
    let mut data = datasets::open(&cli.data, cli.split, cli.format)?;
    if cli.limit > 0 {
        data.samples.truncate(cli.limit);
    }
    if data.is_labeled() && !info.classes.is_empty() && data.classes.len() > info.num_classes {
        return Err(InferError::Usage(format!(
            "--data {}: {} classes, but the model predicts {}",
            cli.data.display(),
            data.classes.len(),
            info.num_classes
        )));
    }
    if cli.threads == 0 || cli.workers == Some(0) {
        return Err(InferError::Usage(
            "--threads and --workers must be at least 1".into(),
        ));
    }
    let workers = cli.workers.unwrap_or(cli.threads.min(4));
    let per_worker = (cli.threads / workers).max(1);
    let backends = (0..workers)
        .map(|_| backend::open(cli.backend, cli.device, &cli.model, per_worker))
        .collect::<Result<Vec<_>, _>>()?;
    let out = run_split(
        &data,
        &info.preprocess,
        backends,
        &RunConfig {
            batch_size: cli.batch_size,
            decode_threads: cli.decode_threads,
            skip_bad: cli.skip_bad,
            progress: !cli.quiet,
        },
    )?;
    if let Some(p) = &cli.predictions {
        predictions::write(p, &predictions::render(&data, &out.predictions))?;
    }

    let n = out.predictions.len();
    let ips = n as f64 / out.seconds.max(1e-9);
    let backend_name = serde_json::to_value(cli.backend).unwrap_or_default();
    let device_name = serde_json::to_value(cli.device).unwrap_or_default();
    let mut result = serde_json::json!({
        "n": n,
        "images_per_sec": ips,
        "inference_images_per_sec": n as f64 / out.inference_seconds.max(1e-9),
        "backend": backend_name,
        "device": device_name,
        "model": cli.model.display().to_string(),
        "split": cli.split.name(),
        "batch_size": cli.batch_size,
        "threads": cli.threads,
        "workers": workers,
        "skipped": out.skipped.len(),
        "quantization": info.quantization,
    });
    for (name, e) in out.skipped.iter().take(10) {
        eprintln!("skipped {name}: {e}");
    }
    let classes = if info.classes.is_empty() {
        &data.classes
    } else {
        &info.classes
    };
    if data.is_labeled() {
        let labels: Vec<usize> = data.samples.iter().map(|s| s.label.unwrap_or(0)).collect();
        let acc = metrics::accuracy(&out.predictions, &labels, classes);
        eprintln!(
            "top-1 {:.2}%  top-5 {:.2}%  on {} {} images ({}/{}{}, {:.1} images/s)",
            100.0 * acc.top1,
            100.0 * acc.top5,
            n,
            cli.split.name(),
            backend_name.as_str().unwrap_or(""),
            device_name.as_str().unwrap_or(""),
            info.quantization
                .as_ref()
                .map_or(String::new(), int8_summary),
            ips
        );
        let mut per_class = acc.per_class.clone();
        if per_class.len() > 20 {
            per_class.sort_by(|a, b| a.top1.total_cmp(&b.top1));
            per_class.truncate(10);
            eprintln!("worst 10 classes:");
        }
        for c in per_class.iter().filter(|c| c.n > 0) {
            eprintln!(
                "  {:<24} {:>6.2}%  ({} images)",
                c.class,
                100.0 * c.top1,
                c.n
            );
        }
        if !acc.top_confusions.is_empty() {
            eprintln!("most frequent confusions (label → predicted):");
            for c in acc.top_confusions.iter().take(5) {
                eprintln!("  {} → {}: {}", c.label, c.predicted, c.count);
            }
        }
        let m = result.as_object_mut().expect("object");
        m.insert("top1".into(), acc.top1.into());
        m.insert("top5".into(), acc.top5.into());
        m.insert(
            "per_class".into(),
            serde_json::to_value(&acc.per_class).unwrap_or_default(),
        );
        m.insert(
            "top_confusions".into(),
            serde_json::to_value(&acc.top_confusions).unwrap_or_default(),
        );
    } else {
        eprintln!(
            "{n} unlabeled images classified ({:.1} images/s); no accuracy without labels",
            ips
        );
    }
    if cli.json {
        println!("{result}");
    }
    Ok(())
}

/// How an int8 model was made, from its `moco.quantization` metadata: the calibration and the
/// layers left in float.
fn int8_summary(q: &serde_json::Value) -> String {
    let float: Vec<&str> = q["float_layers"]
        .as_array()
        .map(|l| l.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let float = match float.as_slice() {
        [] => String::new(),
        l => format!(", {} in float", l.join(" ")),
    };
    format!(
        ", int8 model, {} calibration{float}",
        q["calibration"].as_str().unwrap_or("minmax")
    )
}
