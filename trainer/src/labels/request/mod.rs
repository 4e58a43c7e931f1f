//! `moco-train label-request`: which unlabeled images to send for labeling. Each strategy ranks
//! the whole unlabeled split from frozen features in one pass (the contrastive score is one
//! forward of two aug+ views per image, not a pretraining run per candidate). The request is a
//! ranked CSV; its predicted class balance is printed, because an unbalanced request starves
//! the classes it leaves out.
//!
//! One file a strategy: `uncertainty` (the pool's class probabilities, entropy and margin),
//! `contrastive`, `kcenter`, `balanced`; `output` writes the CSV and the balance report.

mod balanced;
mod contrastive;
mod kcenter;
mod output;
mod uncertainty;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use datasets::layout::Split;
use models::Preprocess;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tch::{Device, Tensor};

use crate::config::{Compute, DataSource};
use crate::data::DecodedSplit;
use crate::eval::features;
use crate::nn::encoder::{Backbone, EncoderSource};

use balanced::balanced;
use contrastive::contrastive_loss;
use kcenter::k_center;
use output::{print_balance, write_request};
use uncertainty::{load_classifier, score_pool, PoolScores, Prober};

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
            crate::eval::knn::KnnBank::new(
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
    use crate::nn::loss::normalize;

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
