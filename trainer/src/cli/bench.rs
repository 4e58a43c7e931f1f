//! `moco-train bench-data`'s flags → [`BenchDataConfig`].

use std::path::PathBuf;

use datasets::layout::Format;

use crate::bench::BenchDataConfig;

#[derive(clap::Args, Debug)]
pub struct BenchDataArgs {
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value = "unlabeled,train")]
    pub splits: String,
    #[arg(long)]
    pub format: Option<Format>,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Timed batches (after one warm-up batch).
    #[arg(long, default_value_t = 20)]
    pub batches: usize,
    #[arg(long)]
    pub threads: Option<i32>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

impl BenchDataArgs {
    pub fn to_config(&self) -> anyhow::Result<BenchDataConfig> {
        Ok(BenchDataConfig {
            data: self.data.clone(),
            splits: self.splits.clone(),
            format: self.format,
            batch_size: self.batch_size,
            batches: self.batches,
            threads: self.threads,
            device: self.device.clone(),
            cache_dir: self.cache_dir.clone(),
            progress: !self.json,
        })
    }
}
