//! `moco-train knn`'s flags → [`KnnConfig`].

use anyhow::Result;
use datasets::layout::Split;

use super::encoder_args::EncoderSourceArgs;
use super::eval_args::EvalArgs;
use crate::eval::knn::KnnConfig;

#[derive(clap::Args, Debug)]
pub struct KnnArgs {
    #[command(flatten)]
    pub io: EvalArgs,
    #[command(flatten)]
    pub encoder: EncoderSourceArgs,
    #[arg(long, default_value = "train")]
    pub bank_split: Split,
    #[arg(long, default_value = "val")]
    pub query_split: Split,
    #[arg(long, default_value_t = 200)]
    pub k: usize,
    #[arg(long, default_value_t = 0.1)]
    pub t: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    #[arg(long)]
    pub json: bool,
}

impl KnnArgs {
    pub fn to_config(&self) -> Result<KnnConfig> {
        Ok(KnnConfig {
            data: self.io.source(),
            compute: self.io.compute(),
            encoder: self.encoder.source(self.seed)?,
            bank: self.bank_split,
            query: self.query_split,
            k: self.k,
            t: self.t,
            batch_size: self.batch_size,
            progress: !self.json,
        })
    }
}
