//! Data-parallel pretraining over c10d/Gloo on loopback: 2 ranks × B/2 against 1 process × B
//! with the same `--bn-splits`, a group of one against no group, a run resumed on another world
//! size, and the failures a cluster job meets (an unreachable master, a rank that dies, NCCL
//! asked for on the CPU).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{cache_dir, fails_with, method_args, pretrain_args, run, stderr, BIN, OTHER_METHODS};

/// Rank `rank` of 2, launched as torchrun would (its variables), stderr captured.
fn rank_command(args: &[String], rank: usize, port: u16) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("MOCO_CACHE_DIR", cache_dir())
        .env("WORLD_SIZE", "2")
        .env("RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// A loopback port nobody listens on (for a moment).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn ok(args: &[String]) {
    let o = run(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
}

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

/// Largest |a − b| over the encoder's tensors, parameters and BN running statistics apart.
/// `num_batches_tracked` is left out: plain BatchNorm counts its forwards, SplitBatchNorm (as the
/// official one) does not, and nothing reads the count (the BN momentum is fixed).
fn encoder_diff(a: &Path, b: &Path) -> (f64, f64) {
    let (x, y) = (load_encoder(a), load_encoder(b));
    assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
    let (mut params, mut stats) = (0f64, 0f64);
    for (k, v) in &x {
        let d = v
            .iter()
            .zip(&y[k])
            .map(|(p, q)| (p - q).abs() as f64)
            .fold(0.0, f64::max);
        if k.contains("running_") {
            stats = stats.max(d);
        } else {
            params = params.max(d);
        }
    }
    (params, stats)
}

/// How far the largest |a − b| over the encoder's float tensors exceeds what rounding two float64
/// values that differ by at most `abs` to float32 can give: one float32 ulp of the larger plus
/// `abs` (≤ 0 when within).
fn encoder_excess_over_f32_rounding(a: &Path, b: &Path, abs: f64) -> f64 {
    let (x, y) = (load_encoder(a), load_encoder(b));
    let mut worst = f64::NEG_INFINITY;
    for (k, v) in &x {
        for (p, q) in v.iter().zip(&y[k]) {
            let ulp = f64::from(f32::EPSILON) * f64::from(p.abs().max(q.abs()));
            worst = worst.max(f64::from((p - q).abs()) - ulp - abs);
        }
    }
    worst
}

fn load_encoder(run: &Path) -> BTreeMap<String, Vec<f32>> {
    let m = models::TensorMap::load(&run.join("encoder.safetensors")).unwrap();
    m.tensors
        .iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .map(|(k, v)| (k.clone(), v.to_f32()))
        .collect()
}

/// One step of 2 ranks × B/2 against 1 process × B with the same `--bn-splits`: the same loss
/// and the same encoder, parameters and BN statistics, up to float32 rounding.
fn one_step_on_two_ranks_equals_one_process(
    tmp: &Path,
    tag: &str,
    extra: &[&str],
    args_for: &dyn Fn(&Path, &[&str]) -> Vec<String>,
) {
    let (one, two) = (tmp.join(format!("{tag}-1")), tmp.join(format!("{tag}-2")));
    let a = args_for(&one, extra);
    let mut b = args_for(&two, extra);
    b.extend(["--nproc".into(), "2".into()]);
    ok(&a);
    ok(&b);
    // One step: the same algorithm gives the same numbers up to float32 rounding. (A share
    // of consecutive images instead of every other one — BN groups unlike one process's —
    // moved the loss by 1e-3 while this was written.)
    let (l1, l2) = (losses(&one), losses(&two));
    assert!(
        (l1[0] - l2[0]).abs() <= 1e-6 * l1[0].abs(),
        "{tag}: loss {l1:?} vs {l2:?}"
    );
    let (p, s) = encoder_diff(&one, &two);
    eprintln!(
        "{tag}: 1 step, loss {} vs {}, params Δ {p:.2e}, BN stats Δ {s:.2e}",
        l1[0], l2[0]
    );
    assert!(
        p <= 1e-6 && s <= 1e-6,
        "{tag}: params Δ {p}, BN stats Δ {s}"
    );
}

/// Every other method on the same data path (MoCo v3's gathered keys and labels, SimCLR's global
/// loss with the other ranks' embeddings, …).
#[test]
fn every_method_on_two_ranks_equals_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    for &method in OTHER_METHODS {
        one_step_on_two_ranks_equals_one_process(
            tmp.path(),
            method,
            &["--steps", "1", "--bn-splits", "2"],
            &|out, extra| method_args(out, method, extra),
        );
    }
}

