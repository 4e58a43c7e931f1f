//! The store's file format: a 64-byte header (magic, stored size, count, SHA-256 of the source
//! listing) then the images, and the listing's fingerprint that keys it.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use datasets::layout::{ImageSource, SplitData};
use sha2::{Digest, Sha256};

pub(super) const MAGIC: &[u8; 8] = b"MOCODEC1";

pub(super) const HEADER: usize = 64;

pub(super) fn fingerprint(split: &SplitData, size: u32) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(format!(
        "{:?}|{:?}|{size}|{}\n",
        split.format,
        split.split,
        split.samples.len()
    ));
    let mut stats: HashMap<PathBuf, (u64, i128)> = HashMap::new();
    let mut stat = |p: &Path| -> Result<(u64, i128)> {
        if let Some(s) = stats.get(p) {
            return Ok(*s);
        }
        let m = fs::metadata(p).with_context(|| format!("{}: cannot read", p.display()))?;
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i128);
        Ok(*stats.entry(p.to_path_buf()).or_insert((m.len(), mtime)))
    };
    for s in &split.samples {
        let (p, index) = match &s.source {
            ImageSource::File(p) => (p.as_path(), 0),
            ImageSource::Stl10 { file, index } => (file.as_path(), *index),
        };
        let (len, mtime) = stat(p)?;
        h.update(format!("{}|{index}|{len}|{mtime}\n", p.display()));
    }
    Ok(h.finalize().into())
}

pub(super) fn header(size: u32, n: usize, fp: &[u8; 32]) -> [u8; HEADER] {
    let mut b = [0u8; HEADER];
    b[..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&size.to_le_bytes());
    b[16..24].copy_from_slice(&(n as u64).to_le_bytes());
    b[24..56].copy_from_slice(fp);
    b
}
