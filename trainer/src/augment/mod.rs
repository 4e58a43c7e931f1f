//! MoCo v2's aug+ (and the linear-eval train transform), batched with libtorch on the training
//! device. Parameters are drawn on the host from a seeded stream (`params`), then one batch of
//! uint8 images becomes normalized float views in a handful of batched kernels (`ops`).

pub mod ops;
pub mod params;

use rand::Rng;
use tch::{Device, Kind, Tensor};

use models::Preprocess;
pub use params::{AugConfig, CropBox, Jitter, ViewParams};

pub struct Augmenter {
    pub cfg: AugConfig,
    mean: Tensor,
    std: Tensor,
}

impl Augmenter {
    pub fn new(cfg: AugConfig, pre: &Preprocess, device: Device) -> Self {
        let stat = |v: &[f32; 3]| Tensor::from_slice(v).to(device).view([1, 3, 1, 1]);
        Augmenter {
            cfg,
            mean: stat(&pre.mean),
            std: stat(&pre.std),
        }
    }

    pub fn draw(&self, rng: &mut impl Rng, n: usize, height: u32, width: u32) -> Vec<ViewParams> {
        (0..n)
            .map(|_| params::draw_view(rng, &self.cfg, height, width))
            .collect()
    }

    /// uint8 `[N,3,H,W]` (any device) → augmented float views in [0,1], `[N,3,size,size]`.
    pub fn views_01(&self, images: &Tensor, p: &[ViewParams]) -> Tensor {
        let x = images.to_device(self.mean.device()).to_kind(Kind::Float) / 255.0;
        let boxes: Vec<CropBox> = p.iter().map(|v| v.crop).collect();
        let flips: Vec<bool> = p.iter().map(|v| v.flip).collect();
        let mut x = ops::resized_crop_flip(&x, &boxes, &flips, self.cfg.size);
        // ColorJitter: four rounds; in round r each jittered image applies its r-th adjustment.
        // Images are grouped by adjustment so every round is at most four batched kernels.
        for round in 0..4 {
            for op in 0..4u8 {
                let (idx, f): (Vec<usize>, Vec<f32>) = p
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| {
                        let j = v.jitter.as_ref()?;
                        (j.order[round] == op).then(|| {
                            let f = match op {
                                0 => j.brightness,
                                1 => j.contrast,
                                2 => j.saturation,
                                _ => j.hue,
                            };
                            (i, f)
                        })
                    })
                    .unzip();
                x = ops::on_subset(x, &idx, |s| match op {
                    0 => ops::adjust_brightness(s, &f),
                    1 => ops::adjust_contrast(s, &f),
                    2 => ops::adjust_saturation(s, &f),
                    _ => ops::adjust_hue(s, &f),
                });
            }
        }
        let gray: Vec<usize> = (0..p.len()).filter(|&i| p[i].grayscale).collect();
        x = ops::on_subset(x, &gray, |s| {
            ops::grayscale(s).expand([-1, 3, -1, -1], false)
        });
        let (blur, sigmas): (Vec<usize>, Vec<f32>) = p
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.blur_sigma.map(|s| (i, s)))
            .unzip();
        ops::on_subset(x, &blur, |s| {
            ops::gaussian_blur(s, &sigmas, ops::BLUR_KERNEL)
        })
    }

    pub fn normalize(&self, x01: &Tensor) -> Tensor {
        (x01 - &self.mean) / &self.std
    }

    /// The network's input: augmented and normalized.
    pub fn views(&self, images: &Tensor, p: &[ViewParams]) -> Tensor {
        self.normalize(&self.views_01(images, p))
    }
}
