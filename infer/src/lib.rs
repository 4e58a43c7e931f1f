//! `moco-infer` as a library: read an exported model's interface, run a dataset split through
//! ONNX Runtime or tract with decoding overlapped, and score it.

pub mod backend;
pub mod metrics;
pub mod model_info;
pub mod pipeline;
pub mod predictions;

pub use backend::{BackendKind, DeviceKind};
pub use model_info::{parse_model_info, ModelInfo};

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(transparent)]
    Data(#[from] datasets::DataError),
    #[error("{0}")]
    Model(String),
    #[error("{0}")]
    Runtime(String),
    #[error("{0}")]
    Usage(String),
}
