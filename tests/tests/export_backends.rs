//! The exported ONNX file against the checkpoint it came from: libtorch (tch, eval mode) vs
//! ONNX Runtime and tract through moco-infer's backends, vs Python's onnxruntime, with
//! `onnx.checker.check_model(full_check=True)`; BN folded and kept; resnet18 and resnet50.

use std::path::Path;

use exporter::{export, ExportOptions, LoadOptions};
use infer::backend::{self, BackendKind, DeviceKind};
use moco_tests::compare::{check_abs, summarize, Check};
use moco_tests::fixtures::{eval_batch, tch_logits, tensor_from, test_images};
use moco_tests::parity::ResnetReference;
use moco_tests::python::run_script;
use models::{Arch, DType, Preprocess, TensorData, TensorMap};
use tch::{Device, Tensor};

const TOL: f64 = 1e-4;

fn argmax_agree(name: &str, ours: &Tensor, reference: &Tensor) -> Check {
    let a = ours.argmax(1, false);
    let b = reference.argmax(1, false);
    let differ = a.ne_tensor(&b).sum(tch::Kind::Int64).int64_value(&[]);
    Check {
        name: format!("{name} top-1"),
        max_abs_diff: differ as f64,
        scale: 1.0,
        tol: 0.0,
        ok: differ == 0,
    }
}

fn backends_match(arch: Arch) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ResnetReference::generate(arch, d, 7).unwrap();
    let (paths, real) = test_images(d, 20).unwrap();
    let p = Preprocess::default();
    let images = eval_batch(&paths, &p).unwrap();
    let n = paths.len();
    let (enc, cls) = (
        d.join("encoder.safetensors"),
        d.join("classifier.safetensors"),
    );
    let reference = tch_logits(&enc, &cls, &images, n, &p, Device::Cpu).unwrap();

    let mut input = TensorMap::new();
    input.insert("image", TensorData::from_f32(vec![n, 3, 96, 96], &images));
    input.save(&d.join("input.safetensors")).unwrap();

    let mut checks = Vec::new();
    for fold in [true, false] {
        let tag = if fold { "folded" } else { "unfolded" };
        let out = d.join(format!("{tag}.onnx"));
        let load = LoadOptions {
            encoder: &enc,
            encoder_prefix: None,
            classifier: Some(&cls),
            arch: Some(arch),
            classes: None,
            config: None,
        };
        export(
            &load,
            ExportOptions {
                fold,
                with_features: true,
            },
            &out,
        )
        .unwrap();
        for kind in [BackendKind::Ort, BackendKind::Tract] {
            let mut be = backend::open(kind, DeviceKind::Cpu, &out, 2).unwrap();
            let logits = be.run(&images, n, 96).unwrap().logits.unwrap();
            let logits = Tensor::from_slice(&logits).reshape([n as i64, -1]);
            let name = format!("{tag} {kind:?}");
            checks.push(check_abs(&name, &logits, &reference, TOL));
            checks.push(argmax_agree(&name, &logits, &reference));
        }
        let py_out = d.join(format!("{tag}.py.safetensors"));
        let meta = run_script(
            "onnx_reference.py",
            &[
                "--model",
                &out.to_string_lossy(),
                "--input",
                &d.join("input.safetensors").to_string_lossy(),
                "--out",
                &py_out.to_string_lossy(),
            ],
        )
        .unwrap();
        let py = TensorMap::load(&py_out).unwrap();
        let py_logits = tensor_from(&py, "logits").unwrap();
        checks.push(check_abs(
            &format!("{tag} python-ort"),
            &py_logits,
            &reference,
            TOL,
        ));
        checks.push(argmax_agree(
            &format!("{tag} python-ort"),
            &py_logits,
            &reference,
        ));
        assert!(py
            .get("features")
            .is_some_and(|f| f.dtype == DType::F32 && f.shape == vec![n, arch.feature_dim()]));
        let meta: serde_json::Value =
            serde_json::from_str(meta.trim().lines().last().unwrap()).unwrap();
        assert_eq!(meta["moco.arch"], arch.name());
        assert_eq!(meta["moco.crop"], "96");
    }
    let s = summarize(&checks);
    eprintln!(
        "{arch} on {} images ({}): {s}",
        n,
        if real {
            "imagenette96 val"
        } else {
            "generated"
        }
    );
    for c in &checks {
        eprintln!("  {:<28} max|Δ| {:.2e}", c.name, c.max_abs_diff);
    }
    assert!(checks.iter().all(|c| c.ok), "{arch}: {s}");
}

