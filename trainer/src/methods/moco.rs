//! MoCo v1 and v2 (He et al. 2020; Chen et al. 2020): a query encoder trained by the optimizer, a
//! key encoder that follows it by momentum, and a queue of past keys as negatives — the official
//! `moco/builder.py`, with the single-device shuffle BN of MoCo's demo (`SplitBatchNorm` and a
//! shuffled key batch). v1 and v2 are one algorithm in two configurations: v1 projects with one
//! linear layer at T 0.07 without blur; v2 with a two-layer MLP at T 0.2 with aug+. Either takes
//! multi-crop's small views (`--small-crops`) as extra queries.

use std::rc::Rc;

use anyhow::{bail, Result};
use models::{Arch, MlpShape, ResNetDesc, MOCO_DIM};
use tch::{Device, Kind, Tensor};

use super::parts::{named, Online, Target};
use super::{Build, Entry, Loss, Method, StepCtx, Views};
use crate::augment::AugConfig;
use crate::config::{MethodConfig, Recipe};
use crate::runtime::counters::upload_async;
use crate::runtime::dist::Dist;
use crate::runtime::faults::{planted, Fault};
use crate::nn::loss::{info_nce, info_nce_per_key, normalize};
use crate::nn::optim::{MomentumSchedule, OptimizerKind};
use crate::runtime::rng::{permutation, stream, Purpose};

/// Planted fault: the key encoder's momentum update after the key forward instead of before it.
pub const MOMENTUM_AFTER_KEYS: Fault = "moco momentum after keys";
/// Planted fault: keys left in shuffled order.
pub const NO_UNSHUFFLE: Fault = "moco keys not unshuffled";
/// Planted fault: with the symmetric loss, the small views against view 2's key only.
pub const SMALL_ONE_KEY: Fault = "moco small views against one key";
/// Planted fault: the projector's BatchNorm over the whole batch instead of the shuffle-BN groups.
pub const HEAD_BN_WHOLE_BATCH: Fault = "moco head bn whole batch";

pub const MOCOV2: Entry = Entry {
    name: "mocov2",
    about: "MoCo v2: MLP projector, T 0.2, aug+ with blur, queue, momentum key encoder (default)",
    recipe: v2_recipe,
    augmentation: AugConfig::mocov2,
    config: |r, arch| moco_config(r, arch, false),
    build,
    small_views: true,
};

pub const MOCOV1: Entry = Entry {
    name: "mocov1",
    about: "MoCo v1: linear projector, T 0.07, m 0.999, stronger colour jitter, no blur",
    recipe: v1_recipe,
    augmentation: v1_augmentation,
    config: |r, arch| moco_config(r, arch, true),
    build,
    small_views: true,
};

/// The project's MoCo v2 defaults (the official recipe at 8 GPUs: 8 shuffle-BN groups).
fn v2_recipe(_: Arch) -> Recipe {
    Recipe {
        optimizer: Some(OptimizerKind::Sgd),
        lr: Some(0.06),
        weight_decay: Some(5e-4),
        optim_momentum: Some(0.9),
        temperature: Some(0.2),
        momentum: Some(0.99),
        queue_size: Some(2048),
        bn_splits: Some(8),
        symmetric: Some(false),
        head_bn: Some(false),
        proj_dim: Some(MOCO_DIM),
        mlp_hidden: Some(0),
        crop: None,
        crop_from: None,
    }
}

/// MoCo v1's `main_moco.py` defaults (lr 0.03, wd 1e-4, m 0.999, T 0.07); the queue keeps the
/// project's 2048 (the paper's 65536 is for ImageNet's 1.28 M images).
fn v1_recipe(arch: Arch) -> Recipe {
    Recipe {
        lr: Some(0.03),
        weight_decay: Some(1e-4),
        temperature: Some(0.07),
        momentum: Some(0.999),
        ..v2_recipe(arch)
    }
}

/// MoCo v1's augmentation: crop (0.2, 1), colour jitter 0.4 on all four factors always,
/// grayscale 0.2, flip; no blur. (Its torchvision pipeline greys before jittering, ours after:
/// the two differ only on views drawn grey, by the hue shift's effect on luma.)
fn v1_augmentation(size: u32) -> AugConfig {
    AugConfig {
        jitter_p: 1.0,
        jitter: (0.4, 0.4, 0.4, 0.4),
        blur_p: 0.0,
        ..AugConfig::mocov2(size)
    }
}

