//! `moco-train linear`: MoCo's linear protocol — the backbone frozen in eval mode (BN statistics
//! do not move), a linear layer on pooled features initialised N(0, 0.01) with zero bias, SGD
//! (lr 30, momentum 0.9, no weight decay), ×0.1 at the milestones or a cosine decay, the train
//! transform RandomResizedCrop + flip, top-1/top-5 on the val split every epoch. The fast mode
//! caches the frozen features once (no augmentation); fine-tuning trains the whole network
//! instead; `standardize` normalises the features first (MAE's probe, see [`standardize`]).

mod probe;
pub mod resume;
mod standardize;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use datasets::layout::Split;
use models::TensorMap;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::config::{Compute, DataSource};
use crate::data::DecodedSplit;
use crate::nn::encoder::EncoderSource;
use crate::nn::optim::EpochDecay;
use crate::runtime::stop::StopFlag;
pub use standardize::Standardizer;

/// MoCo's probe lr for raw pooled features, and the lr for standardised ones (unit-variance
/// inputs: the lr of a plain softmax regression; measured on the demo data and imagenette96).
pub const RAW_LR: f64 = 30.0;
pub const STANDARDIZED_LR: f64 = 0.1;

/// What the probe trains on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeMode {
    /// Frozen features cached once under the eval transform.
    Fast,
    /// Frozen backbone on augmented train images every epoch.
    Augmented,
    /// The whole network trained, the backbone at its own lr.
    Finetune { backbone_lr: f64 },
}

/// `moco-train linear`, every number decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearConfig {
    pub data: DataSource,
    pub compute: Compute,
    pub encoder: EncoderSource,
    pub train_split: Split,
    pub val_split: Split,
    /// classifier.safetensors (last), classifier_best.safetensors, metrics.jsonl, config.json,
    /// val_predictions.csv.
    pub out: PathBuf,
    pub epochs: usize,
    /// Base lr of the classifier.
    pub lr: f64,
    pub decay: EpochDecay,
    pub batch_size: usize,
    pub weight_decay: f64,
    pub momentum: f64,
    pub mode: ProbeMode,
    /// Standardise each feature with the train split's mean and std (folded into the saved fc).
    pub standardize: bool,
    /// Also the weighted kNN accuracy (k, T) of the cached frozen features (fast mode): the
    /// `knn` command's number without a second pass over the data.
    pub knn: Option<(usize, f64)>,
    pub seed: u64,
    pub progress: bool,
    /// TensorBoard event files (None: none written).
    #[serde(default)]
    pub tensorboard: Option<PathBuf>,
    /// Continue from `linear-checkpoint.safetensors` in `out` (written when a stop signal came).
    #[serde(default)]
    pub resume: bool,
    /// The flags that built this configuration, recorded for `--config` (empty in-process).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command_line: Vec<String>,
}

impl LinearConfig {
    fn check(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 {
            bail!("--epochs and --batch-size must be at least 1");
        }
        if self.standardize && matches!(self.mode, ProbeMode::Finetune { .. }) {
            bail!("--standardize: a probe on frozen features (not with --finetune)");
        }
        if self.knn.is_some() && self.mode != ProbeMode::Fast {
            bail!("--knn: reported from the cached features of --fast");
        }
        Ok(())
    }
}

/// A digest of every variable: the frozen backbone must end as it started.
fn digest(vs: &VarStore) -> Vec<u8> {
    let map = models_tch::to_tensor_map(&vs.variables(), |_| true);
    let mut h = Sha256::new();
    for (n, t) in &map.tensors {
        h.update(n.as_bytes());
        h.update(&t.bytes);
    }
    h.finalize().to_vec()
}

