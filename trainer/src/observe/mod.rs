//! What a run shows people and machines: metrics lines, TensorBoard records, figures and
//! augmentation previews.

pub mod metrics;
pub mod plot;
pub mod preview;
pub mod tensorboard;
