//! `moco-train` end to end on small generated data: an exact resume after SIGKILL and after the
//! stop signals of a scheduler, and the bad inputs of the pretraining and evaluation commands.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    cache_dir, data, fails_with, last_json, linear_args, method_args, pretrain_args, run, stderr,
    BIN, OTHER_METHODS,
};

/// A positive integer from the environment (the long kill script raises these).
fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `linear` flags: one epoch of the cached-feature probe, its kNN, the JSON result.
const ONE_FAST_EPOCH_WITH_KNN: [&str; 7] = [
    "--epochs",
    "1",
    "--batch-size",
    "8",
    "--fast",
    "--knn",
    "--json",
];

/// Steps logged so far in a run's metrics (a torn last line does not count).
fn logged_steps(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["step"].as_u64())
        .collect()
}

enum Kill {
    /// SIGKILL from outside at a random moment.
    Random,
    /// The process SIGKILLs itself at this stage of its first checkpoint write.
    InCheckpoint(&'static str),
    /// A scheduler's stop signal at a random moment: the run must save the step it is in and
    /// exit with the preemption status.
    Signal(i32),
    /// The same signal twice, 20 ms apart: the second ends the process at once.
    SignalTwice(i32),
}

/// The exit status of a run stopped by a signal after saving (`moco-train`'s `PREEMPTED_EXIT`).
const PREEMPTED: i32 = 75;

/// The step of a run's newest checkpoint (0 without one).
fn newest_checkpoint(run: &Path) -> u64 {
    std::fs::read_dir(run.join("checkpoints"))
        .map(|rd| {
            rd.filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_prefix("step-")?
                    .strip_suffix(".safetensors")?
                    .parse()
                    .ok()
            })
            .max()
            .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// The kill test: SIGKILL at random moments and inside checkpoint writes (torn temp file,
/// synced but not renamed, renamed but older files not pruned), SIGTERM, SIGUSR1 and SIGINT at
/// random moments (a checkpoint of the step reached, exit status 75) and a doubled SIGTERM (an
/// immediate exit), `--resume` after each, and the final encoder must equal an uninterrupted
/// run's bit for bit. `scripts/kill_test.sh` runs it
/// with more kill points (MOCO_KILL_POINTS, MOCO_KILL_STEPS, MOCO_KILL_SEED).
#[test]
fn killed_anywhere_and_resumed_ends_bit_identical() {
    let steps = env_or("MOCO_KILL_STEPS", 32);
    let random_kills = env_or("MOCO_KILL_POINTS", 5) as usize;
    let another = ["--temperature", "0.1"];
    let signals = [
        Kill::Signal(libc::SIGTERM),
        Kill::Signal(libc::SIGUSR1),
        Kill::SignalTwice(libc::SIGTERM),
        Kill::Signal(libc::SIGINT),
    ];
    kill_and_resume(steps, random_kills, &signals, another, &|out, extra| {
        pretrain_args(out, extra)
    });
}

/// The same kill test for every other method: one random kill and the three inside checkpoint
/// writes, over 8 steps, each resumed run ending bit-identical to an uninterrupted one.
#[test]
fn every_method_resumes_bit_identical_after_kills() {
    for &method in OTHER_METHODS {
        eprintln!("kill test: --method {method}");
        kill_and_resume(8, 1, &[], ["--lr", "0.5"], &|out, extra| {
            method_args(out, method, extra)
        });
    }
}

/// The rest of the chain takes every method's encoder: the backbone file has the same names
/// whatever heads trained it (`knn` and `linear --fast --knn` on it, one line each).
#[test]
fn every_method_encoder_feeds_knn_and_linear() {
    let tmp = tempfile::tempdir().unwrap();
    for &method in OTHER_METHODS {
        let run_dir = tmp.path().join(method);
        let o = run(&method_args(&run_dir, method, &["--steps", "2"]));
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let enc = run_dir.join("encoder.safetensors");
        let lin = tmp.path().join(format!("{method}-lin"));
        let o = run(&linear_args(
            &enc,
            &lin,
            &[&ONE_FAST_EPOCH_WITH_KNN[..], &["--quiet"]].concat(),
        ));
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let v = last_json(&o);
        assert!(
            v["knn_top1"].is_f64() && v["top1"].is_f64(),
            "{method}: {v}"
        );
    }
}

/// Pretraining command lines for a run directory and extra flags.
type ArgsFor<'a> = &'a dyn Fn(&Path, &[&str]) -> Vec<String>;

/// `signals`: stops spread between the kills; `another`: a flag and value that change the run's
/// configuration (its resume is refused).
fn kill_and_resume(
    steps: u64,
    random_kills: usize,
    signals: &[Kill],
    another: [&str; 2],
    pretrain_args: ArgsFor,
) {
    use rand::{Rng, SeedableRng};
    use std::os::unix::process::ExitStatusExt;

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(env_or("MOCO_KILL_SEED", 11));
    let steps_flag = steps.to_string();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));

