//! The contrastive strategy: per-image InfoNCE of two aug+ views against a fixed sample of the
//! pool.

use anyhow::Result;
use models::Preprocess;
use tch::{Device, Kind, Tensor};

use super::uncertainty::host;
use super::LabelRequestConfig;
use crate::augment::{AugConfig, Augmenter};
use crate::data::DecodedSplit;
use crate::eval::features;
use crate::nn::encoder::Backbone;
use crate::nn::loss::{info_nce_logits, normalize};
use crate::runtime::rng::{stream, Purpose};

/// The contrastive strategy's negatives: a fixed random sample of the pool (their indices and
/// normalized eval features), forwarded on their own so the pool's features are never all held.
fn negatives(
    backbone: &Backbone,
    split: &DecodedSplit,
    c: &LabelRequestConfig,
    device: Device,
) -> (Tensor, Tensor) {
    let s = &c.contrastive;
    let m = s.negatives.min(split.n - 1).max(1);
    let picked = crate::runtime::rng::permutation(&mut stream(s.seed, Purpose::Sample, 0), split.n);
    let picked = &picked[..m];
    let pre = Preprocess::default();
    let feats = features::empty(&backbone.net, m, device);
    let batch = c.batch_size.max(1);
    tch::no_grad(|| {
        for (k, chunk) in picked.chunks(batch).enumerate() {
            let idx: Vec<usize> = chunk.iter().map(|&i| i as usize).collect();
            let x = features::eval_input(&split.batch(&idx), &pre, device);
            let at = k * batch..k * batch + chunk.len();
            features::rows(&feats, &at).copy_(&backbone.net.forward_t(&x, false));
        }
    });
    let feats = normalize(&feats);
    split.release_pages();
    (Tensor::from_slice(picked).to(device), feats)
}

/// Per-image InfoNCE of two aug+ views: the positive is the other view, the negatives a fixed
/// random sample of other images' eval features (an image is never its own negative).
///
/// Each batch's losses are written into one tensor sized for the pool up front and brought to
/// the host once. Kept as one small tensor per batch, they made the process grow by ≈ 13 KB per pool image (981 → 1,635 MB
/// anonymous from 16,000 to 64,000 images), most likely because each long-lived block sat on the
/// heap above the batch's freed megabyte-sized temporaries, where glibc cannot trim it.
pub(super) fn contrastive_loss(
    backbone: &Backbone,
    split: &DecodedSplit,
    c: &LabelRequestConfig,
    device: Device,
) -> Result<Vec<f64>> {
    let (n, s, size) = (split.n, &c.contrastive, c.data.size);
    let (neg_idx, negs) = negatives(backbone, split, c, device);
    let aug = Augmenter::new(AugConfig::mocov2(size), &Preprocess::default(), device);
    let bar = crate::runtime::progress::bar(n as u64, "contrastive scores", c.progress);
    let out = Tensor::empty([n as i64], (Kind::Float, device));
    tch::no_grad(|| {
        for (i, (chunk, images)) in split.batches_in_order(c.batch_size).enumerate() {
            let images = images.to_device(device);
            let mut rng = stream(s.seed, Purpose::Augment, i as u64);
            let b = chunk.len();
            let v1 = aug.views(&images, &aug.draw(&mut rng, 0, b, (size, size)));
            let v2 = aug.views(&images, &aug.draw(&mut rng, 1, b, (size, size)));
            let q = normalize(&backbone.net.forward_t(&v1, false));
            let k = normalize(&backbone.net.forward_t(&v2, false));
            let logits = info_nce_logits(&q, &k, &negs.transpose(0, 1), s.temperature);
            // Mask each image's own column when it is among the negatives.
            let own = Tensor::from_slice(&chunk.clone().map(|i| i as i64).collect::<Vec<_>>())
                .to(device)
                .unsqueeze(1)
                .eq_tensor(&neg_idx.unsqueeze(0));
            let own = Tensor::cat(&[own.zeros_like().narrow(1, 0, 1), own], 1);
            let logits = logits.masked_fill(&own, f64::NEG_INFINITY);
            features::rows(&out, &chunk).copy_(&-logits.log_softmax(1, Kind::Float).select(1, 0));
            bar.inc(b as u64);
        }
    });
    bar.finish_and_clear();
    host(out)
}
