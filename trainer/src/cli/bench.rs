//! `moco-train bench-data`'s flags → [`BenchDataConfig`].

use std::path::PathBuf;

use datasets::layout::Format;

use crate::config::DataSource;
use crate::train::bench_data::BenchDataConfig;

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
            data: DataSource {
                root: self.data.clone(),
                format: self.format,
                size: 96,
                cache_dir: self.cache_dir.clone(),
            },
            splits: self.splits.clone(),
            batch_size: self.batch_size,
            batches: self.batches,
            threads: self.threads,
            device: self.device.clone(),
            progress: !self.json,
        })
    }
}

/// `moco-train bench-step`: the flags of `pretrain` (the run to measure) and the bench's own.
#[derive(clap::Args, Debug)]
pub struct BenchStepArgs {
    #[command(flatten)]
    pub pretrain: super::pretrain::PretrainArgs,
    /// Steps before the timing starts (allocators, cuDNN's autotuner, the page cache).
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// Timed steps (run twice when counting: once counted, once timed).
    #[arg(long, default_value_t = 20)]
    pub timed: u64,
    /// Skip the op count (a callback on every op) and its extra pass.
    #[arg(long)]
    pub no_count: bool,
    /// The augmentation's batched GPU path on the CPU too, so that the counts are a GPU's.
    #[arg(long)]
    pub gpu_path: bool,
    /// Also print the top-level ops by name (per step), most frequent first.
    #[arg(long)]
    pub ops_by_name: bool,
}

impl BenchStepArgs {
    pub fn to_config(&self) -> anyhow::Result<crate::train::bench_step::BenchStepConfig> {
        Ok(crate::train::bench_step::BenchStepConfig {
            pretrain: self.pretrain.to_config()?,
            warmup: self.warmup,
            timed: self.timed,
            count: !self.no_count,
            gpu_path: self.gpu_path,
            by_name: self.ops_by_name,
        })
    }
}
