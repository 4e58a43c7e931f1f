//! MoCo v2: the model (query/key encoders, queue, shuffle BN), its optimizer and schedule, and
//! checkpoints for an exact resume.

pub mod checkpoint;
pub mod model;
pub mod optim;
