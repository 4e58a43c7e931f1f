//! `moco-train linear`: MoCo's linear protocol — the backbone frozen in eval mode (BN statistics
//! do not move), a linear layer on pooled features initialised N(0, 0.01) with zero bias, SGD
//! (lr 30, momentum 0.9, no weight decay), ×0.1 at the milestones or a cosine decay, the train
//! transform RandomResizedCrop + flip, top-1/top-5 on the val split every epoch. `--fast` caches
//! the frozen features once (no augmentation); `--finetune` trains the whole network instead;
//! `--standardize` normalises the features first (MAE's probe, see [`standardize`]).

mod standardize;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use datasets::layout::Split;
use models::{Arch, Classifier, Preprocess, TensorMap};
use models_tch::{to_tensor_map, ClassifierModule};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::augment::{AugConfig, Augmenter};
use crate::data::DecodedSplit;
use crate::encoder::Backbone;
use crate::features::{self, top1_top5};
use crate::metrics::MetricsLog;
use crate::moco::optim::Sgd;
use crate::rng::{permutation, stream, Purpose};
pub use standardize::Standardizer;

/// MoCo's probe lr for raw pooled features, and the lr for standardised ones (unit-variance
/// inputs: the lr of a plain softmax regression; measured on the demo data and imagenette96).
const RAW_LR: f64 = 30.0;
const STANDARDIZED_LR: f64 = 0.1;

#[derive(Args, Debug, Clone)]
pub struct LinearArgs {
    #[command(flatten)]
    pub io: crate::eval_args::EvalArgs,
    /// Pretrained backbone (`RUN/encoder.safetensors`).
    #[arg(long, required_unless_present = "random_init")]
    pub encoder: Option<PathBuf>,
    /// Use torchvision's random initialisation (the floor); needs --arch.
    #[arg(long, requires = "arch")]
    pub random_init: bool,
    #[arg(long)]
    pub arch: Option<Arch>,
    #[arg(long, default_value = "train")]
    pub train_split: Split,
    #[arg(long, default_value = "val")]
    pub val_split: Split,
    /// Output directory: classifier.safetensors (last), classifier_best.safetensors,
    /// metrics.jsonl, config.json, val_predictions.csv.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 100)]
    pub epochs: usize,
    /// Base lr: 30 (MoCo's) on raw features, 0.1 with --standardize.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Epochs after which the lr is multiplied by 0.1 (comma-separated).
    #[arg(long, default_value = "60,80", value_delimiter = ',')]
    pub milestones: Vec<usize>,
    /// Cosine decay over the epochs instead of milestones.
    #[arg(long)]
    pub cosine: bool,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Cache the frozen features once (eval transform, no augmentation) and train on them.
    #[arg(long, conflicts_with = "finetune")]
    pub fast: bool,
    /// Train the whole network (backbone in train mode) with --backbone-lr.
    #[arg(long)]
    pub finetune: bool,
    #[arg(long, default_value_t = 0.01)]
    pub backbone_lr: f64,
    /// Standardise each feature with the train split's mean and std (a BatchNorm without
    /// affine before the classifier, folded into the saved fc).
    #[arg(long, conflicts_with = "finetune")]
    pub standardize: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub quiet: bool,
    #[arg(long)]
    pub json: bool,
}

impl LinearArgs {
    pub fn base_lr(&self) -> f64 {
        self.lr.unwrap_or(if self.standardize {
            STANDARDIZED_LR
        } else {
            RAW_LR
        })
    }
}

fn lr_at(a: &LinearArgs, base: f64, epoch: usize) -> f64 {
    if a.cosine {
        base * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / a.epochs as f64).cos())
    } else {
        base * 0.1f64.powi(a.milestones.iter().filter(|&&m| epoch >= m).count() as i32)
    }
}

fn digest(vs: &VarStore) -> Vec<u8> {
    let map = to_tensor_map(&vs.variables(), |_| true);
    let mut h = Sha256::new();
    for (n, t) in &map.tensors {
        h.update(n.as_bytes());
        h.update(&t.bytes);
    }
    h.finalize().to_vec()
}

