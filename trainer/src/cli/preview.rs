//! `moco-train preview-augment`'s flags → [`PreviewConfig`].

use std::path::PathBuf;

use datasets::layout::{Format, Split};

use crate::config::DataSource;
use crate::observe::preview::PreviewConfig;

#[derive(clap::Args, Debug)]
pub struct PreviewArgs {
    #[arg(long)]
    pub data: PathBuf,
    /// The split to take images from.
    #[arg(long, default_value = "train")]
    pub split: Split,
    #[arg(long)]
    pub format: Option<Format>,
    /// Output PNG: one row per image — original, view 1, view 2 (then the small views).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of images (rows).
    #[arg(long, default_value_t = 8)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 96)]
    pub size: u32,
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    /// Whose augmentations: each method's published pipeline (BYOL and MoCo v3 draw their two
    /// views differently).
    #[arg(long, default_value = "mocov2", value_parser = clap::builder::PossibleValuesParser::new(crate::methods::names()))]
    pub method: String,
    #[command(flatten)]
    pub aug: crate::cli::aug_args::AugArgs,
}

impl PreviewArgs {
    pub fn to_config(&self) -> anyhow::Result<PreviewConfig> {
        Ok(PreviewConfig {
            data: DataSource {
                root: self.data.clone(),
                format: self.format,
                size: self.size,
                cache_dir: self.cache_dir.clone(),
            },
            split: self.split,
            out: self.out.clone(),
            n: self.n,
            seed: self.seed,
            aug: self
                .aug
                .config(crate::methods::find(&self.method)?.augmentation, self.size)?,
            progress: !self.json,
        })
    }
}
