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
    /// small-data tuned for learning per CPU-hour: the symmetric loss (both views as queries), a
    /// queue of 1,024 keys (old keys from a fast-moving key encoder are easy negatives), and views
    /// growing from 40 to 64 px over the run. Use `--batch-size 128`, and `--amp bf16` where the
    /// CPU has native bf16. Measured in docs/benchmarks.md ("The two-hour recipe").
    SmallDataFast,
}

/// Images per shuffle-BN group in the small-data recipe: what the official MoCo normalises over
/// (batch 256 on 8 GPUs).
const IMAGES_PER_BN_GROUP: usize = 32;

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::SmallData => "small-data",
            Preset::SmallDataFast => "small-data-fast",
        }
    }

    /// The preset's values for a run of `method` at batch `batch_size`.
    pub fn recipe(self, method: &str, batch_size: usize) -> Result<Recipe> {
        if method != "mocov2" {
            bail!(
                "--preset {} is a MoCo v2 recipe; --method {method} has its own defaults",
                self.name()
            );
        }
        let small_data = Recipe {
            crop: Some(64),
            lr: Some(0.24),
            queue_size: Some(4096),
            bn_splits: Some((batch_size / IMAGES_PER_BN_GROUP).max(1) as i64),
            head_bn: Some(true),
            ..Recipe::default()
        };
        Ok(match self {
            Preset::SmallData => small_data,
            Preset::SmallDataFast => Recipe {
                symmetric: Some(true),
                queue_size: Some(1024),
                crop_from: Some(40),
                ..Recipe::default()
            }
            .or(small_data),
        })
    }
}
