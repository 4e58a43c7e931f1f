use std::path::Path;

/// Dataset errors; every message starts with the file or flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("{0}")]
    Usage(String),
}

impl DataError {
    pub fn file(path: &Path, message: impl std::fmt::Display) -> Self {
        DataError::File {
            file: path.display().to_string(),
            message: message.to_string(),
        }
    }

    pub fn io(path: &Path, e: std::io::Error) -> Self {
        Self::file(path, e)
    }
}

pub type Result<T> = std::result::Result<T, DataError>;
