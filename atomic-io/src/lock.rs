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

/// A shared lock on `path` (readers; none of them signs it), or `Ok(None)` while another process
/// holds it exclusively.
pub fn try_lock_shared(path: &Path) -> io::Result<Option<FileLock>> {
    let f = open(path)?;
    match f.try_lock_shared() {
        Ok(()) => Ok(Some(FileLock {
            _file: f,
            path: path.to_path_buf(),
        })),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// A shared lock on `path`, waiting for an exclusive holder to let go.
pub fn lock_shared(path: &Path) -> io::Result<FileLock> {
    let f = open(path)?;
    f.lock_shared()?;
    Ok(FileLock {
        _file: f,
        path: path.to_path_buf(),
    })
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
    fn a_held_lock_refuses_a_second_holder_and_readers_share() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(".lock");
        let first = try_lock(&p).unwrap().expect("free");
        assert!(try_lock(&p).unwrap().is_none());
        assert_eq!(holder(&p), Some(std::process::id()));
        assert!(try_lock_shared(&p).unwrap().is_none());
        drop(first);
        let (r1, r2) = (try_lock_shared(&p).unwrap(), try_lock_shared(&p).unwrap());
        assert!(r1.is_some() && r2.is_some(), "readers share");
        assert!(
            try_lock(&p).unwrap().is_none(),
            "a writer waits for the readers"
        );
        drop((r1, r2));
        assert!(try_lock(&p).unwrap().is_some());
    }
}
