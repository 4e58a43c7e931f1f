//! `moco-train label-request`: which unlabeled images to send for labeling. Each strategy ranks
//! the whole unlabeled split from frozen features in one pass (the contrastive score is one
//! forward of two aug+ views per image, not a pretraining run per candidate). The request is a
//! ranked CSV; its predicted class balance is printed, because an unbalanced request starves
//! the classes it leaves out.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use datasets::layout::Split;
use models::Preprocess;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::augment::{AugConfig, Augmenter};
use crate::config::{Compute, DataSource};
use crate::data::DecodedSplit;
use crate::encoder::{Backbone, EncoderSource};
use crate::features;
use crate::loss::{info_nce_logits, normalize};
use crate::rng::{stream, Purpose};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Highest predictive entropy first.
    Entropy,
    /// Smallest gap between the two most likely classes first.
    Margin,
    /// Highest per-image InfoNCE loss between two aug+ views (negatives: other unlabeled images).
    Contrastive,
    /// Greedy k-center on l2-normalized features, starting from the labeled set: each pick is
    /// the image farthest from everything labeled or already picked (diversity).
    Kcenter,
    /// Equal quotas per predicted class, most uncertain (entropy) first within each class.
    Balanced,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Entropy => "entropy",
            Strategy::Margin => "margin",
            Strategy::Contrastive => "contrastive",
            Strategy::Kcenter => "kcenter",
            Strategy::Balanced => "balanced",
        }
    }
}

/// The contrastive strategy's score: per-image InfoNCE of two aug+ views against a fixed
/// random sample of the pool's other images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContrastiveScore {
    pub temperature: f64,
    /// How many other images serve as negatives.
    pub negatives: usize,
    /// Seeds the views and the choice of negatives.
    pub seed: u64,
}

/// `moco-train label-request`, every number decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelRequestConfig {
    pub data: DataSource,
    pub compute: Compute,
    pub encoder: EncoderSource,
    /// A linear classifier; without it, probabilities from kNN votes of the labeled split.
    pub classifier: Option<PathBuf>,
    /// The split to choose from.
    pub pool: Split,
    /// Class names, kNN votes and k-center's starting centers.
    pub labeled: Split,
    pub budget: usize,
    pub strategy: Strategy,
    /// The ranked request CSV.
    pub out: PathBuf,
    /// kNN probabilities: neighbours that vote, and the vote weight exp(similarity / t).
    pub k: usize,
    pub t: f64,
    pub contrastive: ContrastiveScore,
    /// Images per forward pass.
    pub batch_size: usize,
    pub progress: bool,
}

/// The header of the request CSV (merge-labels reads it back).
pub const HEADER: &str = "rank,index,image,score,predicted,confidence";

