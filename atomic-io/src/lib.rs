//! Files written whole or not at all: a reader sees the old file or the complete new one, never
//! a torn one, and a writer killed half-way leaves only a temp file that [`remove_stale_temps`]
//! clears. The stages of a write can be observed, so that tests can stop a process inside one.
//!
//! Written here rather than with `tempfile::NamedTempFile::persist`: the stages must be
//! observable (kill tests stop the process between them) and the temp files of a killed writer
//! must be recognisable by name afterwards.

pub mod lock;
pub mod space;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A failed write, naming its file.
// The io error is printed here, not chained as a source: a chain would print it twice.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {error}")]
pub struct WriteError {
    pub path: PathBuf,
    pub error: std::io::Error,
}

/// See `write_atomic_with`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic_with(path, bytes, |_| {})
}

/// Where an atomic write has got to; `write_atomic_with` reports each stage to its observer (the
/// trainer's kill tests stop the process there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStage {
    /// Half of the bytes are in the temp file.
    Partial,
    /// The temp file is complete and synced, not yet renamed.
    Synced,
    /// The file is in place.
    Renamed,
}

/// Temp file, fsync, rename, fsync of the folder: readers see the old file or the new one,
/// never a torn one.
pub fn write_atomic_with(
    path: &Path,
    bytes: &[u8],
    mut observe: impl FnMut(WriteStage),
) -> Result<(), WriteError> {
    let io = |error| WriteError {
        path: path.to_path_buf(),
        error,
    };
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}{TEMP_MARK}{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        let half = bytes.len() / 2;
        f.write_all(&bytes[..half])?;
        observe(WriteStage::Partial);
        f.write_all(&bytes[half..])?;
        f.sync_all()?;
        observe(WriteStage::Synced);
        fs::rename(&tmp, path)?;
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        observe(WriteStage::Renamed);
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Makes a write past the file-size limit (`ulimit -f`, RLIMIT_FSIZE) fail with EFBIG, which the
/// writers report with the file's name, instead of killing the process with SIGXFSZ, which
/// would leave no message. Call it at the start of `main`.
pub fn report_file_size_limit_as_error() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code; nothing else in
    // these programs handles SIGXFSZ.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Checks up front that files can be created in `dir` (before minutes of work that would end
/// in a failed write).
pub fn check_dir_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".moco-probe-{}", std::process::id()));
    fs::File::create(&probe)?;
    fs::remove_file(&probe)
}

/// The folder a file path lands in (`.` for a bare name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Marks the temp files of `write_atomic` (`.NAME.tmp-PID`); a process killed mid-write leaves
/// one behind, which `remove_stale_temps` clears.
const TEMP_MARK: &str = ".tmp-";

/// Removes temp files that killed writers left in `dir`.
pub fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(TEMP_MARK) {
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_whole_and_reports_its_stages_and_a_killed_one_is_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        let mut seen = Vec::new();
        write_atomic_with(&path, b"abcdef", |s| seen.push(s)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abcdef");
        assert_eq!(
            seen,
            vec![WriteStage::Partial, WriteStage::Synced, WriteStage::Renamed]
        );
        std::fs::write(dir.path().join(format!(".f.bin{TEMP_MARK}1")), b"ab").unwrap();
        remove_stale_temps(dir.path());
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
        let err = write_atomic(&dir.path().join("no/such/dir/f"), b"x").unwrap_err();
        assert!(err.to_string().contains("no/such/dir"), "{err}");
    }
}
