//! The numbers a user compares: `moco-train linear`'s val predictions against `moco-infer`'s on
//! the exported ONNX file of the same encoder and classifier — image for image, with both
//! backends. The chain runs through the libraries the binaries are made of: pretrain (a few steps,
//! so the encoder is not torchvision's init), linear, export, and moco-infer's pipeline.

use std::path::Path;

use clap::Parser;
use datasets::layout::Split;
use infer::pipeline::{run_split, RunConfig};
use infer::{BackendKind, DeviceKind};
use trainer::cli::linear::LinearArgs;
use trainer::cli::pretrain::PretrainArgs;

#[derive(Parser)]
struct Pretrain {
    #[command(flatten)]
    a: PretrainArgs,
}

#[derive(Parser)]
struct Linear {
    #[command(flatten)]
    a: LinearArgs,
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn linear_val_predictions_equal_moco_infer_on_the_exported_model() {
    agree(&["--lr", "1"]);
}

/// `--standardize` trains on normalised features and saves the fc with the normalisation folded
/// in: the exported model, which knows nothing of it, must predict what linear reported (the
/// fold's algebra itself is held by the unit tests of `linear::standardize`).
#[test]
fn a_standardized_probe_folds_into_the_exported_classifier() {
    agree(&["--standardize"]);
}

fn agree(linear_flags: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run, lin, model) = (
        tmp.path().join("data"),
        tmp.path().join("run"),
        tmp.path().join("lin"),
        tmp.path().join("m.onnx"),
    );
    let cfg = datasets::synth::SynthConfig {
        classes: 4,
        train_per_class: 10,
        val_per_class: 10,
        unlabeled: 16,
        seed: 2,
        ..Default::default()
    };
    datasets::synth::write_dataset(&data, &cfg, false).unwrap();
    let cache = tmp.path().join("cache");
    let p = Pretrain::parse_from([
        "x",
        "--data",
        s(&data),
        "--out",
        s(&run),
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--queue-size",
        "16",
        "--bn-splits",
        "2",
        "--no-knn",
        "--quiet",
        "--threads",
        "1",
        "--cache-dir",
        s(&cache),
    ]);
    trainer::train::run(&p.a.to_config().unwrap(), Default::default()).unwrap();
    let encoder = run.join("encoder.safetensors");
    let mut args = vec![
        "x",
        "--encoder",
        s(&encoder),
        "--data",
        s(&data),
        "--out",
        s(&lin),
        "--epochs",
        "5",
        "--batch-size",
        "16",
        "--quiet",
        "--threads",
        "1",
        "--cache-dir",
        s(&cache),
    ];
    args.extend_from_slice(linear_flags);
    let l = Linear::parse_from(args);
    let result = trainer::eval::linear::run(&l.a.to_config().unwrap(), Default::default()).unwrap();
    exporter::export(
        &exporter::checkpoint::LoadOptions::new(
            &run.join("encoder.safetensors"),
            Some(&lin.join("classifier.safetensors")),
        ),
        exporter::ExportOptions::default(),
        &model,
    )
    .unwrap();

    let trainer_csv = std::fs::read_to_string(lin.join("val_predictions.csv")).unwrap();
    let split = datasets::open(&data, Split::Val, None).unwrap();
    let bytes = std::fs::read(&model).unwrap();
    let info = infer::parse_model_info(&bytes, &model).unwrap();
    for kind in [BackendKind::Ort, BackendKind::Tract] {
        let backend = infer::backend::open(kind, DeviceKind::Cpu, &model, 1).unwrap();
        let out = run_split(
            &split,
            &info.preprocess,
            vec![backend],
            &RunConfig {
                batch_size: 7,
                decode_threads: 1,
                skip_bad: false,
                progress: false,
            },
        )
        .unwrap();
        let csv = infer::predictions::render(&split, &out.predictions);
        assert_eq!(csv.lines().count(), 41);
        assert_eq!(
            csv, trainer_csv,
            "{kind:?}: predictions differ from moco-train linear"
        );
        let correct = out
            .predictions
            .iter()
            .filter(|p| Some(p.top[0]) == split.samples[p.index].label)
            .count();
        let top1 = correct as f64 / split.samples.len() as f64;
        assert!(
            (top1 - result["top1"].as_f64().unwrap()).abs() < 1e-12,
            "{kind:?}: top-1 {top1} vs linear's {}",
            result["top1"]
        );
    }
}
