//! The embedded default dataset (`moco-train synth`): deterministic 96×96 PNGs in the folder
//! layout, small enough for a CPU demo.
//!
//! A class is a *texture family* (stripes, checkerboard, dots, rings, ...) filling the whole
//! image at a random orientation, period, phase and centre, in two random grey levels with
//! pixel noise. Why so, each measured (see docs/benchmarks.md, "The embedded dataset"):
//! - full-field textures: every RandomResizedCrop keeps the class, so two views agree on it;
//! - grey: with random colours MoCo's first lesson is hue (an instance cue that colour jitter
//!   does not erase) and kNN on the class fell below the random-init floor; in grey the same
//!   run rises above it;
//! - 500 labeled images per class: kNN's k=200 needs more than 100 neighbours of a class.

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
    "stripes",
    "checker",
    "dots",
    "rings",
    "pinwheel",
    "grid",
    "waves",
    "blobs",
    "bricks",
    "triangles",
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
            train_per_class: 500,
            val_per_class: 50,
            unlabeled: 2000,
            seed: 0,
        }
    }
}

/// Distance of `x` to the nearest integer.
fn frac_dist(x: f32) -> f32 {
    (x - x.round()).abs()
}

/// The random parameters of one texture (all in pixels or radians).
struct Texture {
    class: usize,
    cos: f32,
    sin: f32,
    /// The orientation as atan2 gives it back, and the three 60°-apart directions of the
    /// triangle lattice: per image, not per pixel.
    turn: f32,
    dirs: [(f32, f32); 3],
    period: f32,
    phase: [f32; 2],
    centre: [f32; 2],
    /// pinwheel: number of sector pairs; waves: amplitude in periods.
    arms: f32,
    /// blobs: a coarse grid of Gaussian values, bilinearly upsampled.
    grid: Vec<f32>,
    cells: usize,
}

impl Texture {
    fn new(class: usize, rng: &mut ChaCha8Rng) -> Texture {
        let angle = rng.random_range(0.0..2.0 * PI);
        let cells = rng.random_range(3..6usize);
        let normal = |rng: &mut ChaCha8Rng| {
            // Box–Muller: one standard normal from two uniforms.
            let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
            (-2.0 * u.ln()).sqrt() * (2.0 * PI * v).cos()
        };
        let grid = if class == 7 {
            (0..(cells + 2) * (cells + 2))
                .map(|_| normal(rng))
                .collect()
        } else {
            Vec::new()
        };
        let (cos, sin) = (angle.cos(), angle.sin());
        let dirs = [0, 1, 2].map(|j| {
            let a = (j as f32) * PI / 3.0;
            (a.cos() * cos - a.sin() * sin, a.sin() * cos + a.cos() * sin)
        });
        Texture {
            class,
            cos,
            sin,
            turn: sin.atan2(cos),
            dirs,
            period: rng.random_range(9.0..18.0),
            phase: [rng.random(), rng.random()],
            centre: [rng.random_range(20.0..76.0), rng.random_range(20.0..76.0)],
            arms: if class == 4 {
                rng.random_range(4..9u32) as f32
            } else {
                rng.random_range(0.3..0.6)
            },
            grid,
            cells,
        }
    }

    /// Is pixel (x, y) foreground?
    fn inside(&self, x: f32, y: f32) -> bool {
        let (u, v) = (self.cos * x + self.sin * y, -self.sin * x + self.cos * y);
        let (uu, vv) = (
            u / self.period + self.phase[0],
            v / self.period + self.phase[1],
        );
        let (dx, dy) = (x - self.centre[0], y - self.centre[1]);
        let wave = |t: f32| (2.0 * PI * t).sin() > 0.0;
        match self.class % SHAPES.len() {
            0 => wave(uu),
            1 => (2.0 * PI * uu).sin() * (2.0 * PI * vv).sin() > 0.0,
            2 => frac_dist(uu).powi(2) + frac_dist(vv).powi(2) < 0.09,
            3 => wave(dx.hypot(dy) / self.period),
            4 => (self.arms * (dy.atan2(dx) + self.turn)).sin() > 0.0,
            5 => frac_dist(uu) < 0.12 || frac_dist(vv) < 0.12,
            6 => wave(vv + self.arms * (PI * uu).sin()),
            7 => self.blob(x, y) > 0.0,
            8 => {
                let shift = if vv.floor().rem_euclid(2.0) == 1.0 {
                    0.5
                } else {
                    0.0
                };
                frac_dist(uu * 0.5 + shift) < 0.06 || frac_dist(vv) < 0.1
            }
            _ => self.dirs.iter().enumerate().fold(true, |m, (j, &(c, s))| {
                m ^ wave((c * x + s * y) / self.period + self.phase[0] * j as f32)
            }),
        }
    }

