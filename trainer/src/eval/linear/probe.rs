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
use crate::eval::features::{self, top1_top5};
use crate::nn::encoder::Backbone;
use crate::nn::optim::Optimizer;
use crate::observe::metrics::MetricsLog;
use crate::runtime::rng::{permutation, stream, Purpose};
use crate::runtime::stop::{Preempted, StopFlag};

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
    pub knn: Option<crate::eval::knn::KnnResult>,
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
                let p = self.aug.draw(&mut rng, 0, idx.len(), (size, size));
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

/// The probe under training, in pretraining's shape: [`Probe::prepare`] (head, optimizers,
/// feature source, resume, logs) → [`Probe::fit`] (the epochs) → [`Probe::finish`].
struct Probe<'a> {
    c: &'a LinearConfig,
    data: (&'a DecodedSplit, &'a DecodedSplit),
    device: Device,
    /// Owns the classifier's variables.
    _head_vs: VarStore,
    head: ClassifierModule,
    opt: Optimizer,
    backbone_opt: Option<(Optimizer, f64)>,
    src: FeatureSource<'a>,
    /// Train and val labels on the device.
    labels: (Tensor, Tensor),
    buffers: Vec<(String, Tensor)>,
    knn: Option<crate::eval::knn::KnnResult>,
    pos: Position,
    log: MetricsLog,
    bar: indicatif::ProgressBar,
    t0: Instant,
    last_logits: Tensor,
}

pub fn train(
    c: &LinearConfig,
    backbone: &mut Backbone,
    train: &DecodedSplit,
    val: &DecodedSplit,
    device: Device,
    stop: &StopFlag,
) -> Result<Outcome> {
    let mut probe = Probe::prepare(c, backbone, (train, val), device)?;
    probe.fit(stop)?;
    Ok(probe.finish())
}

/// The classifier initialised as MoCo's protocol does (from `tch::manual_seed(seed)`).
fn new_head(
    c: &LinearConfig,
    features: usize,
    classes: usize,
    device: Device,
) -> (VarStore, ClassifierModule) {
    tch::manual_seed(c.seed as i64);
    let head_vs = VarStore::new(device);
    let mut head = ClassifierModule::new(&head_vs.root(), &Classifier::new(features, classes));
    head.reset_moco();
    (head_vs, head)
}

/// kNN of the cached features, when asked for.
fn cached_knn(
    c: &LinearConfig,
    src: &FeatureSource,
    (train_labels, val_labels): (&Tensor, &Tensor),
    classes: usize,
) -> Result<Option<crate::eval::knn::KnnResult>> {
    Ok(match (c.knn, &src.cached_train, &src.cached_val) {
        (Some((k, t)), Some(ft), Some(fv)) => Some(crate::eval::knn::classify(
            ft,
            train_labels,
            fv,
            val_labels,
            classes,
            k,
            t,
        )?),
        _ => None,
    })
}

impl<'a> Probe<'a> {
    fn prepare(
        c: &'a LinearConfig,
        backbone: &'a mut Backbone,
        (train, val): (&'a DecodedSplit, &'a DecodedSplit),
        device: Device,
    ) -> Result<Self> {
        let classes = train.classes.len();
        let (head_vs, head) = new_head(c, backbone.net.desc.feature_dim, classes, device);
        let fc_params = vec![
            ("fc.weight".into(), head.weight().shallow_clone()),
            ("fc.bias".into(), head.bias().shallow_clone()),
        ];
        let mut opt = Optimizer::sgd(fc_params, c.momentum, c.weight_decay);
        let mut backbone_opt = backbone_optimizer(c, backbone);
        let backbone: &'a Backbone = backbone;
        let labels = (
            features::labels(train, device),
            features::labels(val, device),
        );
        let src = feature_source(c, backbone, (train, val), device);
        let knn = cached_knn(c, &src, (&labels.0, &labels.1), classes)?;
        let buffers = bn_buffers(c, backbone);
        let pos = {
            let mut opts: Vec<&mut Optimizer> = vec![&mut opt];
            opts.extend(backbone_opt.as_mut().map(|(o, _)| o));
            resume::restore(&c.out, c, &mut opts, &buffers, train.n)?
        };
        if let Some(p) = &pos {
            eprintln!(
                "linear: resumed at epoch {} batch {} (step {})",
                p.epoch + 1,
                p.batch,
                p.step
            );
        }
        let pos = pos.unwrap_or_else(Position::start);
        let log = MetricsLog::open(&c.out.join("metrics.jsonl"), Some(pos.step))?
            .with_tensorboard(c.tensorboard.as_deref(), "linear", pos.step)?;
        let bar = crate::runtime::progress::bar(c.epochs as u64, "linear", c.progress);
        bar.set_position(pos.epoch as u64);
        Ok(Probe {
            c,
            data: (train, val),
            device,
            _head_vs: head_vs,
            head,
            opt,
            backbone_opt,
            src,
            labels,
            buffers,
            knn,
            pos,
            log,
            bar,
            t0: Instant::now(),
            last_logits: Tensor::zeros([0], (Kind::Float, device)),
        })
    }

    fn fit(&mut self, stop: &StopFlag) -> Result<()> {
        while self.pos.epoch < self.c.epochs {
            self.epoch(stop)?;
        }
        Ok(())
    }

