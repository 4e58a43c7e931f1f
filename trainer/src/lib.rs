//! The library behind `moco-train`: data stores, batched augmentations, self-supervised
//! pretraining (a training core and its methods: MoCo v1/v2/v3, SimCLR, BYOL), linear evaluation,
//! kNN, figures. Commands take typed configurations (`config`); the flags that build them live in
//! `cli`. The integration tests (`tests/`) drive it against PyTorch.

pub mod amp;
pub mod augment;
pub mod bench;
pub mod cli;
pub mod compare;
pub mod config;
pub mod counters;
pub mod data;
pub mod dist;
pub mod encoder;
pub mod faults;
pub mod feature_maps;
pub mod features;
pub mod foreach;
pub mod isa;
pub mod knn;
pub mod label_request;
pub mod label_study;
pub mod linear;
pub mod loss;
pub mod methods;
pub mod metrics;
pub mod optim;
pub mod plot;
pub mod preset;
pub mod preview;
pub mod progress;
pub mod rng;
pub mod run_dir;
pub mod stop;
pub mod tensorboard;
pub mod threads;
pub mod train;
