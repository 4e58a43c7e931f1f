//! `moco-export --quantize int8` on a torchvision-initialised resnet18 (random BN statistics,
//! tests/python/torchvision_parity.py): onnx.checker passes; ONNX Runtime turns every QDQ group
//! into an integer kernel (20 QLinearConv, 8 QLinearAdd, QLinearGlobalAveragePool, MaxPool on
//! uint8); ONNX Runtime and tract run the file and stay near the fp32 model's logits.

use std::path::{Path, PathBuf};

use datasets::synth::{write_dataset, SynthConfig};
use datasets::Split;
use exporter::quantize::{Calibration, KeepFloat};
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

/// A torchvision-initialised resnet18 with its classifier in `d`, and the calibration images:
/// (encoder, classifier, data root).
fn resnet18_in(d: &Path) -> (PathBuf, PathBuf, PathBuf) {
    ResnetReference::generate(Arch::Resnet18, d, 11).unwrap();
    let root = data(d);
    (
        d.join("encoder.safetensors"),
        d.join("classifier.safetensors"),
        root,
    )
}

/// int8 on 64 train images of `root`, no `--max-drop`.
fn calibrated_on(root: &Path, calibration: Calibration, keep_float: KeepFloat) -> QuantizeOptions {
    QuantizeOptions {
        data: root.to_path_buf(),
        split: Split::Train,
        format: None,
        images: 64,
        calibration,
        max_drop: None,
        keep_float,
    }
}

#[test]
fn int8_export_is_fused_by_onnx_runtime_and_stays_near_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (enc, cls, root) = resnet18_in(d);
    let load = LoadOptions::new(&enc, Some(&cls));
    let (fp32, int8) = (d.join("fp32.onnx"), d.join("int8.onnx"));
    export(&load, ExportOptions::default(), &fp32).unwrap();
    let q = calibrated_on(&root, Calibration::Auto, KeepFloat::Layers(Vec::new()));
    let s = export_quantized(&load, ExportOptions::default(), Some(&q), &int8).unwrap();
    let summary = s.quantization.unwrap();
    assert_eq!((summary.conv_weights, summary.calibration_images), (20, 64));
    // auto tried every range method on images held back from calibration and kept the best.
    assert!(summary.held_back && summary.check_images > 0, "{summary:?}");
    assert_eq!(summary.tried.len(), 4, "{summary:?}");
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
    // (tract) measured on an AVX-512 VNNI CPU. Without VNNI, ONNX Runtime's u8×s8 kernels sum
    // pairs of products in 16 bits, which saturate: 0.118 (ort) against 0.055 (tract) on an
    // AVX2-only EPYC, hence a looser bound for ort there. A wrong scale, zero point or bias scale
    // is off by far more (and is not fused into QLinearConv, above).
    let (e_ort, e_tract) = (relative(&ort, &want), relative(&tract, &want));
    eprintln!("int8 vs fp32, relative to the logits' scale: ort {e_ort:.4}, tract {e_tract:.4}");
    let vnni = trainer::runtime::isa::cpu_has_any(&["avx512_vnni", "avx_vnni"]);
    let ort_bound = if vnni { 0.1 } else { 0.15 };
    assert!(
        e_ort < ort_bound,
        "ort int8 vs fp32: {e_ort} (VNNI: {vnni})"
    );
    assert!(e_tract < 0.1, "tract int8 vs fp32: {e_tract}");
}

/// The ONNX Runtime kernels of `model` after its graph optimisations (ort_quantize.py --check).
fn ort_ops(model: &Path) -> serde_json::Value {
    let report = run_script("ort_quantize.py", &["--check", model.to_str().unwrap()]).unwrap();
    let r: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    r["ort_ops"].clone()
}

