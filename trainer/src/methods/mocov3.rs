//! MoCo v3 for ResNets (Chen, Xie, He 2021; the official `moco-v3/builder.py`, `MoCo_ResNet`):
//! a projector and a predictor on the online encoder, a momentum encoder whose momentum rises to
//! 1 on a cosine, no queue — each view's predictions against the other view's keys of the whole
//! batch, the loss scaled by 2T — and LARS.
//!
//! The published augmentations are BYOL's (`AugConfig::byol`: per-view blur, solarize on the
//! second view).

use std::rc::Rc;

use anyhow::Result;
use models::{Arch, MlpShape, ResNetDesc};
use tch::{Kind, Tensor};

use super::parts::{named, Online, StagedScalar, Target, ViewPair};
use super::{Entry, Loss, Method, StepCtx};
use crate::augment::AugConfig;
use crate::config::{MethodConfig, Recipe};
use crate::runtime::dist::{interleave, Dist};
use crate::runtime::faults::{planted, Fault};
use crate::nn::loss::batch_info_nce;
use crate::nn::optim::{MomentumSchedule, OptimizerKind};

/// Planted fault: each query against the keys of its own view instead of the other view's.
pub const SAME_VIEW_KEYS: Fault = "mocov3 same view keys";

pub const MOCOV3: Entry = Entry {
    name: "mocov3",
    about: "MoCo v3: projector + predictor, symmetric loss over the batch's keys, no queue, \
            momentum rising to 1, LARS",
    recipe,
    augmentation: AugConfig::byol,
    config,
    build: |cfg, b| {
        let desc = ResNetDesc::new(b.arch);
        let q = Online::new(cfg, &desc, b.device, b.bn_splits);
        let k = Target::follow(&q, cfg, &desc, b.bn_splits, b.bn_splits);
        Ok(Box::new(MocoV3 {
            cfg: cfg.clone(),
            q,
            k,
            dist: None,
            merge_views: b.merge_views,
            staged_m: StagedScalar::default(),
        }))
    },
    small_views: false,
};

/// `main_moco.py`'s ResNet-50 recipe: LARS, lr 0.6 (× batch/256), wd 1e-6, T 1.0, m 0.99 with
/// the cosine, MLPs 4096 wide with 256-d outputs; BatchNorm over the whole batch (its SyncBN).
fn recipe(_: Arch) -> Recipe {
    Recipe {
        optimizer: Some(OptimizerKind::Lars),
        lr: Some(0.6),
        weight_decay: Some(1e-6),
        optim_momentum: Some(0.9),
        temperature: Some(1.0),
        momentum: Some(0.99),
        bn_splits: Some(1),
        proj_dim: Some(256),
        mlp_hidden: Some(4096),
        ..Recipe::default()
    }
}

fn config(r: &Recipe, arch: Arch) -> Result<MethodConfig> {
    let given = [(r.queue_size.is_some(), "--queue-size"), (r.head_bn.is_some(), "--head-bn")];
    super::refuse(
        "mocov3",
        &given,
        "takes its negatives from the batch (no queue) and has BatchNorm in its projector",
    )?;
    let hidden = super::hidden_width(r, arch);
    let out = r.proj_dim.unwrap_or(256);
    // `_build_mlp`: Linear without bias, BatchNorm1d, ReLU …; the projector ends in a BatchNorm
    // without affine, the predictor does not.
    let mlp = |out_norm| MlpShape {
        layers: 2,
        hidden,
        out,
        bias: false,
        hidden_norm: true,
        out_norm,
    };
    Ok(MethodConfig {
        name: "mocov3".into(),
        temperature: r.temperature.unwrap_or(1.0),
        momentum: r.momentum.unwrap_or(0.99),
        momentum_schedule: MomentumSchedule::Cosine,
        queue_size: 0,
        symmetric: true,
        projector: mlp(true),
        predictor: Some(mlp(false)),
    })
}

pub struct MocoV3 {
    cfg: MethodConfig,
    q: Online,
    k: Target,
    dist: Option<Rc<Dist>>,
    merge_views: bool,
    /// The key momentum of the step, on the device once the step is capturable.
    staged_m: StagedScalar,
}

impl MocoV3 {
    /// The global batch's keys (no gradient) and this rank's labels into them: local query i is
    /// global sample rank + i·world (the strided shares of `dist::share`).
    fn keys_and_labels(&self, k: Tensor) -> Result<(Tensor, Tensor)> {
        let n = k.size()[0];
        let (rank, world) = self.dist.as_ref().map_or((0, 1), |d| (d.rank, d.world));
        let keys = match &self.dist {
            Some(d) => interleave(&d.all_gather(&k)?, d.world),
            None => k,
        };
        let labels = Tensor::arange(n, (Kind::Int64, keys.device())) * world as i64 + rank as i64;
        Ok((keys, labels))
    }
}

impl MocoV3 {
    fn momentum(&self, ctx: &StepCtx) -> f64 {
        self.cfg
            .momentum_schedule
            .at(self.cfg.momentum, ctx.step, ctx.total_steps)
    }
}

impl Method for MocoV3 {
    fn loss(&mut self, x1: &Tensor, x2: &Tensor, ctx: &StepCtx) -> Result<Loss> {
        let views = ViewPair::new(x1, x2, self.merge_views);
        let (q1, q2) = self.q.predictions(&views);
        self.k.update_at(self.momentum(ctx), &self.staged_m)?;
        let (k1, k2) = tch::no_grad(|| self.k.enc.projections(&views));
        let (k1, k2) = if planted(SAME_VIEW_KEYS) {
            (k2, k1)
        } else {
            (k1, k2)
        };
        let t = self.cfg.temperature;
        let (keys2, labels) = self.keys_and_labels(k2)?;
        let (keys1, _) = self.keys_and_labels(k1)?;
        let loss =
            batch_info_nce(&q1, &keys2, &labels, t) + batch_info_nce(&q2, &keys1, &labels, t);
        Ok(Loss::local_mean(loss))
    }

    fn after_step(&mut self, _: &StepCtx, _: bool) -> Result<Vec<(&'static str, f64)>> {
        Ok(Vec::new())
    }

    fn online(&self) -> &Online {
        &self.q
    }

    fn networks(&self) -> Vec<(String, Tensor)> {
        named(&[("q", &self.q.vs), ("k", &self.k.vs)])
    }

    fn attach(&mut self, dist: Rc<Dist>) {
        self.dist = Some(dist);
    }

    fn make_capturable(&mut self) -> Result<()> {
        self.staged_m = StagedScalar::like(self.k.first_parameter());
        Ok(())
    }

    fn stage(&mut self, ctx: &StepCtx) -> Result<()> {
        self.staged_m.set(self.momentum(ctx));
        Ok(())
    }
}
