//! `moco-train label-request`'s flags → [`LabelRequestConfig`].

use std::path::PathBuf;

use datasets::layout::Split;

use super::encoder_args::EncoderPrefixArg;
use super::eval_args::EvalArgs;
use crate::labels::request::{ContrastiveScore, LabelRequestConfig, Strategy};
use crate::nn::encoder::EncoderSource;

#[derive(clap::Args, Debug)]
pub struct LabelRequestArgs {
    #[command(flatten)]
    pub io: EvalArgs,
    /// Backbone (`RUN/encoder.safetensors` or a pretraining checkpoint).
    #[arg(long)]
    pub encoder: PathBuf,
    #[command(flatten)]
    pub prefix: EncoderPrefixArg,
    /// Linear classifier from `moco-train linear` (`classifier.safetensors`). Without it, class
    /// probabilities come from weighted kNN votes of the labeled split (k=--k, T=--t).
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// The split to choose from.
    #[arg(long, default_value = "unlabeled")]
    pub split: Split,
    /// The labeled split: class names, kNN votes, and k-center's starting centers.
    #[arg(long, default_value = "train")]
    pub labeled_split: Split,
    /// How many images to request.
    #[arg(long)]
    pub budget: usize,
    /// How to rank the pool (see each value). Measured with `label-study` on imagenette96
    /// (three seeds, starts of 50 and 100 labeled images per class, requests of 5 % and 20 % of
    /// the pool): margin gained the most over a random request on average (+0.6 points; entropy
    /// and balanced within noise of it), contrastive and kcenter fell below random at 20 %.
    #[arg(long, value_enum, default_value_t = Strategy::Margin)]
    pub strategy: Strategy,
    /// The ranked request: `rank,index,image,score,predicted,confidence`.
    #[arg(long)]
    pub out: PathBuf,
    /// kNN probabilities (no --classifier): neighbours that vote.
    #[arg(long, default_value_t = 200)]
    pub k: usize,
    /// kNN probabilities: vote weight exp(similarity / t).
    #[arg(long, default_value_t = 0.1)]
    pub t: f64,
    /// Contrastive strategy: the InfoNCE temperature.
    #[arg(long, default_value_t = 0.2)]
    pub temperature: f64,
    /// Contrastive strategy: how many other images serve as negatives.
    #[arg(long, default_value_t = 4096)]
    pub negatives: usize,
    /// Seeds the contrastive views and the choice of negatives.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per forward pass.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Print the result as one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

impl LabelRequestArgs {
    pub fn to_config(&self) -> LabelRequestConfig {
        LabelRequestConfig {
            data: self.io.source(),
            compute: self.io.compute(),
            encoder: EncoderSource::Pretrained(self.prefix.file(&self.encoder)),
            classifier: self.classifier.clone(),
            pool: self.split,
            labeled: self.labeled_split,
            budget: self.budget,
            strategy: self.strategy,
            out: self.out.clone(),
            k: self.k,
            t: self.t,
            contrastive: ContrastiveScore {
                temperature: self.temperature,
                negatives: self.negatives,
                seed: self.seed,
            },
            batch_size: self.batch_size,
            progress: !self.quiet && !self.json,
        }
    }
}
