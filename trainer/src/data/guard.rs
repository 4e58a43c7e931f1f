//! Who may use a store: the lock that lets one process build while the others wait, the stamp
//! its builder leaves (device, inode, mtime), and the checks of length and header before a map.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use memmap2::Mmap;

use super::format::HEADER;

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Access {
    Read,
    Build,
}

/// The store's lock file taken for `access`, saying so when another process makes this one wait.
pub(super) fn wait_for(
    lock_path: &Path,
    store: &Path,
    access: Access,
) -> Result<atomic_io::lock::FileLock> {
    use atomic_io::lock;
    let ctx = || format!("{}: cannot lock the decoded store", lock_path.display());
    let now = match access {
        Access::Read => lock::try_lock_shared(lock_path),
        Access::Build => lock::try_lock(lock_path),
    };
    if let Some(l) = now.with_context(ctx)? {
        return Ok(l);
    }
    match access {
        Access::Read => eprintln!(
            "waiting for another process (pid {}) building {}",
            lock::holder(lock_path).map_or("?".into(), |p| p.to_string()),
            store.display()
        ),
        Access::Build => eprintln!("waiting for another process using {}", store.display()),
    }
    match access {
        Access::Read => lock::lock_shared(lock_path),
        Access::Build => lock::lock(lock_path),
    }
    .with_context(ctx)
}

/// The identity of a store file as its builder left it: device, inode, length and modification
/// time, kept in `<store>.stamp`. A store replaced under the same name (another inode) or
/// rewritten in place (another mtime) no longer matches, even with the same length and header.
pub(super) fn stamp(meta: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{} {} {} {}.{:09}\n",
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    )
}

pub(super) fn stamp_path(store: &Path) -> PathBuf {
    store.with_extension("stamp")
}

/// The store mapped when the file at `path` has the wanted length and header and is the file
/// its builder stamped, read from the open file before it is mapped (a mapping of a truncated
/// file is a SIGBUS at the first touch past its end); `None` when it is missing, another store,
/// or changed since it was built.
pub(super) fn map_if_valid(path: &Path, want: &[u8; HEADER], len: u64) -> Result<Option<Mmap>> {
    let Ok(mut f) = File::open(path) else {
        return Ok(None);
    };
    let Ok(meta) = f.metadata() else {
        return Ok(None);
    };
    let mut head = [0u8; HEADER];
    let whole = meta.len() == len
        && std::io::Read::read_exact(&mut f, &mut head).is_ok()
        && head == *want
        && fs::read_to_string(stamp_path(path)).is_ok_and(|s| s == stamp(&meta));
    if !whole {
        return Ok(None);
    }
    // SAFETY: the file has the checked length; stores are replaced by rename, never rewritten
    // in place, so the mapped inode keeps its length while it is mapped.
    let map = unsafe { Mmap::map(&f) }
        .with_context(|| format!("{}: cannot map the decoded store", path.display()))?;
    Ok(Some(map))
}

/// Temp files of builds killed half-way (only the holder of the store's lock builds, so any
/// other temp file of this store is one).
pub(super) fn remove_killed_builds(path: &Path) {
    let Some(stem) = path
        .file_stem()
        .map(|s| format!("{}.tmp-", s.to_string_lossy()))
    else {
        return;
    };
    let Ok(entries) = fs::read_dir(atomic_io::parent_dir(path)) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&stem) {
            let _ = fs::remove_file(e.path());
        }
    }
}
