//! The flags of the commands that run a frozen backbone over a dataset (`knn`, `linear`,
//! `label-request`): where the data is, how it is decoded and cached, where the network runs.

use std::path::PathBuf;

use anyhow::Result;
use datasets::layout::Format;
use tch::Device;

use crate::config::{Compute, DataSource};

#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    /// Dataset root (folder, competition or STL-10 layout; see SPEC).
    #[arg(long)]
    pub data: PathBuf,
    /// Dataset layout; detected when omitted.
    #[arg(long)]
    pub format: Option<Format>,
    /// Side of the decoded images.
    #[arg(long, default_value_t = 96)]
    pub size: u32,
    /// Where decoded stores are kept (default: $MOCO_CACHE_DIR or ~/.cache/moco-rs).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// libtorch intra-op threads (default: all cores).
    #[arg(long)]
    pub threads: Option<i32>,
    /// auto (CUDA when present), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

impl EvalArgs {
    /// Sets the thread count and resolves `--device`.
    pub fn setup(&self) -> Result<Device> {
        self.compute().setup()
    }

    pub fn source(&self) -> DataSource {
        DataSource {
            root: self.data.clone(),
            format: self.format,
            size: self.size,
            cache_dir: self.cache_dir.clone(),
        }
    }

    pub fn compute(&self) -> Compute {
        Compute {
            threads: self.threads,
            device: self.device.clone(),
        }
    }
}
