//! `moco-train feature-maps`'s flags → [`FeatureMapsConfig`].

use std::path::PathBuf;

use super::encoder_args::EncoderPrefixArg;
use crate::eval::feature_maps::FeatureMapsConfig;

#[derive(clap::Args, Debug)]
pub struct FeatureMapsArgs {
    /// Backbone (`RUN/encoder.safetensors` or a checkpoint).
    #[arg(long)]
    pub encoder: PathBuf,
    #[command(flatten)]
    pub prefix: EncoderPrefixArg,
    /// The image (PNG or JPEG); the eval transform is applied first.
    #[arg(long)]
    pub image: PathBuf,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
    /// Channels shown (the first N of conv1's 64).
    #[arg(long, default_value_t = 64)]
    pub channels: usize,
    /// Each map is enlarged by this factor (nearest neighbour) for viewing.
    #[arg(long, default_value_t = 2)]
    pub scale: u32,
    #[arg(long)]
    pub json: bool,
}

impl FeatureMapsArgs {
    pub fn to_config(&self) -> anyhow::Result<FeatureMapsConfig> {
        Ok(FeatureMapsConfig {
            encoder: self.prefix.file(&self.encoder),
            image: self.image.clone(),
            out: self.out.clone(),
            channels: self.channels,
            scale: self.scale,
            progress: !self.json,
        })
    }
}
