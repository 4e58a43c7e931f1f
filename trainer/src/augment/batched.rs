//! aug+ for a GPU: every view of a step (both views of every image) in one pass of a few hundred
//! batched ops, whatever the crops and the draws, from one upload of the step's parameters.
//!
//! - The parameters of all views are packed on the host into one float tensor (one upload,
//!   asynchronous from pinned memory on CUDA, no host synchronisation).
//! - RandomResizedCrop + flip is one einsum `W_y · x · W_xᵀ` with per-view interpolation matrices
//!   built on the device: the antialiased bilinear weights of torchvision's `resized_crop`
//!   (PIL's triangle filter, widened by the scale when the crop shrinks), which are plain bilinear
//!   for crops that grow. No per-image path for crops larger than the view.
//! - ColorJitter runs as its four rounds over the whole batch: in round r every image applies the
//!   adjustment its own order puts there. Brightness, contrast and saturation are one blend
//!   `x·f + w_mean·mean(gray) + w_gray·gray` with per-view factors (a view whose round is another
//!   adjustment gets f = 1 and zero weights, which leaves it exact), hue — which does not
//!   round-trip exactly — a `lerp` with weight 1 on the views that shift their hue in that round
//!   and 0 on the others (exact both ways).
//! - Grayscale through a `lerp` of the same kind; the blur as one grouped convolution per axis
//!   with per-view kernels computed on the device (the unblurred views get a unit impulse, also
//!   exact); solarize as one `where` over the batch.
//!
//! The CPU keeps its own path (`color_cpu`, `blur_cpu`): per-image host loops are faster there.
//! tests/augment_parity.rs holds this path to the per-op reference and to torchvision.

use std::cell::RefCell;

use tch::{Device, Kind, Tensor};

use super::ops::BLUR_KERNEL;
use super::ViewParams;

/// The pass's constants on the device, made once per (view size, source size): index ramps and
/// the grayscale weights (a per-step upload of them would be a host synchronisation each).
pub struct Consts {
    key: (i64, i64, i64),
    gray: Tensor,
    /// 0..size as `[1, size]`, and the flip's offset (size − 1 − 2i).
    out: Tensor,
    flip: Tensor,
    /// Source pixel indices 0..H and 0..W as `[1, 1, len]`.
    rows: Tensor,
    cols: Tensor,
    /// Blur taps −6..6 as `[1, taps]`, and the unit impulse.
    taps: Tensor,
    impulse: Tensor,
    hue: super::ops::HueConsts,
}

impl Consts {
    fn new(key: (i64, i64, i64), device: Device) -> Consts {
        let (s, h, w) = key;
        let opts = (Kind::Float, device);
        let out = Tensor::arange(s, opts).view([1, s]);
        let k = BLUR_KERNEL as i64;
        let taps = (Tensor::arange(k, opts) - (k - 1) as f64 / 2.0).view([1, k]);
        Consts {
            key,
            gray: Tensor::from_slice(&[0.2989f32, 0.587, 0.114])
                .to_device(device)
                .view([1, 3, 1, 1]),
            flip: out.neg() * 2.0 + (s - 1) as f64,
            out,
            rows: Tensor::arange(h, opts).view([1, 1, h]),
            cols: Tensor::arange(w, opts).view([1, 1, w]),
            impulse: taps.eq(0.0).to_kind(Kind::Float),
            taps,
            hue: super::ops::HueConsts::new(Kind::Float, device),
        }
    }
}

/// [`Consts`] kept between steps.
#[derive(Default)]
pub struct ConstCache(RefCell<Option<std::rc::Rc<Consts>>>);

impl ConstCache {
    fn get(&self, key: (i64, i64, i64), device: Device) -> std::rc::Rc<Consts> {
        let mut slot = self.0.borrow_mut();
        match slot.as_ref() {
            Some(c) if c.key == key => c.clone(),
            _ => slot
                .insert(std::rc::Rc::new(Consts::new(key, device)))
                .clone(),
        }
    }
}

