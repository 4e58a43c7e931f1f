//! `moco-train feature-maps`: the stem's activations (conv1 → BN → ReLU) of one image as a grid,
//! each channel min-max scaled to grey levels.

use std::path::PathBuf;

use anyhow::{Context, Result};
use image::{GrayImage, RgbImage};
use models::{EncoderFile, Preprocess};
use models_tch::ResNet;
use tch::{Device, Kind};

use crate::nn::encoder::Backbone;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FeatureMapsConfig {
    /// Backbone (`RUN/encoder.safetensors`, a checkpoint, or a PyTorch file).
    pub encoder: EncoderFile,
    /// The image (PNG or JPEG); the eval transform is applied first.
    pub image: PathBuf,
    /// Output PNG.
    pub out: PathBuf,
    /// Channels shown (the first N of conv1's 64).
    pub channels: usize,
    /// Each map is enlarged by this factor (nearest neighbour) for viewing.
    pub scale: u32,
    /// Progress bars on stderr.
    pub progress: bool,
}

/// conv1 → BN → ReLU of one normalised image `[1,3,H,W]` (eval mode): the first `channels`
/// maps, each min-max scaled to grey and enlarged `scale` times.
pub fn map_tiles(
    net: &ResNet,
    x: &tch::Tensor,
    channels: usize,
    scale: u32,
) -> Result<Vec<RgbImage>> {
    let scale = scale.max(1);
    let maps = tch::no_grad(|| net.stem_activations(x))
        .get(0)
        .to_device(Device::Cpu)
        .to_kind(Kind::Float);
    let (c, h, w) = maps.size3()?;
    let n = (channels.max(1) as i64).min(c);
    let mut tiles: Vec<RgbImage> = Vec::new();
    for i in 0..n {
        let m = maps.get(i);
        let (lo, hi) = (m.min().double_value(&[]), m.max().double_value(&[]));
        let scaled = ((m - lo) / (hi - lo).max(1e-12) * 255.0)
            .to_kind(Kind::Uint8)
            .contiguous();
        let g = GrayImage::from_raw(
            w as u32,
            h as u32,
            Vec::<u8>::try_from(scaled.flatten(0, -1))?,
        )
        .context("feature map size")?;
        let g = image::imageops::resize(
            &g,
            w as u32 * scale,
            h as u32 * scale,
            image::imageops::FilterType::Nearest,
        );
        tiles.push(image::DynamicImage::ImageLuma8(g).to_rgb8());
    }
    Ok(tiles)
}

pub fn run(a: &FeatureMapsConfig) -> Result<serde_json::Value> {
    let backbone = Backbone::load(&a.encoder, Device::Cpu)?;
    let pre = Preprocess::default();
    let img = datasets::decode::decode_file(&a.image).context("--image")?;
    let x = tch::Tensor::from_slice(&datasets::transform::eval_tensor(img, &pre)).view([
        1,
        3,
        pre.crop as i64,
        pre.crop as i64,
    ]);
    let x = crate::eval::features::eval_input(&(x * 255.0), &pre, Device::Cpu);
    let tiles = map_tiles(&backbone.net, &x, a.channels, a.scale)?;
    let scale = a.scale.max(1);
    let (n, h, w) = (
        tiles.len(),
        tiles[0].height() / scale,
        tiles[0].width() / scale,
    );
    let cols = (n as f64).sqrt().ceil() as usize;
    crate::observe::plot::grid(&tiles, cols, &a.out)?;
    eprintln!(
        "feature-maps: {n} conv1 maps of {h}×{w} → {}",
        a.out.display()
    );
    Ok(
        serde_json::json!({"out": a.out.display().to_string(), "channels": n, "height": h, "width": w}),
    )
}
