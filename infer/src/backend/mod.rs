//! The two runtimes behind one interface: a batch of preprocessed images in, logits out.

pub mod ort_backend;
pub mod tract_backend;

use serde::Serialize;

use crate::InferError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Ort,
    Tract,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

/// Outputs of one batch, row-major `[n, width]`.
#[derive(Debug, Clone, Default)]
pub struct BatchOutput {
    pub logits: Option<Vec<f32>>,
    pub features: Option<Vec<f32>>,
}

pub trait Backend {
    /// `images` is `[n, 3, crop, crop]` in [0,1], row-major.
    fn run(&mut self, images: &[f32], n: usize, crop: usize) -> Result<BatchOutput, InferError>;
}

pub fn open(
    kind: BackendKind,
    device: DeviceKind,
    model: &std::path::Path,
    threads: usize,
) -> Result<Box<dyn Backend + Send>, InferError> {
    match (kind, device) {
        (BackendKind::Ort, d) => Ok(Box::new(ort_backend::OrtBackend::new(model, d, threads)?)),
        (BackendKind::Tract, DeviceKind::Cpu) => {
            Ok(Box::new(tract_backend::TractBackend::new(model, threads)?))
        }
        (BackendKind::Tract, DeviceKind::Cuda) => Err(InferError::Usage(
            "--backend tract runs on the CPU only; use --backend ort for --device cuda".into(),
        )),
    }
}
