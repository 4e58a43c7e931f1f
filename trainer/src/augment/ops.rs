//! The deterministic half of the augmentations, batched with libtorch on the training device:
//! every function takes a float batch `[N,3,H,W]` in [0,1] and per-image parameters, and matches
//! torchvision's tensor functional of the same name image for image (tests/augment_parity.rs).

use tch::{Device, Kind, Tensor};

use super::params::CropBox;

/// Source coordinates of the `out` samples of a resized crop along one axis, as libtorch's
/// bilinear upsampling computes them (`align_corners=False`: centre of output pixel mapped back,
/// clamped to the crop), expressed in the whole image's pixels.
fn axis_coords(start: u32, len: u32, out: u32, flip: bool) -> impl Iterator<Item = f64> {
    let scale = len as f64 / out as f64;
    (0..out).map(move |i| {
        let i = if flip { out - 1 - i } else { i };
        let src = ((i as f64 + 0.5) * scale - 0.5).clamp(0.0, (len - 1) as f64);
        start as f64 + src
    })
}

/// `F.resized_crop(img, top, left, h, w, [size, size], antialias=True)` followed by an optional
/// horizontal flip, for a batch of boxes. Crops no larger than the output in either axis (always
/// the case for 96×96 sources and 96×96 views) only upsample, where antialiased bilinear equals
/// plain bilinear: all of them go through one `grid_sample` at the exact upsampling coordinates.
/// Larger crops need the antialiasing filter and are resized one by one.
pub fn resized_crop_flip(x: &Tensor, boxes: &[CropBox], flips: &[bool], size: u32) -> Tensor {
    let (n, _, h, w) = x.size4().expect("image batch must be [N,3,H,W]");
    assert_eq!(n as usize, boxes.len());
    let device = x.device();
    let s = size as i64;
    let norm = |v: f64, extent: i64| {
        if extent > 1 {
            (2.0 * v / (extent - 1) as f64 - 1.0) as f32
        } else {
            0.0
        }
    };
    let small: Vec<usize> = (0..boxes.len())
        .filter(|&i| boxes[i].height <= size && boxes[i].width <= size)
        .collect();
    let mut out = if small.len() == boxes.len() {
        Tensor::empty([0], (x.kind(), device)) // replaced whole below
    } else {
        Tensor::zeros([n, 3, s, s], (x.kind(), device))
    };
    if !small.is_empty() {
        let mut gx = Vec::with_capacity(small.len() * size as usize);
        let mut gy = Vec::with_capacity(small.len() * size as usize);
        for &i in &small {
            let b = boxes[i];
            gx.extend(axis_coords(b.left, b.width, size, flips[i]).map(|v| norm(v, w)));
            gy.extend(axis_coords(b.top, b.height, size, false).map(|v| norm(v, h)));
        }
        let m = small.len() as i64;
        let gx = Tensor::from_slice(&gx)
            .to(device)
            .view([m, 1, s])
            .expand([m, s, s], false);
        let gy = Tensor::from_slice(&gy)
            .to(device)
            .view([m, s, 1])
            .expand([m, s, s], false);
        let grid = Tensor::stack(&[gx, gy], -1).to_kind(x.kind());
        let idx = index_tensor(&small, device);
        // interpolation 0 = bilinear, padding 1 = border (never reached: coordinates are clamped).
        if small.len() == boxes.len() {
            return x.grid_sampler(&grid, 0, 1, true);
        }
        let views = x.index_select(0, &idx).grid_sampler(&grid, 0, 1, true);
        out = out.index_copy(0, &idx, &views);
    }
    for (i, b) in boxes.iter().enumerate() {
        if b.height <= size && b.width <= size {
            continue;
        }
        let crop = x
            .get(i as i64)
            .narrow(1, b.top as i64, b.height as i64)
            .narrow(2, b.left as i64, b.width as i64)
            .unsqueeze(0)
            .internal_upsample_bilinear2d_aa([s, s], false, None, None)
            .clamp(0.0, 1.0);
        let crop = if flips[i] { crop.flip([3]) } else { crop };
        out = out.index_copy(0, &index_tensor(&[i], device), &crop);
    }
    out
}

