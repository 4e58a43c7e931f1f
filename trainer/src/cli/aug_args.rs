//! The flags that shape the augmentations (`pretrain`, `preview-augment`): the view size and the parts that
//! can be switched off, each alone, to measure what it contributes.

use anyhow::Result;

use crate::augment::params::Disabled;
use crate::augment::{AugConfig, SmallViews};

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
    /// Multi-crop (SwAV): this many small views of each image beside the pair, extra queries
    /// against the pair's keys (MoCo v1/v2). Each is (--small-size / --crop)² of a view's
    /// arithmetic; on a CPU four 32 px views make a 64 px step about 1.6× as long.
    #[arg(long, default_value_t = 0)]
    pub small_crops: usize,
    /// Side of the small views.
    #[arg(long, default_value_t = 32)]
    pub small_size: u32,
    /// Area fraction of the image the small views are cut from, MIN,MAX.
    #[arg(long, value_parser = parse_scale, default_value = "0.05,0.14")]
    pub small_scale: (f64, f64),
}

/// `MIN,MAX` → (MIN, MAX).
fn parse_scale(s: &str) -> Result<(f64, f64), String> {
    let parse = |v: &str| v.trim().parse::<f64>().map_err(|e| format!("{v:?}: {e}"));
    match s.split_once(',') {
        Some((a, b)) => Ok((parse(a)?, parse(b)?)),
        None => Err("expected MIN,MAX (e.g. 0.05,0.14)".into()),
    }
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
            small: (self.small_crops > 0).then_some(SmallViews {
                count: self.small_crops,
                size: self.small_size,
                scale: self.small_scale,
            }),
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
