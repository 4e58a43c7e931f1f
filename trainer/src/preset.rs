//! Named recipes for `pretrain --preset`: settings chosen by measurement for one regime that are
//! not safe as defaults for every other. A preset fills only what the command line leaves unset,
//! so `--preset small-data --lr 0.12` is the preset with another lr.

use anyhow::{bail, Result};
use clap::ValueEnum;
use serde::Serialize;

use crate::config::Recipe;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// Thousands to tens of thousands of images on a CPU or one small GPU (imagenette-sized),
    /// MoCo v2: views of 64 px, the projector with BatchNorm (`--head-bn`), base lr 0.24, 32
    /// images per BatchNorm group, queue 4096. Measured in docs/benchmarks.md ("Learning on real photos").
    SmallData,
}

/// Images per shuffle-BN group in the small-data recipe: what the official MoCo normalises over
/// (batch 256 on 8 GPUs).
const IMAGES_PER_BN_GROUP: usize = 32;

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::SmallData => "small-data",
        }
    }

    /// The preset's values for a run of `method` at batch `batch_size`.
    pub fn recipe(self, method: &str, batch_size: usize) -> Result<Recipe> {
        match self {
            Preset::SmallData if method != "mocov2" => bail!(
                "--preset small-data is a MoCo v2 recipe; --method {method} has its own defaults"
            ),
            Preset::SmallData => Ok(Recipe {
                crop: Some(64),
                lr: Some(0.24),
                queue_size: Some(4096),
                bn_splits: Some((batch_size / IMAGES_PER_BN_GROUP).max(1) as i64),
                head_bn: Some(true),
                ..Recipe::default()
            }),
        }
    }
}
