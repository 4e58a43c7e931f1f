//! One synthetic texture image: a class is a texture family (stripes, checkerboard, ...) and,
//! when a set has more than ten classes, a band of its period and grey level.

use std::f32::consts::PI;
use std::ops::Range;

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{SHAPES, SIZE};

/// The period and grey-level ranges of one class. Ten classes or fewer use the full ranges; more
/// classes reuse each texture family in `variants` bands of period × level, so 800 classes are 10
/// families × 80 bands (a 9 × 9 grid of bands, of which 80 are used).
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub period: Range<f32>,
    pub level: Range<f32>,
}

const PERIOD: Range<f32> = 9.0..18.0;
const LEVEL: Range<f32> = 0.15..0.85;

impl Variant {
    /// Band `v` of `variants` (`v < variants`).
    pub fn of(v: usize, variants: usize) -> Variant {
        if variants <= 1 {
            // The full ranges exactly: the ten-class sets keep their bytes.
            return Variant {
                period: PERIOD,
                level: LEVEL,
            };
        }
        let side = (variants as f64).sqrt().ceil().max(1.0) as usize;
        let band = |r: &Range<f32>, i: usize| {
            let w = (r.end - r.start) / side as f32;
            r.start + w * i as f32..r.start + w * (i + 1) as f32
        };
        Variant {
            period: band(&PERIOD, v % side),
            level: band(&LEVEL, v / side),
        }
    }
}

/// Texture family and variant band of class `k` in a set of `classes` classes.
pub fn class_variant(k: usize, classes: usize) -> (usize, Variant) {
    let variants = classes.div_ceil(SHAPES.len()).max(1);
    (k % SHAPES.len(), Variant::of(k / SHAPES.len(), variants))
}

/// Distance of `x` to the nearest integer.
fn frac_dist(x: f32) -> f32 {
    (x - x.round()).abs()
}

/// The random parameters of one texture (all in pixels or radians).
struct Texture {
    shape: usize,
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
    fn new(shape: usize, period: &Range<f32>, rng: &mut ChaCha8Rng) -> Texture {
        let angle = rng.random_range(0.0..2.0 * PI);
        let cells = rng.random_range(3..6usize);
        let normal = |rng: &mut ChaCha8Rng| {
            // Box–Muller: one standard normal from two uniforms.
            let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random());
            (-2.0 * u.ln()).sqrt() * (2.0 * PI * v).cos()
        };
        let grid = if shape == 7 {
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
            shape,
            cos,
            sin,
            turn: sin.atan2(cos),
            dirs,
            period: rng.random_range(period.clone()),
            phase: [rng.random(), rng.random()],
            centre: [rng.random_range(20.0..76.0), rng.random_range(20.0..76.0)],
            arms: if shape == 4 {
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
        match self.shape {
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

/// One image of texture family `shape` over the full ranges (the ten-class sets), fully
/// determined by `seed`.
pub fn render(shape: usize, seed: u64) -> RgbImage {
    render_in(shape, &Variant::of(0, 1), seed)
}

/// One image of texture family `shape` in `variant`'s bands, fully determined by `seed`.
pub fn render_in(shape: usize, variant: &Variant, seed: u64) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let tex = Texture::new(shape, &variant.period, &mut rng);
    // Two grey levels at least 0.3 apart, either one the brighter.
    let lo = rng.random_range(variant.level.clone());
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
