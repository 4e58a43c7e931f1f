//! The library behind `moco-train`: data stores, batched augmentations, self-supervised
//! pretraining (a training core and its methods: MoCo v1/v2/v3, SimCLR, BYOL), evaluation (linear
//! probe, kNN), label requests, figures. Commands take typed configurations (`config`); the flags
//! that build them live in `cli`. The integration tests (`tests/`) drive it against PyTorch.
//!
//! The rooms, from the ground up: `runtime` (the process around the training: distributed
//! groups, stop signals, threads, instruction sets, run directories, randomness, progress bars,
//! op and sync counters, planted faults), `data` (decoded stores), `nn` (the building blocks on
//! tch: encoder, losses, optimizers, fused list updates, autocast) and `augment` (two views of a
//! batch), `config`, `observe` (metrics, TensorBoard, figures), `methods` and `train` (the
//! pretraining core), `eval` (features, kNN, the linear probe, run comparison), `labels` (which
//! images to label next, and the study of it), `cli`.

pub mod augment;
pub mod cli;
pub mod config;
pub mod data;
pub mod eval;
pub mod labels;
pub mod methods;
pub mod nn;
pub mod observe;
pub mod preset;
pub mod runtime;
pub mod train;
