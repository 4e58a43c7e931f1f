//! `scripts/gpu.sh verify` in its small CPU mode, so that the script a lent GPU runs in one call
//! has run before, stage by stage: every stage ends well, the parity of every method and
//! precision holds (the CPU standing in for the GPU), and what it keeps fits what the device tool
//! returns (at most 8 files) with the summary as the last line of stdout.

use std::path::Path;
use std::process::Command;

#[test]
fn gpu_verify_runs_in_its_cpu_mode() {
    let bin = Path::new(env!("CARGO_BIN_EXE_moco-train"))
        .parent()
        .unwrap();
    if !bin.join("moco-export").exists() || !bin.join("moco-infer").exists() {
        eprintln!("skipped: moco-export/moco-infer are not built beside moco-train (cargo test --workspace builds them)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tempfile::tempdir().unwrap();
    let o = Command::new("bash")
        .arg(root.join("scripts/gpu.sh"))
        .arg("verify")
        .env("GPU_SH_DEVICE", "cpu")
        .env("GPU_SH_BIN", bin)
        .env("OUT", out.path())
        .env("MOCO_PYTHON", root.join(".venv/bin/python3"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let last = stdout.lines().last().expect("a summary line");
    let s: serde_json::Value = serde_json::from_str(last).expect("the last line is the summary");
    for (stage, r) in s["stages"].as_object().unwrap() {
        assert_eq!(r["status"], "ok", "stage {stage}: {stderr}");
    }
    assert_eq!(s["stages"].as_object().unwrap().len(), 6, "{s}");
    assert_eq!(
        s["graph"][0]["skipped"], "needs a CUDA device",
        "the CUDA graph stage on the CPU: {}",
        s["graph"]
    );
    assert_eq!(s["parity_ok"], true, "{}", s["parity"]);
    let methods: std::collections::BTreeSet<&str> = s["parity"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["method"].as_str())
        .collect();
    assert_eq!(methods.len(), 5, "every method once: {methods:?}");
    assert!(
        s["throughput"].as_array().unwrap().len() >= 2,
        "{}",
        s["throughput"]
    );
    assert!(
        !s["learning"]["knn"].as_array().unwrap().is_empty(),
        "{}",
        s["learning"]
    );
    assert!(
        s["inference"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["top1"].is_number()),
        "{}",
        s["inference"]
    );
    let kept: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
    assert!(kept.len() <= 8, "{} files kept", kept.len());
    for f in ["summary.json", "verify.log.gz", "curves.png"] {
        assert!(out.path().join(f).exists(), "{f} missing");
    }
}
