//! The process around the training: distributed groups, stop signals, thread pools, instruction
//! sets of the host loops, run directories, keyed randomness, progress bars, the counters of
//! what a step costs the host, and the faults tests plant.

pub mod counters;
pub mod cuda_graph;
pub mod dist;
pub mod faults;
pub mod isa;
pub mod progress;
pub mod rng;
pub mod run_dir;
pub mod stop;
pub mod threads;
