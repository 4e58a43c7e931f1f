//! The command line's structs (clap) and their translation into the library's typed
//! configurations: the only place that knows flags.

pub mod aug_args;
pub mod bench;
pub mod command;
pub mod compare;
pub mod config_file;
#[cfg(test)]
mod config_file_tests;
pub mod encoder_args;
pub mod eval_args;
pub mod feature_maps;
pub mod knn;
pub mod label_request;
pub mod label_study;
pub mod linear;
pub mod log_args;
pub mod merge_labels;
pub mod methods;
pub mod plot;
pub mod pretrain;
pub mod preview;
pub mod synth;
