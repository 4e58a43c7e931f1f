//! What the `moco-train` CLI tests share: the binary, a private decoded-store cache, and one small
//! generated dataset per test process.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub const BIN: &str = env!("CARGO_BIN_EXE_moco-train");

pub fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("MOCO_CACHE_DIR", cache_dir())
        .output()
        .expect("moco-train runs")
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

pub fn fails_with(args: &[&str], needle: &str) {
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
