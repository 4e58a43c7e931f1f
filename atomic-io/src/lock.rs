//! One writer at a time: an advisory lock on a file beside what it protects. The kernel drops
//! it when the holder's descriptor closes, killed process included, so nothing stays stuck.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// An exclusive lock, held until dropped.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
    pub path: PathBuf,
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// Records this process as the holder, for the message another process shows.
fn sign(mut f: File, path: &Path) -> io::Result<FileLock> {
    f.set_len(0)?;
    f.rewind()?;
    write!(f, "{}", std::process::id())?;
    Ok(FileLock {
        _file: f,
        path: path.to_path_buf(),
    })
}

/// The lock on `path`, or `Ok(None)` when another process holds it.
pub fn try_lock(path: &Path) -> io::Result<Option<FileLock>> {
    let f = open(path)?;
    match f.try_lock() {
        Ok(()) => sign(f, path).map(Some),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// The lock on `path`, waiting for the holder to let go.
pub fn lock(path: &Path) -> io::Result<FileLock> {
    let f = open(path)?;
    f.lock()?;
    sign(f, path)
}

/// The process id the holder of `path` wrote, when it can be read.
pub fn holder(path: &Path) -> Option<u32> {
    let mut s = String::new();
    File::open(path).ok()?.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_refuses_a_second_holder_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".lock");
        let first = try_lock(&p).unwrap().expect("free");
        assert!(try_lock(&p).unwrap().is_none());
        assert_eq!(holder(&p), Some(std::process::id()));
        drop(first);
        assert!(try_lock(&p).unwrap().is_some());
    }
}
