//! What a GPU training step dispatches, counted on the CPU: `bench-step --gpu-path` runs the step
//! as a GPU would (aug+ on the device, shuffle BN, fused updates) and counts the top-level ops and
//! the host synchronisations, which are the same on every device. A change that brings back a
//! per-image, per-subset or per-parameter path shows here before any GPU sees it.

mod common;

use common::{data, last_json, run, stderr};

/// `bench-step` of `method` with aug+ on the device: (top-level ops, host syncs) per step.
fn counted_step(method: &str, extra: &[&str]) -> (f64, f64) {
    let out = tempfile::tempdir().unwrap();
    let run_dir = out.path().join("run");
    let mut args: Vec<String> = vec!["bench-step".into(), "--data".into(), data()];
    args.extend(["--out".into(), run_dir.display().to_string()]);
    args.extend(
        [
            "--method",
            method,
            "--batch-size",
            "16",
            "--crop",
            "32",
            "--threads",
            "1",
            "--gpu-path",
            "--warmup",
            "1",
            "--timed",
            "1",
            "--no-knn",
            "--json",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string()),
    );
    let o = run(&args);
    assert!(o.status.success(), "bench-step {method}: {}", stderr(&o));
    let j = last_json(&o);
    (
        j["ops_per_step"].as_f64().unwrap(),
        j["syncs_per_step"].as_f64().unwrap(),
    )
}

/// MoCo v2 with 8 shuffle-BN groups and every part of aug+: at most 600 top-level ops (1,072
/// before the batched jitter rounds and the fused SplitBatchNorm; PyTorch's eager step without
/// augmentation dispatches 655) and no host synchronisation on a step that does not log.
#[test]
fn mocov2_gpu_step_stays_within_its_op_budget_without_a_host_sync() {
    let (ops, syncs) = counted_step("mocov2", &["--bn-splits", "8", "--queue-size", "64"]);
    eprintln!("mocov2: {ops} top-level ops, {syncs} host syncs per step");
    assert!(ops <= 600.0, "{ops} top-level ops per step (budget 600)");
    assert_eq!(syncs, 0.0, "host syncs on a step that does not log");
}

/// Every other method within 1.3× of MoCo v2's count: MoCo v3 and BYOL put both views through
/// each network in one forward on the GPU's path (1,024 and 1,030 ops when each view took a
/// forward of its own; 636 and 637 now, with their solarize).
#[test]
fn every_method_stays_within_1_3_times_mocov2() {
    let (v2, _) = counted_step("mocov2", &["--bn-splits", "8", "--queue-size", "64"]);
    for method in ["mocov1", "mocov3", "simclr", "byol"] {
        let extra: &[&str] = match method {
            "mocov1" => &["--bn-splits", "8", "--queue-size", "64"],
            _ => &[],
        };
        let (ops, syncs) = counted_step(method, extra);
        eprintln!(
            "{method}: {ops} top-level ops ({:.2}× MoCo v2's {v2})",
            ops / v2
        );
        assert!(ops <= 1.3 * v2, "{method}: {ops} ops, over 1.3 × {v2}");
        assert_eq!(
            syncs, 0.0,
            "{method}: host syncs on a step that does not log"
        );
    }
}
