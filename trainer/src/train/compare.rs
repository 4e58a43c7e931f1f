//! `moco-train compare RUN_A RUN_B`: two runs of one algorithm held against each other — the same
//! `--init-from` on a CPU and on a GPU, or in two precisions. The losses of every step both logged
//! and every tensor of their newest checkpoints (networks, key encoder, BN statistics, queue) are
//! compared; past the bound of the coarser precision the command fails, naming the worst.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use models_tch::convert::data_to_tensor;
use serde::Serialize;
use serde_json::{json, Value};
use tch::Kind;

use crate::train::checkpoint;

/// bf16's unit roundoff (8 significand bits).
const BF16_U: f64 = 1.0 / 512.0;

/// The arithmetic two runs were computed in; it decides how far apart they may be.
#[derive(clap::ValueEnum, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Float64,
    Float32,
    Bf16,
}

impl Precision {
    /// (loss, tensors) bounds as fractions of max(1, |B's value|), for runs of two steps from
    /// one `--init-from`. Training from a random init amplifies any rounding difference about a
    /// hundredfold per early step (float32 on one thread against two, same start: 1.3e-7 at step
    /// 2, 4.9e-5 at step 3, 2.0e-4 at step 4), so longer runs part further whatever the devices,
    /// and two steps are what a device check compares. float64: two devices' kernels order
    /// their sums differently, each rounding at 1.1e-16. float32 (TF32 off on CUDA): rounding at
    /// 6e-8, measured against float64 after two steps at batch 16–32: losses within 6.3e-6, the
    /// weights and BN statistics within 4.9e-5; the weights get the 1e-3 bound since an early
    /// layer's gradient moves 1e-3 relative in two steps (the parity tests). bf16: the forward
    /// rounds every activation at u = 2⁻⁹, independently on each device; 8u allows a few such
    /// roundings to line up.
    pub fn bounds(self) -> (f64, f64) {
        match self {
            Precision::Float64 => (1e-9, 1e-9),
            Precision::Float32 => (1e-4, 1e-3),
            Precision::Bf16 => (8.0 * BF16_U, 8.0 * BF16_U),
        }
    }

    /// The precision a run's config.json records.
    fn of_run(config: &Value) -> Precision {
        let algo = &config["algorithm"];
        if algo["amp"].as_str().is_some_and(|a| a != "off") {
            Precision::Bf16
        } else if algo["float64"].as_bool() == Some(true) {
            Precision::Float64
        } else {
            Precision::Float32
        }
    }
}

#[derive(Debug, Clone)]
pub struct CompareConfig {
    pub runs: [PathBuf; 2],
    /// None: the coarser of the two runs' precisions.
    pub precision: Option<Precision>,
    /// Overrides of the precision's (loss, tensor) bounds.
    pub loss_tol: Option<f64>,
    pub tensor_tol: Option<f64>,
}

/// One compared quantity: |A − B| over max(1, max|B|).
#[derive(Debug, Clone, Serialize)]
struct Diff {
    name: String,
    rel: f64,
}

pub fn run(cfg: &CompareConfig) -> Result<Value> {
    let [a, b] = &cfg.runs;
    let precision = match cfg.precision {
        Some(p) => p,
        None => Precision::of_run(&config(a)?).max(Precision::of_run(&config(b)?)),
    };
    let (loss_tol, tensor_tol) = precision.bounds();
    let (loss_tol, tensor_tol) = (
        cfg.loss_tol.unwrap_or(loss_tol),
        cfg.tensor_tol.unwrap_or(tensor_tol),
    );
    let losses = loss_diffs(a, b)?;
    let (step, tensors) = tensor_diffs(a, b)?;
    report(&losses, &tensors);
    let worst = |d: &[Diff]| d.iter().max_by(|x, y| x.rel.total_cmp(&y.rel)).cloned();
    let (wl, wt) = (worst(&losses), worst(&tensors));
    let loss_ok = wl.as_ref().is_none_or(|d| d.rel <= loss_tol);
    let tensor_ok = wt.as_ref().is_none_or(|d| d.rel <= tensor_tol);
    let result = json!({
        "precision": precision, "loss_tol": loss_tol, "tensor_tol": tensor_tol,
        "steps": losses.len(), "checkpoint_step": step, "tensors": tensors.len(),
        "worst_loss": wl, "worst_tensor": wt, "ok": loss_ok && tensor_ok,
    });
    if !loss_ok || !tensor_ok {
        let describe = |d: &Option<Diff>, tol: f64| {
            d.as_ref().map_or(String::new(), |d| {
                format!("{} {:.3e} (bound {tol:.1e})", d.name, d.rel)
            })
        };
        bail!(
            "compare: {} and {} part beyond the {precision:?} bounds: worst loss {}; worst tensor {}",
            a.display(),
            b.display(),
            describe(&wl, loss_tol),
            describe(&wt, tensor_tol)
        );
    }
    Ok(result)
}