/// The classifier on raw features: the trained fc, with the standardisation folded in.
fn raw_fc(head: &ClassifierModule, norm: Option<&Standardizer>) -> (Tensor, Tensor) {
    tch::no_grad(|| match norm {
        Some(s) => s.fold(&head.fc.weight, &head.fc.bias),
        None => (head.fc.weight.copy(), head.fc.bias.copy()),
    })
}

fn save_classifier(
    fc: &(Tensor, Tensor),
    classes: &[String],
    path: &std::path::Path,
) -> Result<()> {
    let mut map = TensorMap::new();
    map.insert("fc.weight", models_tch::tensor_to_data(&fc.0));
    map.insert("fc.bias", models_tch::tensor_to_data(&fc.1));
    map.metadata.insert(
        models::preprocess::META_CLASSES.into(),
        serde_json::to_string(classes)?,
    );
    map.save(path)?;
    Ok(())
}

pub fn run(a: &LinearArgs) -> Result<Value> {
    let device = a.io.setup()?;
    if a.epochs == 0 || a.batch_size == 0 {
        bail!("--epochs and --batch-size must be at least 1");
    }
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("--out {}: cannot create", a.out.display()))?;
    let progress = !a.quiet && !a.json;
    let mut backbone = match (&a.encoder, a.arch) {
        (Some(p), _) if !a.random_init => Backbone::load(p, device)?,
        (_, Some(arch)) => Backbone::random(arch, a.seed, device),
        _ => bail!("--random-init needs --arch"),
    };
    let open = |s: Split, flag: &str| -> Result<DecodedSplit> {
        let d = a.io.open(s, progress)?;
        if !d.is_labeled() {
            bail!("{flag} {}: {} has no labels", s.name(), a.io.data.display());
        }
        Ok(d)
    };
    let train = open(a.train_split, "--train-split")?;
    let val = open(a.val_split, "--val-split")?;
    let classes = train.classes.clone();
    if val.classes.len() != classes.len() {
        bail!(
            "--val-split: {} classes, the train split has {}",
            val.classes.len(),
            classes.len()
        );
    }
    let pre = Preprocess::default();
    let before = digest(&backbone.vs);

    tch::manual_seed(a.seed as i64);
    let head_vs = VarStore::new(device);
    let mut head = ClassifierModule::new(
        &head_vs.root(),
        &Classifier::new(backbone.net.desc.feature_dim, classes.len()),
    );
    head.reset_moco();
    let mut opt = Sgd::new(
        vec![
            ("fc.weight".into(), head.fc.weight.shallow_clone()),
            ("fc.bias".into(), head.fc.bias.shallow_clone()),
        ],
        a.momentum,
        a.weight_decay,
    );
    let mut backbone_opt = if a.finetune {
        let params: Vec<(String, Tensor)> = backbone
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        Some(Sgd::new(params, a.momentum, a.weight_decay))
    } else {
        backbone.vs.freeze();
        None
    };

    let train_labels = features::labels(&train, device);
    let val_labels = features::labels(&val, device);
    let frozen = |split: &DecodedSplit, what: &str| {
        features::extract(&backbone.net, split, &pre, device, 256, progress, what)
    };
    let fixed_val = (!a.finetune).then(|| frozen(&val, "val features"));
    let fixed_train = a.fast.then(|| frozen(&train, "train features"));
    let norm = a.standardize.then(|| match &fixed_train {
        Some(f) => Standardizer::fit(f),
        None => Standardizer::fit(&frozen(&train, "train feature statistics")),
    });
    let aug = Augmenter::new(AugConfig::linear(a.io.size), &pre, device);

    let config = json!({
        "command": "linear",
        "encoder": a.encoder.as_ref().map(|p| p.display().to_string()),
        "random_init": a.random_init,
        "arch": backbone.arch.name(),
        "data": a.io.data.display().to_string(),
        "train_split": a.train_split.name(), "val_split": a.val_split.name(),
        "epochs": a.epochs, "lr": a.base_lr(), "milestones": a.milestones, "cosine": a.cosine,
        "batch_size": a.batch_size, "weight_decay": a.weight_decay, "momentum": a.momentum,
        "fast": a.fast, "finetune": a.finetune, "backbone_lr": a.backbone_lr,
        "standardize": a.standardize,
        "seed": a.seed, "size": a.io.size, "classes": classes,
        "preprocess": pre,
    });
    models::weights::write_atomic(
        &a.out.join("config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    let mut log = MetricsLog::open(&a.out.join("metrics.jsonl"), None)?;

    let bar = crate::progress::bar(a.epochs as u64, "linear", progress);
    let t0 = Instant::now();
    let mut best = (-1.0f64, 0.0f64, 0usize);
    let mut last = (0.0, 0.0);
    let mut last_logits = Tensor::zeros([0], (Kind::Float, device));
    let mut step = 0u64;
    for epoch in 0..a.epochs {
        let lr = lr_at(a, a.base_lr(), epoch);
        let blr = lr_at(a, a.backbone_lr, epoch);
        let order = permutation(
            &mut stream(a.seed, Purpose::LinearOrder, epoch as u64),
            train.n,
        );
        let (mut loss_sum, mut seen) = (Tensor::zeros([], (Kind::Float, device)), 0usize);
        let te = Instant::now();
        for chunk in order.chunks(a.batch_size) {
            let idx: Vec<usize> = chunk.iter().map(|&i| i as usize).collect();
            let idx_t = Tensor::from_slice(chunk).to(device);
            let targets = train_labels.index_select(0, &idx_t);
            let feats = match &fixed_train {
                Some(f) => f.index_select(0, &idx_t),
                None => {
                    let images = train.batch(&idx);
                    let mut rng = stream(a.seed, Purpose::LinearAugment, step);
                    let p = aug.draw(&mut rng, idx.len(), a.io.size, a.io.size);
                    let x = aug.views(&images, &p);
                    if a.finetune {
                        backbone.net.forward_t(&x, true)
                    } else {
                        tch::no_grad(|| backbone.net.forward_t(&x, false))
                    }
                }
            };
            let feats = match &norm {
                Some(s) => s.apply(&feats),
                None => feats,
            };
            opt.zero_grad();
            if let Some(o) = &mut backbone_opt {
                o.zero_grad();
            }
            let loss = head
                .forward(&feats)
                .log_softmax(-1, Kind::Float)
                .nll_loss(&targets);
            loss.backward();
            opt.step(lr);
            if let Some(o) = &mut backbone_opt {
                o.step(blr);
            }
            loss_sum += loss.detach() * idx.len() as f64;
            seen += idx.len();
            step += 1;
        }
        let train_secs = te.elapsed().as_secs_f64();
        let val_feats = match &fixed_val {
            Some(f) => f.shallow_clone(),
            None => features::extract(&backbone.net, &val, &pre, device, 256, false, ""),
        };
        let fc = raw_fc(&head, norm.as_ref());
        let logits = tch::no_grad(|| val_feats.linear(&fc.0, Some(&fc.1)));
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
            save_classifier(&fc, &classes, &a.out.join("classifier_best.safetensors"))?;
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
    save_classifier(
        &raw_fc(&head, norm.as_ref()),
        &classes,
        &a.out.join("classifier.safetensors"),
    )?;

    if a.finetune {
        let map = to_tensor_map(&backbone.vs.variables(), |_| true);
        map.save(&a.out.join("encoder.safetensors"))?;
    } else if digest(&backbone.vs) != before {
        bail!("linear: the frozen backbone changed during training (a bug: please report)");
    }
    let preds = Vec::<i64>::try_from(last_logits.argmax(1, false).to_device(Device::Cpu))?;
    let mut csv = String::from(datasets::csv::HEADER);
    for (i, p) in preds.iter().enumerate() {
        csv.push_str(&datasets::csv::row(
            &val.names[i],
            *p as usize,
            val.labels[i],
        ));
    }
    models::weights::write_atomic(&a.out.join("val_predictions.csv"), csv.as_bytes())?;
    eprintln!(
        "linear: val top-1 {:.2} % top-5 {:.2} % (best {:.2} % at epoch {}) → {}",
        100.0 * last.0,
        100.0 * last.1,
        100.0 * best.0,
        best.2,
        a.out.join("classifier.safetensors").display()
    );
    Ok(json!({
        "top1": last.0, "top5": last.1, "best_top1": best.0, "best_epoch": best.2,
        "n": val.n, "epochs": a.epochs,
        "classifier": a.out.join("classifier.safetensors").display().to_string(),
        "seconds": t0.elapsed().as_secs_f64(),
    }))
}
