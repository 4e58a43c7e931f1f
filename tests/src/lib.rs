//! Shared helpers of the integration tests: locating the project's `.venv`, running the Python
//! references, and comparing tensors with tolerances.

pub mod compare;
pub mod fixtures;
pub mod parity;
pub mod python;
pub mod steps;
