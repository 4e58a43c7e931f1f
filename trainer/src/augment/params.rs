//! The random half of the augmentations: torchvision's parameter draws, reproduced on the host
//! from a seeded stream. The tensor half (`ops`) applies them to a whole batch on the device.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// A crop box in source pixels: rows `top..top+height`, columns `left..left+width`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CropBox {
    pub top: u32,
    pub left: u32,
    pub height: u32,
    pub width: u32,
}

/// Python's `round()`: halves go to the even neighbour.
fn py_round(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// `torchvision.transforms.RandomResizedCrop.get_params`: ten tries at an area fraction drawn
/// uniformly from `scale` and a log-uniform aspect ratio, then the central fallback.
pub fn resized_crop_box(
    rng: &mut impl Rng,
    height: u32,
    width: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
) -> CropBox {
    let area = (height * width) as f64;
    let (lo, hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale.0..=scale.1);
        let aspect = rng.random_range(lo..=hi).exp();
        let w = py_round((target * aspect).sqrt());
        let h = py_round((target / aspect).sqrt());
        if 0 < w && w <= width as i64 && 0 < h && h <= height as i64 {
            let (h, w) = (h as u32, w as u32);
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return CropBox {
                top,
                left,
                height: h,
                width: w,
            };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio.0 {
        (width, py_round(width as f64 / ratio.0) as u32)
    } else if in_ratio > ratio.1 {
        (py_round(height as f64 * ratio.1) as u32, height)
    } else {
        (width, height)
    };
    CropBox {
        top: (height - h) / 2,
        left: (width - w) / 2,
        height: h,
        width: w,
    }
}

/// One ColorJitter draw: the order of the four adjustments and their factors
/// (`ColorJitter.get_params`). Factors of 1 (and hue 0) are identities.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Jitter {
    /// 0 brightness, 1 contrast, 2 saturation, 3 hue — torchvision's `fn_idx`.
    pub order: [u8; 4],
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    pub hue: f32,
}

/// Strength of each augmentation; `mocov2()` is MoCo v2's aug+, `linear()` the linear-eval train
/// transform (RandomResizedCrop with torchvision's default scale, and flip).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AugConfig {
    pub size: u32,
    /// Progressive resizing: the views grow from this side to `size` over the run (cheap
    /// low-resolution steps first, the evaluation's resolution last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_from: Option<u32>,
    pub scale: (f64, f64),
    pub ratio: (f64, f64),
    pub jitter_p: f64,
    /// ColorJitter(brightness, contrast, saturation, hue).
    pub jitter: (f64, f64, f64, f64),
    pub grayscale_p: f64,
    pub blur_p: f64,
    pub blur_sigma: (f64, f64),
    /// RandomSolarize (threshold [`SOLARIZE_THRESHOLD`]); zero in aug+.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub solarize_p: f64,
    pub flip_p: f64,
    /// The second view's blur and solarize probabilities where they differ from the first's:
    /// BYOL's asymmetric pair of pipelines, which MoCo v3 adopts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second_view: Option<ViewProbs>,
    /// Multi-crop: small views of each image beside the pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub small: Option<SmallViews>,
}

/// SwAV's multi-crop: `count` views of `size` pixels cut from a small part of the image
/// (`scale`), drawn like the first view otherwise. A 32 px view is a quarter of a 64 px one's
/// arithmetic (on a CPU it runs less efficiently than that), and they are extra queries only:
/// the methods that take them never embed them with a target network.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SmallViews {
    pub count: usize,
    pub size: u32,
    pub scale: (f64, f64),
}

impl SmallViews {
    /// SwAV's small crops: area (0.05, 0.14) of the image.
    pub const SCALE: (f64, f64) = (0.05, 0.14);
}

/// The probabilities BYOL draws differently for its two views.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ViewProbs {
    pub blur_p: f64,
    pub solarize_p: f64,
}

