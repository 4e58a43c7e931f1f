//! What the `moco-train` CLI tests share: the binary, a private decoded-store cache, and one small
//! generated dataset per test process.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub const BIN: &str = env!("CARGO_BIN_EXE_moco-train");

pub fn run<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("MOCO_CACHE_DIR", cache_dir())
        .output()
        .expect("moco-train runs")
}

/// The checkout's `.venv` Python (scripts/setup.sh), for the tests that read our files with
/// PyTorch or TensorBoard.
pub fn venv_python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python3")
}

pub fn cache_dir() -> PathBuf {
    std::env::temp_dir().join(format!("moco-train-cli-cache-{}", std::process::id()))
}

/// 3 classes × 8 train, 4 val, 24 unlabeled: 48 pretraining images.
pub fn dataset() -> &'static Path {
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

pub fn data() -> String {
    dataset().join("data").display().to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn fails_with<S: AsRef<OsStr> + Debug>(args: &[S], needle: &str) {
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

/// A small pretraining command line; flags in `extra` replace the defaults of the same name.
pub fn pretrain_args(out: &Path, extra: &[&str]) -> Vec<String> {
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

/// The methods of `pretrain --method` besides the default.
pub const OTHER_METHODS: &[&str] = &["mocov1", "mocov3", "simclr", "byol"];

/// [`pretrain_args`] for `method`, with narrow heads (64 hidden, 32 out) so that the small runs
/// stay fast; methods without a queue get no `--queue-size`.
pub fn method_args(out: &Path, method: &str, extra: &[&str]) -> Vec<String> {
    let mut v = pretrain_args(out, extra);
    if !matches!(method, "mocov1" | "mocov2") {
        if let Some(i) = v.iter().position(|a| a == "--queue-size") {
            v.drain(i..i + 2);
        }
    }
    v.extend(
        ["--method", method, "--mlp-hidden", "64", "--proj-dim", "32"]
            .iter()
            .map(|s| s.to_string()),
    );
    v
}

/// A `linear` command line on an encoder file, one thread, then `extra`.
pub fn linear_args(encoder: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "linear".into(),
        "--encoder".into(),
        encoder.display().to_string(),
        "--data".into(),
        data(),
        "--out".into(),
        out.display().to_string(),
        "--threads".into(),
        "1".into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// The JSON object on the last line of a command's stdout (`--json`).
pub fn last_json(o: &Output) -> serde_json::Value {
    let out = String::from_utf8_lossy(&o.stdout);
    let last = out.lines().last().expect("a JSON line on stdout");
    serde_json::from_str(last).expect("the last stdout line is JSON")
}