fn save_classifier(fc: &(Tensor, Tensor), classes: &[String], path: &Path) -> Result<()> {
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

/// The train and val splits, both labeled with the same classes.
fn open_splits(c: &LinearConfig) -> Result<(DecodedSplit, DecodedSplit)> {
    let open = |s: Split, flag: &str| -> Result<DecodedSplit> {
        let d = c.data.open(s, c.progress)?;
        if !d.is_labeled() {
            bail!(
                "{flag} {}: {} has no labels",
                s.name(),
                c.data.root.display()
            );
        }
        Ok(d)
    };
    let train = open(c.train_split, "--train-split")?;
    let val = open(c.val_split, "--val-split")?;
    if val.classes.len() != train.classes.len() {
        bail!(
            "--val-split: {} classes, the train split has {}",
            val.classes.len(),
            train.classes.len()
        );
    }
    Ok((train, val))
}

/// The last epoch's val predictions as SPEC's CSV.
fn write_predictions(val: &DecodedSplit, logits: &Tensor, path: &Path) -> Result<()> {
    let preds = Vec::<i64>::try_from(logits.argmax(1, false).to_device(Device::Cpu))?;
    let mut csv = String::from(datasets::csv::HEADER);
    for (i, p) in preds.iter().enumerate() {
        csv.push_str(&datasets::csv::row(
            &val.names[i],
            *p as usize,
            val.labels[i],
        ));
    }
    atomic_io::write_atomic(path, csv.as_bytes())?;
    Ok(())
}

/// `moco-train linear`; a stop request saves the probe's state after the step it is in and ends
/// with [`crate::runtime::stop::Preempted`].
pub fn run(c: &LinearConfig, stop: StopFlag) -> Result<Value> {
    let device = c.compute.setup()?;
    c.check()?;
    let _out_lock = crate::runtime::run_dir::claim(&c.out)?;
    let mut backbone = c.encoder.load(device)?;
    let (train, val) = open_splits(c)?;
    let classes = train.classes.clone();
    let before = digest(&backbone.vs);
    let config = json!({"command": "linear", "config": c, "arch": backbone.arch.name(),
        "classes": classes, "preprocess": models::Preprocess::default(),
        "command_line": c.command_line});
    atomic_io::write_atomic(
        &c.out.join("config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    let outcome = probe::train(c, &mut backbone, &train, &val, device, &stop)?;
    save_classifier(&outcome.fc, &classes, &c.out.join("classifier.safetensors"))?;
    if matches!(c.mode, ProbeMode::Finetune { .. }) {
        let map = models_tch::to_tensor_map(&backbone.vs.variables(), |_| true);
        map.save(&c.out.join("encoder.safetensors"))?;
    } else if digest(&backbone.vs) != before {
        bail!("linear: the frozen backbone changed during training (a bug: please report)");
    }
    write_predictions(
        &val,
        &outcome.last_logits,
        &c.out.join("val_predictions.csv"),
    )?;
    let (last, best) = (outcome.last, outcome.best);
    if let Some(k) = &outcome.knn {
        eprintln!(
            "linear: kNN (k={}, T={}) top-1 {:.2} % top-5 {:.2} %",
            c.knn.map_or(0, |k| k.0),
            c.knn.map_or(0.0, |k| k.1),
            100.0 * k.top1,
            100.0 * k.top5
        );
    }
    eprintln!(
        "linear: val top-1 {:.2} % top-5 {:.2} % (best {:.2} % at epoch {}) → {}",
        100.0 * last.0,
        100.0 * last.1,
        100.0 * best.0,
        best.2,
        c.out.join("classifier.safetensors").display()
    );
    Ok(json!({
        "top1": last.0, "top5": last.1, "best_top1": best.0, "best_epoch": best.2,
        "n": val.n, "epochs": c.epochs,
        "classifier": c.out.join("classifier.safetensors").display().to_string(),
        "seconds": outcome.seconds,
        "knn_top1": outcome.knn.as_ref().map(|k| k.top1),
        "knn_top5": outcome.knn.as_ref().map(|k| k.top5),
    }))
}
