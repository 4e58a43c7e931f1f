//! The eval transform: resize the shorter side, center-crop, scale to [0,1] (CHW f32).
//!
//! The resize is Pillow's antialiased bilinear (`Image.resize(..., BILINEAR)`, which torchvision's
//! `Resize` calls on PIL images), reproduced with Pillow's own fixed-point arithmetic so the
//! Python baseline and this code agree to the bit. Written here because the `image` crate's
//! triangle filter centres and rounds differently.

use image::RgbImage;
use models::Preprocess;

/// Pillow: `PRECISION_BITS = 32 - 8 - 2` for 8-bit resampling.
const PRECISION_BITS: u32 = 22;

/// Per output pixel: first input index and fixed-point weights (Pillow's `precompute_coeffs`
/// + `normalize_coeffs_8bpc` for the bilinear filter, support 1).
fn coefficients(in_size: u32, out_size: u32) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax)
                .map(|x| {
                    let t = ((x as f64 - center + 0.5) * ss).abs();
                    if t < 1.0 {
                        1.0 - t
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = w.iter().sum();
            let k = w
                .iter()
                .map(|v| {
                    let v = if total != 0.0 { v / total } else { 0.0 };
                    let f = v * (1u64 << PRECISION_BITS) as f64;
                    if f < 0.0 {
                        (f - 0.5) as i32
                    } else {
                        (f + 0.5) as i32
                    }
                })
                .collect();
            (xmin, k)
        })
        .collect()
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

fn resample_horizontal(img: &RgbImage, out_w: u32) -> RgbImage {
    let coeffs = coefficients(img.width(), out_w);
    let mut out = RgbImage::new(out_w, img.height());
    for y in 0..img.height() {
        for (x, (xmin, k)) in coeffs.iter().enumerate() {
            let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
            for (i, &w) in k.iter().enumerate() {
                let p = img.get_pixel((xmin + i) as u32, y).0;
                for c in 0..3 {
                    acc[c] += p[c] as i64 * w as i64;
                }
            }
            out.put_pixel(x as u32, y, image::Rgb(acc.map(clip8)));
        }
    }
    out
}

fn resample_vertical(img: &RgbImage, out_h: u32) -> RgbImage {
    let coeffs = coefficients(img.height(), out_h);
    let mut out = RgbImage::new(img.width(), out_h);
    for (y, (ymin, k)) in coeffs.iter().enumerate() {
        for x in 0..img.width() {
            let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
            for (i, &w) in k.iter().enumerate() {
                let p = img.get_pixel(x, (ymin + i) as u32).0;
                for c in 0..3 {
                    acc[c] += p[c] as i64 * w as i64;
                }
            }
            out.put_pixel(x, y as u32, image::Rgb(acc.map(clip8)));
        }
    }
    out
}

/// Pillow's `resize((w, h), BILINEAR)`: horizontal pass first, each pass rounded to 8 bits.
pub fn resize_bilinear(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let mut cur = if w != img.width() {
        resample_horizontal(img, w)
    } else {
        img.clone()
    };
    if h != cur.height() {
        cur = resample_vertical(&cur, h);
    }
    cur
}

/// torchvision `Resize(size)` with an int: the shorter side becomes `size`, the longer
/// `int(size * long / short)`.
pub fn resize_shorter(img: RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if w.min(h) == size {
        return img;
    }
    let (nw, nh) = if w <= h {
        (size, (size as u64 * h as u64 / w as u64) as u32)
    } else {
        ((size as u64 * w as u64 / h as u64) as u32, size)
    };
    resize_bilinear(&img, nw, nh)
}

/// torchvision `CenterCrop`: offsets `int(round((side - crop) / 2))` with Python's round-half-even
/// (a 97-wide image is cropped from x = 0, not 1). Images smaller than the crop
/// are zero-padded first, as torchvision does.
pub fn center_crop(img: RgbImage, crop: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if (w, h) == (crop, crop) {
        return img; // the common 96×96 case: no copy
    }
    let pad_w = crop.saturating_sub(w);
    let pad_h = crop.saturating_sub(h);
    let img = if pad_w > 0 || pad_h > 0 {
        let mut padded = RgbImage::new(w + pad_w, h + pad_h);
        image::imageops::replace(&mut padded, &img, (pad_w / 2) as i64, (pad_h / 2) as i64);
        padded
    } else {
        img
    };
    let (w, h) = img.dimensions();
    let left = ((w - crop) as f64 / 2.0).round_ties_even() as u32;
    let top = ((h - crop) as f64 / 2.0).round_ties_even() as u32;
    image::imageops::crop_imm(&img, left, top, crop, crop).to_image()
}

/// Resize + center crop, still 8-bit.
pub fn eval_crop(img: RgbImage, p: &Preprocess) -> RgbImage {
    center_crop(resize_shorter(img, p.resize), p.crop)
}

/// `ToTensor` on an 8-bit RGB image: CHW f32 in [0,1], appended to `out`.
pub fn to_chw_f32(img: &RgbImage, out: &mut Vec<f32>) {
    let (w, h) = img.dimensions();
    let n = (w * h) as usize;
    let start = out.len();
    out.resize(start + 3 * n, 0.0);
    let raw = img.as_raw();
    for i in 0..n {
        for c in 0..3 {
            out[start + c * n + i] = raw[3 * i + c] as f32 / 255.0;
        }
    }
}

/// The full eval transform (normalisation excluded: it lives inside the ONNX graph).
pub fn eval_tensor(img: RgbImage, p: &Preprocess) -> Vec<f32> {
    let mut out = Vec::with_capacity((3 * p.crop * p.crop) as usize);
    to_chw_f32(&eval_crop(img, p), &mut out);
    out
}