#[test]
fn layers_kept_in_float_are_named_or_found_by_their_sensitivity() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (enc, cls, root) = resnet18_in(d);
    let load = LoadOptions::new(&enc, Some(&cls));
    let named = calibrated_on(
        &root,
        Calibration::MinMax,
        "conv1,layer2.0.conv1,avgpool".parse().unwrap(),
    );
    let path = d.join("named.onnx");
    let s = export_quantized(&load, ExportOptions::default(), Some(&named), &path).unwrap();
    let q = s.quantization.unwrap();
    assert_eq!(q.float_layers, ["conv1", "layer2.0.conv1", "avgpool"]);
    assert_eq!(q.conv_weights, 18, "{q:?}");
    // Float Convs read float inputs with float weights, the pool reads float values; what feeds
    // them and something quantized besides (layer1's output also feeds the downsample and the
    // Add) is read twice, so the Add and ReLU before it and the last block's Add run in float on
    // dequantized inputs. Every other Conv and Add is an integer kernel. A float layer fed
    // through a DequantizeLinear would be fused into one more QLinearConv.
    let ops = ort_ops(&path);
    for (op, n) in [
        ("QLinearConv", 18),
        ("Conv", 2),
        ("QLinearAdd", 6),
        ("Add", 2),
        ("DequantizeLinear", 4),
        ("GlobalAveragePool", 1),
    ] {
        assert_eq!(ops[op].as_u64(), Some(n), "{op}: {ops}");
    }
    let info = infer::parse_model_info(&std::fs::read(&path).unwrap(), &path).unwrap();
    let meta = info.quantization.unwrap();
    assert_eq!(
        meta["float_layers"],
        serde_json::json!(["conv1", "layer2.0.conv1", "avgpool"])
    );

    // auto: every layer measured alone, most sensitive first; the most sensitive that fit the
    // float budget tried one at a time, each kept only when the model then agrees with fp32 more
    // often.
    let auto = QuantizeOptions {
        keep_float: KeepFloat::Auto,
        ..named.clone()
    };
    let path = d.join("auto.onnx");
    let s = export_quantized(&load, ExportOptions::default(), Some(&auto), &path).unwrap();
    let q = s.quantization.unwrap();
    assert_eq!(
        q.sensitivity.len(),
        21,
        "20 convolutions and the pool: {q:?}"
    );
    assert!(q.sensitivity.windows(2).all(|w| w[0].error >= w[1].error));
    assert!(q.sensitivity.iter().all(|l| l.error > 0.0), "{q:?}");
    let tries = &q.float_tries;
    assert!(tries.len() >= 2 && tries[0].layers.is_empty(), "{q:?}");
    assert!(tries.iter().all(|t| t.float_share <= 0.10), "{q:?}");
    // Every 3×3 Conv of a resnet18 is 6–7 % of its multiply-adds; conv1 about the same.
    let conv1 = tries.iter().find(|t| t.layers == ["conv1"]);
    assert!(
        conv1.is_none_or(|t| (0.05..0.08).contains(&t.float_share)),
        "{q:?}"
    );
    // Each try is the best set so far and one layer more, kept when it agrees more often.
    let mut best = &tries[0];
    for t in &tries[1..] {
        assert_eq!(t.layers[..t.layers.len() - 1], best.layers[..], "{q:?}");
        if t.top1_agreement > best.top1_agreement {
            best = t;
        }
    }
    assert_eq!(q.float_layers, best.layers, "{q:?}");
    assert_eq!(q.top1_agreement, best.top1_agreement);
    let ranked: Vec<&str> = q.sensitivity.iter().map(|l| l.layer.as_str()).collect();
    let order: Vec<usize> = q
        .float_layers
        .iter()
        .map(|l| ranked.iter().position(|r| r == l).unwrap())
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "most sensitive first: {q:?}"
    );

    let bad = QuantizeOptions {
        keep_float: "layer9.conv1".parse().unwrap(),
        ..named
    };
    let refused = d.join("refused.onnx");
    let e = export_quantized(&load, ExportOptions::default(), Some(&bad), &refused)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("--keep-float layer9.conv1: no such layer"),
        "{e}"
    );
    assert!(!refused.exists());
}
