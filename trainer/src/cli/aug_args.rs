//! The flags that shape the augmentations (`pretrain`, `preview-augment`): the view size and the parts that
//! can be switched off, each alone, to measure what it contributes.

use anyhow::Result;

use crate::augment::params::Disabled;
use crate::augment::AugConfig;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct AugArgs {
    /// Side of the augmented views (default: --size). Evaluation still runs at --size, so
    /// `--crop 64` pretrains 2.25× cheaper per image than 96 and is evaluated at 96.
    #[arg(long)]
    pub crop: Option<u32>,
    /// Progressive resizing: the views grow from this side to --crop over the run, in steps of
    /// 8 pixels (low-resolution steps are cheap; the last ones match the evaluation's size).
    #[arg(long)]
    pub crop_from: Option<u32>,
    /// No RandomResizedCrop: each view is the whole image, resized to --crop.
    #[arg(long)]
    pub no_crop: bool,
    /// No ColorJitter.
    #[arg(long)]
    pub no_color: bool,
    /// No RandomGrayscale.
    #[arg(long)]
    pub no_grayscale: bool,
    /// No GaussianBlur (on either view).
    #[arg(long)]
    pub no_blur: bool,
    /// No RandomSolarize (BYOL's and MoCo v3's second view).
    #[arg(long)]
    pub no_solarize: bool,
    /// No horizontal flip.
    #[arg(long)]
    pub no_flip: bool,
}

impl AugArgs {
    /// `pipeline` (a method's augmentations) for images of side `size`, with these flags applied.
    pub fn config(&self, pipeline: fn(u32) -> AugConfig, size: u32) -> Result<AugConfig> {
        let aug = self.apply(pipeline(self.crop.unwrap_or(size)));
        aug.check()?;
        Ok(aug)
    }

    /// `base` with the parts these flags switch off removed, and `--crop-from`.
    pub fn apply(&self, base: AugConfig) -> AugConfig {
        let base = AugConfig {
            size_from: self.crop_from,
            ..base
        };
        base.without(Disabled {
            crop: self.no_crop,
            color: self.no_color,
            grayscale: self.no_grayscale,
            blur: self.no_blur,
            solarize: self.no_solarize,
            flip: self.no_flip,
        })
    }
}
