//! `moco-train` end to end on small generated data: an exact resume after SIGKILL, and the bad
//! inputs of the pretraining and evaluation commands.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_moco-train");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("MOCO_CACHE_DIR", cache_dir())
        .output()
        .expect("moco-train runs")
}

fn cache_dir() -> PathBuf {
    std::env::temp_dir().join(format!("moco-train-cli-cache-{}", std::process::id()))
}

/// 3 classes × 8 train, 4 val, 24 unlabeled: 48 pretraining images.
fn dataset() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let out = run(&[
            "synth",
            "--out",
            d.path().join("data").to_str().unwrap(),
            "--classes",
            "3",
            "--train-per-class",
            "8",
            "--val-per-class",
            "4",
            "--unlabeled",
            "24",
            "--seed",
            "3",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        d
    })
    .path()
}

fn data() -> String {
    dataset().join("data").display().to_string()
}

/// A small pretraining command line; flags in `extra` replace the defaults of the same name.
fn pretrain_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let defaults = [
        ("--steps", "6"),
        ("--batch-size", "8"),
        ("--queue-size", "16"),
        ("--bn-splits", "2"),
        ("--threads", "1"),
        ("--seed", "5"),
        ("--checkpoint-every", "2"),
        ("--log-every", "1"),
    ];
    let mut v: Vec<String> = vec![
        "pretrain".into(),
        "--data".into(),
        data(),
        "--out".into(),
        out.display().to_string(),
        "--no-knn".into(),
        "--quiet".into(),
    ];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            v.extend([flag.to_string(), value.to_string()]);
        }
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn resume_after_sigkill_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let args_a = pretrain_args(&a, &[]);
    let out = run(&args_a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));

    // Kill run b with SIGKILL as soon as its step-4 checkpoint exists, then resume it.
    let args_b = pretrain_args(&b, &["--resume"]);
    let mut child = Command::new(BIN)
        .args(&args_b)
        .env("MOCO_CACHE_DIR", cache_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = b.join("checkpoints/step-000000004.safetensors");
    let t0 = Instant::now();
    while !ckpt.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    assert!(
        !b.join("encoder.safetensors").exists(),
        "the run finished before it could be killed; the test proves nothing"
    );
    let out = run(&args_b.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("resumed from"), "{}", stderr(&out));
    let (ea, eb) = (
        std::fs::read(a.join("encoder.safetensors")).unwrap(),
        std::fs::read(b.join("encoder.safetensors")).unwrap(),
    );
    assert!(
        ea == eb,
        "resumed encoder differs from the uninterrupted run"
    );
    // The metrics log reads as one run: steps 1..=6, once each.
    let steps: Vec<u64> = std::fs::read_to_string(b.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);

    // A resume with another configuration is refused.
    let out = run(&pretrain_args(&b, &["--resume", "--temperature", "0.1"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("another configuration"),
        "{}",
        stderr(&out)
    );

    // A corrupt newest checkpoint: a warning, and the previous good one is used.
    let ckpts = {
        let mut v: Vec<PathBuf> = std::fs::read_dir(b.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    let newest = ckpts.last().unwrap();
    let mut bytes = std::fs::read(newest).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xff;
    std::fs::write(newest, bytes).unwrap();
    let out = run(&args_b.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("checksum mismatch"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("step-000000004"), "{}", stderr(&out));
    assert!(std::fs::read(b.join("encoder.safetensors")).unwrap() == ea);
}

fn fails_with(args: &[&str], needle: &str) {
    let out = run(args);
    let err = stderr(&out);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(err.contains(needle), "{args:?}: `{needle}` not in: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one-line error expected: {err}"
    );
}

#[test]
fn bad_pretraining_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = out.to_str().unwrap();
    let d = data();
    let base = [
        "pretrain",
        "--data",
        &d,
        "--out",
        o,
        "--no-knn",
        "--quiet",
        "--threads",
        "1",
    ];
    let with = |extra: &[&'static str]| [&base[..], extra].concat();
    fails_with(
        &with(&[
            "--batch-size",
            "8",
            "--queue-size",
            "20",
            "--bn-splits",
            "2",
        ]),
        "--queue-size 20",
    );
    fails_with(
        &with(&["--batch-size", "64", "--queue-size", "128"]),
        "larger than the 48 pretraining images",
    );
    fails_with(
        &with(&["--batch-size", "6", "--bn-splits", "4"]),
        "--bn-splits 4",
    );
    fails_with(&with(&["--amp", "fp16", "--device", "cpu"]), "--amp");
    fails_with(
        &[
            "pretrain",
            "--data",
            "/nonexistent/x",
            "--out",
            o,
            "--quiet",
        ],
        "/nonexistent/x",
    );
    // An unwritable --out (a path under a regular file).
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let bad_out = file.join("run");
    fails_with(
        &[
            "pretrain",
            "--data",
            &d,
            "--out",
            bad_out.to_str().unwrap(),
            "--quiet",
        ],
        "--out",
    );
}

#[test]
fn a_diverging_loss_stops_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let args = pretrain_args(
        &out,
        &["--lr", "1e30", "--steps", "20", "--checkpoint-every", "1"],
    );
    let o = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = stderr(&o);
    assert!(!o.status.success(), "a run with lr 1e30 succeeded: {err}");
    assert!(err.contains("NaN") || err.contains("inf"), "{err}");
    assert!(err.contains("last good checkpoint"), "{err}");
    assert!(!out.join("encoder.safetensors").exists());
    // Whatever checkpoint is left verifies and holds finite weights.
    for entry in std::fs::read_dir(out.join("checkpoints")).unwrap() {
        let map = models::TensorMap::load(&entry.unwrap().path()).unwrap();
        assert!(map
            .tensors
            .values()
            .all(|t| t.to_f32().iter().all(|v| v.is_finite())));
    }
}

#[test]
fn knn_and_linear_refuse_unlabeled_data_and_bad_flags() {
    let d = data();
    fails_with(
        &[
            "knn",
            "--random-init",
            "--arch",
            "resnet18",
            "--data",
            &d,
            "--bank-split",
            "unlabeled",
            "--json",
        ],
        "no labels",
    );
    let tmp = tempfile::tempdir().unwrap();
    let o = tmp.path().join("lin");
    fails_with(
        &[
            "linear",
            "--random-init",
            "--arch",
            "resnet18",
            "--data",
            &d,
            "--train-split",
            "unlabeled",
            "--out",
            o.to_str().unwrap(),
            "--quiet",
        ],
        "no labels",
    );
    let enc = tmp.path().join("missing.safetensors");
    fails_with(
        &[
            "linear",
            "--encoder",
            enc.to_str().unwrap(),
            "--data",
            &d,
            "--out",
            o.to_str().unwrap(),
        ],
        "missing.safetensors",
    );
}

#[test]
fn knn_and_linear_on_a_random_init_report_json() {
    let d = data();
    let out = run(&[
        "knn",
        "--random-init",
        "--arch",
        "resnet18",
        "--data",
        &d,
        "--json",
        "--threads",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    let top1 = v["top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1) && v["n"] == 12);

    let tmp = tempfile::tempdir().unwrap();
    let o = tmp.path().join("lin");
    let out = run(&[
        "linear",
        "--random-init",
        "--arch",
        "resnet18",
        "--data",
        &d,
        "--out",
        o.to_str().unwrap(),
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--json",
        "--threads",
        "1",
        "--quiet",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert!(
        v["top1"].as_f64().unwrap() >= 0.0
            && v["top5"].as_f64().unwrap() >= v["top1"].as_f64().unwrap()
    );
    let csv = std::fs::read_to_string(o.join("val_predictions.csv")).unwrap();
    assert_eq!(csv.lines().count(), 13);
    assert!(csv.starts_with("image,prediction,label\n"));
    let map = models::TensorMap::load(&o.join("classifier.safetensors")).unwrap();
    assert_eq!(map.tensors["fc.weight"].shape, vec![3, 512]);
}
