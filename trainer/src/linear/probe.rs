//! The probe's training: the classifier (and, fine-tuning, the backbone) epoch by epoch, val
//! accuracy after each, the best classifier kept.

use std::time::Instant;

use anyhow::{bail, Result};
use models::{Classifier, Preprocess};
use models_tch::ClassifierModule;
use serde_json::json;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::{save_classifier, LinearConfig, ProbeMode, Standardizer};
use crate::augment::{AugConfig, Augmenter};
use crate::data::DecodedSplit;
use crate::encoder::Backbone;
use crate::features::{self, top1_top5};
use crate::metrics::MetricsLog;
use crate::optim::Optimizer;
use crate::rng::{permutation, stream, Purpose};

pub struct Outcome {
    /// The final classifier on raw features (standardisation folded in).
    pub fc: (Tensor, Tensor),
    /// (top-1, top-5) of the last epoch.
    pub last: (f64, f64),
    /// (top-1, top-5, epoch) of the best epoch.
    pub best: (f64, f64, usize),
    pub last_logits: Tensor,
    pub seconds: f64,
    /// kNN of the cached features, when asked for.
    pub knn: Option<crate::knn::KnnResult>,
}

/// Where the train features of a batch come from.
struct FeatureSource<'a> {
    cached_train: Option<Tensor>,
    cached_val: Option<Tensor>,
    norm: Option<Standardizer>,
    aug: Augmenter,
    backbone: &'a Backbone,
    finetune: bool,
}

impl FeatureSource<'_> {
    /// Pooled features of train images `idx` (`idx_t` on the device) at global batch `step`.
    fn train_batch(
        &self,
        c: &LinearConfig,
        train: &DecodedSplit,
        (idx, idx_t): (&[usize], &Tensor),
        step: u64,
    ) -> Tensor {
        let feats = match &self.cached_train {
            Some(f) => f.index_select(0, idx_t),
            None => {
                let images = train.batch(idx);
                let mut rng = stream(c.seed, Purpose::LinearAugment, step);
                let size = c.data.size;
                let p = self.aug.draw(&mut rng, idx.len(), size, size);
                let x = self.aug.views(&images, &p);
                if self.finetune {
                    self.backbone.net.forward_t(&x, true)
                } else {
                    tch::no_grad(|| self.backbone.net.forward_t(&x, false))
                }
            }
        };
        match &self.norm {
            Some(s) => s.apply(&feats),
            None => feats,
        }
    }

    fn val(&self, val: &DecodedSplit, device: Device) -> Tensor {
        match &self.cached_val {
            Some(f) => f.shallow_clone(),
            None => features::extract(
                &self.backbone.net,
                val,
                &Preprocess::default(),
                device,
                256,
                false,
                "",
            ),
        }
    }
}

/// The classifier on raw features: the trained fc, with the standardisation folded in.
fn raw_fc(head: &ClassifierModule, norm: Option<&Standardizer>) -> (Tensor, Tensor) {
    tch::no_grad(|| match norm {
        Some(s) => s.fold(head.weight(), head.bias()),
        None => (head.weight().copy(), head.bias().copy()),
    })
}

/// The frozen features the mode caches, and the standardisation's statistics.
fn feature_source<'a>(
    c: &LinearConfig,
    backbone: &'a Backbone,
    (train, val): (&DecodedSplit, &DecodedSplit),
    device: Device,
) -> FeatureSource<'a> {
    let pre = Preprocess::default();
    let frozen = |split: &DecodedSplit, what: &str| {
        features::extract(&backbone.net, split, &pre, device, 256, c.progress, what)
    };
    let finetune = matches!(c.mode, ProbeMode::Finetune { .. });
    let cached_val = (!finetune).then(|| frozen(val, "val features"));
    let cached_train = (c.mode == ProbeMode::Fast).then(|| frozen(train, "train features"));
    let norm = c.standardize.then(|| match &cached_train {
        Some(f) => Standardizer::fit(f),
        None => Standardizer::fit(&frozen(train, "train feature statistics")),
    });
    FeatureSource {
        cached_train,
        cached_val,
        norm,
        aug: Augmenter::new(AugConfig::linear(c.data.size), &pre, device),
        backbone,
        finetune,
    }
}

/// The fine-tuned backbone's optimizer; otherwise the backbone is frozen.
fn backbone_optimizer(c: &LinearConfig, backbone: &mut Backbone) -> Option<(Optimizer, f64)> {
    match c.mode {
        ProbeMode::Finetune { backbone_lr } => {
            let params: Vec<(String, Tensor)> = backbone
                .vs
                .variables()
                .into_iter()
                .filter(|(_, t)| t.requires_grad())
                .collect();
            Some((
                Optimizer::sgd(params, c.momentum, c.weight_decay),
                backbone_lr,
            ))
        }
        _ => {
            backbone.vs.freeze();
            None
        }
    }
}

