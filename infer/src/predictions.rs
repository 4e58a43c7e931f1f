//! The predictions CSV (SPEC): `image,prediction,label`, one row per image in dataset order,
//! label empty when unknown; written to a temp file and renamed, so no partial CSV is left.

use std::path::{Path, PathBuf};

use datasets::SplitData;

use crate::pipeline::Prediction;
use crate::InferError;

pub fn render(data: &SplitData, preds: &[Prediction]) -> String {
    let mut by_index: Vec<Option<&Prediction>> = vec![None; data.samples.len()];
    for p in preds {
        by_index[p.index] = Some(p);
    }
    let mut out = String::from(datasets::csv::HEADER);
    for (sample, p) in data.samples.iter().zip(by_index) {
        let Some(p) = p else { continue }; // skipped as undecodable (--skip-bad)
        let Some(&pred) = p.top.first() else { continue };
        out.push_str(&datasets::csv::row(&sample.name, pred, sample.label));
    }
    out
}

/// Checks up front that the CSV can be written (before minutes of inference).
pub fn check_writable(path: &Path) -> Result<PathBuf, InferError> {
    let dir = atomic_io::parent_dir(path);
    atomic_io::check_dir_writable(&dir)
        .map_err(|e| InferError::Usage(format!("--predictions {}: {e}", path.display())))?;
    Ok(dir)
}

pub fn write(path: &Path, text: &str) -> Result<(), InferError> {
    atomic_io::write_atomic(path, text.as_bytes())
        .map_err(|e| InferError::Usage(format!("--predictions: {e}")))
}