    /// One epoch from the position's batch on, then its evaluation; a stop request saves the
    /// state before the next batch and ends with [`Preempted`].
    fn epoch(&mut self, stop: &StopFlag) -> Result<()> {
        let (c, epoch) = (self.c, self.pos.epoch);
        let lr = c.decay.lr(c.lr, epoch, c.epochs);
        let order = permutation(
            &mut stream(c.seed, Purpose::LinearOrder, epoch as u64),
            self.data.0.n,
        );
        let mut loss_sum = Tensor::from(self.pos.loss_sum as f32).to_device(self.device);
        let te = Instant::now();
        let seen_before = self.pos.seen;
        for chunk in order.chunks(c.batch_size).skip(self.pos.batch) {
            if stop.asked() {
                self.pos.loss_sum = loss_sum.double_value(&[]);
                let path = self.save_state()?;
                self.bar.abandon();
                return Err(Preempted {
                    cause: stop.cause(),
                    saved: Some((self.pos.step, path)),
                }
                .into());
            }
            loss_sum += self.step(chunk, lr)? * chunk.len() as f64;
            self.pos.seen += chunk.len();
            self.pos.batch += 1;
            self.pos.step += 1;
        }
        let images_per_sec =
            (self.pos.seen - seen_before) as f64 / te.elapsed().as_secs_f64().max(1e-9);
        self.end_epoch(loss_sum.double_value(&[]), lr, images_per_sec)
    }

    /// One optimizer step on train images `chunk`; returns the batch's mean loss (detached).
    fn step(&mut self, chunk: &[i64], lr: f64) -> Result<Tensor> {
        let c = self.c;
        let idx: Vec<usize> = chunk.iter().map(|&i| i as usize).collect();
        let idx_t = Tensor::from_slice(chunk).to(self.device);
        let targets = self.labels.0.index_select(0, &idx_t);
        let feats = self
            .src
            .train_batch(c, self.data.0, (&idx, &idx_t), self.pos.step);
        self.opt.zero_grad();
        if let Some((o, _)) = &mut self.backbone_opt {
            o.zero_grad();
        }
        let loss = self
            .head
            .forward(&feats)
            .log_softmax(-1, Kind::Float)
            .nll_loss(&targets);
        loss.backward();
        self.opt.step(lr)?;
        if let Some((o, blr)) = &mut self.backbone_opt {
            o.step(c.decay.lr(*blr, self.pos.epoch, c.epochs))?;
        }
        Ok(loss.detach())
    }

    /// Val accuracy of the epoch's classifier, its metrics line, the best classifier kept, and
    /// the state saved for a resume at the next epoch.
    fn end_epoch(&mut self, loss_sum: f64, lr: f64, images_per_sec: f64) -> Result<()> {
        let (c, epoch) = (self.c, self.pos.epoch);
        let fc = raw_fc(&self.head, self.src.norm.as_ref());
        let val = self.src.val(self.data.1, self.device);
        let logits = tch::no_grad(|| val.linear(&fc.0, Some(&fc.1)));
        let (top1, top5) = top1_top5(&logits, &self.labels.1);
        let loss = loss_sum / self.pos.seen as f64;
        if !loss.is_finite() {
            bail!("linear: the loss became {loss} in epoch {epoch}; lower --lr");
        }
        self.log.write(&json!({
            "epoch": epoch + 1, "step": self.pos.step, "loss": loss, "lr": lr, "top1": top1,
            "top5": top5, "images_per_sec": images_per_sec,
            "wall_time": self.t0.elapsed().as_secs_f64(),
        }))?;
        if top1 > self.pos.best.0 {
            self.pos.best = (top1, top5, epoch + 1);
            let best = c.out.join("classifier_best.safetensors");
            save_classifier(&fc, &self.data.0.classes, &best)?;
        }
        self.last_logits = logits;
        self.bar.set_message(format!(
            "linear loss {loss:.3} val top-1 {:.1} %",
            100.0 * top1
        ));
        self.bar.inc(1);
        self.pos = Position {
            epoch: epoch + 1,
            step: self.pos.step,
            best: self.pos.best,
            last: (top1, top5),
            ..Position::default()
        };
        // After every epoch, so a kill without warning (SIGKILL, a lost node) loses at most an
        // epoch: at the competition's size the full protocol's epoch takes minutes on a CPU.
        if self.pos.epoch < c.epochs {
            self.save_state()?;
        }
        Ok(())
    }

    /// The probe's state after the position: the classifier's optimizer and, fine-tuning, the
    /// backbone's.
    fn save_state(&self) -> Result<std::path::PathBuf> {
        let mut opts: Vec<&Optimizer> = vec![&self.opt];
        opts.extend(self.backbone_opt.as_ref().map(|(o, _)| o));
        resume::save(&self.c.out, self.c, &self.pos, &opts, &self.buffers)
    }

    fn finish(self) -> Outcome {
        self.bar.finish_and_clear();
        let _ = std::fs::remove_file(resume::path(&self.c.out));
        Outcome {
            fc: raw_fc(&self.head, self.src.norm.as_ref()),
            last: self.pos.last,
            best: self.pos.best,
            last_logits: self.last_logits,
            seconds: self.t0.elapsed().as_secs_f64(),
            knn: self.knn,
        }
    }
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
