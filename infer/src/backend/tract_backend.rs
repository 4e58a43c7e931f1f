//! tract (pure Rust), the model optimized for a symbolic batch size.

use std::path::Path;
use std::sync::Arc;

use tract_linalg::multithread::{set_default_executor, Executor};
use tract_onnx::prelude::*;

use super::{Backend, BatchOutput};
use crate::InferError;

type Plan = Arc<TypedRunnableModel>;

pub struct TractBackend {
    plan: Plan,
    output_names: Vec<String>,
}

impl TractBackend {
    pub fn new(model: &Path, threads: usize) -> Result<Self, InferError> {
        if threads > 1 {
            set_default_executor(Executor::multithread(threads));
        }
        let err = |e: TractError| InferError::Model(format!("{}: {e:#}", model.display()));
        let typed = tract_onnx::onnx()
            .model_for_path(model)
            .map_err(err)?
            .into_optimized()
            .map_err(err)?;
        let output_names = typed
            .output_outlets()
            .map_err(err)?
            .iter()
            .map(|o| {
                typed
                    .outlet_label(*o)
                    .unwrap_or(&typed.node(o.node).name)
                    .to_string()
            })
            .collect();
        let plan = typed.into_runnable().map_err(err)?;
        Ok(TractBackend { plan, output_names })
    }
}

impl Backend for TractBackend {
    fn run(&mut self, images: &[f32], n: usize, crop: usize) -> Result<BatchOutput, InferError> {
        let err = |e: TractError| InferError::Runtime(format!("tract run: {e:#}"));
        let input = Tensor::from_shape(&[n, 3, crop, crop], images).map_err(err)?;
        let outputs = self.plan.run(tvec!(input.into())).map_err(err)?;
        let mut out = BatchOutput::default();
        for (name, value) in self.output_names.iter().zip(outputs.iter()) {
            let data: Vec<f32> = value
                .to_plain_array_view::<f32>()
                .map_err(err)?
                .iter()
                .copied()
                .collect();
            match name.as_str() {
                "logits" => out.logits = Some(data),
                "features" => out.features = Some(data),
                _ => {}
            }
        }
        Ok(out)
    }
}