/// `linear`: MoCo v1's one-layer projector instead of v2's MLP.
fn moco_config(r: &Recipe, arch: Arch, linear: bool) -> Result<MethodConfig> {
    let need = |v: Option<f64>, flag: &str| -> Result<f64> {
        v.ok_or_else(|| anyhow::anyhow!("{flag}: no value"))
    };
    let hidden = super::hidden_width(r, arch);
    let head_bn = r.head_bn.unwrap_or(false);
    let out = r.proj_dim.unwrap_or(MOCO_DIM);
    if linear && head_bn {
        bail!("--head-bn: MoCo v1's projector is one linear layer, with no BatchNorm");
    }
    Ok(MethodConfig {
        name: if linear { "mocov1" } else { "mocov2" }.into(),
        temperature: need(r.temperature, "--temperature")?,
        momentum: need(r.momentum, "--moco-momentum")?,
        momentum_schedule: MomentumSchedule::Constant,
        queue_size: r.queue_size.unwrap_or(0),
        symmetric: r.symmetric.unwrap_or(false),
        projector: MlpShape {
            layers: if linear { 1 } else { 2 },
            hidden,
            out,
            bias: true,
            hidden_norm: head_bn,
            out_norm: head_bn,
        },
        predictor: None,
    })
}

fn build(cfg: &MethodConfig, b: &Build) -> Result<Box<dyn Method>> {
    Ok(Box::new(Moco::new(cfg.clone(), b)?))
}

pub struct Moco {
    pub cfg: MethodConfig,
    pub q: Online,
    pub k: Target,
    /// `[dim, K]`, columns l2-normalised, as the official queue.
    pub queue: Tensor,
    /// The next column to overwrite, as a 0-dim int64 tensor so that it is checkpointed with the
    /// queue (the official `queue_ptr` buffer).
    pub queue_ptr: Tensor,
    /// Data-parallel ranks: keys are shuffled across all of them (shuffle BN as the official
    /// MoCo: gather the key images, run this rank's slice of the shuffled batch, gather the keys).
    pub dist: Option<Rc<Dist>>,
    /// Between `loss` and `after_step`: the whole batch's keys and this rank's queries.
    pending: Option<(Tensor, Tensor)>,
    /// The step's shuffle permutations on the device, set by `stage` (a capturable step; the
    /// queue pointer then lives on the device too).
    staged_perms: Option<Vec<Tensor>>,
    /// Images per step over all ranks (the permutations' length).
    batch: usize,
}

impl Moco {
    /// Query encoder initialised as torchvision does; the key encoder a copy of it; the queue
    /// random unit vectors (`Tensor::randn` then normalised) — drawn in that order.
    pub fn new(cfg: MethodConfig, b: &Build) -> Result<Self> {
        let keys_per_step = b.batch as i64 * if cfg.symmetric { 2 } else { 1 };
        if cfg.queue_size <= 0 || cfg.queue_size % keys_per_step != 0 {
            bail!(
                "--queue-size {} must be a positive multiple of the keys per step ({keys_per_step})",
                cfg.queue_size
            );
        }
        let desc = ResNetDesc::new(b.arch);
        let head_splits = if planted(HEAD_BN_WHOLE_BATCH) {
            1
        } else {
            b.bn_splits
        };
        let q = Online::with_head_splits(&cfg, &desc, b.device, b.bn_splits, head_splits);
        let k = Target::follow(&q, &cfg, &desc, b.bn_splits, head_splits);
        let dim = cfg.projector.out as i64;
        let queue = normalize(
            &Tensor::randn([dim, cfg.queue_size], (Kind::Float, b.device)).transpose(0, 1),
        )
        .transpose(0, 1)
        .contiguous();
        Ok(Moco {
            cfg,
            q,
            k,
            queue,
            queue_ptr: Tensor::from(0i64),
            dist: None,
            pending: None,
            staged_perms: None,
            batch: b.batch,
        })
    }

    fn ptr(&self) -> i64 {
        self.queue_ptr.int64_value(&[])
    }

    fn embed_q(&self, x: &Tensor) -> Tensor {
        normalize(&self.q.enc.project(x, true))
    }

    /// Keys of `im_k` from the key encoder, the batch shuffled by `perm` before it and put back
    /// after (shuffle BN: no sub-batch sees the same images in the query and key encoders).
    /// Returns this rank's keys and the whole batch's (the same on one process). Across ranks
    /// `perm` runs over the global batch, so the BN groups are those of one process with
    /// `--bn-splits` groups; every rank draws the same `perm` from the (seed, step) stream.
    fn keys(&self, im_k: &Tensor, idx: &Tensor) -> Result<(Tensor, Tensor)> {
        tch::no_grad(|| {
            let unshuffle = |k: Tensor| {
                if planted(NO_UNSHUFFLE) {
                    k
                } else {
                    k.index_select(0, &idx.argsort(0, false))
                }
            };
            let embed = |x: &Tensor| normalize(&self.k.enc.project(x, true));
            match &self.dist {
                None => {
                    let k = unshuffle(embed(&im_k.index_select(0, idx)));
                    Ok((k.shallow_clone(), k))
                }
                Some(d) => {
                    use crate::runtime::dist::{interleave, share_tensor};
                    let all = interleave(&d.all_gather(im_k)?, d.world);
                    let mine = share_tensor(&all.index_select(0, idx), d.rank, d.world);
                    let k = embed(&mine);
                    let k = unshuffle(interleave(&d.all_gather(&k)?, d.world));
                    Ok((share_tensor(&k, d.rank, d.world), k))
                }
            }
        })
    }

