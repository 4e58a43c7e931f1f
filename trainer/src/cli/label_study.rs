//! `moco-train label-study`'s flags → [`LabelStudyConfig`].

use std::path::PathBuf;

use anyhow::Result;

use super::encoder_args::EncoderSourceArgs;
use super::eval_args::EvalArgs;
use crate::labels::study::{LabelStudyConfig, ProbeSettings, Request};

#[derive(clap::Args, Debug)]
pub struct LabelStudyArgs {
    /// A labeled dataset in the folder layout: its train split becomes the labeled start and
    /// the pool (labels hidden; the oracle answers from them), its val split scores.
    #[command(flatten)]
    pub io: EvalArgs,
    #[command(flatten)]
    pub encoder: EncoderSourceArgs,
    /// Labeled images per class at the start (comma-separated sizes).
    #[arg(long, default_value = "50,100", value_delimiter = ',')]
    pub starts: Vec<usize>,
    /// Request sizes as fractions of the pool (comma-separated).
    #[arg(long, default_value = "0.05,0.2", value_delimiter = ',')]
    pub budgets: Vec<f64>,
    /// Seeds of the start's draw, the random requests and the probe (comma-separated).
    #[arg(long, default_value = "0,1,2", value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// The requests compared (default: all strategies and both random baselines).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub requests: Vec<Request>,
    /// Epochs of each `linear --fast` classifier.
    #[arg(long, default_value_t = 100)]
    pub probe_epochs: usize,
    /// Standardise the features before the classifier (`linear --standardize`).
    #[arg(long)]
    pub standardize: bool,
    /// results.jsonl, summary.md, label_study.png. A study stopped part-way continues where it
    /// stopped when run again with the same --out.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub quiet: bool,
    /// Print the result as one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

impl LabelStudyArgs {
    pub fn to_config(&self) -> Result<LabelStudyConfig> {
        Ok(LabelStudyConfig {
            data: self.io.source(),
            compute: self.io.compute(),
            encoder: self.encoder.source(0)?,
            starts: self.starts.clone(),
            budgets: self.budgets.clone(),
            seeds: self.seeds.clone(),
            requests: if self.requests.is_empty() {
                Request::ALL.to_vec()
            } else {
                self.requests.clone()
            },
            probe: ProbeSettings {
                epochs: self.probe_epochs,
                standardize: self.standardize,
            },
            out: self.out.clone(),
            progress: !self.quiet && !self.json,
        })
    }
}