/// Pixels at or above this value are inverted by RandomSolarize (BYOL's threshold for images in
/// [0, 1]).
pub const SOLARIZE_THRESHOLD: f32 = 0.5;

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

impl AugConfig {
    pub fn mocov2(size: u32) -> Self {
        AugConfig {
            size,
            size_from: None,
            scale: (0.2, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            jitter_p: 0.8,
            jitter: (0.4, 0.4, 0.4, 0.1),
            grayscale_p: 0.2,
            blur_p: 0.5,
            blur_sigma: (0.1, 2.0),
            solarize_p: 0.0,
            flip_p: 0.5,
            second_view: None,
            small: None,
        }
    }

    /// BYOL's augmentations (MoCo v3's `augmentation1` / `augmentation2`): crop (0.08, 1),
    /// colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale 0.2, flip; blur on every first
    /// view and a tenth of the second views; solarize on a fifth of the second views only.
    pub fn byol(size: u32) -> Self {
        AugConfig {
            scale: (0.08, 1.0),
            jitter: (0.4, 0.4, 0.2, 0.1),
            blur_p: 1.0,
            second_view: Some(ViewProbs {
                blur_p: 0.1,
                solarize_p: 0.2,
            }),
            ..Self::mocov2(size)
        }
    }

    /// The pipeline of view `view` (0 or 1) of a pair.
    pub fn view(&self, view: usize) -> AugConfig {
        match (view, self.second_view) {
            (1, Some(p)) => AugConfig {
                blur_p: p.blur_p,
                solarize_p: p.solarize_p,
                second_view: None,
                ..self.clone()
            },
            _ => AugConfig {
                second_view: None,
                ..self.clone()
            },
        }
    }

    /// The pipeline of the small views: the first view's, cut from `small.scale` of the image
    /// at `small.size` pixels.
    pub fn small_view(&self) -> Option<AugConfig> {
        let s = self.small?;
        Some(AugConfig {
            size: s.size,
            size_from: None,
            scale: s.scale,
            small: None,
            ..self.view(0)
        })
    }

    /// Views big enough for a ResNet (`--crop`, `--crop-from`).
    pub fn check(&self) -> anyhow::Result<()> {
        let small = |flag: &str, side: u32| {
            anyhow::anyhow!("{flag} {side}: views must be at least {MIN_VIEW} pixels on a side")
        };
        if self.size < MIN_VIEW {
            return Err(small("--crop", self.size));
        }
        if let Some(from) = self.size_from.filter(|&f| f < MIN_VIEW) {
            return Err(small("--crop-from", from));
        }
        match self.small {
            Some(s) if s.count > 0 && s.size < MIN_VIEW => Err(small("--small-size", s.size)),
            Some(s) if !(0.0 < s.scale.0 && s.scale.0 <= s.scale.1 && s.scale.1 <= 1.0) => {
                Err(anyhow::anyhow!(
                    "--small-scale {},{}: need 0 < min <= max <= 1",
                    s.scale.0,
                    s.scale.1
                ))
            }
            _ => Ok(()),
        }
    }

    pub fn linear(size: u32) -> Self {
        AugConfig {
            scale: (0.08, 1.0),
            jitter_p: 0.0,
            grayscale_p: 0.0,
            blur_p: 0.0,
            ..Self::mocov2(size)
        }
    }
}

/// ResNet's stem and four stages downsample by 32: a smaller view has no spatial map left.
pub const MIN_VIEW: u32 = 32;

/// Steps of progressive resizing: view sides are multiples of this.
pub const SIZE_STEP: u32 = 8;

impl AugConfig {
    /// The side of the views at `step` of `total`: `size`, or with `size_from` a linear ramp to it,
    /// in steps of [`SIZE_STEP`] pixels (the last stretch of the run at `size`).
    pub fn size_at(&self, step: u64, total: u64) -> u32 {
        let Some(from) = self.size_from else {
            return self.size;
        };
        let t = step as f64 / total.max(1) as f64;
        let raw = from as f64 + (self.size as f64 - from as f64) * t;
        let stepped = (raw / SIZE_STEP as f64).round() as u32 * SIZE_STEP;
        stepped.clamp(from.min(self.size), from.max(self.size))
    }
}

/// The parts of aug+ that can be switched off one by one, to show what each contributes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Disabled {
    /// RandomResizedCrop: the view is the whole image, resized.
    pub crop: bool,
    /// ColorJitter.
    pub color: bool,
    pub grayscale: bool,
    pub blur: bool,
    pub solarize: bool,
    pub flip: bool,
}

