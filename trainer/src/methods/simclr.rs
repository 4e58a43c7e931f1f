//! SimCLR (Chen et al. 2020): one encoder with a projector, both views of the batch in one
//! forward, NT-Xent over the 2N embeddings (each view's positive is its other view, the other
//! 2N − 2 its negatives), LARS. The projector is the one MoCo v3 describes as SimCLR's
//! (Linear without bias, BatchNorm, ReLU, Linear, BatchNorm without affine; SimCLR's own last
//! BatchNorm keeps a scale).
//!
//! Across ranks every rank computes the loss of the whole global batch, with the embeddings of
//! the other ranks gathered and detached and its own in place with their gradient: the sum of
//! the ranks' gradients is then the gradient of the global loss (the negatives of one rank are
//! the others' embeddings too), which the core's average gets from a graph scaled by the world.

use std::rc::Rc;

use anyhow::{bail, Result};
use models::{Arch, MlpShape, ResNetDesc};
use tch::{Kind, Tensor};

use super::parts::{named, Online};
use super::{Entry, Loss, Method, StepCtx};
use crate::augment::AugConfig;
use crate::config::{MethodConfig, Recipe};
use crate::runtime::dist::{interleave, Dist};
use crate::nn::loss::nt_xent;
use crate::nn::optim::{MomentumSchedule, OptimizerKind};

pub const SIMCLR: Entry = Entry {
    name: "simclr",
    about: "SimCLR: NT-Xent over the 2N views of the batch, projector with BatchNorm, LARS",
    recipe,
    augmentation,
    config,
    build: |cfg, b| {
        let q = Online::new(cfg, &ResNetDesc::new(b.arch), b.device, b.bn_splits);
        Ok(Box::new(SimClr {
            cfg: cfg.clone(),
            q,
            dist: None,
        }))
    },
    small_views: false,
};

/// SimCLR's recipe: LARS, lr 0.3 (× batch/256), wd 1e-6, T 0.1, BatchNorm over the batch.
fn recipe(_: Arch) -> Recipe {
    Recipe {
        optimizer: Some(OptimizerKind::Lars),
        lr: Some(0.3),
        weight_decay: Some(1e-6),
        optim_momentum: Some(0.9),
        temperature: Some(0.1),
        bn_splits: Some(1),
        proj_dim: Some(128),
        mlp_hidden: Some(0),
        ..Recipe::default()
    }
}

/// SimCLR's augmentation: crop (0.08, 1), colour jitter 0.8·(0.8, 0.8, 0.8, 0.2) with p 0.8,
/// grayscale 0.2, blur with p 0.5, flip.
fn augmentation(size: u32) -> AugConfig {
    AugConfig {
        scale: (0.08, 1.0),
        jitter: (0.8, 0.8, 0.8, 0.2),
        ..AugConfig::mocov2(size)
    }
}

fn config(r: &Recipe, arch: Arch) -> Result<MethodConfig> {
    for (given, flag) in [
        (r.queue_size.is_some(), "--queue-size"),
        (r.momentum.is_some(), "--moco-momentum"),
        (r.head_bn.is_some(), "--head-bn"),
    ] {
        if given {
            bail!(
                "{flag}: simclr has no queue, no momentum encoder and a projector with BatchNorm"
            );
        }
    }
    let hidden = match r.mlp_hidden.unwrap_or(0) {
        0 => ResNetDesc::new(arch).feature_dim,
        h => h,
    };
    Ok(MethodConfig {
        name: "simclr".into(),
        temperature: r.temperature.unwrap_or(0.1),
        momentum: 0.0,
        momentum_schedule: MomentumSchedule::Constant,
        queue_size: 0,
        symmetric: true,
        projector: MlpShape {
            layers: 2,
            hidden,
            out: r.proj_dim.unwrap_or(128),
            bias: false,
            hidden_norm: true,
            out_norm: true,
        },
        predictor: None,
    })
}

pub struct SimClr {
    cfg: MethodConfig,
    q: Online,
    dist: Option<Rc<Dist>>,
}

impl Method for SimClr {
    fn loss(&mut self, x1: &Tensor, x2: &Tensor, _: &StepCtx) -> Result<Loss> {
        let n = x1.size()[0];
        let z = self.q.enc.project(&Tensor::cat(&[x1, x2], 0), true);
        let t = self.cfg.temperature;
        let Some(d) = &self.dist else {
            return Ok(Loss::local_mean(nt_xent(&z, t)));
        };
        let (rank, world) = (d.rank as i64, d.world as i64);
        let gather = |part: Tensor| -> Result<Tensor> {
            Ok(interleave(&d.all_gather(&part.detach())?, d.world))
        };
        let all = Tensor::cat(&[gather(z.narrow(0, 0, n))?, gather(z.narrow(0, n, n))?], 0);
        // This rank's rows of the global [views 1; views 2]: rank + i·world, and B + the same.
        let big_b = n * world;
        let mine = Tensor::arange(n, (Kind::Int64, z.device())) * world + rank;
        let rows = Tensor::cat(&[&mine, &(&mine + big_b)], 0);
        let global = nt_xent(&all.index_copy(0, &rows, &z), t);
        Ok(Loss {
            value: global.detach(),
            graph: global * world as f64,
        })
    }

    fn after_step(&mut self, _: &StepCtx, _: bool) -> Result<Vec<(&'static str, f64)>> {
        Ok(Vec::new())
    }

    fn online(&self) -> &Online {
        &self.q
    }

    fn networks(&self) -> Vec<(String, Tensor)> {
        named(&[("q", &self.q.vs)])
    }

    fn attach(&mut self, dist: Rc<Dist>) {
        self.dist = Some(dist);
    }
}