/// Columns of the packed parameters, one row per view.
mod col {
    /// Crop box: top, left, height, width (source pixels); flip (0/1).
    pub const TOP: usize = 0;
    pub const LEFT: usize = 1;
    pub const HEIGHT: usize = 2;
    pub const WIDTH: usize = 3;
    pub const FLIP: usize = 4;
    pub const GRAY: usize = 5;
    /// Blur σ (0: not blurred).
    pub const SIGMA: usize = 6;
    /// Solarized (0/1).
    pub const SOLAR: usize = 7;
    /// Per jitter round r, from its start: the blend's factor f, its weights of the gray mean
    /// (1 − contrast on a contrast round) and of the gray image (1 − saturation), the hue mask
    /// (1 when the view shifts its hue in round r) and 6·shift.
    pub const ROUND: usize = 8;
    pub const FACTOR: usize = 0;
    pub const MEAN_WEIGHT: usize = 1;
    pub const GRAY_WEIGHT: usize = 2;
    pub const HUE: usize = 3;
    pub const HUE_SHIFT6: usize = 4;
    pub const PER_ROUND: usize = 5;
    pub const WIDTH_ALL: usize = ROUND + 4 * PER_ROUND;
}

/// One row of the packed parameters.
fn row(v: &ViewParams) -> [f32; col::WIDTH_ALL] {
    let mut r = [0f32; col::WIDTH_ALL];
    r[col::TOP] = v.crop.top as f32;
    r[col::LEFT] = v.crop.left as f32;
    r[col::HEIGHT] = v.crop.height as f32;
    r[col::WIDTH] = v.crop.width as f32;
    r[col::FLIP] = f32::from(u8::from(v.flip));
    r[col::GRAY] = f32::from(u8::from(v.grayscale));
    r[col::SIGMA] = v.blur_sigma.unwrap_or(0.0);
    r[col::SOLAR] = f32::from(u8::from(v.solarize));
    for round in 0..4 {
        let at = col::ROUND + round * col::PER_ROUND;
        r[at..at + col::PER_ROUND].copy_from_slice(&round_columns(v, round));
    }
    r
}

/// A view's columns of jitter round `round`: identity unless its order puts an adjustment there.
fn round_columns(v: &ViewParams, round: usize) -> [f32; col::PER_ROUND] {
    let Some(j) = v.jitter else {
        return [1.0, 0.0, 0.0, 0.0, 0.0];
    };
    match j.order[round] {
        0 => [j.brightness, 0.0, 0.0, 0.0, 0.0],
        1 => [j.contrast, 1.0 - j.contrast, 0.0, 0.0, 0.0],
        2 => [j.saturation, 0.0, 1.0 - j.saturation, 0.0, 0.0],
        _ => [1.0, 0.0, 0.0, 1.0, 6.0 * j.hue],
    }
}

/// What the pass needs of the draws beyond the tensor: which stages some view uses at all.
struct Uses {
    /// Per round: (brightness, contrast, saturation, hue) used by some view.
    rounds: [[bool; 4]; 4],
    gray: bool,
    blur: bool,
    solarize: bool,
}

fn uses(views: &[&ViewParams]) -> Uses {
    let mut u = Uses {
        rounds: [[false; 4]; 4],
        gray: false,
        blur: false,
        solarize: false,
    };
    for v in views {
        if let Some(j) = v.jitter {
            for (round, &op) in j.order.iter().enumerate() {
                u.rounds[round][op as usize] = true;
            }
        }
        u.gray |= v.grayscale;
        u.blur |= v.blur_sigma.is_some();
        u.solarize |= v.solarize;
    }
    u
}

