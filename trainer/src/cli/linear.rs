//! `moco-train linear`'s flags → [`LinearConfig`].

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use datasets::layout::Split;

use super::encoder_args::EncoderSourceArgs;
use super::eval_args::EvalArgs;
use super::log_args::TensorboardArgs;
use crate::eval::linear::{LinearConfig, ProbeMode, RAW_LR, STANDARDIZED_LR};
use crate::nn::optim::EpochDecay;

#[derive(Args, Debug, Clone)]
pub struct LinearArgs {
    #[command(flatten)]
    pub io: EvalArgs,
    #[command(flatten)]
    pub encoder: EncoderSourceArgs,
    #[arg(long, default_value = "train")]
    pub train_split: Split,
    #[arg(long, default_value = "val")]
    pub val_split: Split,
    /// Repeat a run: the flags recorded in its config.json (`RUN/config.json`), each flag given
    /// here overriding the recorded one.
    #[arg(long, value_name = "CONFIG_JSON")]
    pub config: Option<PathBuf>,
    /// Output directory: classifier.safetensors (last), classifier_best.safetensors,
    /// metrics.jsonl, config.json, val_predictions.csv.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub tensorboard: TensorboardArgs,
    #[arg(long, default_value_t = 100)]
    pub epochs: usize,
    /// Base lr: 30 (MoCo's) on raw features, 0.1 with --standardize.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Epochs after which the lr is multiplied by 0.1 (comma-separated).
    #[arg(long, default_value = "60,80", value_delimiter = ',')]
    pub milestones: Vec<usize>,
    /// Cosine decay over the epochs instead of milestones.
    #[arg(long)]
    pub cosine: bool,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Cache the frozen features once (eval transform, no augmentation) and train on them.
    #[arg(long, conflicts_with = "finetune")]
    pub fast: bool,
    /// Train the whole network (backbone in train mode) with --backbone-lr.
    #[arg(long)]
    pub finetune: bool,
    #[arg(long, default_value_t = 0.01)]
    pub backbone_lr: f64,
    /// Standardise each feature with the train split's mean and std (a BatchNorm without
    /// affine before the classifier, folded into the saved fc).
    #[arg(long, conflicts_with = "finetune")]
    pub standardize: bool,
    /// Also report weighted kNN top-1/top-5 (k 200, T 0.1, as `knn`) of the cached features
    /// (with --fast): no second pass over the data.
    #[arg(long, requires = "fast")]
    pub knn: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue a run stopped by SIGTERM/SIGINT/SIGUSR1 (exit status 75) from the state it saved
    /// in --out; without a saved state the run starts from the beginning.
    #[arg(long)]
    pub resume: bool,
    #[arg(long)]
    pub quiet: bool,
    #[arg(long)]
    pub json: bool,
}

impl LinearArgs {
    pub fn to_config(&self) -> Result<LinearConfig> {
        let lr = self.lr.unwrap_or(if self.standardize {
            STANDARDIZED_LR
        } else {
            RAW_LR
        });
        Ok(LinearConfig {
            command_line: Vec::new(),
            data: self.io.source(),
            compute: self.io.compute(),
            encoder: self.encoder.source(self.seed)?,
            train_split: self.train_split,
            val_split: self.val_split,
            out: self.out.clone(),
            epochs: self.epochs,
            lr,
            decay: if self.cosine {
                EpochDecay::Cosine
            } else {
                EpochDecay::Milestones(self.milestones.clone())
            },
            batch_size: self.batch_size,
            weight_decay: self.weight_decay,
            momentum: self.momentum,
            mode: match (self.fast, self.finetune) {
                (_, true) => ProbeMode::Finetune {
                    backbone_lr: self.backbone_lr,
                },
                (true, _) => ProbeMode::Fast,
                _ => ProbeMode::Augmented,
            },
            standardize: self.standardize,
            knn: self.knn.then_some((200, 0.1)),
            seed: self.seed,
            progress: !self.quiet && !self.json,
            resume: self.resume,
            tensorboard: self.tensorboard.dir(&self.out),
        })
    }
}
