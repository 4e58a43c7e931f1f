//! TensorBoard event files as TensorBoard itself reads them (tests/python/read_tensorboard.py,
//! the `tensorboard` package's EventAccumulator): every number of metrics.jsonl, exactly (as
//! float32), at its step; the figures as images; a killed and resumed run shown once per step.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

fn read_tensorboard(dir: &Path) -> Value {
    let py = venv_python();
    let o = Command::new(&py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/read_tensorboard.py"))
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", py.display()));
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn metrics(run: &Path) -> Vec<Value> {
    trainer::observe::metrics::read(&run.join("metrics.jsonl")).unwrap()
}

/// Every number of every record (its step and wall time aside) is the scalar `{section}/{key}`
/// at that step, once, equal to the record's value rounded to float32.
fn scalars_match(tb: &Value, records: &[Value], section: &str) -> usize {
    let mut checked = 0;
    for r in records {
        let step = r["step"].as_u64().unwrap();
        for (key, v) in r.as_object().unwrap() {
            let (Some(v), false) = (v.as_f64(), matches!(key.as_str(), "step" | "wall_time"))
            else {
                continue;
            };
            let tag = format!("{section}/{key}");
            let at: Vec<&Value> = tb["scalars"][&tag]
                .as_array()
                .unwrap_or_else(|| panic!("no scalar {tag}"))
                .iter()
                .filter(|e| e[0].as_u64() == Some(step))
                .collect();
            assert_eq!(at.len(), 1, "{tag} at step {step}: {at:?}");
            assert_eq!(
                at[0][1].as_f64().unwrap() as f32,
                v as f32,
                "{tag} at step {step}"
            );
            checked += 1;
        }
    }
    let steps = |tag: &str| tb["scalars"][tag].as_array().map_or(0, Vec::len);
    assert_eq!(
        steps(&format!("{section}/loss")),
        records.len(),
        "one loss per record"
    );
    checked
}

#[test]
fn pretrain_and_linear_write_what_tensorboard_reads() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let o = run(&pretrain_args(&run_dir, &["--knn-every", "1"])
        .into_iter()
        .filter(|a| a != "--no-knn")
        .collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let tb = read_tensorboard(&run_dir.join("tb"));
    let records = metrics(&run_dir);
    assert!(records.iter().any(|r| r.get("knn_top1").is_some()));
    let n = scalars_match(&tb, &records, "pretrain");
    assert!(n >= records.len() * 4, "{n} values checked");
    for tag in [
        "pretrain/lr",
        "pretrain/images_per_sec",
        "pretrain/knn_top1",
    ] {
        assert!(tb["scalars"].get(tag).is_some(), "no {tag}");
    }
    // The preview: 8 rows of original + 2 views of 96 px, 2 px gaps; conv1: 64 maps of 48 px × 2.
    let aug = &tb["images"]["pretrain/augmentation"][0];
    assert_eq!(
        (aug[0].as_u64(), aug[1].as_u64(), aug[2].as_u64()),
        (Some(0), Some(3 * 98 + 2), Some(8 * 98 + 2))
    );
    assert!(aug[3].as_bool().unwrap());
    let maps = tb["images"]["pretrain/conv1_maps"].as_array().unwrap();
    assert_eq!(maps.last().unwrap()[0].as_u64(), Some(6));
    assert_eq!(maps[0][1].as_u64(), Some(8 * 98 + 2));

    let lin = dir.path().join("linear");
    let o = run(&linear_args(
        &run_dir.join("encoder.safetensors"),
        &lin,
        &["--fast", "--epochs", "3", "--json"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let tb = read_tensorboard(&lin.join("tb"));
    let records = metrics(&lin);
    assert_eq!(records.len(), 3);
    scalars_match(&tb, &records, "linear");
    assert!(tb["scalars"].get("linear/top5").is_some());

    // Started again in the same directory (no --resume): only the new run's epochs show.
    let o = run(&linear_args(
        &run_dir.join("encoder.safetensors"),
        &lin,
        &["--fast", "--epochs", "2", "--lr", "5", "--json"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let records = metrics(&lin);
    assert_eq!(records.len(), 2);
    scalars_match(&read_tensorboard(&lin.join("tb")), &records, "linear");

    let off = dir.path().join("off");
    let o = run(&linear_args(
        &run_dir.join("encoder.safetensors"),
        &off,
        &["--fast", "--epochs", "1", "--no-tensorboard"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!off.join("tb").exists());
}

/// Killed at the start of step 5 (the checkpoint of step 4 kept) and resumed: TensorBoard shows
/// steps 1–6 once each, with the values of the final metrics.jsonl.
#[test]
fn a_resumed_run_is_shown_once_per_step() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let tb_dir = dir.path().join("elsewhere");
    let args = pretrain_args(&run_dir, &["--tensorboard", tb_dir.to_str().unwrap()]);
    let o = Command::new(BIN)
        .args(&args)
        .env("MOCO_CACHE_DIR", cache_dir())
        .env("MOCO_TEST_KILL_AT", "step:5")
        .output()
        .unwrap();
    assert!(!o.status.success(), "the run was to be killed");
    let mut resumed = args.clone();
    resumed.push("--resume".into());
    let o = run(&resumed);
    assert!(o.status.success(), "{}", stderr(&o));
    let records = metrics(&run_dir);
    assert_eq!(
        records
            .iter()
            .map(|r| r["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );
    let files = std::fs::read_dir(&tb_dir).unwrap().count();
    assert_eq!(files, 2, "one event file per process");
    scalars_match(&read_tensorboard(&tb_dir), &records, "pretrain");
}