#[test]
fn two_ranks_equal_one_process_with_the_same_bn_splits() {
    let tmp = tempfile::tempdir().unwrap();
    for (splits, symmetric) in [("2", false), ("4", false), ("2", true)] {
        let tag = format!("s{splits}{}", if symmetric { "-sym" } else { "" });
        let mut extra = vec!["--steps", "1", "--bn-splits", splits];
        if symmetric {
            extra.push("--symmetric");
        }
        one_step_on_two_ranks_equals_one_process(tmp.path(), &tag, &extra, &|out, extra| {
            pretrain_args(out, extra)
        });
    }

    // Several steps in float64. In float32 the two runs part by rounding (the all-reduce sums in
    // another order) that SGD amplifies chaotically, by how much depends on the CPU's kernels
    // (1.3e-4 of the loss at step 4 with AVX2 kernels, less with AVX-512). In float64 the same
    // amplification of a 1e-16 rounding stays below 1e-9; a planted gradient error of 1e-6 of
    // its size fails here. The encoder file is float32: after rounding to it the two may still
    // differ by one float32 ulp of the value, plus the float64 drift.
    let (one, two) = (tmp.path().join("long-1"), tmp.path().join("long-2"));
    let long = ["--steps", "4", "--bn-splits", "2", "--float64"];
    let a = pretrain_args(&one, &long);
    let mut b = pretrain_args(&two, &long);
    b.extend(["--nproc".into(), "2".into()]);
    ok(&a);
    ok(&b);
    let (l1, l2) = (losses(&one), losses(&two));
    for (x, y) in l1.iter().zip(&l2) {
        assert!((x - y).abs() <= 1e-9 * x.abs(), "loss {l1:?} vs {l2:?}");
    }
    let excess = encoder_excess_over_f32_rounding(&one, &two, 1e-9);
    eprintln!(
        "4 steps in float64: losses {l1:?} vs {l2:?}, encoder Δ beyond rounding {excess:.2e}"
    );
    assert!(
        excess <= 0.0,
        "encoder Δ exceeds f32 rounding + 1e-9 by {excess}"
    );

    // Launched by PyTorch's own torchrun (its agent hosts the store): the same run as --nproc.
    let torchrun = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/torchrun");
    assert!(
        torchrun.exists(),
        "{}: run scripts/setup.sh",
        torchrun.display()
    );
    let port = free_port();
    let three = tmp.path().join("long-torchrun");
    let o = Command::new(&torchrun)
        .args([
            "--nproc-per-node",
            "2",
            "--master-port",
            &port.to_string(),
            "--no-python",
            BIN,
        ])
        .args(pretrain_args(&three, &long))
        .env("MOCO_CACHE_DIR", cache_dir())
        .output()
        .unwrap();
    assert!(o.status.success(), "torchrun: {}", stderr(&o));
    assert_eq!(losses(&three), l2, "torchrun vs --nproc 2");

    // Elastic restarts: 2 ranks killed at the start of step 3 and resumed as 1 process, and 1
    // process killed there and resumed as 2 ranks, end as the uninterrupted run does, within the
    // same float64 bound.
    for (tag, first, then) in [("2→1", 2, 1), ("1→2", 1, 2)] {
        let dir = tmp.path().join(format!("elastic-{first}-{then}"));
        let with_world = |world: usize| {
            let mut v = pretrain_args(&dir, &long);
            v.push("--resume".into());
            if world > 1 {
                v.extend(["--nproc".into(), world.to_string()]);
            }
            v
        };
        let o = Command::new(BIN)
            .args(with_world(first))
            .env("MOCO_CACHE_DIR", cache_dir())
            .env("MOCO_TEST_KILL_AT", "step:3")
            .output()
            .unwrap();
        assert!(!o.status.success(), "{tag}: the kill did not happen");
        let o = run(&with_world(then));
        assert!(o.status.success(), "{tag}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("written by {first} rank(s); continuing on {then}")),
            "{tag}: {}",
            stderr(&o)
        );
        let l = losses(&dir);
        for (x, y) in l1.iter().zip(&l) {
            assert!(
                (x - y).abs() <= 1e-9 * x.abs(),
                "{tag}: loss {l1:?} vs {l:?}"
            );
        }
        let excess = encoder_excess_over_f32_rounding(&one, &dir, 1e-9);
        eprintln!("elastic {tag}: losses {l:?}, encoder Δ beyond rounding {excess:.2e}");
        assert!(excess <= 0.0, "{tag}: encoder Δ exceeds by {excess}");
    }
    // A world size that does not divide the batch's BN groups cannot continue: refused, with why.
    let mut three_ranks = pretrain_args(&two, &long);
    three_ranks.extend(["--resume".into(), "--nproc".into(), "3".into()]);
    fails_with(&three_ranks, "must be multiples of the world size 3");
}

