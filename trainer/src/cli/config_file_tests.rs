//! `--config`: what is recorded, and how a record and the flags given now combine.

use super::config_file::*;
use clap::CommandFactory;
use std::ffi::OsString;

fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

#[test]
fn recorded_flags_lose_invocation_flags_and_gain_absolute_paths() {
    let cli = crate::cli::command::Cli::command();
    let cmd = cli.find_subcommand("pretrain").unwrap();
    let line = record(
        cmd,
        &os(&[
            "--data", "d", "--out=r", "--lr", "0.1", "--resume", "--no-knn", "--json",
        ]),
    );
    let cwd = std::env::current_dir().unwrap();
    let d = cwd.join("d").display().to_string();
    let r = cwd.join("r").display().to_string();
    assert_eq!(
        line,
        vec!["--data", &d, "--out", &r, "--lr", "0.1", "--no-knn"]
    );
}

#[test]
fn flags_given_now_override_the_recorded_ones() {
    let dir = std::env::temp_dir().join(format!("moco-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.json");
    let record = serde_json::json!({"command": "pretrain", "command_line":
        ["--data", "/d", "--out", "/r", "--lr", "0.1", "--no-tensorboard", "--seed", "3"]});
    std::fs::write(&file, record.to_string()).unwrap();
    let cli = crate::cli::command::Cli::command();
    let f = file.display().to_string();
    let argv = os(&[
        "moco-train",
        "pretrain",
        "--config",
        &f,
        "--out",
        "/r2",
        "--lr=0.2",
    ]);
    let argv = expand(&cli, argv).unwrap();
    let want = "moco-train pretrain --data /d --no-tensorboard --seed 3 --out /r2 --lr=0.2";
    assert_eq!(argv.join(std::ffi::OsStr::new(" ")), OsString::from(want));
    // --tensorboard conflicts with the recorded --no-tensorboard: the recorded one goes.
    let argv = os(&[
        "moco-train",
        "pretrain",
        "--config",
        &f,
        "--tensorboard",
        "/tb",
    ]);
    let argv = expand(&cli, argv).unwrap();
    let want = "moco-train pretrain --data /d --out /r --lr 0.1 --seed 3 --tensorboard /tb";
    assert_eq!(argv.join(std::ffi::OsStr::new(" ")), OsString::from(want));
    // bench-step reads a pretraining run's record.
    let argv = os(&["moco-train", "bench-step", "--config", &f, "--timed", "2"]);
    let argv = expand(&cli, argv).unwrap();
    let want = "moco-train bench-step --data /d --out /r --lr 0.1 --no-tensorboard --seed 3 \
                --timed 2";
    assert_eq!(argv.join(std::ffi::OsStr::new(" ")), OsString::from(want));
    // The record of another command is refused, naming the file.
    let argv = os(&["moco-train", "linear", "--config", &f]);
    let e = expand(&cli, argv).unwrap_err().to_string();
    assert!(
        e.contains("written by `moco-train pretrain`, not `linear`"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
