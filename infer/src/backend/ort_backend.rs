//! ONNX Runtime through `ort`, loading libonnxruntime at run time (load-dynamic).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::TensorRef;

use super::{Backend, BatchOutput, DeviceKind};
use crate::InferError;

/// `ORT_DYLIB_PATH`, else the checkout's `.venv` wheel (path baked in by build.rs).
pub fn ort_dylib() -> Result<PathBuf, InferError> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from) {
        if p.exists() {
            return Ok(p);
        }
        return Err(InferError::Runtime(format!(
            "ORT_DYLIB_PATH={}: no such file",
            p.display()
        )));
    }
    let baked = PathBuf::from(env!("MOCO_DEFAULT_ORT_DYLIB"));
    if !baked.as_os_str().is_empty() && baked.exists() {
        return Ok(baked);
    }
    Err(InferError::Runtime(
        "ONNX Runtime not found: set ORT_DYLIB_PATH to libonnxruntime.so (from the onnxruntime \
         1.31.1 wheel: onnxruntime/capi/libonnxruntime.so.1.31.1)"
            .into(),
    ))
}

/// One ONNX Runtime environment per process (ort allows no more), created on first use.
static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

fn environment() -> Result<&'static Environment, InferError> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = ort_dylib().map_err(|e| e.to_string())?;
            ort::init_from(&path)
                .map_err(|e| format!("loading {}: {e}", path.display()))?
                .with_name("moco-infer")
                .build()
                .map_err(|e| format!("creating the ONNX Runtime environment: {e}"))
        })
        .as_ref()
        .map_err(|e| InferError::Runtime(e.clone()))
}

pub struct OrtBackend {
    session: Session,
}

fn rt<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> InferError + '_ {
    move |e| InferError::Runtime(format!("{what}: {e}"))
}

impl OrtBackend {
    pub fn new(model: &Path, device: DeviceKind, threads: usize) -> Result<Self, InferError> {
        let env = environment()?;
        let mut builder = Session::builder(env)
            .map_err(rt("ONNX Runtime session"))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(rt("optimization level"))?
            .with_intra_threads(threads.max(1))
            .map_err(rt("--threads"))?;
        if device == DeviceKind::Cuda {
            if !<ep::CUDA as ExecutionProvider>::is_available().unwrap_or(false) {
                return Err(InferError::Runtime(
                    "--device cuda: this ONNX Runtime has no CUDAExecutionProvider (the CPU wheel \
                     `onnxruntime`): `GPU=1 make setup` installs onnxruntime-gpu, or point \
                     ORT_DYLIB_PATH at its library"
                        .into(),
                ));
            }
            builder = builder
                .with_execution_providers([ep::CUDA::default().build().error_on_failure()])
                .map_err(rt("--device cuda: registering CUDAExecutionProvider"))?;
        }
        let session = builder
            .commit_from_file(model)
            .map_err(|e| InferError::Model(format!("{}: {e}", model.display())))?;
        Ok(OrtBackend { session })
    }
}

impl Backend for OrtBackend {
    fn run(&mut self, images: &[f32], n: usize, crop: usize) -> Result<BatchOutput, InferError> {
        let input =
            TensorRef::from_array_view(([n, 3, crop, crop], images)).map_err(rt("input tensor"))?;
        let outputs = self
            .session
            .run(ort::inputs!["image" => input])
            .map_err(rt("ONNX Runtime run"))?;
        let mut out = BatchOutput::default();
        for (name, value) in outputs.iter() {
            let (_, data) = value
                .try_extract_tensor::<f32>()
                .map_err(rt("reading outputs"))?;
            match name {
                "logits" => out.logits = Some(data.to_vec()),
                "features" => out.features = Some(data.to_vec()),
                _ => {}
            }
        }
        Ok(out)
    }
}