#[test]
fn a_group_of_one_changes_nothing_and_nccl_needs_cuda() {
    // `--dist-backend gloo` outside a launcher: a real one-rank group whose collectives (the
    // shuffle-BN gathers, the gradient all-reduce, the broadcasts) must leave every bit as a
    // plain run leaves it.
    let tmp = tempfile::tempdir().unwrap();
    let (plain, group) = (tmp.path().join("plain"), tmp.path().join("group"));
    ok(&pretrain_args(&plain, &["--steps", "3"]));
    ok(&pretrain_args(
        &group,
        &["--steps", "3", "--dist-backend", "gloo"],
    ));
    assert_eq!(
        std::fs::read(plain.join("encoder.safetensors")).unwrap(),
        std::fs::read(group.join("encoder.safetensors")).unwrap()
    );
    assert_eq!(losses(&plain), losses(&group));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(group.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["run"]["dist_backend"], "gloo");
    let args = pretrain_args(&tmp.path().join("n"), &["--dist-backend", "nccl"]);
    fails_with(&args, "--dist-backend nccl: NCCL runs on CUDA devices");
}

#[test]
fn an_unreachable_master_and_a_dead_rank_are_errors_not_hangs() {
    let tmp = tempfile::tempdir().unwrap();
    // Nobody listens on the master port: a timeout naming MASTER_ADDR/MASTER_PORT.
    let port = free_port();
    let args = pretrain_args(
        &tmp.path().join("u"),
        &["--steps", "2", "--bn-splits", "2", "--dist-timeout", "3"],
    );
    let t0 = Instant::now();
    let o = Command::new(BIN)
        .args(&args)
        .env("MOCO_CACHE_DIR", cache_dir())
        .env("WORLD_SIZE", "2")
        .env("RANK", "1")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains(&format!("MASTER_PORT={port}")) && err.contains("within 3s"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(t0.elapsed() < Duration::from_secs(60));

    // Two ranks launched torchrun-style; rank 1 is SIGKILLed at the start of step 2. Rank 0
    // must stop with an error instead of waiting forever in its next collective.
    let port = free_port();
    let args = pretrain_args(
        &tmp.path().join("d"),
        &["--steps", "6", "--bn-splits", "2", "--dist-timeout", "120"],
    );
    let spawn = |rank: usize, kill: Option<&str>| {
        let mut c = rank_command(&args, rank, port);
        if let Some(k) = kill {
            c.env("MOCO_TEST_KILL_AT", k);
        }
        c.spawn().unwrap()
    };
    let t0 = Instant::now();
    let r0 = spawn(0, None);
    let r1 = spawn(1, Some("step:2"));
    let o1 = r1.wait_with_output().unwrap();
    let o0 = r0.wait_with_output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(o1.status.signal(), Some(9), "rank 1: {}", stderr(&o1));
    let err = stderr(&o0);
    assert!(
        !o0.status.success(),
        "rank 0 succeeded without its peer: {err}"
    );
    assert!(
        err.contains("distributed") && err.contains("failed"),
        "{err}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(100),
        "rank 0 took {:?}",
        t0.elapsed()
    );
    eprintln!("rank 0 after its peer died: {}", err.trim());

    // `--nproc` reports the dead rank and stops the rest.
    let mut args = pretrain_args(
        &tmp.path().join("n"),
        &["--steps", "6", "--bn-splits", "2", "--nproc", "2"],
    );
    args.push("--dist-timeout".into());
    args.push("120".into());
    let o = Command::new(BIN)
        .args(&args)
        .env("MOCO_CACHE_DIR", cache_dir())
        .env("MOCO_TEST_KILL_AT", "step:2")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("exited with signal: 9") && err.contains("other ranks were stopped"),
        "{err}"
    );
}

