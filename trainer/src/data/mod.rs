//! Datasets for training: the layouts of SPEC (through the `datasets` crate), decoded once into
//! memory-mapped stores.

pub mod cache;

use std::path::Path;

use anyhow::Result;
use datasets::layout::{Format, Split};

pub use cache::{default_cache_dir, DecodedSplit, ImageBank};

/// Reads `splits` of `root` and opens (or builds) their decoded stores.
pub fn open_splits(
    root: &Path,
    splits: &[Split],
    format: Option<Format>,
    size: u32,
    cache_dir: &Path,
    progress: bool,
) -> Result<Vec<DecodedSplit>> {
    splits
        .iter()
        .map(|&s| {
            // Dataset errors start with the flag or the file at fault already.
            let data = datasets::layout::open(root, s, format)?;
            DecodedSplit::open(&data, size, cache_dir, progress)
        })
        .collect()
}

/// `--splits unlabeled,train` → the splits, in order, without repeats.
pub fn parse_splits(s: &str) -> std::result::Result<Vec<Split>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let split: Split = part.parse()?;
        if !out.contains(&split) {
            out.push(split);
        }
    }
    if out.is_empty() {
        return Err("no split named".into());
    }
    Ok(out)
}