impl AugConfig {
    /// The same pipeline with the parts in `off` removed (each becomes an identity).
    pub fn without(self, off: Disabled) -> Self {
        let mut c = self;
        if off.crop {
            c.scale = (1.0, 1.0);
            c.ratio = (1.0, 1.0);
        }
        if off.color {
            c.jitter_p = 0.0;
        }
        if off.grayscale {
            c.grayscale_p = 0.0;
        }
        if off.blur {
            c.blur_p = 0.0;
        }
        if off.solarize {
            c.solarize_p = 0.0;
        }
        if let Some(second) = c.second_view.as_mut() {
            if off.blur {
                second.blur_p = 0.0;
            }
            if off.solarize {
                second.solarize_p = 0.0;
            }
        }
        if off.flip {
            c.flip_p = 0.0;
        }
        c
    }
}

/// Everything random about one augmented view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewParams {
    pub crop: CropBox,
    pub flip: bool,
    pub jitter: Option<Jitter>,
    pub grayscale: bool,
    pub blur_sigma: Option<f32>,
    #[serde(default)]
    pub solarize: bool,
}

/// A factor range `[max(0, 1-s), 1+s]` as torchvision's `_check_input` builds it.
fn factor(rng: &mut impl Rng, s: f64) -> f32 {
    if s == 0.0 {
        return 1.0;
    }
    rng.random_range((1.0 - s).max(0.0)..=1.0 + s) as f32
}