/// The step a stopped rank reports (`stopped by SIGTERM after step N`).
fn stopped_after(err: &str) -> Option<u64> {
    let rest = &err[err.find("after step ")? + "after step ".len()..];
    rest.split(';').next()?.trim().parse().ok()
}

#[test]
fn a_stop_signal_to_one_rank_stops_every_rank_after_the_same_step() {
    let tmp = tempfile::tempdir().unwrap();
    let (whole, cut) = (tmp.path().join("whole"), tmp.path().join("cut"));
    let flags = [
        "--steps",
        "12",
        "--bn-splits",
        "2",
        "--checkpoint-every",
        "4",
    ];
    let mut a = pretrain_args(&whole, &flags);
    a.extend(["--nproc".into(), "2".into()]);
    ok(&a);

    // Torchrun-style ranks; SIGTERM reaches rank 1 only, a few steps in.
    let port = free_port();
    let mut args = pretrain_args(&cut, &flags);
    args.push("--resume".into());
    let spawn = |rank: usize| rank_command(&args, rank, port).spawn().unwrap();
    let (r0, r1) = (spawn(0), spawn(1));
    let t0 = Instant::now();
    while losses_logged(&cut) < 2 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no steps logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(r1.id() as i32, libc::SIGTERM) };
    let (o0, o1) = (
        r0.wait_with_output().unwrap(),
        r1.wait_with_output().unwrap(),
    );
    assert_eq!(o0.status.code(), Some(75), "rank 0: {}", stderr(&o0));
    assert_eq!(o1.status.code(), Some(75), "rank 1: {}", stderr(&o1));
    let (s0, s1) = (stopped_after(&stderr(&o0)), stopped_after(&stderr(&o1)));
    assert!(s0.is_some() && s0 == s1, "ranks stopped at {s0:?} / {s1:?}");
    let step = s0.unwrap();
    assert!(step < 12, "the signal came after the last step");
    assert!(
        cut.join(format!("checkpoints/step-{step:09}.safetensors"))
            .exists(),
        "no checkpoint of step {step}"
    );

    // Resumed on 2 ranks: parameters as the uninterrupted run's bit for bit; BN running
    // statistics within float32 rounding (the stop's checkpoint averages them over the ranks
    // once more, in another order of additions).
    let mut b = args.clone();
    b.extend(["--nproc".into(), "2".into()]);
    ok(&b);
    let (x, y) = (load_encoder(&whole), load_encoder(&cut));
    for (k, v) in &x {
        if k.contains("running_") {
            continue;
        }
        assert!(v == &y[k], "{k} differs after the stop at step {step}");
    }
    let (_, stats) = encoder_diff(&whole, &cut);
    eprintln!("stopped at step {step}; BN statistics Δ {stats:.1e}");
    assert!(stats <= 1e-5, "BN statistics Δ {stats}");
}

fn losses_logged(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Processes whose command line mentions `needle` (the ranks of a run, by its --out).
fn processes_with(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

#[test]
fn ranks_stop_and_save_when_their_launcher_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("orphaned");
    let mut args = pretrain_args(
        &out,
        &[
            "--steps",
            "60",
            "--bn-splits",
            "2",
            "--checkpoint-every",
            "1000",
        ],
    );
    args.extend(["--nproc".into(), "2".into()]);
    let mut launcher = Command::new(BIN)
        .args(&args)
        .env("MOCO_CACHE_DIR", cache_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while losses_logged(&out) < 2 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no steps logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    launcher.kill().unwrap(); // SIGKILL: the launcher forwards nothing.
    launcher.wait().unwrap();
    let needle = out.display().to_string();
    let t1 = Instant::now();
    while !processes_with(&needle).is_empty() {
        assert!(
            t1.elapsed() < Duration::from_secs(60),
            "ranks outlived their launcher: {:?}",
            processes_with(&needle)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // They stopped as on a signal, before the end: a checkpoint of the step they agreed on (none
    // was due) and no encoder yet.
    assert!(!out.join("encoder.safetensors").exists(), "ranks ran on");
    let saved: Vec<_> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
        .collect();
    assert_eq!(saved.len(), 1, "{saved:?}");
    args.push("--resume".into());
    ok(&args);
    assert!(out.join("encoder.safetensors").exists());
}