    /// The loss of queries `im_q` against keys of `im_k`, this rank's keys, the whole batch's
    /// keys, the queries.
    fn contrastive(&self, im_q: &Tensor, im_k: &Tensor, perm: &Tensor) -> Result<[Tensor; 4]> {
        let q = self.embed_q(im_q);
        let (k, keys) = self.keys(im_k, perm)?;
        if planted(MOMENTUM_AFTER_KEYS) {
            self.k.update(self.cfg.momentum)?;
        }
        let loss = info_nce(&q, &k, &self.queue, self.cfg.temperature);
        Ok([loss, k, keys, q.detach()])
    }

    /// Multi-crop's terms: each small view's queries against each of `keys` (this rank's keys
    /// of the pair's views), summed. The small views go through the query encoder in one
    /// forward, as SwAV's crops of one resolution do (a 32 px view alone is too small a batch
    /// to keep the CPU busy), so its BatchNorm normalises them together.
    fn small_terms(&self, small: &[Tensor], keys: &[&Tensor]) -> Option<Tensor> {
        if small.is_empty() {
            return None;
        }
        let keys = if planted(SMALL_ONE_KEY) { &keys[..1] } else { keys };
        let q = self.embed_q(&Tensor::cat(small, 0));
        q.chunk(small.len() as i64, 0)
            .iter()
            .flat_map(|q| info_nce_per_key(q, keys, &self.queue, self.cfg.temperature))
            .reduce(|a, b| a + b)
    }

    /// Mean cosine similarity of `queries` to the newest and to the oldest `block` keys in the
    /// queue (call it before the step's enqueue). Keys differ in age only by the key encoder
    /// that made them: a newest-minus-oldest gap well above zero says the network can tell
    /// negatives apart by the encoder's drift rather than by their content.
    pub fn similarity_by_age(&self, queries: &Tensor, block: i64) -> (f64, f64) {
        tch::no_grad(|| {
            let k = self.cfg.queue_size;
            let ptr = self.ptr();
            let newest = (ptr - block).rem_euclid(k);
            let mean_to = |at: i64| {
                let cols = self.queue.narrow(1, at, block.min(k - at));
                queries.mm(&cols).mean(Kind::Double).double_value(&[])
            };
            (mean_to(newest), mean_to(ptr))
        })
    }

    /// Replaces the oldest keys: queue[:, ptr:ptr+N] = keysᵀ; ptr advances modulo K.
    pub fn enqueue(&mut self, keys: &Tensor) -> Result<()> {
        let n = keys.size()[0];
        if self.cfg.queue_size % n != 0 {
            bail!(
                "--queue-size {} must be a multiple of the keys per step ({n})",
                self.cfg.queue_size
            );
        }
        let k = self.cfg.queue_size;
        if self.staged_perms.is_some() {
            // The position on the device: the same kernels whatever it is.
            tch::no_grad(|| {
                let cols = (Tensor::arange(n, (Kind::Int64, keys.device())) + &self.queue_ptr)
                    .remainder(k);
                let _ = self
                    .queue
                    .index_copy_(1, &cols, &keys.detach().transpose(0, 1));
                self.queue_ptr += n;
                let _ = self.queue_ptr.remainder_(k);
            });
            return Ok(());
        }
        let ptr = self.ptr();
        tch::no_grad(|| {
            self.queue
                .narrow(1, ptr, n)
                .copy_(&keys.detach().transpose(0, 1));
        });
        self.queue_ptr = Tensor::from((ptr + n) % k);
        Ok(())
    }

    /// The step's shuffle permutations on the device: staged, or uploaded now.
    fn perms_on_device(&self, ctx: &StepCtx, batch: usize, device: Device) -> Vec<Tensor> {
        match &self.staged_perms {
            Some(staged) => staged.iter().map(Tensor::shallow_clone).collect(),
            None => shuffle_permutations(ctx.seed, ctx.step, batch, self.cfg.symmetric)
                .iter()
                .map(|p| upload_async(&Tensor::from_slice(p), device))
                .collect(),
        }
    }

