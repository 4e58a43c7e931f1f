//! Tensor comparison with a report line per quantity.

use serde::Serialize;
use tch::{Device, Kind, Tensor};

/// One compared quantity. `scale` is `max(1, max|reference|)`: absolute tolerance for values of
/// order one, relative for large ones (gradients).
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub max_abs_diff: f64,
    pub scale: f64,
    pub tol: f64,
    pub ok: bool,
}

impl Check {
    /// Fraction of the tolerance used (above 1 fails).
    pub fn usage(&self) -> f64 {
        self.max_abs_diff / self.scale / self.tol
    }
}

pub fn check(name: &str, ours: &Tensor, reference: &Tensor, tol: f64) -> Check {
    let a = ours.to_device(Device::Cpu).to_kind(Kind::Double);
    let b = reference.to_device(Device::Cpu).to_kind(Kind::Double);
    if a.size() != b.size() {
        return Check {
            name: format!("{name} (shape {:?} vs {:?})", a.size(), b.size()),
            max_abs_diff: f64::INFINITY,
            scale: 1.0,
            tol,
            ok: false,
        };
    }
    let diff = (&a - &b).abs().max().double_value(&[]);
    let scale = b.abs().max().double_value(&[]).max(1.0);
    Check {
        name: name.to_string(),
        max_abs_diff: diff,
        scale,
        tol,
        ok: diff.is_finite() && diff <= tol * scale,
    }
}

/// Like [`check`] but absolute: `scale` is fixed at 1.
pub fn check_abs(name: &str, ours: &Tensor, reference: &Tensor, tol: f64) -> Check {
    let mut c = check(name, ours, reference, tol);
    c.scale = 1.0;
    c.ok = c.max_abs_diff.is_finite() && c.max_abs_diff <= tol;
    c
}

/// ‖ours − reference‖₂ / ‖reference‖₂ against `tol` (`scale` fixed at 1): a measure of a
/// systematic difference that a few elements rounded the other way barely move.
pub fn check_rel_l2(name: &str, ours: &Tensor, reference: &Tensor, tol: f64) -> Check {
    let mut c = check(name, ours, reference, tol);
    if c.max_abs_diff.is_finite() {
        let a = ours.to_device(Device::Cpu).to_kind(Kind::Double);
        let b = reference.to_device(Device::Cpu).to_kind(Kind::Double);
        let norm = b.norm().double_value(&[]).max(f64::MIN_POSITIVE);
        c.max_abs_diff = (a - b).norm().double_value(&[]) / norm;
    }
    c.scale = 1.0;
    c.ok = c.max_abs_diff.is_finite() && c.max_abs_diff <= tol;
    c
}

pub fn summarize(checks: &[Check]) -> String {
    let worst = checks
        .iter()
        .filter(|c| c.tol > 0.0)
        .max_by(|a, b| a.usage().total_cmp(&b.usage()))
        .map(|c| {
            format!(
                "worst {} = {:.3e} (tol {:.0e})",
                c.name, c.max_abs_diff, c.tol
            )
        })
        .unwrap_or_default();
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.as_str())
        .collect();
    format!(
        "{} checks, {} failed{}; {worst}",
        checks.len(),
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                failed
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    )
}
