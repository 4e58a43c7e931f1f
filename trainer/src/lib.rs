//! The library behind `moco-train`: data stores, batched augmentations, MoCo v2, linear
//! evaluation, kNN, figures. The integration tests (`tests/`) drive it against PyTorch.

pub mod amp;
pub mod aug_args;
pub mod augment;
pub mod bench;
pub mod crash_points;
pub mod data;
pub mod dist;
pub mod encoder;
pub mod eval_args;
pub mod feature_maps;
pub mod features;
pub mod isa;
pub mod knn;
pub mod label_request;
pub mod linear;
pub mod merge_labels;
pub mod metrics;
pub mod moco;
pub mod plot;
pub mod preset;
pub mod pretrain;
pub mod preview;
pub mod progress;
pub mod rng;
pub mod threads;