/// A linear head read back from `moco-train linear`'s output, checked against the encoder and
/// the dataset.
fn load_classifier(
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
    let picked = crate::rng::permutation(&mut stream(s.seed, Purpose::Sample, 0), split.n);
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
fn contrastive_loss(
    backbone: &Backbone,
    split: &DecodedSplit,
    c: &LabelRequestConfig,
    device: Device,
) -> Result<Vec<f64>> {
    let (n, s, size) = (split.n, &c.contrastive, c.data.size);
    let (neg_idx, negs) = negatives(backbone, split, c, device);
    let aug = Augmenter::new(AugConfig::mocov2(size), &Preprocess::default(), device);
    let bar = crate::progress::bar(n as u64, "contrastive scores", c.progress);
    let out = Tensor::empty([n as i64], (Kind::Float, device));
    tch::no_grad(|| {
        for (i, (chunk, images)) in split.batches_in_order(c.batch_size).enumerate() {
            let images = images.to_device(device);
            let mut rng = stream(s.seed, Purpose::Augment, i as u64);
            let b = chunk.len();
            let v1 = aug.views(&images, &aug.draw(&mut rng, b, size, size));
            let v2 = aug.views(&images, &aug.draw(&mut rng, b, size, size));
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

/// Greedy farthest-first selection: `budget` rows of `f` (l2-normalized), starting from
/// `centers`. Returns the picks in order with their distance (1 − cosine) to the nearest center
/// when picked. Each pick reads every row once: O(N · budget), the one strategy that must hold
/// every pool feature.
fn k_center(f: &Tensor, centers: &Tensor, budget: usize, progress: bool) -> Vec<(usize, f64)> {
    let c = normalize(centers);
    let mut dist = tch::no_grad(|| {
        let parts: Vec<Tensor> = f
            .split(4096, 0)
            .iter()
            .map(|chunk| {
                let sim = chunk.mm(&c.transpose(0, 1));
                1.0 - sim.amax(&[1i64][..], false)
            })
            .collect();
        Tensor::cat(&parts, 0)
    });
    let mut picks = Vec::with_capacity(budget);
    let bar = crate::progress::bar(budget as u64, "k-center picks", progress);
    for _ in 0..budget {
        bar.inc(1);
        let i = dist.argmax(0, false).int64_value(&[]);
        let d = dist.double_value(&[i]);
        picks.push((i as usize, d));
        let new = tch::no_grad(|| 1.0 - f.mv(&f.get(i)));
        dist = dist.minimum(&new);
        // A picked image is at distance 0 from itself; keep it from being picked again when
        // every remaining distance is 0 (duplicates).
        let _ = dist.get(i).fill_(-1.0);
    }
    bar.finish_and_clear();
    picks
}

/// Equal quotas per predicted class (the remainder to the classes with most candidates), by
/// descending `score` within each class; quotas a class cannot fill go to the best of the rest.
fn balanced(pred: &[i64], score: &[f64], classes: usize, budget: usize) -> Vec<usize> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &c) in pred.iter().enumerate() {
        by_class[c as usize].push(i);
    }
    for v in &mut by_class {
        v.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
    }
    let mut picks = Vec::with_capacity(budget);
    // Round-robin over classes: rank r of every class before rank r+1 of any.
    let mut r = 0;
    while picks.len() < budget && by_class.iter().any(|v| v.len() > r) {
        let mut round: Vec<usize> = by_class.iter().filter_map(|v| v.get(r).copied()).collect();
        round.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
        for i in round {
            if picks.len() < budget {
                picks.push(i);
            }
        }
        r += 1;
    }
    picks
}

impl LabelRequestConfig {
    fn check(&self) -> Result<()> {
        if self.budget == 0 {
            bail!("--budget must be at least 1");
        }
        if self.k == 0 || self.batch_size == 0 || self.contrastive.negatives == 0 {
            bail!("--k, --batch-size and --negatives must be at least 1");
        }
        atomic_io::check_dir_writable(&atomic_io::parent_dir(&self.out))
            .with_context(|| format!("--out {}: not writable", self.out.display()))
    }
}

/// The pool and the labeled split.
fn open_splits(c: &LabelRequestConfig) -> Result<(DecodedSplit, DecodedSplit)> {
    let open = |s: Split| c.data.open(s, c.progress);
    let (pool, labeled) = (open(c.pool)?, open(c.labeled)?);
    if !labeled.is_labeled() {
        bail!(
            "--labeled-split {}: {} has no labels",
            c.labeled.name(),
            c.data.root.display()
        );
    }
    if c.budget > pool.n {
        bail!(
            "--budget {}: the `{}` split holds only {} images",
            c.budget,
            c.pool.name(),
            pool.n
        );
    }
    Ok((pool, labeled))
}

/// Where the pool's class probabilities come from.
enum Prober {
    /// A linear classifier's softmax.
    Head(Tensor, Tensor),
    /// Normalized kNN votes of the labeled split.
    Knn(crate::knn::KnnBank, usize, f64),
}

impl Prober {
    fn probabilities(&self, feats: &Tensor) -> Tensor {
        match self {
            Prober::Head(w, b) => feats.linear(w, Some(b)).softmax(1, Kind::Float),
            Prober::Knn(bank, k, t) => {
                let votes = bank.votes(feats, *k, *t);
                &votes / votes.sum_dim_intlist(&[1i64][..], true, Kind::Float)
            }
        }
    }

    fn source(&self) -> &'static str {
        match self {
            Prober::Head(..) => "the classifier",
            Prober::Knn(..) => "kNN on the labeled split",
        }
    }
}

/// What the strategies need of each pool image, computed one batch at a time: the pool's class
/// probabilities (`[N, C]`, 1.6 GB for 512,000 images over 800 classes) are never held whole.
#[derive(Default)]
struct PoolScores {
    pred: Vec<i64>,
    conf: Vec<f64>,
    entropy: Vec<f64>,
    /// Top-1 minus top-2 probability (the top-1 probability with one class).
    margin: Vec<f64>,
    /// Normalized eval features `[N, D]`, kept only for k-center: allocated whole before the
    /// pass (1 GB at 512,000 images), so they are never held twice as parts and their join.
    features: Option<Tensor>,
}

fn host(t: Tensor) -> Result<Vec<f64>> {
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
fn score_pool(
    c: &LabelRequestConfig,
    backbone: &Backbone,
    pool: &DecodedSplit,
    prober: &Prober,
    device: Device,
) -> Result<PoolScores> {
    let pre = Preprocess::default();
    let bar = crate::progress::bar(pool.n as u64, "pool features", c.progress);
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

/// The first `budget` of the pool by descending score (ties: lower index first): a partial
/// selection, then a sort of the budget only.
fn ranked_by(score: &[f64], budget: usize) -> Vec<(usize, f64)> {
    let by_score = |&x: &usize, &y: &usize| score[y].total_cmp(&score[x]).then(x.cmp(&y));
    let mut order: Vec<usize> = (0..score.len()).collect();
    let budget = budget.min(order.len());
    if budget < order.len() {
        order.select_nth_unstable_by(budget, by_score);
        order.truncate(budget);
    }
    order.sort_by(by_score);
    order.into_iter().map(|i| (i, score[i])).collect()
}

/// The request: (pool index, score) in the order to label.
fn pick(
    c: &LabelRequestConfig,
    scores: &PoolScores,
    labeled_features: Option<&Tensor>,
    (backbone, pool): (&Backbone, &DecodedSplit),
    classes: usize,
    device: Device,
) -> Result<Vec<(usize, f64)>> {
    Ok(match c.strategy {
        Strategy::Entropy => ranked_by(&scores.entropy, c.budget),
        // Higher score = requested first: the negated margin.
        Strategy::Margin => {
            let neg: Vec<f64> = scores.margin.iter().map(|m| -m).collect();
            ranked_by(&neg, c.budget)
        }
        Strategy::Contrastive => ranked_by(&contrastive_loss(backbone, pool, c, device)?, c.budget),
        Strategy::Kcenter => k_center(
            scores.features.as_ref().expect("kept for k-center"),
            labeled_features.expect("computed for k-center"),
            c.budget,
            c.progress,
        ),
        Strategy::Balanced => balanced(&scores.pred, &scores.entropy, classes, c.budget)
            .into_iter()
            .map(|i| (i, scores.entropy[i]))
            .collect(),
    })
}

/// The ranked CSV; returns the request's count per predicted class.
fn write_request(
    c: &LabelRequestConfig,
    picks: &[(usize, f64)],
    (pred, conf): (&[i64], &[f64]),
    pool: &DecodedSplit,
    classes: &[String],
) -> Result<Vec<usize>> {
    let mut csv = format!("{HEADER}\n");
    let mut counts = vec![0usize; classes.len()];
    for (rank, &(i, score)) in picks.iter().enumerate() {
        counts[pred[i] as usize] += 1;
        csv.push_str(&format!(
            "{},{i},{},{score:.6},{},{:.6}\n",
            rank + 1,
            datasets::csv::field(&pool.names[i]),
            datasets::csv::field(&classes[pred[i] as usize]),
            conf[i]
        ));
    }
    atomic_io::write_atomic(&c.out, csv.as_bytes())?;
    Ok(counts)
}

/// The request's predicted class balance on stderr (the largest 20 classes).
fn print_balance(counts: &[usize], classes: &[String], picked: usize, from: &str) {
    let mean = picked as f64 / classes.len() as f64;
    let max = counts.iter().copied().max().unwrap_or(0);
    let min = counts.iter().copied().min().unwrap_or(0);
    eprintln!(
        "predicted class balance (from {from}): min {min}, max {max}, ideal {mean:.1} per class"
    );
    let mut order: Vec<usize> = (0..classes.len()).collect();
    order.sort_by_key(|&c| std::cmp::Reverse(counts[c]));
    for &c in order.iter().take(20) {
        eprintln!("  {:>6}  {}", counts[c], classes[c]);
    }
    if order.len() > 20 {
        eprintln!("  … {} more classes", order.len() - 20);
    }
}

pub fn run(c: &LabelRequestConfig) -> Result<Value> {
    let device = c.compute.setup()?;
    c.check()?;
    let backbone = c.encoder.load(device)?;
    let (pool, labeled) = open_splits(c)?;
    let classes = labeled.classes.clone();
    let dim = backbone.net.desc.feature_dim;
    let head = match &c.classifier {
        Some(p) => Some(load_classifier(p, dim, &classes, device)?),
        None => None,
    };
    // The labeled split's features serve the kNN probabilities and k-center's starting
    // centers; with a classifier and another strategy they are not computed.
    let labeled_features = (head.is_none() || c.strategy == Strategy::Kcenter).then(|| {
        let pre = Preprocess::default();
        features::extract(
            &backbone.net,
            &labeled,
            &pre,
            device,
            c.batch_size,
            c.progress,
            "labeled features",
        )
    });
    let prober = match head {
        Some((w, b)) => Prober::Head(w, b),
        None => Prober::Knn(
            crate::knn::KnnBank::new(
                labeled_features
                    .as_ref()
                    .expect("computed without a classifier"),
                &features::labels(&labeled, device),
                classes.len(),
            ),
            c.k,
            c.t,
        ),
    };
    let scores = score_pool(c, &backbone, &pool, &prober, device)?;
    let picks = pick(
        c,
        &scores,
        labeled_features.as_ref(),
        (&backbone, &pool),
        classes.len(),
        device,
    )?;
    let counts = write_request(c, &picks, (&scores.pred, &scores.conf), &pool, &classes)?;
    eprintln!(
        "label-request: {} of {} `{}` images by {} → {}",
        picks.len(),
        pool.n,
        c.pool.name(),
        c.strategy.name(),
        c.out.display()
    );
    print_balance(&counts, &classes, picks.len(), prober.source());
    Ok(json!({
        "strategy": c.strategy.name(),
        "budget": picks.len(),
        "pool": pool.n,
        "out": c.out.display().to_string(),
        "probabilities": if matches!(prober, Prober::Head(..)) { "classifier" } else { "knn" },
        "class_counts": classes.iter().zip(&counts).map(|(c, n)| (c.clone(), json!(n)))
            .collect::<serde_json::Map<String, Value>>(),
        "min_per_class": counts.iter().copied().min().unwrap_or(0),
        "max_per_class": counts.iter().copied().max().unwrap_or(0),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_takes_rank_r_of_every_class_before_rank_r_plus_1() {
        // Class 0 has the three most uncertain images; a plain entropy ranking would take them all.
        let pred = [0, 0, 0, 1, 1, 2];
        let score = [0.9, 0.8, 0.7, 0.3, 0.2, 0.1];
        assert_eq!(balanced(&pred, &score, 3, 3), vec![0, 3, 5]);
        // Class 2 runs out: its quota goes to the best of the rest, in rounds.
        assert_eq!(balanced(&pred, &score, 3, 5), vec![0, 3, 5, 1, 4]);
        assert_eq!(balanced(&pred, &score, 3, 6), vec![0, 3, 5, 1, 4, 2]);
    }

    #[test]
    fn k_center_picks_the_farthest_point_from_labeled_and_picked() {
        let f = |v: &[[f32; 2]]| {
            Tensor::from_slice(&v.iter().flatten().copied().collect::<Vec<_>>()).view([-1, 2])
        };
        // Labeled at 0°; pool at 0°, 10°, 90°, 120°, 180°. The farthest is 180°, then 90°
        // (1 − cos 90° to both), then 120° (30° from 90°) rather than 10°.
        let deg = |d: f32| [d.to_radians().cos(), d.to_radians().sin()];
        let pool = f(&[deg(0.0), deg(10.0), deg(90.0), deg(120.0), deg(180.0)]);
        let picks = k_center(&normalize(&pool), &f(&[deg(0.0)]), 3, false);
        let order: Vec<usize> = picks.iter().map(|p| p.0).collect();
        assert_eq!(order, vec![4, 2, 3]);
        assert!((picks[0].1 - 2.0).abs() < 1e-6);
        assert!((picks[1].1 - 1.0).abs() < 1e-6);
        // A duplicate of a picked point is never picked again.
        let dup = f(&[deg(0.0), deg(0.0), deg(0.0)]);
        let order: Vec<usize> = k_center(&normalize(&dup), &f(&[deg(0.0)]), 3, false)
            .iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(order, vec![0, 1, 2]);
    }
}
