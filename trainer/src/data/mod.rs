//! Datasets for training: the layouts of SPEC (through the `datasets` crate), decoded once into
//! memory-mapped stores.

mod bank;
mod build;
pub mod cache;
mod format;
mod guard;

use datasets::layout::Split;

pub use bank::ImageBank;
pub use cache::{default_cache_dir, DecodedSplit};

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
