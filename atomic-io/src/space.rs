//! Disk space: what a folder's filesystem can still take, and space reserved for a file before
//! it is written through a memory map (a write into a sparse mapping that finds the disk full is
//! a SIGBUS, not an error).

use std::fs::File;
use std::io;
use std::path::Path;

use rustix::fs::FallocateFlags;

/// Bytes an unprivileged writer can still put on `dir`'s filesystem.
pub fn available(dir: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Sizes `file` to `len` bytes with its blocks allocated, so that running out of space is an
/// error here (ENOSPC, EFBIG) rather than later. Filesystems that cannot preallocate get a plain
/// `set_len`.
pub fn reserve(file: &File, len: u64) -> io::Result<()> {
    match rustix::fs::fallocate(file, FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP) => file.set_len(len),
        Err(e) => Err(e.into()),
    }
}

/// A byte count for messages (GB with one decimal above 1 GB).
pub fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GB", bytes as f64 / 1e9)
    } else {
        format!("{:.1} MB", bytes as f64 / 1e6)
    }
}
