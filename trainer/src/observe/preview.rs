//! `moco-train preview-augment`: originals beside their views (the pair, and multi-crop's small
//! views).

use std::path::PathBuf;

use anyhow::{bail, Result};
use datasets::layout::Split;
use image::RgbImage;
use models::Preprocess;
use tch::{Device, Kind, Tensor};

use crate::augment::{AugConfig, Augmenter};
use crate::config::DataSource;
use crate::runtime::rng::{stream, Purpose};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PreviewConfig {
    pub data: DataSource,
    /// The split to take images from.
    pub split: Split,
    /// Output PNG: one row per image — original, view 1, view 2 (then the small views).
    pub out: PathBuf,
    /// Number of images (rows).
    pub n: usize,
    pub seed: u64,
    /// The augmentations, the parts switched off removed.
    pub aug: crate::augment::AugConfig,
    /// Progress bars on stderr.
    pub progress: bool,
}

/// A `[3,H,W]` float image in [0,1] → 8-bit RGB.
pub fn to_rgb(t: &Tensor) -> RgbImage {
    let (_, h, w) = t.size3().expect("[3,H,W]");
    let bytes = (t.clamp(0.0, 1.0) * 255.0)
        .round()
        .to_kind(Kind::Uint8)
        .permute([1, 2, 0])
        .contiguous()
        .to_device(Device::Cpu);
    let v = Vec::<u8>::try_from(bytes.flatten(0, -1)).expect("u8 image");
    RgbImage::from_raw(w as u32, h as u32, v).expect("image size")
}

/// Tiles per row of [`view_tiles`]: the original, the pair, the small views.
pub fn tile_columns(aug: &AugConfig) -> usize {
    3 + aug.small.map_or(0, |s| s.count)
}

/// Each uint8 `[N,3,S,S]` image beside its two views and its small views (multi-crop), drawn
/// from `seed`'s preview stream: [`tile_columns`]·N tiles, row by row.
pub fn view_tiles(images: &Tensor, aug: &AugConfig, seed: u64, size: u32) -> Vec<RgbImage> {
    let n = images.size()[0] as usize;
    let augmenter = Augmenter::new(aug.clone(), &Preprocess::default(), Device::Cpu);
    let mut rng = stream(seed, Purpose::Preview, 0);
    let v1 = augmenter.views_01(images, &augmenter.draw(&mut rng, 0, n, (size, size)));
    let v2 = augmenter.views_01(images, &augmenter.draw(&mut rng, 1, n, (size, size)));
    let mut columns = vec![images.to_kind(Kind::Float) / 255.0, v1, v2];
    let small = augmenter.draw_small(&mut rng, n, (size, size));
    columns.extend(augmenter.small_views_01(images, &small));
    let mut tiles = Vec::new();
    for i in 0..n as i64 {
        for t in &columns {
            tiles.push(to_rgb(&t.get(i)));
        }
    }
    tiles
}

pub fn run(a: &PreviewConfig) -> Result<serde_json::Value> {
    if a.n == 0 {
        bail!("--n must be at least 1");
    }
    let split = a.data.open(a.split, a.progress)?;
    let n = a.n.min(split.n);
    // Spread the rows over the split so several classes show.
    let idx: Vec<usize> = (0..n).map(|i| i * split.n / n).collect();
    let tiles = view_tiles(&split.batch(&idx), &a.aug, a.seed, a.data.size);
    crate::observe::plot::grid(&tiles, tile_columns(&a.aug), &a.out)?;
    eprintln!(
        "preview-augment: {n} images and their views → {}",
        a.out.display()
    );
    Ok(serde_json::json!({"out": a.out.display().to_string(), "images": n}))
}
