//! A command's output folder, claimed for the length of the command: created, checked writable,
//! and locked, so that a second `pretrain` or `linear` on the same `--out` is refused at once
//! instead of interleaving checkpoints and metrics with the first.

use std::path::Path;

use anyhow::{bail, Context, Result};
use atomic_io::lock::{self, FileLock};

/// The lock file inside a run directory.
pub const LOCK: &str = ".moco-lock";

/// `out` created, writable and locked by this process until the returned lock is dropped.
pub fn claim(out: &Path) -> Result<FileLock> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("--out {}: cannot create", out.display()))?;
    atomic_io::check_dir_writable(out)
        .with_context(|| format!("--out {}: not writable", out.display()))?;
    let path = out.join(LOCK);
    match lock::try_lock(&path).with_context(|| format!("{}: cannot lock", path.display()))? {
        Some(l) => Ok(l),
        None => bail!(
            "--out {}: another moco-train{} is using this run directory; wait for it to end \
             or choose another --out",
            out.display(),
            lock::holder(&path)
                .map(|p| format!(" (pid {p})"))
                .unwrap_or_default()
        ),
    }
}
