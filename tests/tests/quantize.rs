//! `moco-export --quantize int8` on a torchvision-initialised resnet18 (random BN statistics,
//! tests/python/torchvision_parity.py): onnx.checker passes; ONNX Runtime turns every QDQ group
//! into an integer kernel (20 QLinearConv, 8 QLinearAdd, QLinearGlobalAveragePool, MaxPool on
//! uint8); ONNX Runtime and tract run the file and stay near the fp32 model's logits.

use std::path::Path;

use datasets::synth::{write_dataset, SynthConfig};
use datasets::Split;
use exporter::{export, export_quantized, ExportOptions, LoadOptions, QuantizeOptions};
use infer::backend::{self, BackendKind, DeviceKind};
use moco_tests::fixtures::{eval_batch, imagenette};
use moco_tests::parity::ResnetReference;
use moco_tests::python::run_script;
use models::{Arch, Preprocess};

/// Calibration and evaluation images: imagenette96 when present, else the generated set.
fn data(d: &Path) -> std::path::PathBuf {
    if let Some(root) = imagenette() {
        return root;
    }
    let root = d.join("synth");
    let cfg = SynthConfig {
        classes: 10,
        train_per_class: 8,
        val_per_class: 4,
        unlabeled: 0,
        ..SynthConfig::default()
    };
    write_dataset(&root, &cfg, false).unwrap();
    root
}

fn logits(model: &Path, kind: BackendKind, images: &[f32], n: usize) -> Vec<f32> {
    let mut be = backend::open(kind, DeviceKind::Cpu, model, 2).unwrap();
    be.run(images, n, 96).unwrap().logits.unwrap()
}

/// max |a − b| over the largest |b|: the error relative to the logits' scale.
fn relative(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn int8_export_is_fused_by_onnx_runtime_and_stays_near_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ResnetReference::generate(Arch::Resnet18, d, 11).unwrap();
    let root = data(d);
    let (enc, cls) = (
        d.join("encoder.safetensors"),
        d.join("classifier.safetensors"),
    );
    let load = LoadOptions::new(&enc, Some(&cls));
    let (fp32, int8) = (d.join("fp32.onnx"), d.join("int8.onnx"));
    export(&load, ExportOptions::default(), &fp32).unwrap();
    let q = QuantizeOptions {
        data: root.clone(),
        split: Split::Train,
        format: None,
        images: 64,
        calibration: exporter::quantize::Calibration::Auto,
        max_drop: None,
    };
    let s = export_quantized(&load, ExportOptions::default(), Some(&q), &int8).unwrap();
    let summary = s.quantization.unwrap();
    assert_eq!((summary.conv_weights, summary.calibration_images), (20, 64));
    // auto tried every range method on images held back from calibration and kept the best.
    assert!(summary.held_back && summary.check_images > 0, "{summary:?}");
    assert_eq!(summary.tried.len(), 3, "{summary:?}");
    let best = summary
        .tried
        .iter()
        .map(|t| t.top1_agreement.unwrap())
        .fold(0.0, f64::max);
    assert_eq!(summary.top1_agreement, Some(best), "{summary:?}");

    // A bound the model misses: refused by name, and nothing written.
    let refused = d.join("refused.onnx");
    let strict = QuantizeOptions {
        max_drop: Some(-1.0),
        ..q.clone()
    };
    let e = export_quantized(&load, ExportOptions::default(), Some(&strict), &refused)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--max-drop") && e.contains("nothing written"),
        "{e}"
    );
    assert!(!refused.exists(), "a refused int8 model was written");
    assert!(
        std::fs::metadata(&int8).unwrap().len() * 3 < std::fs::metadata(&fp32).unwrap().len(),
        "int8 weights are a quarter of fp32's"
    );

    let report = run_script("ort_quantize.py", &["--check", int8.to_str().unwrap()]).unwrap();
    let r: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    let ort_ops = &r["ort_ops"];
    for (op, n) in [
        ("QLinearConv", 20),
        ("QLinearAdd", 8),
        ("QLinearGlobalAveragePool", 1),
    ] {
        assert_eq!(ort_ops[op].as_u64(), Some(n), "{op}: {ort_ops}");
    }
    assert!(
        ort_ops.get("Conv").is_none() && ort_ops.get("Relu").is_none(),
        "{ort_ops}"
    );

    let val = datasets::open(&root, Split::Val, None).unwrap();
    let paths: Vec<_> = val
        .samples
        .iter()
        .step_by((val.samples.len() / 32).max(1))
        .filter_map(|s| match &s.source {
            datasets::ImageSource::File(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    let images = eval_batch(&paths, &Preprocess::default()).unwrap();
    let n = paths.len();
    let want = logits(&fp32, BackendKind::Ort, &images, n);
    let ort = logits(&int8, BackendKind::Ort, &images, n);
    let tract = logits(&int8, BackendKind::Tract, &images, n);
    // 21 layers of uint8 activations (each rounding ≤ half a step, 1/510 of the tensor's range)
    // and int8 weights compound to a few percent of the logits' scale: 0.041 (ort) and 0.042
    // (tract) measured on an AVX-512 VNNI CPU; the bound leaves room for ONNX Runtime's u8×s8
    // kernels on CPUs without VNNI, whose 16-bit pair sums can saturate. A wrong scale, zero
    // point or bias scale is off by far more (and is not fused into QLinearConv, above).
    let (e_ort, e_tract) = (relative(&ort, &want), relative(&tract, &want));
    eprintln!("int8 vs fp32, relative to the logits' scale: ort {e_ort:.4}, tract {e_tract:.4}");
    assert!(e_ort < 0.1, "ort int8 vs fp32: {e_ort}");
    assert!(e_tract < 0.1, "tract int8 vs fp32: {e_tract}");
}
