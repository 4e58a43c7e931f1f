//! `linear --resume`: the probe's state after any step, in one safetensors file in the run
//! directory, written when a stop signal arrives. The batch order and the augmentations are drawn
//! from (seed, epoch) and (seed, step) streams, so the position in the run is all that a resume
//! needs besides the tensors, and it ends as an uninterrupted run would.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use models::TensorMap;
use models_tch::convert::{data_to_tensor, tensor_to_data};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::Tensor;

use super::LinearConfig;
use crate::nn::optim::Optimizer;

pub const FILE: &str = "linear-checkpoint.safetensors";
const POSITION_KEY: &str = "moco.linear.position";
const CONFIG_KEY: &str = "moco.linear.config";

/// Where the run is: the next batch to train, and what the epochs so far reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: usize,
    /// Batches of `epoch` already trained.
    pub batch: usize,
    pub step: u64,
    /// The epoch's summed loss and images so far (its logged mean loss).
    pub loss_sum: f64,
    pub seen: usize,
    /// (top-1, top-5, epoch) of the best epoch, (-1, 0, 0) before the first.
    pub best: (f64, f64, usize),
    pub last: (f64, f64),
}

impl Position {
    pub fn start() -> Self {
        Position {
            best: (-1.0, 0.0, 0),
            ..Position::default()
        }
    }
}

impl Position {
    /// A position this run can reach: within its epochs and batches, with the images seen that
    /// those batches hold (a hand-edited file could claim anything).
    fn check(&self, c: &LinearConfig, images: usize) -> Result<()> {
        let batches = images.div_ceil(c.batch_size.max(1));
        let seen = (self.batch * c.batch_size).min(images);
        if self.epoch > c.epochs || self.batch > batches || self.seen != seen {
            bail!(
                "epoch {} batch {} ({} images seen) is not a position of {} epochs of {batches} \
                 batches",
                self.epoch,
                self.batch,
                self.seen,
                c.epochs
            );
        }
        Ok(())
    }
}

/// The position a state file holds, checked against the run: a hand-edited file could claim
/// anything.
pub fn position(map: &TensorMap, c: &LinearConfig, train_images: usize) -> Result<Position> {
    let text = map
        .metadata
        .get(POSITION_KEY)
        .with_context(|| format!("no `{POSITION_KEY}`"))?;
    let pos: Position = serde_json::from_str(text).context("unreadable position")?;
    pos.check(c, train_images)?;
    Ok(pos)
}

pub fn path(out: &Path) -> PathBuf {
    out.join(FILE)
}

/// The configuration a resume must match: everything but whether to resume, the progress bar
/// where TensorBoard files go and the recorded flags.
fn config_key(c: &LinearConfig) -> Result<String> {
    let mut v = serde_json::to_value(c)?;
    if let Value::Object(m) = &mut v {
        m.remove("resume");
        m.remove("progress");
        m.remove("tensorboard");
        m.remove("command_line");
    }
    Ok(v.to_string())
}

/// The tensors a checkpoint holds: the optimizers' parameters (the classifier and, fine-tuning,
/// the backbone) and their momentum buffers, and `buffers` (a fine-tuned backbone's BN statistics).
fn named_state(opts: &[&Optimizer], buffers: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = buffers
        .iter()
        .map(|(n, t)| (format!("buffer/{n}"), t.shallow_clone()))
        .collect();
    for (i, o) in opts.iter().enumerate() {
        for ((name, p), buf) in o.params.iter().zip(&o.buffers) {
            out.push((format!("{i}/{name}"), p.shallow_clone()));
            if let Some(b) = buf {
                out.push((format!("{i}/momentum/{name}"), b.shallow_clone()));
            }
        }
    }
    out
}

/// The state after `pos`, in the run directory (an atomic write).
pub fn save(
    out: &Path,
    c: &LinearConfig,
    pos: &Position,
    opts: &[&Optimizer],
    buffers: &[(String, Tensor)],
) -> Result<PathBuf> {
    let mut map = TensorMap::new();
    for (name, t) in named_state(opts, buffers) {
        map.insert(name, tensor_to_data(&t));
    }
    map.metadata
        .insert(POSITION_KEY.into(), serde_json::to_string(pos)?);
    map.metadata.insert(CONFIG_KEY.into(), config_key(c)?);
    let p = path(out);
    map.save(&p)?;
    Ok(p)
}

/// The saved position with the optimizers restored, or `None` when there is nothing to resume.
pub fn restore(
    out: &Path,
    c: &LinearConfig,
    opts: &mut [&mut Optimizer],
    buffers: &[(String, Tensor)],
    train_images: usize,
) -> Result<Option<Position>> {
    let p = path(out);
    if !c.resume || !p.exists() {
        return Ok(None);
    }
    let map = TensorMap::load(&p)?;
    let meta = |k: &str| {
        map.metadata
            .get(k)
            .with_context(|| format!("--resume: {}: no `{k}`", p.display()))
    };
    if *meta(CONFIG_KEY)? != config_key(c)? {
        bail!(
            "--resume: {} was written by a linear run with another configuration; use another --out",
            p.display()
        );
    }
    let pos =
        position(&map, c, train_images).with_context(|| format!("--resume: {}", p.display()))?;
    let take = |name: &str, like: &Tensor| -> Result<Tensor> {
        let d = map
            .get(name)
            .with_context(|| format!("--resume: {}: no `{name}`", p.display()))?;
        Ok(data_to_tensor(d)
            .to_device(like.device())
            .to_kind(like.kind()))
    };
    for (name, t) in buffers {
        let v = take(&format!("buffer/{name}"), t)?;
        tch::no_grad(|| t.shallow_clone().copy_(&v));
    }
    for (i, o) in opts.iter_mut().enumerate() {
        for ((name, param), buf) in o.params.iter().zip(o.buffers.iter_mut()) {
            let t = take(&format!("{i}/{name}"), param)?;
            tch::no_grad(|| param.shallow_clone().copy_(&t));
            *buf = map.get(&format!("{i}/momentum/{name}")).map(|d| {
                data_to_tensor(d)
                    .to_device(param.device())
                    .to_kind(param.kind())
            });
        }
    }
    Ok(Some(pos))
}
