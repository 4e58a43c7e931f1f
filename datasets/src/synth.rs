//! The embedded default dataset (`moco-train synth`): deterministic 96×96 PNGs in the folder
//! layout, small enough for a CPU demo.
//!
//! A class is a *shape family* (disc, ring, square, triangle, cross, stripes, checkerboard,
//! dots, ...) drawn at a random position, scale and rotation, in random colours over a noisy
//! random-colour background. Colour carries no class information (MoCo's colour jitter and
//! grayscale would erase it anyway) and position is random (so RandomResizedCrop does not
//! teach "where"), which leaves shape and texture — what contrastive learning on these
//! augmentations can separate.

use std::f32::consts::PI;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{DataError, Result};

pub const SHAPES: [&str; 10] = [
    "disc", "ring", "square", "triangle", "cross", "stripes", "checker", "dots", "crescent",
    "waves",
];
pub const SIZE: u32 = 96;

#[derive(Debug, Clone, Serialize)]
pub struct SynthConfig {
    pub classes: usize,
    pub train_per_class: usize,
    pub val_per_class: usize,
    pub unlabeled: usize,
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            classes: 10,
            train_per_class: 100,
            val_per_class: 50,
            unlabeled: 2000,
            seed: 0,
        }
    }
}

/// Is pixel (u, v) — in the shape's own frame, unit scale — inside shape `class`?
fn inside(class: usize, u: f32, v: f32, freq: f32) -> bool {
    let r = (u * u + v * v).sqrt();
    match class % SHAPES.len() {
        0 => r < 1.0,
        1 => (0.6..1.0).contains(&r),
        2 => u.abs() < 0.85 && v.abs() < 0.85,
        3 => v > -0.7 && v < 0.9 && u.abs() < (0.9 - v) * 0.65,
        4 => (u.abs() < 0.3 && v.abs() < 1.0) || (v.abs() < 0.3 && u.abs() < 1.0),
        5 => r < 1.1 && (u * freq).sin() > 0.0,
        6 => r < 1.1 && ((u * freq).sin() * (v * freq).sin()) > 0.0,
        7 => {
            r < 1.1 && {
                let (fu, fv) = (
                    (u * freq / PI).rem_euclid(2.0) - 1.0,
                    (v * freq / PI).rem_euclid(2.0) - 1.0,
                );
                fu * fu + fv * fv < 0.35
            }
        }
        // Not a diamond: under random rotation that would be the square again.
        8 => r < 1.0 && (u - 0.45).powi(2) + v * v > 0.75 * 0.75,
        _ => r < 1.1 && (v * freq + 2.0 * (u * 3.0).sin()).sin() > 0.3,
    }
}

fn color(rng: &mut ChaCha8Rng) -> [f32; 3] {
    [
        rng.random::<f32>() * 255.0,
        rng.random::<f32>() * 255.0,
        rng.random::<f32>() * 255.0,
    ]
}

/// One image of `class`, fully determined by `seed`.
pub fn render(class: usize, seed: u64) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let bg = color(&mut rng);
    let mut fg = color(&mut rng);
    // Keep the shape visible: push the colours apart when they are too close.
    if (0..3).map(|c| (fg[c] - bg[c]).abs()).sum::<f32>() < 150.0 {
        fg = bg.map(|c| 255.0 - c);
    }
    let scale = rng.random_range(18.0..40.0f32);
    let (cx, cy) = (
        rng.random_range(scale..SIZE as f32 - scale * 0.6),
        rng.random_range(scale..SIZE as f32 - scale * 0.6),
    );
    let angle = rng.random_range(0.0..2.0 * PI);
    let freq = rng.random_range(5.0..9.0f32);
    let noise = rng.random_range(5.0..25.0f32);
    let (s, c) = angle.sin_cos();
    let mut img = RgbImage::new(SIZE, SIZE);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let (dx, dy) = ((x as f32 - cx) / scale, (y as f32 - cy) / scale);
        let (u, v) = (c * dx + s * dy, -s * dx + c * dy);
        let base = if inside(class, u, v, freq) { fg } else { bg };
        let n = (rng.random::<f32>() - 0.5) * noise;
        *px = Rgb(base.map(|b| (b + n).clamp(0.0, 255.0) as u8));
    }
    img
}

#[derive(Debug, Clone, Serialize)]
pub struct SynthSummary {
    pub out: String,
    pub classes: usize,
    pub train: usize,
    pub val: usize,
    pub unlabeled: usize,
}

