//! `pretrain --nproc N`: N copies of this command as ranks 0..N on this machine (torchrun's
//! variables, a free loopback port). Rank 0's stdout is this process's; when a rank fails the
//! others are stopped and its exit is reported. The ranks run in their own process group and
//! the stop signals reach them through this process, once each (a Ctrl-C in a terminal would
//! otherwise reach them twice: from the terminal and forwarded).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use signal_hook::iterator::Signals;

use crate::dist::DistEnv;
use crate::stop::{signal_name, Preempted, PREEMPTED_EXIT, SIGNALS};

pub fn launch_local(nproc: usize) -> Result<()> {
    if DistEnv::from_env()?.is_some() {
        bail!(
            "--nproc {nproc}: WORLD_SIZE is already set (launched by torchrun?); use one launcher"
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("--nproc: no free loopback port")?
        .port();
    let exe = std::env::current_exe().context("--nproc: cannot find this executable")?;
    let args = without_nproc(std::env::args_os().skip(1));
    let mut signals = Signals::new(SIGNALS).context("--nproc: cannot watch for signals")?;
    let mut children = Vec::new();
    for rank in 0..nproc {
        let mut command = Command::new(&exe);
        stop_with_parent(&mut command);
        let child = command
            .args(&args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stdout(if rank == 0 {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .process_group(0)
            .spawn()
            .with_context(|| format!("--nproc: cannot start rank {rank}"))?;
        children.push(Some(child));
    }
    let mut forwarded = None;
    let end = wait_all(&mut children, || {
        let mut sent = Vec::new();
        for sig in signals.pending() {
            forwarded.get_or_insert(sig);
            sent.push(sig);
        }
        sent
    });
    match end {
        RanksEnd::Failed(f) => bail!("pretrain --nproc: {f}; the other ranks were stopped"),
        RanksEnd::Preempted => Err(Preempted {
            cause: signal_name(forwarded.unwrap_or(0)),
            saved: None,
        }
        .into()),
        RanksEnd::Done => Ok(()),
    }
}

/// A rank whose launcher dies (SIGKILL, OOM killer) gets SIGTERM, so it stops as on a
/// preemption, with a checkpoint, instead of training on unwatched.
fn stop_with_parent(command: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and makes only
    // async-signal-safe calls (prctl, getppid, raise) on no shared state.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The launcher may have died before the prctl took effect.
            if libc::getppid() as u32 != parent {
                libc::raise(libc::SIGTERM);
            }
            Ok(())
        })
    };
}

/// The command line without `--nproc N` / `--nproc=N`.
fn without_nproc(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip = false;
    for arg in args {
        let s = arg.to_string_lossy();
        if skip {
            skip = false;
        } else if s == "--nproc" {
            skip = true;
        } else if !s.starts_with("--nproc=") {
            out.push(arg);
        }
    }
    out
}

/// How the ranks ended.
enum RanksEnd {
    Done,
    /// Every rank saved its state and exited with the preemption status.
    Preempted,
    Failed(String),
}

/// Waits for every rank, forwarding the signals `pending` returns to each running one; at the
/// first failure the others are killed and it is described.
fn wait_all(children: &mut [Option<Child>], mut pending: impl FnMut() -> Vec<i32>) -> RanksEnd {
    let world = children.len();
    let mut failed: Option<String> = None;
    let mut preempted = 0;
    while children.iter().any(Option::is_some) {
        for sig in pending() {
            for c in children.iter().flatten() {
                // SAFETY: kill(2) on a child this process spawned and has not yet reaped, so
                // the pid cannot have been reused.
                unsafe { libc::kill(c.id() as i32, sig) };
            }
        }
        for (rank, slot) in children.iter_mut().enumerate() {
            if let Some(status) = slot.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                *slot = None;
                if status.code() == Some(i32::from(PREEMPTED_EXIT)) {
                    preempted += 1;
                } else if !status.success() && failed.is_none() {
                    failed = Some(format!("rank {rank} of {world} exited with {status}"));
                }
            }
        }
        if failed.is_some() {
            for c in children.iter_mut().flatten() {
                let _ = c.kill();
                let _ = c.wait();
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match (failed, preempted) {
        (Some(f), _) => RanksEnd::Failed(f),
        (None, 0) => RanksEnd::Done,
        (None, n) if n == world => RanksEnd::Preempted,
        (None, n) => RanksEnd::Failed(format!(
            "{n} of {world} ranks stopped for preemption, the others finished"
        )),
    }
}
