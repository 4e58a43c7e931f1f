//! Where the pool's class probabilities come from (a classifier, or kNN votes of the labeled
//! split) and the uncertainty scores drawn from them in one pass: entropy and margin.

use anyhow::{bail, Result};
use models::Preprocess;
use tch::{Device, Kind, Tensor};

use super::{LabelRequestConfig, Strategy};
use crate::data::DecodedSplit;
use crate::eval::features;
use crate::nn::encoder::Backbone;
use crate::nn::loss::normalize;

/// A linear head read back from `moco-train linear`'s output, checked against the encoder and
/// the dataset.
pub(super) fn load_classifier(
    path: &std::path::Path,
    feature_dim: usize,
    classes: &[String],
    device: Device,
) -> Result<(Tensor, Tensor)> {
    let c = models::ClassifierFile::load(path, feature_dim)
        .map_err(|e| anyhow::anyhow!("--classifier {e}"))?;
    let file = path.display();
    if c.head.fc.out_features != classes.len() {
        bail!(
            "--classifier {file}: {} classes, the dataset has {}",
            c.head.fc.out_features,
            classes.len()
        );
    }
    if let Some(names) = c.class_names.filter(|n| n != classes) {
        bail!("--classifier {file}: its classes differ from the dataset's ({names:?})");
    }
    let t = |name: &str| models_tch::convert::data_to_tensor(c.map.get(name).unwrap()).to(device);
    Ok((t("fc.weight"), t("fc.bias")))
}

/// Entropy of each row of a probability matrix.
fn entropy(p: &Tensor) -> Tensor {
    -(p * p.clamp_min(1e-12).log()).sum_dim_intlist(&[1i64][..], false, Kind::Float)
}

/// Where the pool's class probabilities come from.
pub(super) enum Prober {
    /// A linear classifier's softmax.
    Head(Tensor, Tensor),
    /// Normalized kNN votes of the labeled split.
    Knn(crate::eval::knn::KnnBank, usize, f64),
}

impl Prober {
    pub(super) fn probabilities(&self, feats: &Tensor) -> Tensor {
        match self {
            Prober::Head(w, b) => feats.linear(w, Some(b)).softmax(1, Kind::Float),
            Prober::Knn(bank, k, t) => {
                let votes = bank.votes(feats, *k, *t);
                &votes / votes.sum_dim_intlist(&[1i64][..], true, Kind::Float)
            }
        }
    }

    pub(super) fn source(&self) -> &'static str {
        match self {
            Prober::Head(..) => "the classifier",
            Prober::Knn(..) => "kNN on the labeled split",
        }
    }
}

/// What the strategies need of each pool image, computed one batch at a time: the pool's class
/// probabilities (`[N, C]`, 1.6 GB for 512,000 images over 800 classes) are never held whole.
#[derive(Default)]
pub(super) struct PoolScores {
    pub(super) pred: Vec<i64>,
    pub(super) conf: Vec<f64>,
    pub(super) entropy: Vec<f64>,
    /// Top-1 minus top-2 probability (the top-1 probability with one class).
    pub(super) margin: Vec<f64>,
    /// Normalized eval features `[N, D]`, kept only for k-center: allocated whole before the
    /// pass (1 GB at 512,000 images), so they are never held twice as parts and their join.
    pub(super) features: Option<Tensor>,
}

pub(super) fn host(t: Tensor) -> Result<Vec<f64>> {
    Ok(Vec::<f64>::try_from(
        t.to_kind(Kind::Double).to_device(Device::Cpu),
    )?)
}

impl PoolScores {
    fn add(&mut self, probs: &Tensor) -> Result<()> {
        let classes = probs.size()[1];
        let top2 = probs.topk(2.min(classes), 1, true, true).0;
        let top1 = top2.select(1, 0);
        let gap = if classes > 1 {
            &top1 - top2.select(1, 1)
        } else {
            top1.shallow_clone()
        };
        self.conf.extend(host(top1)?);
        self.margin.extend(host(gap)?);
        self.entropy.extend(host(entropy(probs))?);
        self.pred.extend(Vec::<i64>::try_from(
            probs.argmax(1, false).to_device(Device::Cpu),
        )?);
        Ok(())
    }
}

/// One pass over the pool: features, probabilities, and the per-image scores.
pub(super) fn score_pool(
    c: &LabelRequestConfig,
    backbone: &Backbone,
    pool: &DecodedSplit,
    prober: &Prober,
    device: Device,
) -> Result<PoolScores> {
    let pre = Preprocess::default();
    let bar = crate::runtime::progress::bar(pool.n as u64, "pool features", c.progress);
    let mut scores = PoolScores::default();
    if c.strategy == Strategy::Kcenter {
        scores.features = Some(features::empty(&backbone.net, pool.n, device));
    }
    for (range, feats) in features::batches(&backbone.net, pool, &pre, device, c.batch_size) {
        scores.add(&tch::no_grad(|| prober.probabilities(&feats)))?;
        if let Some(all) = &scores.features {
            features::rows(all, &range).copy_(&normalize(&feats));
        }
        bar.inc(range.len() as u64);
    }
    bar.finish_and_clear();
    Ok(scores)
}