    fn blob(&self, x: f32, y: f32) -> f32 {
        let n = self.cells + 2;
        let at = |p: f32| {
            let t = p / (SIZE - 1) as f32 * self.cells as f32;
            let i = (t.floor() as usize).min(self.cells);
            (i, t - i as f32)
        };
        let ((i, fy), (j, fx)) = (at(y), at(x));
        let g = |r: usize, c: usize| self.grid[r * n + c];
        g(i, j) * (1.0 - fy) * (1.0 - fx)
            + g(i + 1, j) * fy * (1.0 - fx)
            + g(i, j + 1) * (1.0 - fy) * fx
            + g(i + 1, j + 1) * fy * fx
    }
}

/// One image of `class`, fully determined by `seed`.
pub fn render(class: usize, seed: u64) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let tex = Texture::new(class, &mut rng);
    // Two grey levels at least 0.3 apart, either one the brighter.
    let lo = rng.random_range(0.15..0.85f32);
    let gap = rng.random_range(0.3..0.5f32);
    let hi = if lo < 0.5 { lo + gap } else { lo - gap };
    let (bg, fg) = (lo * 255.0, hi * 255.0);
    let noise = rng.random_range(3.0..12.0f32);
    let mut img = RgbImage::new(SIZE, SIZE);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let base = if tex.inside(x as f32, y as f32) {
            fg
        } else {
            bg
        };
        // One noise value per pixel, the same in R, G and B: the image stays grey.
        let n: f32 = (rng.random::<f32>() + rng.random::<f32>() - 1.0) * noise;
        let v = (base + n).clamp(0.0, 255.0) as u8;
        *px = Rgb([v, v, v]);
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
            "train/stripes/00000.png",
            "val/rings/00001.png",
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
        assert_eq!(train.classes, vec!["stripes", "checker", "dots", "rings"]);
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
            std::fs::read(a.join("train/stripes/00000.png")).unwrap(),
            std::fs::read(c.join("train/stripes/00000.png")).unwrap()
        );
        assert!(write_dataset(&a, &cfg, false)
            .unwrap_err()
            .to_string()
            .contains("already exists"));
    }

    #[test]
    fn textures_fill_the_image_in_grey() {
        for (k, shape) in SHAPES.iter().enumerate() {
            for seed in 0..5 {
                let img = render(k, seed * 31 + k as u64);
                assert!(
                    img.pixels().all(|p| p[0] == p[1] && p[1] == p[2]),
                    "{shape}"
                );
                // Both grey levels appear, and in every quadrant (a crop keeps the class).
                for (qx, qy) in [(0, 0), (48, 0), (0, 48), (48, 48)] {
                    let v: Vec<u8> = (qy..qy + 48)
                        .flat_map(|y| (qx..qx + 48).map(move |x| (x, y)))
                        .map(|(x, y)| img.get_pixel(x, y)[0])
                        .collect();
                    let (lo, hi) = (*v.iter().min().unwrap(), *v.iter().max().unwrap());
                    let mid = (lo as u16 + hi as u16) / 2;
                    let above =
                        v.iter().filter(|&&p| p as u16 > mid).count() as f64 / v.len() as f64;
                    assert!(
                        hi - lo > 60,
                        "{shape} seed {seed} quadrant ({qx},{qy}): flat"
                    );
                    assert!(
                        (0.01..0.99).contains(&above),
                        "{shape} seed {seed} quadrant ({qx},{qy}): {above}"
                    );
                }
            }
            assert_ne!(render(k, 1).as_raw(), render(k, 2).as_raw(), "{shape}");
        }
    }
}