    // The uninterrupted run, timed: start-up and per-step times place the random kills.
    let args_a = pretrain_args(&a, &["--steps", &steps_flag]);
    let t0 = Instant::now();
    let out = run(&args_a);
    let total = t0.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", stderr(&out));
    let wall: Vec<f64> = std::fs::read_to_string(a.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["wall_time"]
                .as_f64()
                .unwrap()
        })
        .collect();
    let step_time = (wall[wall.len() - 1] - wall[0]) / (wall.len() - 1) as f64;
    let startup = (total - wall[wall.len() - 1]).max(0.0) + wall[0] - step_time;

    // Random kills between the three in-checkpoint kills and the signals, the rest after them.
    let mut plan: Vec<&Kill> = Vec::new();
    let stages = [
        Kill::InCheckpoint("partial"),
        Kill::InCheckpoint("synced"),
        Kill::InCheckpoint("renamed"),
    ];
    for i in 0..random_kills.max(stages.len()).max(signals.len()) {
        if i < random_kills {
            plan.push(&Kill::Random);
        }
        plan.extend(stages.get(i));
        plan.extend(signals.get(i));
    }
    let args_b = pretrain_args(&b, &["--steps", &steps_flag, "--resume"]);
    let mut kills = Vec::new();
    for &kill in &plan {
        let mut cmd = Command::new(BIN);
        cmd.args(&args_b)
            .env("MOCO_CACHE_DIR", cache_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Kill::InCheckpoint(stage) = kill {
            cmd.env("MOCO_TEST_KILL_AT", stage);
        }
        let mut child = cmd.spawn().unwrap();
        let before = logged_steps(&b).last().copied().unwrap_or(0);
        match kill {
            Kill::Random => {
                // Up to four steps past start-up: far enough to cross a checkpoint (every 2
                // steps), near enough to leave steps for the kills after it.
                let delay = startup + rng.random_range(0.5..4.0) * step_time;
                std::thread::sleep(Duration::from_secs_f64(delay));
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "the run ended before its random kill at {delay:.2}s; the test proves nothing"
                );
                child.kill().unwrap();
                child.wait().unwrap();
                kills.push(format!("random at {delay:.2}s"));
            }
            Kill::InCheckpoint(stage) => {
                let out = child.wait_with_output().unwrap();
                assert_eq!(
                    out.status.signal(),
                    Some(9),
                    "no self-kill at `{stage}`: {}",
                    stderr(&out)
                );
                let said = stderr(&out);
                let line = said
                    .lines()
                    .find(|l| l.contains("SIGKILL during the step-"));
                kills.push(line.expect("the self-kill names its step").to_string());
            }
            &Kill::Signal(sig) | &Kill::SignalTwice(sig) => {
                let twice = matches!(kill, Kill::SignalTwice(_));
                let delay = startup + rng.random_range(0.5..3.0) * step_time;
                std::thread::sleep(Duration::from_secs_f64(delay));
                let pid = child.id() as i32;
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "ended before its signal"
                );
                // SAFETY: kill(2) on our own unreaped child.
                unsafe { libc::kill(pid, sig) };
                if twice {
                    std::thread::sleep(Duration::from_millis(20));
                    unsafe { libc::kill(pid, sig) };
                }
                let out = child.wait_with_output().unwrap();
                let code = out.status.code();
                let how = if twice && code == Some(128 + sig) {
                    "exited at once"
                } else {
                    assert_eq!(code, Some(PREEMPTED), "signal {sig}: {}", stderr(&out));
                    // The step it stopped after is saved (unless it stopped before any).
                    let logged = logged_steps(&b).last().copied().unwrap_or(0);
                    assert_eq!(newest_checkpoint(&b), logged, "{}", stderr(&out));
                    "saved and exited with 75"
                };
                kills.push(format!(
                    "signal {sig}{} at {delay:.2}s: {how}",
                    if twice { " twice" } else { "" }
                ));
            }
        }
        let after = logged_steps(&b).last().copied().unwrap_or(0);
        eprintln!(
            "kill {}: {} (steps logged {before} → {after})",
            kills.len(),
            kills.last().unwrap()
        );
    }
    assert!(
        kills.len() >= (random_kills + 3).min(5) + signals.len(),
        "{kills:?}"
    );
    let out = run(&args_b);
    assert!(out.status.success(), "{}", stderr(&out));
    let ea = std::fs::read(a.join("encoder.safetensors")).unwrap();
    assert!(
        ea == std::fs::read(b.join("encoder.safetensors")).unwrap(),
        "the encoder resumed after {} kills differs from the uninterrupted run",
        kills.len()
    );
    // The metrics log reads as one run, each step once; no temp files are left behind.
    assert_eq!(logged_steps(&b), (1..=steps).collect::<Vec<_>>());
    let left: Vec<String> = std::fs::read_dir(b.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.iter().all(|n| n.starts_with("step-")), "{left:?}");
    assert!(left.len() <= 3, "{left:?}");

    // A resume with another configuration is refused.
    let out = run(&pretrain_args(
        &b,
        &["--steps", &steps_flag, "--resume", another[0], another[1]],
    ));
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
    let out = run(&args_b);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("checksum mismatch"),
        "{}",
        stderr(&out)
    );
    let previous = format!("step-{:09}", steps - 2);
    assert!(stderr(&out).contains(&previous), "{}", stderr(&out));
    assert!(std::fs::read(b.join("encoder.safetensors")).unwrap() == ea);
}

