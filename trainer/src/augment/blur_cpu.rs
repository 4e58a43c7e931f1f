//! GaussianBlur for the CPU path: the separable 13-tap kernel of `ops::gaussian_blur` (reflect
//! padding, torchvision's weights), run per image on the host buffer the colour pass already
//! holds. libtorch's grouped 1×13 convolutions cost as much as all of ColorJitter on two cores;
//! these loops are written so the compiler vectorizes them across a row (tap-outer, pixel-inner).

use rayon::prelude::*;

use super::ops::gaussian_kernel;
use super::params::ViewParams;
use crate::runtime::isa::{multiversioned, IsaPath};

/// `reflect` padding index (PyTorch's: the edge is not repeated).
fn reflect(i: isize, len: isize) -> usize {
    let mut i = i;
    if i < 0 {
        i = -i;
    }
    if i >= len {
        i = 2 * (len - 1) - i;
    }
    i as usize
}

multiversioned! {
    /// One channel `h`×`w`, in place, with scratch `row` (≥ w + taps − 1) and `tmp` (h·w).
    /// Compiled for AVX-512 and AVX2+FMA too (see `color_cpu`).
    fn blur_plane => blur_plane_body(
        ch: &mut [f32], h: usize, w: usize, k: &[f32], row: &mut [f32], tmp: &mut [f32]
    )
}

#[inline(always)]
fn blur_plane_body(
    ch: &mut [f32],
    h: usize,
    w: usize,
    k: &[f32],
    row: &mut [f32],
    tmp: &mut [f32],
) {
    let pad = k.len() / 2;
    // Horizontal: each row reflect-padded, then Σ_t k[t]·row[x + t].
    for y in 0..h {
        let src = &ch[y * w..(y + 1) * w];
        for (i, r) in row.iter_mut().enumerate().take(w + 2 * pad) {
            *r = src[reflect(i as isize - pad as isize, w as isize)];
        }
        let out = &mut tmp[y * w..(y + 1) * w];
        out.fill(0.0);
        for (t, &kt) in k.iter().enumerate() {
            for (o, &r) in out.iter_mut().zip(&row[t..t + w]) {
                *o += kt * r;
            }
        }
    }
    // Vertical: output row y = Σ_t k[t]·tmp row reflect(y + t − pad).
    for y in 0..h {
        let out = &mut ch[y * w..(y + 1) * w];
        out.fill(0.0);
        for (t, &kt) in k.iter().enumerate() {
            let sy = reflect(y as isize + t as isize - pad as isize, h as isize);
            for (o, &s) in out.iter_mut().zip(&tmp[sy * w..(sy + 1) * w]) {
                *o += kt * s;
            }
        }
    }
}

/// Blurs, in place, the images of `x` (CHW, `p.len()` images of `h`×`w`) whose view draws one.
pub fn blur(x: &mut [f32], h: usize, w: usize, p: &[ViewParams], taps: usize) {
    blur_on(IsaPath::active(), x, h, w, p, taps);
}

/// [`blur`] on a chosen instruction-set path.
pub fn blur_on(path: IsaPath, x: &mut [f32], h: usize, w: usize, p: &[ViewParams], taps: usize) {
    x.par_chunks_mut(3 * h * w).zip(p).for_each_init(
        || (vec![0f32; w + taps], vec![0f32; h * w]),
        |(row, tmp), (img, v)| {
            let Some(sigma) = v.blur_sigma else { return };
            let k = gaussian_kernel(sigma, taps);
            for ch in img.chunks_mut(h * w) {
                blur_plane(path, ch, h, w, &k, row, tmp);
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::{AugConfig, Augmenter};
    use rand::SeedableRng;
    use tch::{Device, Kind, Tensor};

    /// The host blur, on every path this CPU has, is the device blur (libtorch's reflect pad +
    /// grouped convolutions), which tests/augment_parity.rs holds to torchvision.
    #[test]
    fn host_blur_equals_the_libtorch_blur_on_every_path() {
        let aug = Augmenter::new(
            AugConfig::mocov2(96),
            &models::Preprocess::default(),
            Device::Cpu,
        );
        let p = aug.draw(
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(1),
            0,
            24,
            (96, 96),
        );
        let idx: Vec<usize> = (0..24).filter(|&i| p[i].blur_sigma.is_some()).collect();
        assert!(idx.len() > 3, "some views must be blurred");
        let x = Tensor::rand([24, 3, 96, 96], (Kind::Float, Device::Cpu));
        let sigmas: Vec<f32> = idx.iter().map(|&i| p[i].blur_sigma.unwrap()).collect();
        let want = crate::augment::ops::on_subset(x.copy(), &idx, |s| {
            crate::augment::ops::gaussian_blur(s, &sigmas, 13)
        });
        let run = |path, buf: &mut [f32]| blur_on(path, buf, 96, 96, &p, 13);
        for (path, d) in crate::runtime::isa::max_diff_on_every_path(&x, &want, run) {
            eprintln!("blur, {}: max |Δ| {d:.2e}", path.name());
            assert!(d < 1e-6, "{}: host blur differs by {d}", path.name());
        }
    }
}