pub fn index_tensor(idx: &[usize], device: Device) -> Tensor {
    let v: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
    Tensor::from_slice(&v).to(device)
}

fn per_image(values: &[f32], device: Device, kind: Kind) -> Tensor {
    Tensor::from_slice(values)
        .to(device)
        .to_kind(kind)
        .view([-1, 1, 1, 1])
}

/// `rgb_to_grayscale` with torchvision's weights, keeping the channel axis: `[N,1,H,W]`.
pub fn grayscale(x: &Tensor) -> Tensor {
    let c = x.unbind(1);
    (&c[0] * 0.2989 + &c[1] * 0.587 + &c[2] * 0.114).unsqueeze(1)
}

/// torchvision's `_blend`: `(f·a + (1-f)·b).clamp(0, 1)` with a per-image `f`.
fn blend(a: &Tensor, b: &Tensor, f: &Tensor) -> Tensor {
    (a * f + b * (f.ones_like() - f)).clamp(0.0, 1.0)
}

pub fn adjust_brightness(x: &Tensor, f: &[f32]) -> Tensor {
    let f = per_image(f, x.device(), x.kind());
    blend(x, &x.zeros_like(), &f)
}

pub fn adjust_contrast(x: &Tensor, f: &[f32]) -> Tensor {
    let f = per_image(f, x.device(), x.kind());
    let mean = grayscale(x).mean_dim(&[-3i64, -2, -1][..], true, x.kind());
    blend(x, &mean, &f)
}

pub fn adjust_saturation(x: &Tensor, f: &[f32]) -> Tensor {
    let f = per_image(f, x.device(), x.kind());
    blend(x, &grayscale(x), &f)
}

/// torchvision's `adjust_hue` (`_rgb2hsv` → shift the hue → `_hsv2rgb`) by per-image shifts
/// `f` in [−0.5, 0.5].
pub fn adjust_hue(x: &Tensor, f: &[f32]) -> Tensor {
    let shift6: Vec<f32> = f.iter().map(|&f| 6.0 * f).collect();
    let shift6 = per_image(&shift6, x.device(), x.kind());
    hue_shifted(x, &shift6, &HueConsts::new(x.kind(), x.device()))
}

/// The constants of [`hue_shifted`], made once per device: 2c for the channels c of R, G, B,
/// and the sector offsets n = 5, 3, 1 of `_hsv2rgb`'s closed form, each as `[1,3,1,1]`.
pub struct HueConsts {
    channels: Tensor,
    sectors: Tensor,
}

impl HueConsts {
    pub fn new(kind: Kind, device: Device) -> HueConsts {
        let c = |v: [f32; 3]| {
            Tensor::from_slice(&v)
                .to(device)
                .to_kind(kind)
                .view([1, 3, 1, 1])
        };
        HueConsts {
            channels: c([0.0, 2.0, 4.0]),
            sectors: c([5.0, 3.0, 1.0]),
        }
    }
}

/// The images `x` `[N,3,H,W]` with their hue shifted by `shift6`/6 (`[N,1,1,1]`: 6·shift): the
/// hue round trip in 21 batched ops (a GPU step dispatches it in every jitter round).
///
/// 6·hue is the max channel's entry of (d[c−1] − d[c+1] + 2c), d = (max − x)/(max − min): the
/// three cases of `_rgb2hsv` as one `roll` pair and a `gather` at the first maximal channel (its
/// tie-break: R before G before B). HSV → RGB is one expression per channel,
/// c = v − (max − min)·clamp(min(k, 4−k), 0, 1) with k = ((6·hue + 6·shift) mod 6 + n) mod 6: the
/// values of `_hsv2rgb`'s sector table (an einsum over six stacked candidates), since v·s =
/// max − min. The shifted hue is reduced mod 6 before n is added, so k never carries the
/// rounding of a sum near 12: against the float64 value this stays as close as torchvision's
/// float32 path (tests/augment_parity.rs).
pub fn hue_shifted(x: &Tensor, shift6: &Tensor, k: &HueConsts) -> Tensor {
    let (maxc, first) = x.max_dim(1, true);
    let range = &maxc - x.amin(&[1i64][..], true);
    // 0/tiny = 0 where the pixel is gray (range 0): its hue is irrelevant, as `_rgb2hsv` makes it.
    let d = (&maxc - x) / range.clamp_min(1e-30);
    let h6 = (d.roll([1], [1]) - d.roll([-1], [1]) + &k.channels).gather(1, &first, false);
    let sector = ((h6 + shift6).remainder(6.0) + &k.sectors).remainder(6.0);
    let w = sector.minimum(&(sector.neg() + 4.0)).clamp(0.0, 1.0);
    maxc - range * w
}

