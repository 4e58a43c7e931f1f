//! The request's outputs: the ranked CSV and the predicted class balance.

use anyhow::Result;

use super::{LabelRequestConfig, HEADER};
use crate::data::DecodedSplit;

/// The ranked CSV; returns the request's count per predicted class.
pub(super) fn write_request(
    c: &LabelRequestConfig,
    picks: &[(usize, f64)],
    (pred, conf): (&[i64], &[f64]),
    pool: &DecodedSplit,
    classes: &[String],
) -> Result<Vec<usize>> {
    let mut csv = format!("{HEADER}\n");
    let mut counts = vec![0usize; classes.len()];
    for (rank, &(i, score)) in picks.iter().enumerate() {
        counts[pred[i] as usize] += 1;
        csv.push_str(&format!(
            "{},{i},{},{score:.6},{},{:.6}\n",
            rank + 1,
            datasets::csv::field(&pool.names[i]),
            datasets::csv::field(&classes[pred[i] as usize]),
            conf[i]
        ));
    }
    atomic_io::write_atomic(&c.out, csv.as_bytes())?;
    Ok(counts)
}

/// The request's predicted class balance on stderr (the largest 20 classes).
pub(super) fn print_balance(counts: &[usize], classes: &[String], picked: usize, from: &str) {
    let mean = picked as f64 / classes.len() as f64;
    let max = counts.iter().copied().max().unwrap_or(0);
    let min = counts.iter().copied().min().unwrap_or(0);
    eprintln!(
        "predicted class balance (from {from}): min {min}, max {max}, ideal {mean:.1} per class"
    );
    let mut order: Vec<usize> = (0..classes.len()).collect();
    order.sort_by_key(|&c| std::cmp::Reverse(counts[c]));
    for &c in order.iter().take(20) {
        eprintln!("  {:>6}  {}", counts[c], classes[c]);
    }
    if order.len() > 20 {
        eprintln!("  … {} more classes", order.len() - 20);
    }
}