/// Draws in the order torchvision's `Compose` would: crop, jitter, grayscale, blur, solarize,
/// flip. A pipeline without solarize draws nothing for it, so aug+'s stream is unchanged.
pub fn draw_view(rng: &mut impl Rng, cfg: &AugConfig, height: u32, width: u32) -> ViewParams {
    let crop = resized_crop_box(rng, height, width, cfg.scale, cfg.ratio);
    let jitter = (rng.random::<f64>() < cfg.jitter_p).then(|| {
        let mut order = [0u8, 1, 2, 3];
        for i in (1..4).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let (b, c, s, h) = cfg.jitter;
        Jitter {
            order,
            brightness: factor(rng, b),
            contrast: factor(rng, c),
            saturation: factor(rng, s),
            hue: if h == 0.0 {
                0.0
            } else {
                rng.random_range(-h..=h) as f32
            },
        }
    });
    let grayscale = rng.random::<f64>() < cfg.grayscale_p;
    let blur_sigma = (rng.random::<f64>() < cfg.blur_p)
        .then(|| rng.random_range(cfg.blur_sigma.0..=cfg.blur_sigma.1) as f32);
    let solarize = cfg.solarize_p > 0.0 && rng.random::<f64>() < cfg.solarize_p;
    let flip = rng.random::<f64>() < cfg.flip_p;
    ViewParams {
        crop,
        flip,
        jitter,
        grayscale,
        blur_sigma,
        solarize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::rng::{stream, Purpose};

    #[test]
    fn crops_stay_inside_and_cover_the_scale_range() {
        let mut rng = stream(0, Purpose::Augment, 0);
        let cfg = AugConfig::mocov2(96);
        let mut min_area = f64::MAX;
        for _ in 0..5000 {
            let b = resized_crop_box(&mut rng, 96, 96, cfg.scale, cfg.ratio);
            assert!(b.top + b.height <= 96 && b.left + b.width <= 96);
            min_area = min_area.min((b.height * b.width) as f64 / 9216.0);
        }
        assert!((0.19..0.22).contains(&min_area), "{min_area}");
    }

    #[test]
    fn without_crop_the_view_is_the_whole_image() {
        let mut rng = stream(0, Purpose::Augment, 0);
        let off = Disabled {
            crop: true,
            color: true,
            grayscale: true,
            blur: true,
            solarize: true,
            flip: true,
        };
        let cfg = AugConfig::mocov2(64).without(off);
        for _ in 0..100 {
            let v = draw_view(&mut rng, &cfg, 96, 96);
            assert_eq!(
                (v.crop.top, v.crop.left, v.crop.height, v.crop.width),
                (0, 0, 96, 96)
            );
            assert!(v.jitter.is_none() && !v.grayscale && v.blur_sigma.is_none() && !v.flip);
        }
    }

    #[test]
    fn byols_views_differ_in_blur_and_solarize_only() {
        let cfg = AugConfig::byol(64);
        let (v1, v2) = (cfg.view(0), cfg.view(1));
        assert_eq!((v1.blur_p, v1.solarize_p), (1.0, 0.0));
        assert_eq!((v2.blur_p, v2.solarize_p), (0.1, 0.2));
        assert_eq!(
            AugConfig {
                blur_p: 1.0,
                solarize_p: 0.0,
                ..v2
            },
            v1
        );
        let off = Disabled {
            blur: true,
            solarize: true,
            ..Disabled::default()
        };
        let plain = cfg.without(off).view(1);
        assert_eq!((plain.blur_p, plain.solarize_p), (0.0, 0.0));
        assert_eq!(AugConfig::mocov2(64).view(1), AugConfig::mocov2(64));
    }

    #[test]
    fn small_views_are_the_first_views_pipeline_at_their_own_size_and_scale() {
        let small = SmallViews {
            count: 4,
            size: 32,
            scale: SmallViews::SCALE,
        };
        let cfg = AugConfig {
            size_from: Some(40),
            small: Some(small),
            ..AugConfig::byol(64)
        };
        let v = cfg.small_view().unwrap();
        assert_eq!(
            (v.size, v.size_from, v.scale, v.small),
            (32, None, (0.05, 0.14), None)
        );
        assert_eq!((v.blur_p, v.solarize_p), (1.0, 0.0));
        assert!(AugConfig::mocov2(64).small_view().is_none());
        assert!(cfg.check().is_ok());
        let too_small = |s: SmallViews| AugConfig {
            small: Some(s),
            ..AugConfig::mocov2(64)
        };
        let err = too_small(SmallViews { size: 24, ..small })
            .check()
            .unwrap_err();
        assert!(err.to_string().contains("--small-size 24"), "{err}");
        let err = too_small(SmallViews {
            scale: (0.2, 0.1),
            ..small
        });
        assert!(err
            .check()
            .unwrap_err()
            .to_string()
            .contains("--small-scale"));
    }

    #[test]
    fn progressive_resizing_ramps_in_steps_to_the_final_size() {
        let cfg = AugConfig {
            size_from: Some(48),
            ..AugConfig::mocov2(96)
        };
        let sizes: Vec<u32> = (0..100).map(|s| cfg.size_at(s, 100)).collect();
        assert_eq!((sizes[0], sizes[99]), (48, 96));
        assert!(sizes.windows(2).all(|w| w[0] <= w[1]));
        assert!(sizes.iter().all(|s| s % SIZE_STEP == 0));
        assert_eq!(AugConfig::mocov2(64).size_at(7, 100), 64);
    }

    #[test]
    fn fallback_is_central() {
        // An impossible scale forces the fallback: torchvision's central crop clamped to ratio.
        let mut rng = stream(0, Purpose::Augment, 0);
        let b = resized_crop_box(&mut rng, 50, 200, (5.0, 5.0), (0.75, 4.0 / 3.0));
        assert_eq!((b.height, b.width, b.top, b.left), (50, 67, 0, 66));
    }
}
