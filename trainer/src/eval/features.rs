//! Frozen-backbone features of a decoded split under the eval transform (the stored images are
//! already resized and center-cropped: what is left is scaling to [0,1] and normalizing).

use std::ops::Range;

use models::Preprocess;
use models_tch::ResNet;
use tch::{Device, Kind, Tensor};

use crate::data::DecodedSplit;

/// uint8 `[N,3,H,W]` → normalized float on `device`.
pub fn eval_input(images: &Tensor, pre: &Preprocess, device: Device) -> Tensor {
    let stat = |v: &[f32; 3]| Tensor::from_slice(v).to(device).view([1, 3, 1, 1]);
    (images.to_device(device).to_kind(Kind::Float) / 255.0 - stat(&pre.mean)) / stat(&pre.std)
}

/// Pooled backbone features of `split`'s images in order, `batch` at a time on `device`, with
/// the range of images each batch holds.
pub fn batches<'a>(
    backbone: &'a ResNet,
    split: &'a DecodedSplit,
    pre: &'a Preprocess,
    device: Device,
    batch: usize,
) -> impl Iterator<Item = (Range<usize>, Tensor)> + 'a {
    split.batches_in_order(batch).map(move |(range, images)| {
        let x = eval_input(&images, pre, device);
        (range, tch::no_grad(|| backbone.forward_t(&x, false)))
    })
}

/// Pooled backbone features `[N, D]` of every image of `split`, in order, on `device`.
///
/// Each batch is copied into one tensor allocated before the pass. A tensor kept per batch and
/// joined at the end held every feature twice at the join, and each small kept block could land
/// on the heap above the batch's freed temporaries, where glibc cannot trim it.
pub fn extract(
    backbone: &ResNet,
    split: &DecodedSplit,
    pre: &Preprocess,
    device: Device,
    batch: usize,
    progress: bool,
    what: &str,
) -> Tensor {
    let bar = crate::runtime::progress::bar(split.n as u64, what, progress);
    let out = empty(backbone, split.n, device);
    for (range, feats) in batches(backbone, split, pre, device, batch) {
        rows(&out, &range).copy_(&feats);
        bar.inc(range.len() as u64);
    }
    bar.finish_and_clear();
    out
}

/// An uninitialised `[n, D]` float tensor for `backbone`'s features, to fill with [`rows`].
pub fn empty(backbone: &ResNet, n: usize, device: Device) -> Tensor {
    let dim = backbone.desc.feature_dim as i64;
    Tensor::empty([n as i64, dim], (Kind::Float, device))
}

/// The rows `range` of `t`, as a view to write into.
pub fn rows(t: &Tensor, range: &Range<usize>) -> Tensor {
    t.narrow(0, range.start as i64, range.len() as i64)
}

/// Labels of a labeled split as an int64 tensor on `device`.
pub fn labels(split: &DecodedSplit, device: Device) -> Tensor {
    let v: Vec<i64> = split
        .labels
        .iter()
        .map(|l| l.map_or(-1, |l| l as i64))
        .collect();
    Tensor::from_slice(&v).to(device)
}

/// Fraction of rows whose target is the top prediction, and among the top 5.
pub fn top1_top5(logits: &Tensor, targets: &Tensor) -> (f64, f64) {
    let n = targets.size()[0].max(1) as f64;
    let k = logits.size()[1].min(5);
    let (_, top) = logits.topk(k, 1, true, true);
    let hit = top.eq_tensor(&targets.unsqueeze(1));
    let top1 = hit.narrow(1, 0, 1).sum(Kind::Float).double_value(&[]) / n;
    let top5 = hit.any_dim(1, false).sum(Kind::Float).double_value(&[]) / n;
    (top1, top5)
}
