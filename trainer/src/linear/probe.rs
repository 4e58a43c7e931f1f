//! The probe's training: the classifier (and, fine-tuning, the backbone) epoch by epoch, val
//! accuracy after each, the best classifier kept.

use std::time::Instant;

use anyhow::{bail, Result};
use models::{Classifier, Preprocess};
use models_tch::ClassifierModule;
use serde_json::json;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::resume::{self, Position};
use super::{save_classifier, LinearConfig, ProbeMode, Standardizer};
use crate::augment::{AugConfig, Augmenter};
use crate::data::DecodedSplit;
use crate::encoder::Backbone;
use crate::features::{self, top1_top5};
use crate::metrics::MetricsLog;
use crate::optim::Optimizer;
use crate::rng::{permutation, stream, Purpose};
use crate::stop::{Preempted, StopFlag};

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
    if c.mode != ProbeMode::Fast {
        train.expect_random_reads();
    }
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
    stop: &StopFlag,
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
    let buffers = bn_buffers(c, backbone);
    let pos = {
        let mut opts: Vec<&mut Optimizer> = vec![&mut opt];
        opts.extend(backbone_opt.as_mut().map(|(o, _)| o));
        resume::restore(&c.out, c, &mut opts, &buffers)?
    };
    if let Some(p) = &pos {
        eprintln!(
            "linear: resumed at epoch {} batch {} (step {})",
            p.epoch + 1,
            p.batch,
            p.step
        );
    }
    let mut pos = pos.unwrap_or_else(Position::start);
    let mut log = MetricsLog::open(&c.out.join("metrics.jsonl"), Some(pos.step))?
        .with_tensorboard(c.tensorboard.as_deref(), "linear", pos.step)?;
    let bar = crate::progress::bar(c.epochs as u64, "linear", c.progress);
    bar.set_position(pos.epoch as u64);
    let t0 = Instant::now();
    let mut last_logits = Tensor::zeros([0], (Kind::Float, device));
    while pos.epoch < c.epochs {
        let epoch = pos.epoch;
        let lr = c.decay.lr(c.lr, epoch, c.epochs);
        let order = permutation(
            &mut stream(c.seed, Purpose::LinearOrder, epoch as u64),
            train.n,
        );
        let mut loss_sum = Tensor::from(pos.loss_sum as f32).to_device(device);
        let te = Instant::now();
        let seen_before = pos.seen;
        for chunk in order.chunks(c.batch_size).skip(pos.batch) {
            if stop.asked() {
                pos.loss_sum = loss_sum.double_value(&[]);
                let path = save_state(c, &pos, (&opt, backbone_opt.as_ref()), &buffers)?;
                bar.abandon();
                return Err(Preempted {
                    cause: stop.cause(),
                    saved: Some((pos.step, path)),
                }
                .into());
            }
            let idx: Vec<usize> = chunk.iter().map(|&i| i as usize).collect();
            let idx_t = Tensor::from_slice(chunk).to(device);
            let targets = train_labels.index_select(0, &idx_t);
            let feats = src.train_batch(c, train, (&idx, &idx_t), pos.step);
            opt.zero_grad();
            if let Some((o, _)) = &mut backbone_opt {
                o.zero_grad();
            }
            let loss = head
                .forward(&feats)
                .log_softmax(-1, Kind::Float)
                .nll_loss(&targets);
            loss.backward();
            opt.step(lr)?;
            if let Some((o, blr)) = &mut backbone_opt {
                o.step(c.decay.lr(*blr, epoch, c.epochs))?;
            }
            loss_sum += loss.detach() * idx.len() as f64;
            pos.seen += idx.len();
            pos.batch += 1;
            pos.step += 1;
        }
        let train_secs = te.elapsed().as_secs_f64();
        let fc = raw_fc(&head, src.norm.as_ref());
        let logits = tch::no_grad(|| src.val(val, device).linear(&fc.0, Some(&fc.1)));
        let (top1, top5) = top1_top5(&logits, &val_labels);
        let loss = loss_sum.double_value(&[]) / pos.seen as f64;
        if !loss.is_finite() {
            bail!("linear: the loss became {loss} in epoch {epoch}; lower --lr");
        }
        log.write(&json!({
            "epoch": epoch + 1, "step": pos.step, "loss": loss, "lr": lr, "top1": top1, "top5": top5,
            "images_per_sec": (pos.seen - seen_before) as f64 / train_secs.max(1e-9),
            "wall_time": t0.elapsed().as_secs_f64(),
        }))?;
        if top1 > pos.best.0 {
            pos.best = (top1, top5, epoch + 1);
            save_classifier(&fc, classes, &c.out.join("classifier_best.safetensors"))?;
        }
        pos.last = (top1, top5);
        last_logits = logits;
        bar.set_message(format!(
            "linear loss {loss:.3} val top-1 {:.1} %",
            100.0 * top1
        ));
        bar.inc(1);
        pos = Position {
            epoch: epoch + 1,
            step: pos.step,
            best: pos.best,
            last: pos.last,
            ..Position::default()
        };
        // After every epoch, so a kill without warning (SIGKILL, a lost node) loses at most an
        // epoch: at the competition's size the full protocol's epoch takes minutes on a CPU.
        if pos.epoch < c.epochs {
            save_state(c, &pos, (&opt, backbone_opt.as_ref()), &buffers)?;
        }
    }
    bar.finish_and_clear();
    let _ = std::fs::remove_file(resume::path(&c.out));
    Ok(Outcome {
        fc: raw_fc(&head, src.norm.as_ref()),
        last: pos.last,
        best: pos.best,
        last_logits,
        seconds: t0.elapsed().as_secs_f64(),
        knn,
    })
}

/// The probe's state after `pos`: the classifier's optimizer and, fine-tuning, the backbone's.
fn save_state(
    c: &LinearConfig,
    pos: &Position,
    (opt, backbone_opt): (&Optimizer, Option<&(Optimizer, f64)>),
    buffers: &[(String, Tensor)],
) -> Result<std::path::PathBuf> {
    let mut opts: Vec<&Optimizer> = vec![opt];
    opts.extend(backbone_opt.map(|(o, _)| o));
    resume::save(&c.out, c, pos, &opts, buffers)
}

/// A fine-tuned backbone's BatchNorm statistics (they move with its training forwards); nothing
/// for a frozen one.
fn bn_buffers(c: &LinearConfig, backbone: &Backbone) -> Vec<(String, Tensor)> {
    match c.mode {
        ProbeMode::Finetune { .. } => backbone
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| !t.requires_grad())
            .collect(),
        _ => Vec::new(),
    }
}
