//! `moco-train label-request`: which unlabeled images to send for labeling. Each strategy ranks
//! the whole unlabeled split from frozen features in one pass (the seed ran 40 sub-pretrainings to
//! score images by contrastive loss; here that score is one forward of two aug+ views per image).
//! The request is a ranked CSV; the predicted class balance of the request is printed, because
//! the seed traced its failure to an unbalanced request.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use datasets::layout::Split;
use models::Preprocess;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::augment::{AugConfig, Augmenter};
use crate::data::DecodedSplit;
use crate::encoder::Backbone;
use crate::features;
use crate::rng::{stream, Purpose};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
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
    fn name(self) -> &'static str {
        match self {
            Strategy::Entropy => "entropy",
            Strategy::Margin => "margin",
            Strategy::Contrastive => "contrastive",
            Strategy::Kcenter => "kcenter",
            Strategy::Balanced => "balanced",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct LabelRequestArgs {
    #[command(flatten)]
    pub io: crate::eval_args::EvalArgs,
    /// Backbone (`RUN/encoder.safetensors` or a pretraining checkpoint).
    #[arg(long)]
    pub encoder: PathBuf,
    /// Linear classifier from `moco-train linear` (`classifier.safetensors`). Without it, class
    /// probabilities come from weighted kNN votes of the labeled split (k=--k, T=--t).
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// The split to choose from.
    #[arg(long, default_value = "unlabeled")]
    pub split: Split,
    /// The labeled split: class names, kNN votes, and k-center's starting centers.
    #[arg(long, default_value = "train")]
    pub labeled_split: Split,
    /// How many images to request.
    #[arg(long)]
    pub budget: usize,
    /// How to rank the pool (see each value).
    #[arg(long, value_enum)]
    pub strategy: Strategy,
    /// The ranked request: `rank,index,image,score,predicted,confidence`.
    #[arg(long)]
    pub out: PathBuf,
    /// kNN probabilities (no --classifier): neighbours that vote.
    #[arg(long, default_value_t = 200)]
    pub k: usize,
    /// kNN probabilities: vote weight exp(similarity / t).
    #[arg(long, default_value_t = 0.1)]
    pub t: f64,
    /// Contrastive strategy: the InfoNCE temperature.
    #[arg(long, default_value_t = 0.2)]
    pub temperature: f64,
    /// Contrastive strategy: how many other images serve as negatives.
    #[arg(long, default_value_t = 4096)]
    pub negatives: usize,
    /// Seeds the contrastive views and the choice of negatives.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per forward pass.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Print the result as one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
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

/// Per-image InfoNCE of two aug+ views: the positive is the other view, the negatives a fixed
/// random sample of other images' eval features (an image is never its own negative).
#[allow(clippy::too_many_arguments)]
fn contrastive_loss(
    backbone: &Backbone,
    split: &DecodedSplit,
    eval_feats: &Tensor,
    a: &LabelRequestArgs,
    pre: &Preprocess,
    device: Device,
    progress: bool,
) -> Tensor {
    let n = split.n;
    let m = a.negatives.min(n - 1).max(1);
    let picked = crate::rng::permutation(&mut stream(a.seed, Purpose::Sample, 0), n);
    let neg_idx = Tensor::from_slice(&picked[..m]).to(device);
    let negs = crate::moco::model::normalize(&eval_feats.index_select(0, &neg_idx));
    let aug = Augmenter::new(AugConfig::mocov2(a.io.size), pre, device);
    let bar = crate::progress::bar(n as u64, "contrastive scores", progress);
    let mut out = Vec::new();
    tch::no_grad(|| {
        let idx: Vec<usize> = (0..n).collect();
        for (c, chunk) in idx.chunks(a.batch_size.max(1)).enumerate() {
            let images = split.batch(chunk).to_device(device);
            let mut rng = stream(a.seed, Purpose::Augment, c as u64);
            let b = chunk.len();
            let v1 = aug.views(&images, &aug.draw(&mut rng, b, a.io.size, a.io.size));
            let v2 = aug.views(&images, &aug.draw(&mut rng, b, a.io.size, a.io.size));
            let q = crate::moco::model::normalize(&backbone.net.forward_t(&v1, false));
            let k = crate::moco::model::normalize(&backbone.net.forward_t(&v2, false));
            let pos = (&q * &k).sum_dim_intlist(&[1i64][..], true, Kind::Float);
            let mut neg = q.mm(&negs.transpose(0, 1));
            // Mask each image's own column when it is among the negatives.
            let own = Tensor::from_slice(&chunk.iter().map(|&i| i as i64).collect::<Vec<_>>())
                .to(device)
                .unsqueeze(1)
                .eq_tensor(&neg_idx.unsqueeze(0));
            neg = neg.masked_fill(&own, f64::NEG_INFINITY);
            let logits = Tensor::cat(&[pos, neg], 1) / a.temperature;
            out.push(-logits.log_softmax(1, Kind::Float).select(1, 0));
            bar.inc(b as u64);
        }
    });
    bar.finish_and_clear();
    Tensor::cat(&out, 0)
}

/// Greedy farthest-first selection: `budget` rows of `feats`, starting from `centers`.
/// Returns the picks in order with their distance (1 − cosine) to the nearest center when picked.
fn k_center(feats: &Tensor, centers: &Tensor, budget: usize) -> Vec<(usize, f64)> {
    let f = crate::moco::model::normalize(feats);
    let c = crate::moco::model::normalize(centers);
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
    for _ in 0..budget {
        let i = dist.argmax(0, false).int64_value(&[]);
        let d = dist.double_value(&[i]);
        picks.push((i as usize, d));
        let new = tch::no_grad(|| 1.0 - f.mv(&f.get(i)));
        dist = dist.minimum(&new);
        // A picked image is at distance 0 from itself; keep it from being picked again when
        // every remaining distance is 0 (duplicates).
        let _ = dist.get(i).fill_(-1.0);
    }
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

pub fn run(a: &LabelRequestArgs) -> Result<Value> {
    let device = a.io.setup()?;
    if a.budget == 0 {
        bail!("--budget must be at least 1");
    }
    if a.k == 0 || a.batch_size == 0 || a.negatives == 0 {
        bail!("--k, --batch-size and --negatives must be at least 1");
    }
    models::weights::check_dir_writable(&models::weights::parent_dir(&a.out))
        .with_context(|| format!("--out {}: not writable", a.out.display()))?;
    let progress = !a.quiet && !a.json;
    let backbone = Backbone::load(&a.encoder, device)?;
    let open = |s: Split| a.io.open(s, progress);
    let pool = open(a.split)?;
    let labeled = open(a.labeled_split)?;
    if !labeled.is_labeled() {
        bail!(
            "--labeled-split {}: {} has no labels",
            a.labeled_split.name(),
            a.io.data.display()
        );
    }
    if a.budget > pool.n {
        bail!(
            "--budget {}: the `{}` split holds only {} images",
            a.budget,
            a.split.name(),
            pool.n
        );
    }
    let classes = labeled.classes.clone();
    let head = match &a.classifier {
        Some(p) => Some(load_classifier(
            p,
            backbone.net.desc.feature_dim,
            &classes,
            device,
        )?),
        None => None,
    };

    let pre = Preprocess::default();
    let bs = a.batch_size;
    let fu = features::extract(&backbone.net, &pool, &pre, device, bs, progress, "features");
    // The labeled split's features serve the kNN probabilities and k-center's starting
    // centers; with a classifier and another strategy they are not computed.
    let fl = (head.is_none() || a.strategy == Strategy::Kcenter).then(|| {
        features::extract(
            &backbone.net,
            &labeled,
            &pre,
            device,
            bs,
            progress,
            "labeled features",
        )
    });
    let probs = tch::no_grad(|| match &head {
        Some((w, b)) => fu.linear(w, Some(b)).softmax(1, Kind::Float),
        None => {
            let votes = crate::knn::votes(
                fl.as_ref().expect("computed without a classifier"),
                &features::labels(&labeled, device),
                &fu,
                classes.len(),
                a.k,
                a.t,
            );
            &votes / votes.sum_dim_intlist(&[1i64][..], true, Kind::Float)
        }
    });
    let (conf, pred) = probs.max_dim(1, false);
    let pred = Vec::<i64>::try_from(pred.to_device(Device::Cpu))?;
    let conf = Vec::<f64>::try_from(conf.to_kind(Kind::Double).to_device(Device::Cpu))?;
    let host = |t: Tensor| Vec::<f64>::try_from(t.to_kind(Kind::Double).to_device(Device::Cpu));
    let ranked_by = |score: Vec<f64>| -> Vec<(usize, f64)> {
        let mut order: Vec<usize> = (0..score.len()).collect();
        order.sort_by(|&x, &y| score[y].total_cmp(&score[x]).then(x.cmp(&y)));
        order
            .into_iter()
            .take(a.budget)
            .map(|i| (i, score[i]))
            .collect()
    };
    let picks: Vec<(usize, f64)> = match a.strategy {
        Strategy::Entropy => ranked_by(host(entropy(&probs))?),
        Strategy::Margin => {
            let top2 = probs.topk(2.min(classes.len() as i64), 1, true, true).0;
            let gap = if classes.len() > 1 {
                top2.select(1, 0) - top2.select(1, 1)
            } else {
                top2.select(1, 0)
            };
            // Higher score = requested first: the negated margin.
            ranked_by(host(-gap)?)
        }
        Strategy::Contrastive => ranked_by(host(contrastive_loss(
            &backbone, &pool, &fu, a, &pre, device, progress,
        ))?),
        Strategy::Kcenter => k_center(&fu, fl.as_ref().expect("computed for k-center"), a.budget),
        Strategy::Balanced => {
            let h = host(entropy(&probs))?;
            balanced(&pred, &h, classes.len(), a.budget)
                .into_iter()
                .map(|i| (i, h[i]))
                .collect()
        }
    };

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
    models::weights::write_atomic(&a.out, csv.as_bytes())?;

    let mean = picks.len() as f64 / classes.len() as f64;
    let max = counts.iter().copied().max().unwrap_or(0);
    let min = counts.iter().copied().min().unwrap_or(0);
    eprintln!(
        "label-request: {} of {} `{}` images by {} → {}",
        picks.len(),
        pool.n,
        a.split.name(),
        a.strategy.name(),
        a.out.display()
    );
    eprintln!(
        "predicted class balance (from {}): min {min}, max {max}, ideal {mean:.1} per class",
        if head.is_some() {
            "the classifier"
        } else {
            "kNN on the labeled split"
        }
    );
    let mut order: Vec<usize> = (0..classes.len()).collect();
    order.sort_by_key(|&c| std::cmp::Reverse(counts[c]));
    for &c in order.iter().take(20) {
        eprintln!("  {:>6}  {}", counts[c], classes[c]);
    }
    if order.len() > 20 {
        eprintln!("  … {} more classes", order.len() - 20);
    }
    Ok(json!({
        "strategy": a.strategy.name(),
        "budget": picks.len(),
        "pool": pool.n,
        "out": a.out.display().to_string(),
        "probabilities": if head.is_some() { "classifier" } else { "knn" },
        "class_counts": classes.iter().zip(&counts).map(|(c, n)| (c.clone(), json!(n)))
            .collect::<serde_json::Map<String, Value>>(),
        "min_per_class": min,
        "max_per_class": max,
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
        let picks = k_center(&pool, &f(&[deg(0.0)]), 3);
        let order: Vec<usize> = picks.iter().map(|p| p.0).collect();
        assert_eq!(order, vec![4, 2, 3]);
        assert!((picks[0].1 - 2.0).abs() < 1e-6);
        assert!((picks[1].1 - 1.0).abs() < 1e-6);
        // A duplicate of a picked point is never picked again.
        let dup = f(&[deg(0.0), deg(0.0), deg(0.0)]);
        let order: Vec<usize> = k_center(&dup, &f(&[deg(0.0)]), 3)
            .iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(order, vec![0, 1, 2]);
    }
}