#[test]
fn resnet18_export_matches_tch_in_ort_tract_and_python() {
    backends_match(Arch::Resnet18);
}

#[test]
fn resnet50_export_matches_tch_in_ort_tract_and_python() {
    backends_match(Arch::Resnet50);
}

#[test]
fn bad_checkpoints_are_refused_without_leaving_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ResnetReference::generate(Arch::Resnet18, d, 3).unwrap();
    let enc = d.join("encoder.safetensors");
    let cls = d.join("classifier.safetensors");
    let out = d.join("m.onnx");
    let try_export = |enc: &Path, cls: Option<&Path>, arch: Option<Arch>| {
        let load = LoadOptions {
            arch,
            ..LoadOptions::new(enc, cls)
        };
        export(&load, ExportOptions::default(), &out).map(|_| ())
    };
    let map = TensorMap::load(&enc).unwrap();
    let mutate = |name: &str, f: &dyn Fn(&mut TensorMap)| {
        let mut m = map.clone();
        f(&mut m);
        let p = d.join(format!("{name}.safetensors"));
        m.save(&p).unwrap();
        p
    };
    let cases: Vec<(&str, std::path::PathBuf, Option<Arch>, &str)> = vec![
        (
            "missing",
            mutate("missing", &|m| {
                m.tensors.remove("layer2.1.bn1.running_var");
            }),
            None,
            "missing tensor `layer2.1.bn1.running_var`",
        ),
        (
            "shape",
            mutate("shape", &|m| {
                m.insert(
                    "layer1.0.conv1.weight",
                    TensorData::from_f32(vec![64, 64, 1, 1], &[0.0; 4096]),
                );
            }),
            None,
            "shape [64, 64, 1, 1]",
        ),
        (
            "nan",
            mutate("nan", &|m| {
                let mut v = m.get("bn1.weight").unwrap().to_f32();
                v[3] = f32::NAN;
                m.insert("bn1.weight", TensorData::from_f32(vec![64], &v));
            }),
            None,
            "NaN",
        ),
        ("arch", enc.clone(), Some(Arch::Resnet50), "--arch resnet50"),
    ];
    for (what, path, arch, expect) in cases {
        let e = try_export(&path, Some(&cls), arch).unwrap_err().to_string();
        assert!(e.contains(expect), "{what}: {e}");
        assert!(!out.exists(), "{what}: a partial .onnx was left behind");
    }
    // Classifier for another feature width (class-count/arch mismatch).
    let mut wrong = TensorMap::new();
    wrong.insert(
        "fc.weight",
        TensorData::from_f32(vec![10, 2048], &vec![0.0; 20480]),
    );
    wrong.insert("fc.bias", TensorData::from_f32(vec![10], &[0.0; 10]));
    let wp = d.join("wrong_cls.safetensors");
    wrong.save(&wp).unwrap();
    let e = try_export(&enc, Some(&wp), None).unwrap_err().to_string();
    assert!(e.contains("fc.weight") && e.contains("[10, 2048]"), "{e}");
    assert!(!out.exists());
    // Not a safetensors file at all.
    std::fs::write(d.join("junk.safetensors"), b"junk").unwrap();
    let e = try_export(&d.join("junk.safetensors"), None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("junk.safetensors"), "{e}");
}
