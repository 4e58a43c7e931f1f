//! BYOL (Grill et al. 2020): an online network (encoder, projector, predictor) regresses the
//! normalised projection of a target network, an exponential moving average of it updated after
//! each optimizer step with τ rising from its base to 1 on a cosine; no negatives; LARS.
//!
//! The published augmentations are asymmetric: blur on every first view and a tenth of the
//! second, solarize on a fifth of the second (`AugConfig::byol`).

use std::rc::Rc;

use anyhow::Result;
use models::{Arch, MlpShape, ResNetDesc};
use tch::Tensor;

use super::parts::{named, Online, StagedScalar, Target, ViewPair};
use super::{Entry, Loss, Method, StepCtx};
use crate::augment::AugConfig;
use crate::config::{MethodConfig, Recipe};
use crate::runtime::dist::Dist;
use crate::runtime::faults::{planted, Fault};
use crate::nn::loss::normalize;
use crate::nn::optim::{MomentumSchedule, OptimizerKind};

/// Planted fault: the target updated before the online network's optimizer step.
pub const EMA_BEFORE_STEP: Fault = "byol ema before step";

pub const BYOL: Entry = Entry {
    name: "byol",
    about: "BYOL: predictor on the online network, EMA target, no negatives, LARS",
    recipe,
    augmentation: AugConfig::byol,
    config,
    build: |cfg, b| {
        let desc = ResNetDesc::new(b.arch);
        let online = Online::new(cfg, &desc, b.device, b.bn_splits);
        let target = Target::follow(&online, cfg, &desc, b.bn_splits, b.bn_splits);
        Ok(Box::new(Byol {
            cfg: cfg.clone(),
            online,
            target,
            merge_views: b.merge_views,
            staged_tau: StagedScalar::default(),
        }))
    },
    small_views: false,
};

/// BYOL's recipe: LARS, lr 0.2 (× batch/256), wd 1.5e-6, τ 0.996, MLPs 4096 wide with 256-d
/// outputs; BatchNorm over the whole batch.
fn recipe(_: Arch) -> Recipe {
    Recipe {
        optimizer: Some(OptimizerKind::Lars),
        lr: Some(0.2),
        weight_decay: Some(1.5e-6),
        optim_momentum: Some(0.9),
        momentum: Some(0.996),
        bn_splits: Some(1),
        proj_dim: Some(256),
        mlp_hidden: Some(4096),
        ..Recipe::default()
    }
}

fn config(r: &Recipe, arch: Arch) -> Result<MethodConfig> {
    let given = [
        (r.queue_size.is_some(), "--queue-size"),
        (r.temperature.is_some(), "--temperature"),
        (r.head_bn.is_some(), "--head-bn"),
    ];
    super::refuse(
        "byol",
        &given,
        "has no queue, no temperature and a projector with BatchNorm",
    )?;
    let hidden = super::hidden_width(r, arch);
    // BYOL's MLPs: Linear, BatchNorm1d, ReLU, Linear (with biases), for both heads.
    let mlp = MlpShape {
        layers: 2,
        hidden,
        out: r.proj_dim.unwrap_or(256),
        bias: true,
        hidden_norm: true,
        out_norm: false,
    };
    Ok(MethodConfig {
        name: "byol".into(),
        temperature: 0.0,
        momentum: r.momentum.unwrap_or(0.996),
        momentum_schedule: MomentumSchedule::Cosine,
        queue_size: 0,
        symmetric: true,
        projector: mlp,
        predictor: Some(mlp),
    })
}

/// BYOL's loss for one direction: ‖p̄ − z̄‖² = 2 − 2·cos(p, z) per sample, averaged over the
/// batch.
/// Float32 under autocast, as PyTorch AMP computes its sums and means.
pub fn byol_regression(p: &Tensor, z: &Tensor) -> Tensor {
    crate::nn::amp::full_precision(|| {
        let prod = normalize(p) * normalize(z);
        let cos = prod.sum_dim_intlist(&[1i64][..], false, prod.kind());
        (cos * -2.0 + 2.0).mean(prod.kind())
    })
}

pub struct Byol {
    cfg: MethodConfig,
    online: Online,
    target: Target,
    merge_views: bool,
    /// τ of the step, on the device once the step is capturable.
    staged_tau: StagedScalar,
}

impl Byol {
    fn tau(&self, ctx: &StepCtx) -> f64 {
        self.cfg
            .momentum_schedule
            .at(self.cfg.momentum, ctx.step, ctx.total_steps)
    }
}

impl Method for Byol {
    fn loss(&mut self, x1: &Tensor, x2: &Tensor, ctx: &StepCtx) -> Result<Loss> {
        if planted(EMA_BEFORE_STEP) {
            self.target.update_at(self.tau(ctx), &self.staged_tau)?;
        }
        let views = ViewPair::new(x1, x2, self.merge_views);
        let (p1, p2) = self.online.predictions(&views);
        let (t1, t2) = tch::no_grad(|| self.target.enc.projections(&views));
        let loss = byol_regression(&p1, &t2) + byol_regression(&p2, &t1);
        Ok(Loss::local_mean(loss))
    }

    /// The target follows the online network just updated (BYOL's update order).
    fn after_step(&mut self, ctx: &StepCtx, _: bool) -> Result<Vec<(&'static str, f64)>> {
        if !planted(EMA_BEFORE_STEP) {
            self.target.update_at(self.tau(ctx), &self.staged_tau)?;
        }
        Ok(Vec::new())
    }

    fn online(&self) -> &Online {
        &self.online
    }

    fn networks(&self) -> Vec<(String, Tensor)> {
        named(&[("q", &self.online.vs), ("k", &self.target.vs)])
    }

    fn attach(&mut self, _: Rc<Dist>) {
        // Per-sample loss on each rank's share: the core's gradient average is all it needs.
    }

    fn make_capturable(&mut self) -> Result<()> {
        self.staged_tau = StagedScalar::like(self.target.first_parameter());
        Ok(())
    }

    fn stage(&mut self, ctx: &StepCtx) -> Result<()> {
        self.staged_tau.set(self.tau(ctx));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_regression_is_zero_for_aligned_and_four_for_opposite() {
        let p = Tensor::from_slice(&[1.0f64, 1.0, 2.0, 0.0]).view([2, 2]);
        assert!(byol_regression(&p, &(&p * 3.0)).double_value(&[]).abs() < 1e-12);
        assert!((byol_regression(&p, &-&p).double_value(&[]) - 4.0).abs() < 1e-12);
    }
}
