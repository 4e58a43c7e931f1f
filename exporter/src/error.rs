//! What can go wrong in an export, each message naming the file or flag at fault.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Model(#[from] models::ModelError),
    #[error("{file}: {message}")]
    Input { file: String, message: String },
    #[error("{0}")]
    Flag(String),
}

impl ExportError {
    pub fn input(path: &Path, message: impl std::fmt::Display) -> Self {
        ExportError::Input {
            file: path.display().to_string(),
            message: message.to_string(),
        }
    }
}
