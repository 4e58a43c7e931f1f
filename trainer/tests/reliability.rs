//! What shared machines do to long runs besides kill -9 (that one is in cli.rs): a second writer
//! on the same run directory, two processes that need the same decoded store, a store truncated
//! or rewritten under its name, and writes that fail for a file-size limit (RLIMIT_FSIZE gives
//! real EFBIG failures without root).

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{pretrain_args, run, stderr, BIN};

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `moco-train` with its own decoded-store cache and, when given, a file-size limit.
fn command(args: &[String], cache: &Path, fsize: Option<u64>) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("MOCO_CACHE_DIR", cache);
    if let Some(limit) = fsize {
        // SAFETY: setrlimit is async-signal-safe, as a pre_exec hook requires.
        unsafe {
            cmd.pre_exec(move || {
                let r = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &r) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    cmd
}

fn output(args: &[String], cache: &Path, fsize: Option<u64>) -> Output {
    command(args, cache, fsize).output().unwrap()
}

/// A failure whose error is one line naming `needle` (after whatever the run said before), no
/// panic.
fn fails_naming(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "succeeded: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("moco-train:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected: {err}");
    assert!(errors[0].contains(needle), "`{needle}` not in: {err}");
}

#[test]
fn a_second_writer_on_a_run_directory_is_refused_and_a_killed_one_leaves_no_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let args = pretrain_args(&out, &["--steps", "200", "--resume"]);
    let mut first = common_command(&args).stderr(Stdio::null()).spawn().unwrap();
    // The first holds the directory from before its first step.
    let t0 = Instant::now();
    while !out.join("metrics.jsonl").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the first run never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = run(&args);
    fails_naming(&second, "is using this run directory");
    assert!(
        stderr(&second).contains(&format!("pid {}", first.id())),
        "{}",
        stderr(&second)
    );
    first.kill().unwrap();
    first.wait().unwrap();
    // SIGKILL released the lock: the resume runs (a short one: 2 steps).
    let again = run(&pretrain_args(&out, &["--steps", "2"]));
    assert!(again.status.success(), "{}", stderr(&again));
}

fn common_command(args: &[String]) -> Command {
    command(args, &common::cache_dir(), None)
}

/// The decoded stores a run over the common dataset builds, by name, with their bytes.
fn stores(cache: &Path) -> Vec<(String, Vec<u8>)> {
    files_in(cache)
        .into_iter()
        .filter(|n| n.ends_with(".u8"))
        .map(|n| {
            let b = std::fs::read(cache.join(&n)).unwrap();
            (n, b)
        })
        .collect()
}

#[test]
fn processes_share_a_decoded_store_and_a_damaged_one_is_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let one_step = |name: &str| pretrain_args(&tmp.path().join(name), &["--steps", "1"]);
    // A store built alone: the reference bytes and names.
    let alone = tmp.path().join("cache-alone");
    let o = output(&one_step("alone"), &alone, None);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = stores(&alone);
    assert_eq!(want.len(), 2, "{:?}", files_in(&alone));

    // A process holds the store's lock (as a builder would): the run waits for it, says so,
    // and goes on when it is released.
    let waiting = tmp.path().join("cache-wait");
    std::fs::create_dir_all(&waiting).unwrap();
    let lock_path = waiting.join(Path::new(&want[0].0).with_extension("lock"));
    let held = atomic_io::lock::try_lock(&lock_path).unwrap().unwrap();
    let child = command(&one_step("wait"), &waiting, None)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    drop(held);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "waiting for another process (pid {})",
            std::process::id()
        )),
        "{}",
        stderr(&o)
    );
    assert_eq!(stores(&waiting), want);

    // Two runs at once on an empty cache: both succeed, one store per split, no temp files.
    let both = tmp.path().join("cache-both");
    let kids: Vec<_> = ["b1", "b2"]
        .iter()
        .map(|n| {
            command(&one_step(n), &both, None)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for k in kids {
        let o = k.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(stores(&both), want);
    assert!(
        files_in(&both).iter().all(|n| !n.contains(".tmp-")),
        "{:?}",
        files_in(&both)
    );

    // Truncated, or rewritten with another header: detected before it is mapped, rebuilt.
    let store = alone.join(&want[0].0);
    let bytes = std::fs::read(&store).unwrap();
    std::fs::write(&store, &bytes[..bytes.len() / 3]).unwrap();
    let o = output(&one_step("after-truncation"), &alone, None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stores(&alone), want);
    let mut other = bytes.clone();
    other[20] ^= 1;
    std::fs::write(&store, other).unwrap();
    // A temp file of a build killed half-way is cleared by the next build.
    let stale = alone.join(format!(
        "{}.tmp-4242",
        Path::new(&want[0].0).file_stem().unwrap().to_string_lossy()
    ));
    std::fs::write(&stale, b"half").unwrap();
    let o = output(&one_step("after-rewrite"), &alone, None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stores(&alone), want);
    assert!(!stale.exists());
}

fn checkpoint_steps(run: &Path) -> Vec<String> {
    files_in(&run.join("checkpoints"))
}

#[test]
fn a_write_past_the_file_size_limit_stops_with_the_path_and_keeps_what_was_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let (whole, cut) = (tmp.path().join("whole"), tmp.path().join("cut"));
    let o = output(&pretrain_args(&whole, &["--steps", "8"]), &cache, None);
    assert!(o.status.success(), "{}", stderr(&o));
    // The same run killed at the start of step 5 (0-based): checkpoints of steps 2 and 4.
    let resume = pretrain_args(&cut, &["--steps", "8", "--resume"]);
    let o = command(&resume, &cache, None)
        .env("MOCO_TEST_KILL_AT", "step:5")
        .output()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&o.status),
        Some(9),
        "{}",
        stderr(&o)
    );
    let saved: Vec<(PathBuf, Vec<u8>)> = checkpoint_steps(&cut)
        .iter()
        .map(|n| {
            let p = cut.join("checkpoints").join(n);
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();

    // 100 MB: config, metrics and the stores fit, a checkpoint (≈ 140 MB) does not.
    let o = output(&resume, &cache, Some(100 << 20));
    fails_naming(&o, "step-000000006.safetensors: File too large");
    assert_eq!(
        checkpoint_steps(&cut),
        ["step-000000002.safetensors", "step-000000004.safetensors"]
    );
    for (p, b) in &saved {
        assert!(std::fs::read(p).unwrap() == *b, "{} changed", p.display());
    }
    for line in std::fs::read_to_string(cut.join("metrics.jsonl"))
        .unwrap()
        .lines()
    {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
    // Without the limit the run continues from step 4 and ends as the whole run did.
    let o = output(&resume, &cache, None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        std::fs::read(cut.join("encoder.safetensors")).unwrap()
            == std::fs::read(whole.join("encoder.safetensors")).unwrap()
    );

    // A decoded store that cannot be reserved: the store's path and the cause, no temp file.
    let small = tmp.path().join("cache-small");
    let o = output(
        &pretrain_args(&tmp.path().join("s"), &["--steps", "1"]),
        &small,
        Some(100 << 10),
    );
    fails_naming(&o, "cannot reserve");
    assert!(stderr(&o).contains("File too large"), "{}", stderr(&o));
    assert!(
        files_in(&small).iter().all(|n| !n.contains(".tmp-")),
        "{:?}",
        files_in(&small)
    );
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    /// `None` where the test cannot mount (not root, no tmpfs): the test says so and skips.
    fn mount(at: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .ok()?;
        o.status.success().then(|| SmallDisk(at.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_with_the_path_and_a_store_that_cannot_fit_is_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&tmp.path().join("small"), "60m") else {
        eprintln!("skipped: mounting a 60 MB tmpfs needs root (the file-size-limit test covers the same writes)");
        return;
    };
    // A checkpoint (≈ 140 MB) does not fit: ENOSPC, named; no temp file left.
    let out = disk.0.join("run");
    let o = output(
        &pretrain_args(&out, &["--steps", "2"]),
        &common::cache_dir(),
        None,
    );
    fails_naming(&o, "step-000000002.safetensors: No space left on device");
    assert!(files_in(&out.join("checkpoints")).is_empty());
    // A store larger than the free space: refused before it is built.
    let args = pretrain_args(&tmp.path().join("r"), &["--steps", "1"]);
    let mut big = args.clone();
    big.extend(["--size".into(), "1000".into()]);
    let o = output(&big, &disk.0.join("cache"), None);
    fails_naming(&o, "the decoded store needs");
    // A synth set larger than the free space: refused before the first image.
    let set = disk.0.join("set");
    let o = run(&[
        "synth",
        "--out",
        set.to_str().unwrap(),
        "--unlabeled",
        "10000",
    ]);
    fails_naming(&o, "images need about");
    assert!(!set.exists());
    assert!(
        files_in(&disk.0).iter().all(|n| !n.contains(".tmp-")),
        "{:?}",
        files_in(&disk.0)
    );
    assert!(
        files_in(&disk.0.join("cache"))
            .iter()
            .all(|n| n.ends_with(".lock")),
        "{:?}",
        files_in(&disk.0.join("cache"))
    );
}

/// Every file of `dir` and below, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn an_export_a_config_and_a_merged_root_past_the_file_size_limit_leave_nothing_half_written() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let run_dir = tmp.path().join("run");
    let o = output(&pretrain_args(&run_dir, &["--steps", "1"]), &cache, None);
    assert!(o.status.success(), "{}", stderr(&o));
    let encoder = run_dir.join("encoder.safetensors");
    let s = |p: &Path| p.display().to_string();

    // The ONNX file (≈ 45 MB) past a 1 MB limit: named, no model and no temp file beside it.
    let exports = tmp.path().join("exports");
    std::fs::create_dir_all(&exports).unwrap();
    let model = exports.join("m.onnx");
    let args: Vec<String> = ["export", "--encoder", &s(&encoder), "--out", &s(&model)]
        .map(String::from)
        .to_vec();
    let o = output(&args, &cache, Some(1 << 20));
    fails_naming(&o, "m.onnx");
    assert!(stderr(&o).contains("File too large"), "{}", stderr(&o));
    assert_eq!(tree(&exports), Vec::<String>::new());

    // linear's config.json (≈ 1 KB) past a 256-byte limit: named, the run directory holds no
    // partial file (its lock file is empty). The val split's store is built first, unlimited.
    let warm: Vec<String> = [
        "bench-data",
        "--data",
        &common::data(),
        "--splits",
        "val",
        "--batch-size",
        "2",
        "--batches",
        "1",
    ]
    .map(String::from)
    .to_vec();
    assert!(output(&warm, &cache, None).status.success());
    let lin = tmp.path().join("lin");
    let args = common::linear_args(&encoder, &lin, &["--fast", "--epochs", "1"]);
    let o = output(&args, &cache, Some(256));
    fails_naming(&o, "config.json");
    assert!(stderr(&o).contains("File too large"), "{}", stderr(&o));
    assert!(
        tree(&lin).iter().all(|f| f == ".moco-lock"),
        "{:?}",
        tree(&lin)
    );

    // merge-labels copying PNGs (≈ 19 KB each) past a 4 KB limit: named, no new root left.
    let req = tmp.path().join("req.csv");
    std::fs::write(
        &req,
        "rank,index,image,score,predicted,confidence\n1,0,unlabeled/00000.png,0.5,x,0.5\n",
    )
    .unwrap();
    let labels = tmp.path().join("labels.csv");
    std::fs::write(&labels, "image,label\nunlabeled/00000.png,1\n").unwrap();
    let merged = tmp.path().join("merged");
    let args: Vec<String> = [
        "merge-labels",
        "--data",
        &common::data(),
        "--request",
        &s(&req),
        "--labels",
        &s(&labels),
        "--out",
        &s(&merged),
        "--copy",
    ]
    .map(String::from)
    .to_vec();
    let o = output(&args, &cache, Some(4 << 10));
    fails_naming(&o, "File too large");
    assert!(!merged.exists());
    let left: Vec<String> = files_in(tmp.path())
        .into_iter()
        .filter(|n| n.contains("merged"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The same merge without the limit succeeds.
    let o = output(&args, &cache, None);
    assert!(o.status.success(), "{}", stderr(&o));
}
