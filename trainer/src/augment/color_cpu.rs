//! ColorJitter and RandomGrayscale fused into one pass per image, for the CPU. The libtorch
//! version in `ops` runs each adjustment as a dozen full-tensor kernels — the right shape for a
//! GPU, but on two CPU cores memory traffic made it 60 % of the data path. Here every image is
//! walked once per adjustment with the same f32 expressions as torchvision's tensor functionals
//! (and `ops`), so the results agree to rounding (tests/augment_parity.rs holds it to `ops`).

use rayon::prelude::*;

use super::params::{Jitter, ViewParams, SOLARIZE_THRESHOLD};
use crate::runtime::isa::{multiversioned, IsaPath};

const GRAY: [f32; 3] = [0.2989, 0.587, 0.114];

fn blend(a: f32, b: f32, f: f32) -> f32 {
    (a * f + b * (1.0 - f)).clamp(0.0, 1.0)
}

fn gray(r: f32, g: f32, b: f32) -> f32 {
    r * GRAY[0] + g * GRAY[1] + b * GRAY[2]
}

/// One pixel's hue shift: torchvision's `_rgb2hsv`, `(h + hue) % 1`, then HSV → RGB as
/// c = v − v·s·clamp(min(k, 4−k), 0, 1), k = (n + 6h) mod 6, n = 5, 3, 1 (the sector table of
/// `_hsv2rgb` in closed form). Written without branches (selects only) so that it vectorizes.
#[inline(always)]
fn shift_hue(r: f32, g: f32, b: f32, hue: f32) -> (f32, f32, f32) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let eqc = maxc == minc;
    let cr = maxc - minc;
    let s = cr / if eqc { 1.0 } else { maxc };
    let inv = 1.0 / if eqc { 1.0 } else { cr };
    let (rc, gc, bc) = ((maxc - r) * inv, (maxc - g) * inv, (maxc - b) * inv);
    let is_r = maxc == r;
    let is_g = maxc == g;
    let h = if is_r {
        bc - gc
    } else if is_g {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    // fmod(h/6 + 1, 1): the argument lies in [5/6, 11/6], where a − 1 is exact (Sterbenz).
    let a = h / 6.0 + 1.0;
    let h = if a >= 1.0 { a - 1.0 } else { a };
    let h6 = wrap(h + hue, 1.0) * 6.0;
    let vs = maxc * s;
    let ch = |n: f32| {
        let k = wrap(h6 + n, 6.0);
        maxc - vs * k.min(4.0 - k).clamp(0.0, 1.0)
    };
    (ch(5.0), ch(3.0), ch(1.0))
}

/// Python's `a % m` (torch's `remainder`) for `a` within one period of [0, m): no libm call.
#[inline(always)]
fn wrap(a: f32, m: f32) -> f32 {
    let a = if a < 0.0 { a + m } else { a };
    if a >= m {
        a - m
    } else {
        a
    }
}

#[inline(always)]
fn adjust(img: &mut [f32], n: usize, op: u8, j: &Jitter) {
    let (rs, rest) = img.split_at_mut(n);
    let (gs, bs) = rest.split_at_mut(n);
    match op {
        0 => {
            for v in rs.iter_mut().chain(gs.iter_mut()).chain(bs.iter_mut()) {
                *v = blend(*v, 0.0, j.brightness);
            }
        }
        1 => {
            let sum: f64 = rs
                .iter()
                .zip(gs.iter())
                .zip(bs.iter())
                .map(|((r, g), b)| gray(*r, *g, *b) as f64)
                .sum();
            let mean = (sum / n as f64) as f32;
            for v in rs.iter_mut().chain(gs.iter_mut()).chain(bs.iter_mut()) {
                *v = blend(*v, mean, j.contrast);
            }
        }
        2 => {
            for ((r, g), b) in rs.iter_mut().zip(gs.iter_mut()).zip(bs.iter_mut()) {
                let l = gray(*r, *g, *b);
                (*r, *g, *b) = (
                    blend(*r, l, j.saturation),
                    blend(*g, l, j.saturation),
                    blend(*b, l, j.saturation),
                );
            }
        }
        _ => {
            for ((r, g), b) in rs.iter_mut().zip(gs.iter_mut()).zip(bs.iter_mut()) {
                (*r, *g, *b) = shift_hue(*r, *g, *b, j.hue);
            }
        }
    }
}

