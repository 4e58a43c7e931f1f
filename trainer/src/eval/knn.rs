//! The kNN monitor of InstDisc/MoCo: cosine similarity of l2-normalized pooled features, the k
//! nearest bank images vote with weight exp(sim/T); `moco-train knn` and the in-training monitor.

use anyhow::{bail, Result};
use datasets::layout::Split;
use tch::{Kind, Tensor};

use crate::config::{Compute, DataSource};
use crate::nn::encoder::EncoderSource;

use crate::eval::features::top1_top5;

pub struct KnnResult {
    pub top1: f64,
    pub top5: f64,
    /// The predicted class of every query, in order.
    pub predictions: Vec<i64>,
}

/// A labeled feature bank for weighted kNN: l2-normalized once, then queried in batches.
pub struct KnnBank {
    features: Tensor,
    labels: Tensor,
    classes: i64,
}

impl KnnBank {
    /// `features` `[B, D]` (normalized here), `labels` `[B]` in `0..classes`.
    pub fn new(features: &Tensor, labels: &Tensor, classes: usize) -> KnnBank {
        KnnBank {
            features: crate::nn::loss::normalize(features),
            labels: labels.shallow_clone(),
            classes: classes as i64,
        }
    }

    /// Class votes `[Q, C]`: the `k` most similar bank rows (cosine) vote for their label with
    /// weight exp(sim/T). The votes are scattered into `[Q, C]` directly; a one-hot `[Q, k, C]`
    /// would be 655 MB per 1,024 queries at k = 200 over 800 classes.
    pub fn votes(&self, queries: &Tensor, k: usize, t: f64) -> Tensor {
        let k = (k as i64).min(self.features.size()[0]);
        let queries = crate::nn::loss::normalize(queries);
        let mut scores = Vec::new();
        tch::no_grad(|| {
            for q in queries.split(1024, 0) {
                let sim = q.mm(&self.features.transpose(0, 1));
                let (w, idx) = sim.topk(k, 1, true, true);
                let labels = self
                    .labels
                    .index_select(0, &idx.flatten(0, -1))
                    .view([-1, k]);
                let weights = (w / t).exp();
                let zeros = Tensor::zeros([q.size()[0], self.classes], (Kind::Float, q.device()));
                scores.push(zeros.scatter_add(1, &labels, &weights));
            }
        });
        Tensor::cat(&scores, 0)
    }
}

/// Weighted kNN over `bank` (features `[B,D]`, labels `[B]`) for `queries` `[Q,D]`.
pub fn classify(
    bank: &Tensor,
    bank_labels: &Tensor,
    queries: &Tensor,
    query_labels: &Tensor,
    classes: usize,
    k: usize,
    t: f64,
) -> Result<KnnResult> {
    if bank_labels.size()[0] == 0 || queries.size()[0] == 0 {
        bail!("kNN needs a non-empty bank and query set");
    }
    let scores = KnnBank::new(bank, bank_labels, classes).votes(queries, k, t);
    let (top1, top5) = top1_top5(&scores, query_labels);
    let predictions = Vec::<i64>::try_from(scores.argmax(1, false).to_device(tch::Device::Cpu))?;
    Ok(KnnResult {
        top1,
        top5,
        predictions,
    })
}

/// Eval-transform features of a labeled bank and query split, then `classify` with (k, T):
/// `moco-train knn` and pretraining's monitor.
pub fn evaluate(
    backbone: &models_tch::ResNet,
    bank: &crate::data::DecodedSplit,
    query: &crate::data::DecodedSplit,
    (k, t): (usize, f64),
    device: tch::Device,
    batch: usize,
    progress: bool,
) -> Result<KnnResult> {
    use crate::eval::features::{extract, labels};
    let pre = models::Preprocess::default();
    let fb = extract(
        backbone,
        bank,
        &pre,
        device,
        batch,
        progress,
        "bank features",
    );
    let fq = extract(
        backbone,
        query,
        &pre,
        device,
        batch,
        progress,
        "query features",
    );
    classify(
        &fb,
        &labels(bank, device),
        &fq,
        &labels(query, device),
        bank.classes.len(),
        k,
        t,
    )
}

