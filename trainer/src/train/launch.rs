//! `pretrain --nproc N`: N ranks 0..N of the configuration built here, on this machine (torchrun's
//! variables, a free loopback port; the configuration serialised in [`CONFIG_ENV`]). Rank 0's stdout is this process's; when a rank fails the
//! others are stopped and its exit is reported. The ranks run in their own process group and
//! the stop signals reach them through this process, once each (a Ctrl-C in a terminal would
//! otherwise reach them twice: from the terminal and forwarded).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use signal_hook::iterator::Signals;

use crate::config::PretrainConfig;
use crate::runtime::dist::DistEnv;
use crate::runtime::stop::{signal_name, Preempted, PREEMPTED_EXIT, SIGNALS};

/// The variable through which each rank receives the configuration the launcher built.
pub const CONFIG_ENV: &str = "MOCO_PRETRAIN_CONFIG";

/// The hidden command a rank runs: `pretrain` with its configuration read from [`CONFIG_ENV`].
pub const RANK_COMMAND: &str = "pretrain-rank";

pub fn launch_local(cfg: &PretrainConfig, nproc: usize, json: bool) -> Result<()> {
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
    let config = serde_json::to_string(cfg)?;
    let mut args = vec![
        RANK_COMMAND.into(),
        "--out".into(),
        cfg.run.out.clone().into_os_string(),
    ];
    if json {
        args.push("--json".into());
    }
    let mut signals = Signals::new(SIGNALS).context("--nproc: cannot watch for signals")?;
    let mut children = Vec::new();
    for rank in 0..nproc {
        let mut command = Command::new(&exe);
        stop_with_parent(&mut command);
        let child = command
            .args(&args)
            .env(CONFIG_ENV, &config)
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
