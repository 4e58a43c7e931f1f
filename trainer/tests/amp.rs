//! Mixed precision and same-start runs through the CLI: `--amp bf16` on the CPU (refused where
//! oneDNN has no native bf16), resumed bit-identical; `--save-init` / `--init-from` giving two
//! runs one start; `moco-train compare` passing float64 against float32 from one start and
//! reporting a planted difference.

mod common;

use std::path::Path;
use std::process::Command;

use common::{fails_with, last_json, method_args, pretrain_args, run, stderr, BIN};

fn ok(args: &[String]) -> std::process::Output {
    let out = run(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    out
}

fn native_bf16() -> bool {
    if let Some(why) = trainer::runtime::isa::no_native_bf16() {
        eprintln!("skipped: {why}");
        return false;
    }
    true
}

#[test]
fn bf16_on_a_cpu_without_native_bf16_is_refused_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let args = pretrain_args(&tmp.path().join("r"), &["--amp", "bf16"]);
    let out = Command::new(BIN)
        .args(&args)
        .env("ONEDNN_MAX_CPU_ISA", "AVX2")
        .env("MOCO_CACHE_DIR", common::cache_dir())
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--amp bf16") && err.contains("slower"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!tmp.path().join("r/config.json").exists());
    fails_with(
        &pretrain_args(&tmp.path().join("h"), &["--amp", "fp16"]),
        "--amp fp16",
    );
}

/// A bf16 run on the CPU trains (finite losses, recorded as bf16) and, killed after a checkpoint
/// and resumed, ends with the same encoder as an uninterrupted one.
#[test]
fn a_cpu_bf16_run_trains_and_resumes_bit_identical() {
    if !native_bf16() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (whole, resumed) = (tmp.path().join("whole"), tmp.path().join("resumed"));
    let bf16 = ["--amp", "bf16", "--steps", "4", "--checkpoint-every", "2"];
    ok(&pretrain_args(&whole, &bf16));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(whole.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["algorithm"]["amp"], "bf16");
    for line in std::fs::read_to_string(whole.join("metrics.jsonl"))
        .unwrap()
        .lines()
    {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["loss"].as_f64().is_some_and(f64::is_finite), "{line}");
    }
    // The same run, its last checkpoint and encoder taken away: it resumes from step 2.
    ok(&pretrain_args(&resumed, &bf16));
    std::fs::remove_file(resumed.join("checkpoints/step-000000004.safetensors")).unwrap();
    std::fs::remove_file(resumed.join("encoder.safetensors")).unwrap();
    let mut again = bf16.to_vec();
    again.push("--resume");
    let out = ok(&pretrain_args(&resumed, &again));
    assert!(stderr(&out).contains("step 2"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(whole.join("encoder.safetensors")).unwrap(),
        std::fs::read(resumed.join("encoder.safetensors")).unwrap(),
        "the resumed bf16 run ended elsewhere"
    );
}

fn save_init(path: &Path, method: &str, extra: &[&str]) {
    let run_dir = path.with_extension("unused");
    let mut flags = vec!["--save-init", path.to_str().unwrap(), "--json"];
    flags.extend_from_slice(extra);
    let out = ok(&method_args(&run_dir, method, &flags));
    assert!(last_json(&out)["sha256"]
        .as_str()
        .is_some_and(|s| s.len() == 64));
    assert!(!run_dir.join("config.json").exists(), "--save-init trained");
}

/// float64 and float32 from one `--init-from` agree within float32's bound over two steps (batch
/// 16, the horizon the bounds are for); a run with another temperature from the same start is
/// reported, naming a loss.
#[test]
fn compare_passes_float64_against_float32_and_reports_a_planted_difference() {
    let tmp = tempfile::tempdir().unwrap();
    let init = tmp.path().join("init.safetensors");
    save_init(
        &init,
        "mocov2",
        &["--batch-size", "16", "--queue-size", "32"],
    );
    let i = init.to_str().unwrap();
    let run = |name: &str, extra: &[&str]| {
        let dir = tmp.path().join(name);
        let mut flags = vec![
            "--init-from",
            i,
            "--steps",
            "2",
            "--checkpoint-every",
            "2",
            "--batch-size",
            "16",
            "--queue-size",
            "32",
        ];
        flags.extend_from_slice(extra);
        ok(&method_args(&dir, "mocov2", &flags));
        dir
    };
    let (f64_run, f32_run) = (run("f64", &["--float64"]), run("f32", &[]));
    let planted = run("t", &["--temperature", "0.25"]);
    let cmp =
        |a: &Path, b: &Path| run_compare(&[a.to_str().unwrap(), b.to_str().unwrap(), "--json"]);
    let out = cmp(&f32_run, &f64_run);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = last_json(&out);
    assert_eq!(
        (r["precision"].as_str(), r["steps"].as_u64()),
        (Some("float32"), Some(2))
    );
    assert!(r["tensors"].as_u64().unwrap() > 100, "{r}");
    eprintln!(
        "float32 vs float64: worst loss {}, worst tensor {}",
        r["worst_loss"], r["worst_tensor"]
    );
    let out = cmp(&planted, &f32_run);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("loss@") && err.contains("part beyond"),
        "{err}"
    );
    // Without the common start the runs part at step 0 already.
    let own = tmp.path().join("own");
    ok(&method_args(
        &own,
        "mocov2",
        &["--steps", "4", "--checkpoint-every", "4", "--seed", "6"],
    ));
    assert_eq!(cmp(&own, &f32_run).status.code(), Some(1));
}

fn run_compare(args: &[&str]) -> std::process::Output {
    let mut v = vec!["compare"];
    v.extend_from_slice(args);
    run(&v)
}

#[test]
fn init_from_refuses_another_method_or_a_missing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let init = tmp.path().join("init.safetensors");
    save_init(&init, "simclr", &[]);
    let i = init.to_str().unwrap();
    fails_with(
        &method_args(&tmp.path().join("a"), "byol", &["--init-from", i]),
        "--init-from",
    );
    fails_with(
        &method_args(
            &tmp.path().join("b"),
            "mocov2",
            &["--init-from", "/nonexistent/init"],
        ),
        "/nonexistent/init",
    );
    fails_with(
        &["compare", "/nonexistent/a", "/nonexistent/b"],
        "/nonexistent/a",
    );
}