fn config(run: &Path) -> Result<Value> {
    let path = run.join("config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read (not a run directory?)", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))
}

/// Step → loss of a run's metrics.jsonl.
fn losses(run: &Path) -> Result<BTreeMap<u64, f64>> {
    let path = run.join("metrics.jsonl");
    Ok(crate::observe::metrics::read(&path)?
        .iter()
        .filter_map(|r| Some((r["step"].as_u64()?, r["loss"].as_f64()?)))
        .collect())
}

/// The loss of every step both runs logged.
fn loss_diffs(a: &Path, b: &Path) -> Result<Vec<Diff>> {
    let (la, lb) = (losses(a)?, losses(b)?);
    let diffs: Vec<Diff> = la
        .iter()
        .filter_map(|(step, x)| {
            let y = lb.get(step)?;
            Some(Diff {
                name: format!("loss@{step}"),
                rel: (x - y).abs() / y.abs().max(1.0),
            })
        })
        .collect();
    if diffs.is_empty() {
        bail!(
            "compare: {} and {} logged no step in common (same --log-every?)",
            a.display(),
            b.display()
        );
    }
    Ok(diffs)
}

/// Every tensor of the two runs' newest checkpoints, which must be of the same step.
fn tensor_diffs(a: &Path, b: &Path) -> Result<(u64, Vec<Diff>)> {
    let newest = |run: &Path| {
        checkpoint::latest_good(run)
            .with_context(|| format!("compare: {}: no readable checkpoint", run.display()))
    };
    let ((pa, ma, sa), (pb, mb, sb)) = (newest(a)?, newest(b)?);
    if sa.step != sb.step {
        bail!(
            "compare: the newest checkpoints are of different steps ({}: {}, {}: {})",
            pa.display(),
            sa.step,
            pb.display(),
            sb.step
        );
    }
    let mut diffs = Vec::new();
    // Optimizer buffers are accumulated gradients, which two float paths part on first (a
    // gradient of an early layer moves 1e-3 in two float32 steps); the weights, BN statistics
    // and queue are what a run leaves, and what is held to the bound.
    for (name, ta) in ma.tensors.iter().filter(|(n, _)| !n.starts_with("opt/")) {
        let Some(tb) = mb.get(name) else {
            bail!(
                "compare: `{name}` is in {} but not in {}",
                pa.display(),
                pb.display()
            );
        };
        let (x, y) = (
            data_to_tensor(ta).to_kind(Kind::Double),
            data_to_tensor(tb).to_kind(Kind::Double),
        );
        if x.size() != y.size() {
            bail!(
                "compare: `{name}` has shape {:?} and {:?}",
                x.size(),
                y.size()
            );
        }
        let scale = y.abs().max().double_value(&[]).max(1.0);
        let rel = (x - y).abs().max().double_value(&[]) / scale;
        diffs.push(Diff {
            name: name.clone(),
            rel,
        });
    }
    if let Some(extra) = mb
        .tensors
        .keys()
        .find(|n| !n.starts_with("opt/") && ma.get(n).is_none())
    {
        bail!(
            "compare: `{extra}` is in {} but not in {}",
            pb.display(),
            pa.display()
        );
    }
    Ok((sa.step, diffs))
}

/// Per-step losses and the ten largest tensor differences, on stderr.
fn report(losses: &[Diff], tensors: &[Diff]) {
    for d in losses {
        eprintln!("compare: {:>14}  {:.3e}", d.name, d.rel);
    }
    let mut sorted: Vec<&Diff> = tensors.iter().collect();
    sorted.sort_by(|x, y| y.rel.total_cmp(&x.rel));
    for d in sorted.iter().take(10) {
        eprintln!("compare: {:>40}  {:.3e}", d.name, d.rel);
    }
}