/// The views `params` (one list per view of the step, each one entry per image) of `images`
/// (float `[n,3,H,W]` in [0,1] on the device), `size` pixels each, in [0,1], as one `[V,3,s,s]`
/// tensor, the views of list 0 first.
pub fn views(images: &Tensor, params: &[&[ViewParams]], size: u32, cache: &ConstCache) -> Tensor {
    let (_, _, h, w) = images.size4().expect("[N,3,H,W]");
    let device = images.device();
    let k = cache.get((size as i64, h, w), device);
    let all: Vec<&ViewParams> = params.iter().flat_map(|p| p.iter()).collect();
    let cols = upload(&all, device);
    let u = uses(&all);
    let source = match params.len() {
        1 => images.shallow_clone(),
        m => images.repeat([m as i64, 1, 1, 1]),
    };
    let x = resized_crop_flip(&source, &cols, &k);
    let x = colour_stage(x, &cols, &u, &k);
    let x = if u.blur {
        blur(&x, &cols[col::SIGMA], &k)
    } else {
        x
    };
    if u.solarize {
        super::ops::solarize_masked(&x, &cols[col::SOLAR])
    } else {
        x
    }
}

/// The colour stage alone (jitter in its rounds, then grayscale) of cropped views `x`
/// (`[V,3,H,W]` in [0,1]) with `params`, one per view: what the CPU path's host loops do.
pub fn colour(x: &Tensor, params: &[ViewParams], cache: &ConstCache) -> Tensor {
    let (_, _, h, w) = x.size4().expect("[V,3,H,W]");
    let all: Vec<&ViewParams> = params.iter().collect();
    let k = cache.get((h, h, w), x.device());
    colour_stage(
        x.shallow_clone(),
        &upload(&all, x.device()),
        &uses(&all),
        &k,
    )
}

/// The views' parameters packed column by column and sent to the device in one asynchronous
/// upload; each parameter comes back as a `[V,1,1,1]` tensor (broadcasting over pixels).
fn upload(all: &[&ViewParams], device: Device) -> Vec<Tensor> {
    let rows: Vec<[f32; col::WIDTH_ALL]> = all.iter().map(|v| row(v)).collect();
    let packed: Vec<f32> = (0..col::WIDTH_ALL)
        .flat_map(|c| rows.iter().map(move |r| r[c]))
        .collect();
    let host = Tensor::from_slice(&packed).view([col::WIDTH_ALL as i64, -1, 1, 1, 1]);
    crate::runtime::counters::upload_async(&host, device).unbind(0)
}

fn colour_stage(x: Tensor, cols: &[Tensor], u: &Uses, k: &Consts) -> Tensor {
    let x = jitter(x, cols, u, k);
    if u.gray {
        x.lerp_tensor(&gray(&x, k), &cols[col::GRAY])
    } else {
        x
    }
}

/// `rgb_to_grayscale` with torchvision's weights, keeping the channel axis: `[V,1,H,W]`.
fn gray(x: &Tensor, k: &Consts) -> Tensor {
    (x * &k.gray).sum_dim_intlist(&[1i64][..], true, Kind::Float)
}

/// Interpolation matrices `[V, out, len]` of one axis: row i of view v holds the weights of
/// source pixels 0..len (`source`) for output pixel i (`out`, flipped by `flip`), those of
/// torchvision's antialiased bilinear resize of the crop `[start, start + extent)`, zero
/// outside it: `_compute_indices_weights_aa`'s triangle filter of half-width max(scale, 1),
/// sampled at source pixel centres and normalised per row (for a crop that grows, plain
/// bilinear with the edge clamped).
fn axis_weights(
    (start, extent): (&Tensor, &Tensor),
    out: &Tensor,
    flip: Option<(&Tensor, &Tensor)>,
    source: &Tensor,
) -> Tensor {
    let size = out.size()[1] as f64;
    let i = match flip {
        Some((f, offset)) => out + f.view([-1, 1]) * offset,
        None => out.shallow_clone(),
    };
    let extent = extent.view([-1, 1]);
    let scale = &extent / size;
    let support = scale.clamp_min(1.0).unsqueeze(2);
    let center = ((i + 0.5) * &scale).unsqueeze(2);
    let j = source - start.view([-1, 1, 1]);
    let arg = (&j + 0.5 - center) / support;
    let inside = j.ge(0.0).logical_and(&j.lt_tensor(&extent.unsqueeze(2)));
    let w = (arg.abs().neg() + 1.0).clamp_min(0.0) * inside;
    &w / w.sum_dim_intlist(&[2i64][..], true, Kind::Float)
}

