//! `--encoder` on the files PyTorch users have, written by the real torch.save
//! (tests/python/torch_checkpoints.py): MoCo's official checkpoint, torchvision and DataParallel
//! state_dicts, float16 storages, one storage behind many views, a Lightning checkpoint; the
//! legacy format, a TorchScript archive and a pickle that would run a command refused by name;
//! and the ONNX export of the PyTorch-trained encoder against PyTorch's own logits.

use std::path::Path;
use std::sync::OnceLock;

use exporter::{export, ExportOptions, LoadOptions};
use infer::backend::{self, BackendKind, DeviceKind};
use moco_tests::python::run_script;
use models::{EncoderFile, TensorMap};

/// The files, written once for the three tests (≈ 20 s of PyTorch).
fn fixtures() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        run_script(
            "torch_checkpoints.py",
            &["write", dir.path().to_str().unwrap()],
        )
        .unwrap();
        dir
    })
    .path()
}

fn load(d: &Path, file: &str, prefix: Option<&str>) -> Result<TensorMap, String> {
    EncoderFile::with_prefix(d.join(file), prefix.map(str::to_string))
        .load()
        .map_err(|e| e.to_string())
}

/// The backbone read from `file` is `expected`'s, name for name and bit for bit (heads aside).
fn assert_same_backbone(got: &TensorMap, expected: &TensorMap, what: &str) {
    let backbone = |m: &TensorMap| -> Vec<String> {
        m.tensors
            .keys()
            .filter(|n| !n.starts_with("fc."))
            .cloned()
            .collect()
    };
    assert_eq!(backbone(got), backbone(expected), "{what}: names");
    for (name, want) in &expected.tensors {
        let have = &got.tensors[name];
        assert_eq!(have.shape, want.shape, "{what}: {name} shape");
        assert_eq!(have.dtype, want.dtype, "{what}: {name} dtype");
        assert!(have.bytes == want.bytes, "{what}: {name} values differ");
    }
}

#[test]
fn pytorch_files_give_the_backbone_they_hold() {
    let d = fixtures();
    let q = TensorMap::load(&d.join("expected_q.safetensors")).unwrap();
    let k = TensorMap::load(&d.join("expected_k.safetensors")).unwrap();
    let half = TensorMap::load(&d.join("expected_half.safetensors")).unwrap();

    for (file, prefix, expected) in [
        ("checkpoint_0003.pth.tar", None, &q),
        ("checkpoint_0003.pth.tar", Some("module.encoder_k"), &k),
        ("torchvision.pth", None, &q),
        ("dataparallel.pth", None, &q),
        ("half.pt", None, &half),
        ("shared.pt", None, &q),
        ("lightning.ckpt", None, &q),
        ("lightning.ckpt", Some("backbone_momentum."), &k),
    ] {
        let got = load(d, file, prefix).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_same_backbone(&got, expected, file);
    }
    // MoCo's v2 head comes along under torchvision's names (the callers ignore `fc.*`); the
    // momentum encoder and the queue do not.
    let moco = load(d, "checkpoint_0003.pth.tar", None).unwrap();
    assert!(moco.tensors.contains_key("fc.0.weight") && moco.tensors.contains_key("fc.2.bias"));
    assert!(!moco
        .tensors
        .keys()
        .any(|n| n.contains("encoder_k") || n.contains("queue")));

    let e = load(d, "checkpoint_0003.pth.tar", Some("module.encoder_x")).unwrap_err();
    assert!(
        e.contains("--encoder-prefix `module.encoder_x.`") && e.contains("`module.encoder_q.`"),
        "{e}"
    );
}

#[test]
fn files_that_are_not_plain_tensor_dicts_are_refused_by_name() {
    let d = fixtures();
    assert!(
        d.join("proof").exists(),
        "the payload is live under torch.load"
    );

    let e = load(d, "evil.pth", None).unwrap_err();
    assert!(
        e.contains("evil.pth") && e.contains("refusing pickle global `posix.system`"),
        "{e}"
    );
    assert!(
        !d.join("pwned").exists(),
        "the malicious pickle ran a command"
    );
    let e = load(d, "legacy.pth", None).unwrap_err();
    assert!(
        e.contains("legacy.pth") && e.contains("legacy format"),
        "{e}"
    );
    let e = load(d, "torchscript.pt", None).unwrap_err();
    assert!(
        e.contains("torchscript.pt") && e.contains("TorchScript"),
        "{e}"
    );

    // A checkpoint cut short.
    let bytes = std::fs::read(d.join("torchvision.pth")).unwrap();
    let cut = tempfile::tempdir().unwrap();
    std::fs::write(cut.path().join("cut.pth"), &bytes[..bytes.len() / 2]).unwrap();
    let e = load(cut.path(), "cut.pth", None).unwrap_err();
    assert!(e.contains("cut.pth"), "{e}");
}

#[test]
fn a_pytorch_trained_encoder_exports_to_pytorchs_logits() {
    let d = fixtures();
    let out = tempfile::tempdir().unwrap();
    let out = &out.path().join("moco.onnx");
    let (enc, cls) = (
        d.join("checkpoint_0003.pth.tar"),
        d.join("classifier.safetensors"),
    );
    export(
        &LoadOptions::new(&enc, Some(&cls)),
        ExportOptions::default(),
        out,
    )
    .unwrap();

    let input = TensorMap::load(&d.join("input.safetensors")).unwrap();
    let images = input.tensors["image"].to_f32();
    let want = TensorMap::load(&d.join("logits.safetensors"))
        .unwrap()
        .tensors["logits"]
        .to_f32();
    for kind in [BackendKind::Ort, BackendKind::Tract] {
        let mut be = backend::open(kind, DeviceKind::Cpu, out, 2).unwrap();
        let got = be.run(&images, 4, 96).unwrap().logits.unwrap();
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "{kind:?}: max |logit diff| {diff} ≥ 1e-4");
    }
    let report = run_script(
        "torch_checkpoints.py",
        &["check", out.to_str().unwrap(), d.to_str().unwrap()],
    )
    .unwrap();
    let r: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
    assert!(r["max_abs_diff"].as_f64().unwrap() < 1e-4, "{r}");
    assert!(r["argmax_agree"].as_bool().unwrap(), "{r}");
}
