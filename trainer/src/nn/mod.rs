//! The building blocks on tch that the methods share: the encoder with its heads, the losses,
//! the optimizers and their fused list updates, mixed precision.

pub mod amp;
pub mod encoder;
pub mod foreach;
pub mod loss;
pub mod optim;