/// `linear` (the augmented protocol, the slow one) stopped by signals at random moments and
/// resumed each time, until it ends: the classifiers, the predictions and the log as an
/// uninterrupted run's, byte for byte.
#[test]
fn linear_stopped_by_signals_or_killed_resumes_bit_identical() {
    use rand::{Rng, SeedableRng};
    let tmp = tempfile::tempdir().unwrap();
    let enc = tmp.path().join("pre");
    let o = run(&pretrain_args(&enc, &["--steps", "2"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let args = |out: &Path| {
        let flags = ["--epochs", "4", "--batch-size", "4", "--quiet", "--resume"];
        linear_args(&enc.join("encoder.safetensors"), out, &flags)
    };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let t0 = Instant::now();
    let o = run(&args(&a));
    assert!(o.status.success(), "{}", stderr(&o));
    let whole = t0.elapsed().as_secs_f64();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(env_or("MOCO_KILL_SEED", 11));
    let (mut stops, mut kills) = (0, 0);
    for attempt in 0.. {
        assert!(attempt < 20, "never finished");
        let child = Command::new(BIN)
            .args(args(&b))
            .env("MOCO_CACHE_DIR", cache_dir())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs_f64(rng.random_range(0.3..0.9) * whole));
        // SIGKILL too: the probe also saves after every epoch.
        let sig = [
            libc::SIGTERM,
            libc::SIGKILL,
            libc::SIGUSR1,
            libc::SIGKILL,
            libc::SIGINT,
        ][attempt % 5];
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let out = child.wait_with_output().unwrap();
        match out.status.code() {
            Some(PREEMPTED) => {
                stops += 1;
                assert!(b.join("linear-checkpoint.safetensors").exists());
            }
            Some(0) => break,
            None => kills += 1,
            c => panic!("exit {c:?}: {}", stderr(&out)),
        }
    }
    assert!(
        stops >= 1 && kills >= 1,
        "{stops} stops and {kills} kills landed before the end"
    );
    for f in [
        "classifier.safetensors",
        "classifier_best.safetensors",
        "val_predictions.csv",
    ] {
        assert!(
            std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(),
            "{f} differs after {stops} stops and {kills} kills"
        );
    }
    let steps = |d: &Path| logged_steps(d);
    assert_eq!(steps(&a), steps(&b));
    assert!(!b.join("linear-checkpoint.safetensors").exists());
    eprintln!("linear: {stops} stops, {kills} kills, resumed bit-identical");
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
    fails_with(&with(&["--crop", "16"]), "--crop 16");
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
    let o = run(&args);
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
    // Not a safetensors file, and a real encoder cut in half (a torn copy).
    let junk = tmp.path().join("junk.safetensors");
    std::fs::write(&junk, b"PK\x03\x04 not safetensors").unwrap();
    let torn = tmp.path().join("torn.safetensors");
    let mut m = models::TensorMap::new();
    m.insert(
        "conv1.weight",
        models::weights::TensorData::from_f32(vec![64, 3, 7, 7], &[0.5; 64 * 3 * 49]),
    );
    let bytes = m.to_bytes().unwrap();
    std::fs::write(&torn, &bytes[..bytes.len() / 2]).unwrap();
    for bad in [&junk, &torn] {
        fails_with(
            &[
                "linear",
                "--encoder",
                bad.to_str().unwrap(),
                "--data",
                &d,
                "--out",
                o.to_str().unwrap(),
            ],
            bad.file_name().unwrap().to_str().unwrap(),
        );
    }
    // A resnet50 file where the user said resnet18: named, not evaluated as the other net.
    let r50 = tmp.path().join("r50.safetensors");
    models::random_weights::random_backbone(&models::ResNetDesc::new(models::Arch::Resnet50), 0)
        .save(&r50)
        .unwrap();
    fails_with(
        &[
            "knn",
            "--encoder",
            r50.to_str().unwrap(),
            "--arch",
            "resnet18",
            "--data",
            &d,
        ],
        "--arch resnet18: ",
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
    let v = last_json(&out);
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
    let v = last_json(&out);
    assert!(
        v["top1"].as_f64().unwrap() >= 0.0
            && v["top5"].as_f64().unwrap() >= v["top1"].as_f64().unwrap()
    );
    let csv = std::fs::read_to_string(o.join("val_predictions.csv")).unwrap();
    assert_eq!(csv.lines().count(), 13);
    assert!(csv.starts_with("image,prediction,label\n"));
    let map = models::TensorMap::load(&o.join("classifier.safetensors")).unwrap();
    assert_eq!(map.tensors["fc.weight"].shape, vec![3, 512]);

    // `linear --fast --knn`: the kNN of its cached features is the `knn` command's number.
    let o2 = tmp.path().join("lin-knn");
    let mut args = vec![
        "linear",
        "--random-init",
        "--arch",
        "resnet18",
        "--data",
        &d,
        "--out",
        o2.to_str().unwrap(),
        "--threads",
        "1",
        "--quiet",
    ];
    args.extend(ONE_FAST_EPOCH_WITH_KNN);
    let out = run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = last_json(&out);
    assert_eq!(v["knn_top1"].as_f64(), Some(top1), "{v}");
}

/// The augmentation switches and the projector BatchNorm reach the run: what `config.json`
/// records (and a resume compares) is the pipeline that ran, and the metrics carry the
/// queue-age similarities.
#[test]
fn augmentation_switches_and_head_bn_are_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let args = pretrain_args(
        &out,
        &[
            "--steps",
            "2",
            "--crop",
            "48",
            "--no-crop",
            "--no-color",
            "--no-blur",
            "--head-bn",
        ],
    );
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let alg = &config["algorithm"];
    let aug = &alg["augmentation"];
    assert_eq!(aug["size"], 48);
    assert_eq!(aug["scale"], serde_json::json!([1.0, 1.0]));
    assert_eq!(
        (aug["jitter_p"].as_f64(), aug["blur_p"].as_f64()),
        (Some(0.0), Some(0.0))
    );
    assert_eq!(aug["grayscale_p"].as_f64(), Some(0.2));
    assert_eq!(alg["method"]["projector"]["hidden_norm"], true);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert!(
        last["neg_sim_newest"].is_f64() && last["neg_sim_oldest"].is_f64(),
        "{last}"
    );
}

/// `--preset small-data` reaches the run through the binary's own parsing: the preset's values
/// where the command line is silent, the command line's where it is not.
#[test]
fn the_small_data_preset_fills_only_the_unset_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // pretrain_args gives --queue-size 16 and --bn-splits 2 explicitly.
    let o = run(&pretrain_args(
        &out,
        &["--steps", "1", "--preset", "small-data"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let alg = &config["algorithm"];
    assert_eq!(config["run"]["preset"], "small-data");
    assert_eq!(alg["augmentation"]["size"], 64);
    assert_eq!(
        (
            alg["optimizer"]["lr"].as_f64(),
            alg["method"]["projector"]["hidden_norm"].as_bool()
        ),
        (Some(0.24), Some(true))
    );
    assert_eq!(
        (
            alg["method"]["queue_size"].as_i64(),
            alg["bn_splits"].as_i64()
        ),
        (Some(16), Some(2))
    );
}

/// `--config RUN/config.json` repeats a run: the same encoder and classifier, byte for byte, from
/// the recorded flags; a flag given again overrides the recorded one; a foreign file is refused.
#[test]
fn a_run_repeated_from_its_config_writes_the_same_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, again) = (tmp.path().join("first"), tmp.path().join("again"));
    let o = run(&pretrain_args(&first, &["--steps", "3", "--lr", "0.1"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let config = first.join("config.json").display().to_string();
    let again_s = again.display().to_string();
    let o = run(&["pretrain", "--config", &config, "--out", &again_s]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = |p: PathBuf| std::fs::read(p).unwrap();
    let encoder = |r: &Path| bytes(r.join("encoder.safetensors"));
    assert!(encoder(&first) == encoder(&again), "the repeat differs");
    let read = |r: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(r.join("config.json")).unwrap()).unwrap()
    };
    assert_eq!(read(&first)["algorithm"], read(&again)["algorithm"]);
    // A flag given now wins over the recorded one.
    let other = tmp.path().join("other");
    let other_s = other.display().to_string();
    let o = run(&[
        "pretrain", "--config", &config, "--out", &other_s, "--steps", "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read(&other)["algorithm"]["total_steps"], 2);
    assert_eq!(read(&other)["algorithm"]["optimizer"]["lr"], 0.1);
    // linear the same way.
    let (lin, lin_again) = (tmp.path().join("lin"), tmp.path().join("lin-again"));
    let enc = first.join("encoder.safetensors");
    let o = run(&linear_args(&enc, &lin, &["--fast", "--epochs", "2"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let lin_config = lin.join("config.json").display().to_string();
    let lin_again_s = lin_again.display().to_string();
    let o = run(&["linear", "--config", &lin_config, "--out", &lin_again_s]);
    assert!(o.status.success(), "{}", stderr(&o));
    let classifier = |r: &Path| bytes(r.join("classifier.safetensors"));
    assert!(
        classifier(&lin) == classifier(&lin_again),
        "the repeat differs"
    );
    fails_with(
        &["pretrain", "--config", &lin_config, "--out", &other_s],
        "written by `moco-train linear`, not `pretrain`",
    );
    fails_with(
        &["pretrain", "--config", "/nonexistent/config.json"],
        "--config /nonexistent/config.json: cannot read",
    );
}

/// A checkpoint edited by hand and sealed again with its checksum, as a user with a hex editor
/// could: a queue position past the queue, a step past the run, a probe's position past its
/// epoch. Each is a one-line error naming the file, not a panic at the next step.
#[test]
fn hand_edited_resume_states_are_refused_naming_the_file() {
    use models::{TensorData, TensorMap};
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let args = pretrain_args(&out, &[]);
    let killed = Command::new(BIN)
        .args(&args)
        .env("MOCO_TEST_KILL_AT", "step:3")
        .env("MOCO_CACHE_DIR", cache_dir())
        .output()
        .unwrap();
    assert!(!killed.status.success());
    let saved = out.join("checkpoints/step-000000002.safetensors");
    let pristine = std::fs::read(&saved).unwrap();
    let edit = |f: &dyn Fn(&mut TensorMap)| {
        let mut map = TensorMap::from_bytes(&pristine).unwrap();
        f(&mut map);
        trainer::train::checkpoint::sign(&mut map);
        std::fs::write(&saved, map.to_bytes().unwrap()).unwrap();
    };
    let mut resume = args.clone();
    resume.push("--resume".into());
    edit(&|m| m.insert("queue_ptr", TensorData::from_i64(vec![], &[5000])));
    fails_with(
        &resume,
        "`queue_ptr` 5000 is not a position in the queue of 16 keys",
    );
    edit(&|m| {
        let state = m.metadata.get_mut("moco.state").unwrap();
        *state = state.replace("\"step\":2", "\"step\":1000");
    });
    fails_with(&resume, "step 1000 is past the run's 6 steps");
    // The probe: SIGKILLed once its first epoch's state is saved, then its position moved past
    // the epoch (the file has no checksum: it never outlives its run's directory).
    let lin = tmp.path().join("lin");
    let lin_s = lin.display().to_string();
    let d = data();
    let mut linear: Vec<String> = [
        "linear",
        "--random-init",
        "--arch",
        "resnet18",
        "--data",
        &d,
        "--out",
        &lin_s,
        "--threads",
        "1",
        "--epochs",
        "3",
        "--quiet",
    ]
    .map(String::from)
    .to_vec();
    let mut child = Command::new(BIN)
        .args(&linear)
        .env("MOCO_CACHE_DIR", cache_dir())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = lin.join("linear-checkpoint.safetensors");
    let t0 = Instant::now();
    while !state.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no probe state saved"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let mut map = TensorMap::load(&state).unwrap();
    let pos = map.metadata.get_mut("moco.linear.position").unwrap();
    *pos = pos.replace("\"batch\":0", "\"batch\":999");
    map.save(&state).unwrap();
    linear.push("--resume".into());
    fails_with(&linear, "is not a position of 3 epochs");
}