/// `moco-train knn`, every number decided.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KnnConfig {
    pub data: DataSource,
    pub compute: Compute,
    pub encoder: EncoderSource,
    pub bank: Split,
    pub query: Split,
    pub k: usize,
    /// Vote weight exp(similarity / t).
    pub t: f64,
    /// Images per forward pass.
    pub batch_size: usize,
    pub progress: bool,
}

pub fn run(c: &KnnConfig) -> Result<serde_json::Value> {
    let device = c.compute.setup()?;
    if c.k == 0 {
        bail!("--k must be at least 1");
    }
    let backbone = c.encoder.load(device)?;
    let open = |s| c.data.open(s, c.progress);
    let (bank, query) = (open(c.bank)?, open(c.query)?);
    for (s, flag) in [(&bank, "--bank-split"), (&query, "--query-split")] {
        if !s.is_labeled() {
            bail!(
                "{flag} {}: {} has no labels; kNN needs a labeled bank and query split",
                s.labels.len(),
                c.data.root.display()
            );
        }
    }
    let r = evaluate(
        &backbone.net,
        &bank,
        &query,
        (c.k, c.t),
        device,
        c.batch_size,
        c.progress,
    )?;
    eprintln!(
        "knn: k={} T={} top-1 {:.2} % top-5 {:.2} % ({} queries, bank {})",
        c.k,
        c.t,
        100.0 * r.top1,
        100.0 * r.top5,
        query.n,
        bank.n
    );
    Ok(serde_json::json!({
        "top1": r.top1, "top5": r.top5, "n": query.n, "bank": bank.n, "k": c.k, "t": c.t,
        "arch": backbone.arch.name(),
        "encoder": c.encoder.path().map(|p| p.display().to_string()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The votes as the InstDisc/MoCo monitor writes them: a one-hot `[Q, k, C]` weighted and
    /// summed over k.
    fn one_hot_votes(bank: &Tensor, labels: &Tensor, q: &Tensor, c: i64, k: i64, t: f64) -> Tensor {
        let sim =
            crate::nn::loss::normalize(q).mm(&crate::nn::loss::normalize(bank).transpose(0, 1));
        let (w, idx) = sim.topk(k, 1, true, true);
        let l = labels.index_select(0, &idx.flatten(0, -1)).view([-1, k]);
        let one_hot = Tensor::zeros([q.size()[0], k, c], (Kind::Float, q.device())).scatter_value(
            2,
            &l.unsqueeze(2),
            1.0,
        );
        (one_hot * (w / t).exp().unsqueeze(2)).sum_dim_intlist(&[1i64][..], false, Kind::Float)
    }

    #[test]
    fn scattered_votes_equal_the_one_hot_sum() {
        tch::manual_seed(3);
        let (c, k) = (300, 20);
        let bank = Tensor::randn([500, 16], (Kind::Float, tch::Device::Cpu));
        let labels = Tensor::randint(c, [500], (Kind::Int64, tch::Device::Cpu));
        let q = Tensor::randn([1100, 16], (Kind::Float, tch::Device::Cpu));
        let got = KnnBank::new(&bank, &labels, c as usize).votes(&q, k as usize, 0.1);
        let want = one_hot_votes(&bank, &labels, &q, c, k, 0.1);
        // exp(sim / 0.1) ≤ e^10: fp32 sums of 20 such terms in another order differ by a few ulp.
        let rel = ((&got - &want).abs().max() / want.abs().max()).double_value(&[]);
        assert!(rel < 1e-6, "relative difference {rel}");
        assert_eq!(got.argmax(1, false), want.argmax(1, false));
    }
}