/// RandomResizedCrop + horizontal flip of every view as `W_y · x · W_xᵀ`.
fn resized_crop_flip(x: &Tensor, cols: &[Tensor], k: &Consts) -> Tensor {
    let c = |i: usize| cols[i].view([-1]);
    let wy = axis_weights((&c(col::TOP), &c(col::HEIGHT)), &k.out, None, &k.rows);
    let wx = axis_weights(
        (&c(col::LEFT), &c(col::WIDTH)),
        &k.out,
        Some((&c(col::FLIP), &k.flip)),
        &k.cols,
    );
    Tensor::einsum("vih,vchw,vjw->vcij", &[&wy, x, &wx], None::<i64>)
}

/// The four jitter rounds over the whole batch.
fn jitter(mut x: Tensor, cols: &[Tensor], u: &Uses, k: &Consts) -> Tensor {
    for (round, used) in u.rounds.iter().enumerate() {
        let c = |i: usize| &cols[col::ROUND + round * col::PER_ROUND + i];
        if used[0] || used[1] || used[2] {
            x = blend_round(&x, c, (used[1], used[2]), k);
        }
        if used[3] {
            let shifted = super::ops::hue_shifted(&x, c(col::HUE_SHIFT6), &k.hue);
            x = x.lerp_tensor(&shifted, c(col::HUE));
        }
    }
    x
}

/// Brightness, contrast and saturation of one round as `clamp(x·f + w_mean·mean(gray) +
/// w_gray·gray, 0, 1)` (torchvision's `_blend` for each, term for term where the other weights
/// are zero); `(contrast, saturation)`: whether some view needs the gray image at all.
fn blend_round<'a>(
    x: &Tensor,
    c: impl Fn(usize) -> &'a Tensor,
    (contrast, saturation): (bool, bool),
    k: &Consts,
) -> Tensor {
    let term = (contrast || saturation).then(|| {
        let g = gray(x, k);
        let mean = contrast
            .then(|| g.mean_dim(&[1i64, 2, 3][..], true, Kind::Float) * c(col::MEAN_WEIGHT));
        match (mean, saturation) {
            (Some(m), true) => m.addcmul(&g, c(col::GRAY_WEIGHT)),
            (Some(m), false) => m,
            (None, _) => g * c(col::GRAY_WEIGHT),
        }
    });
    match term {
        Some(t) => t.addcmul(x, c(col::FACTOR)),
        None => x * c(col::FACTOR),
    }
    .clamp(0.0, 1.0)
}

/// GaussianBlur with per-view σ (0: a unit impulse, which leaves the view exact) as one grouped
/// convolution per axis with reflect padding; kernels as torchvision's `_get_gaussian_kernel1d`.
fn blur(x: &Tensor, sigma: &Tensor, k: &Consts) -> Tensor {
    let (v, c, h, w) = x.size4().expect("[V,3,H,W]");
    let taps = k.taps.size()[1];
    let sigma = sigma.view([-1, 1]);
    let pdf = ((&k.taps / sigma.clamp_min(1e-6)).square() * -0.5).exp();
    let gauss = &pdf / pdf.sum_dim_intlist(&[1i64][..], true, Kind::Float);
    let kern = gauss
        .where_self(&sigma.gt(0.0), &k.impulse)
        .unsqueeze(1)
        .expand([v, c, taps], false)
        .reshape([v * c, 1, 1, taps]);
    let pad = taps / 2;
    let padded =
        x.pad([pad, pad, pad, pad], "reflect", None)
            .view([1, v * c, h + 2 * pad, w + 2 * pad]);
    let y = padded.conv2d(&kern, None::<Tensor>, [1, 1], [0, 0], [1, 1], v * c);
    let y = y.conv2d(
        &kern.view([v * c, 1, taps, 1]),
        None::<Tensor>,
        [1, 1],
        [0, 0],
        [1, 1],
        v * c,
    );
    y.view([v, c, h, w])
}