/// Applies each image's jitter (in its order) and grayscale, in place; `x` holds `p.len()`
/// images of 3×`n` floats, CHW.
pub fn jitter_and_grayscale(x: &mut [f32], n: usize, p: &[ViewParams]) {
    jitter_and_grayscale_on(IsaPath::active(), x, n, p);
}

/// [`jitter_and_grayscale`] on a chosen instruction-set path.
pub fn jitter_and_grayscale_on(path: IsaPath, x: &mut [f32], n: usize, p: &[ViewParams]) {
    x.par_chunks_mut(3 * n)
        .zip(p)
        .for_each(|(img, v)| one_image(path, img, n, v));
}

/// RandomSolarize of the images drawn for it, in place: values at or above
/// [`SOLARIZE_THRESHOLD`] become `1 − v` (torchvision's `solarize` for float images).
pub fn solarize(x: &mut [f32], n: usize, p: &[ViewParams]) {
    // aug+ never solarizes: its chunks skip the parallel pass altogether.
    if !p.iter().any(|v| v.solarize) {
        return;
    }
    x.par_chunks_mut(3 * n)
        .zip(p)
        .filter(|(_, v)| v.solarize)
        .for_each(|(img, _)| {
            for v in img {
                if *v >= SOLARIZE_THRESHOLD {
                    *v = 1.0 - *v;
                }
            }
        });
}

multiversioned! {
    /// Compiled for AVX-512 and AVX2+FMA too: the loops above are written to vectorize, and the
    /// portable baseline (SSE2) would use a quarter of the lanes.
    fn one_image => one_image_body(img: &mut [f32], n: usize, v: &ViewParams)
}

#[inline(always)]
fn one_image_body(img: &mut [f32], n: usize, v: &ViewParams) {
    if let Some(j) = &v.jitter {
        for op in j.order {
            adjust(img, n, op, j);
        }
    }
    if v.grayscale {
        let (rs, rest) = img.split_at_mut(n);
        let (gs, bs) = rest.split_at_mut(n);
        for ((r, g), b) in rs.iter_mut().zip(gs.iter_mut()).zip(bs.iter_mut()) {
            let l = gray(*r, *g, *b);
            (*r, *g, *b) = (l, l, l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::{AugConfig, Augmenter};
    use rand::SeedableRng;
    use tch::{Device, Kind, Tensor};

    /// Every path this CPU has gives the batched colour stage of the GPU path (which
    /// tests/augment_parity.rs holds to torchvision) up to rounding: the host sums the contrast mean in f64 and divides
    /// once per pixel, so a few float32 ulps of values in [0, 1].
    #[test]
    fn every_path_equals_the_libtorch_colour_stage() {
        let aug = Augmenter::new(
            AugConfig::mocov2(48),
            &models::Preprocess::default(),
            Device::Cpu,
        );
        let p = aug.draw(
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(2),
            0,
            32,
            (48, 48),
        );
        assert!(p.iter().filter(|v| v.jitter.is_some()).count() > 10);
        let x = Tensor::rand([32, 3, 48, 48], (Kind::Float, Device::Cpu));
        let want = crate::augment::batched::colour(&x, &p, &Default::default());
        let run = |path, buf: &mut [f32]| jitter_and_grayscale_on(path, buf, 48 * 48, &p);
        for (path, d) in crate::runtime::isa::max_diff_on_every_path(&x, &want, run) {
            eprintln!("colour, {}: max |Δ| {d:.2e}", path.name());
            assert!(d < 1e-5, "{}: host colour differs by {d}", path.name());
        }
    }
}
