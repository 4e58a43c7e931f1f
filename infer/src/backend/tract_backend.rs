//! tract (pure Rust). The graph is optimized once per batch size actually used (usually two:
//! the full batch and the last, shorter one): with the batch dimension concrete, tract picks
//! its fastest convolution kernels and packs weights ahead of time, which a symbolic batch
//! prevents.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tract_linalg::multithread::{set_default_executor, Executor};
use tract_onnx::prelude::*;

use super::{Backend, BatchOutput};
use crate::InferError;

type Plan = Arc<TypedRunnableModel>;

pub struct TractBackend {
    path: PathBuf,
    model: InferenceModel,
    plans: HashMap<(usize, usize), (Plan, Vec<String>)>,
}

impl TractBackend {
    pub fn new(model: &Path, threads: usize) -> Result<Self, InferError> {
        if threads > 1 {
            set_default_executor(Executor::multithread(threads));
        }
        let inference = tract_onnx::onnx()
            .model_for_path(model)
            .map_err(|e| InferError::Model(format!("{}: {e:#}", model.display())))?;
        Ok(TractBackend {
            path: model.to_path_buf(),
            model: inference,
            plans: HashMap::new(),
        })
    }

    fn plan(&mut self, n: usize, crop: usize) -> Result<&(Plan, Vec<String>), InferError> {
        if !self.plans.contains_key(&(n, crop)) {
            let err = |e: TractError| InferError::Model(format!("{}: {e:#}", self.path.display()));
            let shape = [n, 3, crop, crop];
            let typed = self
                .model
                .clone()
                .with_input_fact(0, f32::fact(shape.as_slice()).into())
                .map_err(err)?
                .into_optimized()
                .map_err(err)?;
            let names = typed
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
            self.plans.insert((n, crop), (plan, names));
        }
        Ok(&self.plans[&(n, crop)])
    }
}

/// Images per tract call. tract's throughput on 96×96 inputs falls as the batch grows (its
/// im2col buffers leave the cache: 156 images/s at batch 1, 135 at 16, 133 at 64 for resnet18 on
/// the 2-core dev machine), so larger batches are run as a sequence of small ones.
const TRACT_CHUNK: usize = 1;

impl Backend for TractBackend {
    fn run(&mut self, images: &[f32], n: usize, crop: usize) -> Result<BatchOutput, InferError> {
        let per = images.len() / n.max(1);
        let mut out = BatchOutput::default();
        for chunk in images.chunks(per * TRACT_CHUNK) {
            let m = chunk.len() / per;
            let part = self.run_chunk(chunk, m, crop)?;
            for (dst, src) in [
                (&mut out.logits, part.logits),
                (&mut out.features, part.features),
            ] {
                if let Some(v) = src {
                    dst.get_or_insert_with(|| Vec::with_capacity(v.len() / m * n))
                        .extend(v);
                }
            }
        }
        Ok(out)
    }
}

impl TractBackend {
    fn run_chunk(
        &mut self,
        images: &[f32],
        n: usize,
        crop: usize,
    ) -> Result<BatchOutput, InferError> {
        let err = |e: TractError| InferError::Runtime(format!("tract run: {e:#}"));
        let (plan, names) = self.plan(n, crop)?;
        let input = Tensor::from_shape(&[n, 3, crop, crop], images).map_err(err)?;
        let outputs = plan.run(tvec!(input.into())).map_err(err)?;
        let mut out = BatchOutput::default();
        for (name, value) in names.iter().zip(outputs.iter()) {
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
