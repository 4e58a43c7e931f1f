use std::path::PathBuf;

/// Errors of the model description and its weight files. Each message names the file or tensor
/// at fault, so the binaries can print it as their one-line error.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown architecture `{0}` (expected resnet18, resnet34 or resnet50)")]
    UnknownArch(String),
    // The io error is printed here, not chained as a source: a chain would print it twice.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] atomic_io::WriteError),
    #[error("{path}: not a valid safetensors file: {message}")]
    Format { path: PathBuf, message: String },
    /// A PyTorch file that cannot be read as a backbone, or a backbone that cannot be found in
    /// it.
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("{file}: missing tensor `{name}`")]
    MissingTensor { file: String, name: String },
    #[error("{file}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        file: String,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{file}: tensor `{name}` has dtype {found}, expected {expected}")]
    DtypeMismatch {
        file: String,
        name: String,
        found: String,
        expected: String,
    },
    #[error("{file}: tensor `{name}` holds NaN or infinite values")]
    NonFinite { file: String, name: String },
    #[error("{file}: metadata says {named} but the tensors are those of a {found}")]
    ArchMismatch {
        file: String,
        named: String,
        found: String,
    },
    #[error("{file}: fc.weight is {found:?}, the encoder gives {feature_dim}-d features (another arch?)")]
    FeatureWidth {
        file: String,
        found: Vec<usize>,
        feature_dim: usize,
    },
    #[error("{file}: metadata `{key}`: {message}")]
    Metadata {
        file: String,
        key: String,
        message: String,
    },
    #[error("{file}: unexpected tensor `{name}` (not part of {what})")]
    UnexpectedTensor {
        file: String,
        name: String,
        what: String,
    },
}

pub type Result<T> = std::result::Result<T, ModelError>;