    fn global_batch(&self, im: &Tensor) -> usize {
        let world = self.dist.as_ref().map_or(1, |d| d.world);
        im.size()[0] as usize * world
    }
}

/// The step's shuffle-BN permutations (two with the symmetric loss), from the (seed, step)
/// stream that every rank draws alike.
pub fn shuffle_permutations(seed: u64, step: u64, batch: usize, symmetric: bool) -> Vec<Vec<i64>> {
    let mut rng = stream(seed, Purpose::ShuffleBn, step);
    (0..if symmetric { 2 } else { 1 })
        .map(|_| permutation(&mut rng, batch))
        .collect()
}

impl Method for Moco {
    fn loss(&mut self, im1: &Tensor, im2: &Tensor, ctx: &StepCtx) -> Result<Loss> {
        let views = Views::pair(im1.shallow_clone(), im2.shallow_clone());
        self.loss_of(&views, ctx)
    }

    /// The momentum update comes first, as in the official code: the key encoder follows the
    /// query encoder as it was after the previous optimizer step. Small views (multi-crop) are
    /// queries against the pair's keys (the key of view 2; with the symmetric loss, of both
    /// views) and the queue; the loss is the mean over every query's terms times the pair's
    /// terms (1, or 2 symmetric), so that without small views it is the pair's loss unchanged.
    fn loss_of(&mut self, views: &Views, ctx: &StepCtx) -> Result<Loss> {
        let (im1, im2) = (&views.v1, &views.v2);
        let perms = self.perms_on_device(ctx, self.global_batch(im1), im1.device());
        if !planted(MOMENTUM_AFTER_KEYS) {
            self.k.update(self.cfg.momentum)?;
        }
        let (pair, own_keys, keys, queries) = if self.cfg.symmetric {
            let [la, ka, all_a, qa] = self.contrastive(im1, im2, &perms[0])?;
            let [lb, kb, all_b, qb] = self.contrastive(im2, im1, &perms[1])?;
            (
                la + lb,
                vec![ka, kb],
                Tensor::cat(&[all_b, all_a], 0),
                Tensor::cat(&[qa, qb], 0),
            )
        } else {
            let [l, k, all, q] = self.contrastive(im1, im2, &perms[0])?;
            (l, vec![k], all, q)
        };
        let own_keys: Vec<&Tensor> = own_keys.iter().collect();
        let loss = match self.small_terms(&views.small, &own_keys) {
            Some(small) => (pair + small) / (1 + views.small.len()) as f64,
            None => pair,
        };
        self.pending = Some((keys, queries));
        Ok(Loss::local_mean(loss))
    }

    fn after_step(&mut self, _: &StepCtx, log: bool) -> Result<Vec<(&'static str, f64)>> {
        let Some((keys, queries)) = self.pending.take() else {
            bail!("MoCo: after_step without a loss");
        };
        let mut fields = Vec::new();
        if log {
            let (newest, oldest) = self.similarity_by_age(&queries, keys.size()[0]);
            fields = vec![("neg_sim_newest", newest), ("neg_sim_oldest", oldest)];
        }
        let keys = keys.to_kind(self.queue.kind());
        self.enqueue(&keys)?;
        Ok(fields)
    }

    fn online(&self) -> &Online {
        &self.q
    }

    fn networks(&self) -> Vec<(String, Tensor)> {
        named(&[("q", &self.q.vs), ("k", &self.k.vs)])
    }

    fn extra_state(&self) -> Vec<(String, Tensor)> {
        vec![
            ("queue".into(), self.queue.shallow_clone()),
            ("queue_ptr".into(), self.queue_ptr.shallow_clone()),
        ]
    }

    fn attach(&mut self, dist: Rc<Dist>) {
        self.dist = Some(dist);
    }

    /// The permutations staged on the device, the queue pointer moved there.
    fn make_capturable(&mut self) -> Result<()> {
        let device = self.queue.device();
        let perms = if self.cfg.symmetric { 2 } else { 1 };
        let batch = self.batch as i64;
        self.staged_perms = Some(
            (0..perms)
                .map(|_| Tensor::zeros([batch], (Kind::Int64, device)))
                .collect(),
        );
        self.queue_ptr = self.queue_ptr.to_device(device);
        Ok(())
    }

    fn stage(&mut self, ctx: &StepCtx) -> Result<()> {
        let Some(staged) = &self.staged_perms else {
            return Ok(());
        };
        let perms = shuffle_permutations(ctx.seed, ctx.step, self.batch, self.cfg.symmetric);
        tch::no_grad(|| {
            for (to, p) in staged.iter().zip(&perms) {
                let from = upload_async(&Tensor::from_slice(p), to.device());
                to.shallow_clone().copy_(&from);
            }
        });
        Ok(())
    }
}