/// Taps of the blur kernel: ±3σ for the largest σ of aug+ (2.0), so no draw is truncated much.
pub const BLUR_KERNEL: usize = 13;

/// torchvision's `_get_gaussian_kernel1d`.
pub fn gaussian_kernel(sigma: f32, taps: usize) -> Vec<f32> {
    let half = (taps - 1) as f32 * 0.5;
    let pdf: Vec<f32> = (0..taps)
        .map(|i| {
            let x = -half + i as f32;
            (-0.5 * (x / sigma).powi(2)).exp()
        })
        .collect();
    let sum: f32 = pdf.iter().sum();
    pdf.iter().map(|p| p / sum).collect()
}

/// `F.solarize(img, SOLARIZE_THRESHOLD)` of the images whose `on` is set; the others unchanged.
pub fn solarize(x: &Tensor, on: &[bool]) -> Tensor {
    let on: Vec<f32> = on.iter().map(|&b| f32::from(u8::from(b))).collect();
    solarize_masked(x, &per_image(&on, x.device(), x.kind()))
}

/// [`solarize`] with the per-image switch as a `[N,1,1,1]` tensor of 0/1 (the others kept
/// exactly).
pub fn solarize_masked(x: &Tensor, on: &Tensor) -> Tensor {
    let keep = x
        .lt(f64::from(super::params::SOLARIZE_THRESHOLD))
        .logical_or(&on.eq(0.0));
    x.where_self(&keep, &(x.neg() + 1.0))
}

/// `F.gaussian_blur(img, [taps, taps], [σ, σ])` with reflect padding, one σ per image: one
/// grouped convolution per axis over the whole batch.
pub fn gaussian_blur(x: &Tensor, sigmas: &[f32], taps: usize) -> Tensor {
    let (n, c, h, w) = x.size4().expect("[N,3,H,W]");
    let k = taps as i64;
    let pad = k / 2;
    let weights: Vec<f32> = sigmas
        .iter()
        .flat_map(|&s| {
            let g = gaussian_kernel(s, taps);
            (0..c).flat_map(move |_| g.clone())
        })
        .collect();
    let kern = Tensor::from_slice(&weights)
        .to(x.device())
        .to_kind(x.kind());
    let groups = n * c;
    let padded =
        x.pad([pad, pad, pad, pad], "reflect", None)
            .view([1, groups, h + 2 * pad, w + 2 * pad]);
    let y = padded.conv2d(
        &kern.view([groups, 1, 1, k]),
        None::<Tensor>,
        [1, 1],
        [0, 0],
        [1, 1],
        groups,
    );
    let y = y.conv2d(
        &kern.view([groups, 1, k, 1]),
        None::<Tensor>,
        [1, 1],
        [0, 0],
        [1, 1],
        groups,
    );
    y.view([n, c, h, w])
}

/// Runs `f` on the images `idx` of `x` and writes the results back in place of them.
pub fn on_subset(x: Tensor, idx: &[usize], f: impl FnOnce(&Tensor) -> Tensor) -> Tensor {
    if idx.is_empty() {
        return x;
    }
    let t = index_tensor(idx, x.device());
    let y = f(&x.index_select(0, &t));
    x.index_copy(0, &t, &y)
}