pub fn train(
    c: &LinearConfig,
    backbone: &mut Backbone,
    train: &DecodedSplit,
    val: &DecodedSplit,
    device: Device,
) -> Result<Outcome> {
    tch::manual_seed(c.seed as i64);
    let head_vs = VarStore::new(device);
    let classes = &train.classes;
    let mut head = ClassifierModule::new(
        &head_vs.root(),
        &Classifier::new(backbone.net.desc.feature_dim, classes.len()),
    );
    head.reset_moco();
    let fc_params = vec![
        ("fc.weight".into(), head.weight().shallow_clone()),
        ("fc.bias".into(), head.bias().shallow_clone()),
    ];
    let mut opt = Optimizer::sgd(fc_params, c.momentum, c.weight_decay);
    let mut backbone_opt = backbone_optimizer(c, backbone);
    let (train_labels, val_labels) = (
        features::labels(train, device),
        features::labels(val, device),
    );
    let src = feature_source(c, backbone, (train, val), device);
    let knn = match (c.knn, &src.cached_train, &src.cached_val) {
        (Some((k, t)), Some(ft), Some(fv)) => Some(crate::knn::classify(
            ft,
            &train_labels,
            fv,
            &val_labels,
            classes.len(),
            k,
            t,
        )?),
        _ => None,
    };
    let mut log = MetricsLog::open(&c.out.join("metrics.jsonl"), None)?;
    let bar = crate::progress::bar(c.epochs as u64, "linear", c.progress);
    let t0 = Instant::now();
    let mut best = (-1.0f64, 0.0f64, 0usize);
    let mut last = (0.0, 0.0);
    let mut last_logits = Tensor::zeros([0], (Kind::Float, device));
    let mut step = 0u64;
    for epoch in 0..c.epochs {
        let lr = c.decay.lr(c.lr, epoch, c.epochs);
        let order = permutation(
            &mut stream(c.seed, Purpose::LinearOrder, epoch as u64),
            train.n,
        );
        let (mut loss_sum, mut seen) = (Tensor::zeros([], (Kind::Float, device)), 0usize);
        let te = Instant::now();
        for chunk in order.chunks(c.batch_size) {
            let idx: Vec<usize> = chunk.iter().map(|&i| i as usize).collect();
            let idx_t = Tensor::from_slice(chunk).to(device);
            let targets = train_labels.index_select(0, &idx_t);
            let feats = src.train_batch(c, train, (&idx, &idx_t), step);
            opt.zero_grad();
            if let Some((o, _)) = &mut backbone_opt {
                o.zero_grad();
            }
            let loss = head
                .forward(&feats)
                .log_softmax(-1, Kind::Float)
                .nll_loss(&targets);
            loss.backward();
            opt.step(lr);
            if let Some((o, blr)) = &mut backbone_opt {
                o.step(c.decay.lr(*blr, epoch, c.epochs));
            }
            loss_sum += loss.detach() * idx.len() as f64;
            seen += idx.len();
            step += 1;
        }
        let train_secs = te.elapsed().as_secs_f64();
        let fc = raw_fc(&head, src.norm.as_ref());
        let logits = tch::no_grad(|| src.val(val, device).linear(&fc.0, Some(&fc.1)));
        let (top1, top5) = top1_top5(&logits, &val_labels);
        let loss = loss_sum.double_value(&[]) / seen as f64;
        if !loss.is_finite() {
            bail!("linear: the loss became {loss} in epoch {epoch}; lower --lr");
        }
        log.write(&json!({
            "epoch": epoch + 1, "step": step, "loss": loss, "lr": lr, "top1": top1, "top5": top5,
            "images_per_sec": seen as f64 / train_secs.max(1e-9),
            "wall_time": t0.elapsed().as_secs_f64(),
        }))?;
        if top1 > best.0 {
            best = (top1, top5, epoch + 1);
            save_classifier(&fc, classes, &c.out.join("classifier_best.safetensors"))?;
        }
        last = (top1, top5);
        last_logits = logits;
        bar.set_message(format!(
            "linear loss {loss:.3} val top-1 {:.1} %",
            100.0 * top1
        ));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(Outcome {
        fc: raw_fc(&head, src.norm.as_ref()),
        last,
        best,
        last_logits,
        seconds: t0.elapsed().as_secs_f64(),
        knn,
    })
}