/// Writes `out/{train,val}/<class>/<i>.png`, `out/unlabeled/<i>.png` and `out/classes.txt`.
/// Built in a sibling temp directory and renamed, so `out` is complete or absent.
pub fn write_dataset(out: &Path, cfg: &SynthConfig, progress: bool) -> Result<SynthSummary> {
    if cfg.classes == 0 || cfg.classes > SHAPES.len() {
        return Err(DataError::Usage(format!(
            "--classes must be 1..={}",
            SHAPES.len()
        )));
    }
    if out.exists() {
        return Err(DataError::file(
            out,
            "already exists (synth never overwrites)",
        ));
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
    let tmp: PathBuf = parent.join(format!(
        ".{}.tmp-{}",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    // (relative path, class, per-image seed): seeds differ by split so no image repeats.
    let mut jobs: Vec<(PathBuf, usize, u64)> = Vec::new();
    let mix = |split: u64, k: usize, i: usize| {
        cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (split << 56) ^ ((k as u64) << 40) ^ i as u64
    };
    for (split, per) in [("train", cfg.train_per_class), ("val", cfg.val_per_class)] {
        let sid = if split == "train" { 1 } else { 2 };
        for (k, shape) in SHAPES.iter().enumerate().take(cfg.classes) {
            for i in 0..per {
                jobs.push((
                    PathBuf::from(format!("{split}/{shape}/{i:05}.png")),
                    k,
                    mix(sid, k, i),
                ));
            }
        }
    }
    let mut pick = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5EED);
    for i in 0..cfg.unlabeled {
        let k = pick.random_range(0..cfg.classes);
        jobs.push((
            PathBuf::from(format!("unlabeled/{i:05}.png")),
            k,
            mix(3, k, i),
        ));
    }
    let bar = if progress {
        ProgressBar::new(jobs.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("synth {bar:40} {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let result = (|| -> Result<()> {
        jobs.par_iter()
            .try_for_each(|(rel, k, seed)| -> Result<()> {
                let path = tmp.join(rel);
                let dir = path.parent().unwrap_or(&tmp);
                std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
                render(*k, *seed)
                    .save(&path)
                    .map_err(|e| DataError::file(&path, e))?;
                bar.inc(1);
                Ok(())
            })?;
        let classes: String = (0..cfg.classes)
            .map(|k| format!("{k}\t{}\n", SHAPES[k]))
            .collect();
        let ct = tmp.join("classes.txt");
        std::fs::write(&ct, classes).map_err(|e| DataError::io(&ct, e))?;
        std::fs::rename(&tmp, out).map_err(|e| DataError::io(out, e))
    })();
    bar.finish_and_clear();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result?;
    Ok(SynthSummary {
        out: out.display().to_string(),
        classes: cfg.classes,
        train: cfg.classes * cfg.train_per_class,
        val: cfg.classes * cfg.val_per_class,
        unlabeled: cfg.unlabeled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_readable_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SynthConfig {
            classes: 4,
            train_per_class: 3,
            val_per_class: 2,
            unlabeled: 5,
            seed: 7,
        };
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        let s = write_dataset(&a, &cfg, false).unwrap();
        write_dataset(&b, &cfg, false).unwrap();
        assert_eq!((s.train, s.val, s.unlabeled), (12, 8, 5));
        for rel in [
            "train/disc/00000.png",
            "val/triangle/00001.png",
            "unlabeled/00004.png",
            "classes.txt",
        ] {
            assert_eq!(
                std::fs::read(a.join(rel)).unwrap(),
                std::fs::read(b.join(rel)).unwrap(),
                "{rel}"
            );
        }
        let train = crate::open(&a, crate::Split::Train, None).unwrap();
        assert_eq!(train.classes, vec!["disc", "ring", "square", "triangle"]);
        assert_eq!(train.samples.len(), 12);
        assert_eq!(
            crate::open(&a, crate::Split::Unlabeled, None)
                .unwrap()
                .samples
                .len(),
            5
        );
        // Another seed, other pixels; an existing output is refused, not overwritten.
        let c = dir.path().join("c");
        write_dataset(
            &c,
            &SynthConfig {
                seed: 8,
                ..cfg.clone()
            },
            false,
        )
        .unwrap();
        assert_ne!(
            std::fs::read(a.join("train/disc/00000.png")).unwrap(),
            std::fs::read(c.join("train/disc/00000.png")).unwrap()
        );
        assert!(write_dataset(&a, &cfg, false)
            .unwrap_err()
            .to_string()
            .contains("already exists"));
    }

    #[test]
    fn shapes_are_visible_and_positions_vary() {
        // Every class draws a foreground that covers a sensible fraction of the image.
        for (k, shape) in SHAPES.iter().enumerate() {
            for seed in 0..5 {
                let img = render(k, seed * 31 + k as u64);
                let bg = *img.get_pixel(0, 0);
                let differ = img
                    .pixels()
                    .filter(|p| {
                        p.0.iter()
                            .zip(bg.0)
                            .map(|(a, b)| (*a as i32 - b as i32).abs())
                            .sum::<i32>()
                            > 60
                    })
                    .count();
                let frac = differ as f64 / (SIZE * SIZE) as f64;
                assert!((0.02..0.9).contains(&frac), "{shape} seed {seed}: {frac}");
            }
        }
    }
}
