//! `moco-train compare`'s flags → [`CompareConfig`].

use std::path::PathBuf;

use crate::train::compare::{CompareConfig, Precision};

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// The first run directory (e.g. the GPU run).
    pub run_a: PathBuf,
    /// The second run directory (e.g. the CPU run from the same --init-from); differences are
    /// relative to its values.
    pub run_b: PathBuf,
    /// The bounds to hold the runs to, meant for runs of two steps: float64 (1e-9), float32
    /// (losses 1e-4, tensors 1e-3; TF32 off on CUDA) or bf16 (8 × 2⁻⁹). Default: the coarser of
    /// the two runs' own precisions (config.json).
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Bound on each step's |Δloss| / max(1, |loss|), instead of the precision's.
    #[arg(long)]
    pub loss_tol: Option<f64>,
    /// Bound on each checkpoint tensor's max|Δ| / max(1, max|B|), instead of the precision's.
    #[arg(long)]
    pub tensor_tol: Option<f64>,
    #[arg(long)]
    pub json: bool,
}

impl CompareArgs {
    pub fn to_config(&self) -> CompareConfig {
        CompareConfig {
            runs: [self.run_a.clone(), self.run_b.clone()],
            precision: self.precision,
            loss_tol: self.loss_tol,
            tensor_tol: self.tensor_tol,
        }
    }
}
