//! `pretrain --nproc N`: N copies of this command as ranks 0..N on this machine (torchrun's
//! variables, a free loopback port). Rank 0's stdout is this process's; when a rank fails the
//! others are stopped and its exit is reported.

use std::ffi::OsString;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::dist::DistEnv;

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
    let mut children = Vec::new();
    for rank in 0..nproc {
        let child = Command::new(&exe)
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
            .spawn()
            .with_context(|| format!("--nproc: cannot start rank {rank}"))?;
        children.push(Some(child));
    }
    match wait_all(&mut children) {
        Some(f) => bail!("pretrain --nproc: {f}; the other ranks were stopped"),
        None => Ok(()),
    }
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

/// Waits for every rank; at the first failure the others are killed and it is described.
fn wait_all(children: &mut [Option<Child>]) -> Option<String> {
    let world = children.len();
    let mut failed: Option<String> = None;
    while children.iter().any(Option::is_some) {
        for (rank, slot) in children.iter_mut().enumerate() {
            if let Some(status) = slot.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                *slot = None;
                if !status.success() && failed.is_none() {
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
    failed
}
