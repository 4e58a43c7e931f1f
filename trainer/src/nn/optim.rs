//! Optimizers with their state in the open, so a checkpoint can carry it: `torch.optim.SGD` and
//! the LARS of MoCo v3's code; the lr schedule (linear warmup, cosine); the momentum schedule of
//! MoCo v3's key encoder and BYOL's target; fp16's loss scaler. tch's own optimizers keep their
//! buffers inside libtorch, out of reach of an exact resume.

use std::f64::consts::PI;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::Tensor;

pub use crate::nn::foreach::Lr;
use crate::runtime::faults::{planted, Fault};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// `torch.optim.SGD` (momentum, weight decay, no dampening, no Nesterov).
    Sgd,
    /// Layer-wise adaptive rate scaling as MoCo v3's `LARS`: weight decay and the trust ratio
    /// only for tensors of more than one dimension (not biases, not BatchNorm's affine).
    Lars,
}

/// MoCo v3's LARS trust coefficient η: the update of a weight tensor is scaled by
/// η·‖w‖/‖g + wd·w‖.
pub const LARS_TRUST: f64 = 0.001;

/// Planted fault: LARS's weight decay and trust ratio on every tensor, 1-D ones included.
pub const LARS_ON_VECTORS: Fault = "lars on vectors";

pub struct Optimizer {
    pub kind: OptimizerKind,
    pub params: Vec<(String, Tensor)>,
    /// Momentum buffers by parameter; `None` until the first step, as in PyTorch.
    pub buffers: Vec<Option<Tensor>>,
    pub momentum: f64,
    pub weight_decay: f64,
}

impl Optimizer {
    pub fn new(
        kind: OptimizerKind,
        params: Vec<(String, Tensor)>,
        momentum: f64,
        weight_decay: f64,
    ) -> Self {
        let buffers = (0..params.len()).map(|_| None).collect();
        Optimizer {
            kind,
            params,
            buffers,
            momentum,
            weight_decay,
        }
    }

    /// The momentum buffers that exist, by their parameter's name.
    pub fn named_buffers(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.params
            .iter()
            .zip(&self.buffers)
            .filter_map(|((n, _), b)| b.as_ref().map(|b| (n.as_str(), b)))
    }

    /// `torch.optim.SGD`.
    pub fn sgd(params: Vec<(String, Tensor)>, momentum: f64, weight_decay: f64) -> Self {
        Self::new(OptimizerKind::Sgd, params, momentum, weight_decay)
    }

    /// Every gradient dropped (`set_to_none`): no kernel, and backward then hands each parameter
    /// its gradient instead of adding it to zeros.
    pub fn zero_grad(&mut self) {
        crate::nn::foreach::grads_to_none(self.params.iter().map(|(_, p)| p));
    }

    /// One step at `lr`. SGD: d = g + wd·p; buf = m·buf + d (buf = d at first); p −= lr·buf.
    /// LARS: for tensors of rank > 1, d = (g + wd·p)·q with q = η‖p‖/‖g + wd·p‖ (1 where either
    /// norm is 0), d = g otherwise; then the same momentum and update (MoCo v3's zero-initialised
    /// buffer gives buf = d at the first step too). Every tensor at once (`crate::nn::foreach`): SGD
    /// is one fused kernel, LARS a dozen ops, whatever the number of parameters.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        self.step_at(Lr::Value(lr))
    }

    /// [`Optimizer::step`] at an lr that may live on the device.
    pub fn step_at(&mut self, lr: Lr) -> Result<()> {
        tch::no_grad(|| {
            let with_grad: Vec<usize> = (0..self.params.len())
                .filter(|&i| self.params[i].1.grad().defined())
                .collect();
            // Parameters whose buffer exists already, and those at their first step.
            let (later, first): (Vec<usize>, Vec<usize>) = with_grad
                .into_iter()
                .partition(|&i| self.buffers[i].is_some() && self.momentum != 0.0);
            for (idx, is_first) in [(later, false), (first, true)] {
                if !idx.is_empty() {
                    self.step_group(&idx, lr, is_first)?;
                }
            }
            Ok(())
        })
    }

    /// The step of the parameters `idx`, all at their first step or none.
    fn step_group(&mut self, idx: &[usize], lr: Lr, first: bool) -> Result<()> {
        let params: Vec<Tensor> = idx
            .iter()
            .map(|&i| self.params[i].1.shallow_clone())
            .collect();
        let grads: Vec<Tensor> = params.iter().map(Tensor::grad).collect();
        if first {
            for (&i, p) in idx.iter().zip(&params) {
                self.buffers[i] = Some(p.empty_like());
            }
        }
        let bufs: Vec<Tensor> = idx
            .iter()
            .map(|&i| self.buffers[i].as_ref().expect("allocated").shallow_clone())
            .collect();
        let momentum = self.momentum;
        match self.kind {
            OptimizerKind::Sgd => crate::nn::foreach::fused_sgd(
                (&params, &grads, &bufs),
                lr,
                momentum,
                self.weight_decay,
                first || self.momentum == 0.0,
            ),
            OptimizerKind::Lars => {
                let lars_all = planted(LARS_ON_VECTORS);
                let scaled: Vec<bool> = params.iter().map(|p| lars_all || p.dim() > 1).collect();
                crate::nn::foreach::lars_step(
                    (&params, &grads, &bufs),
                    &scaled,
                    (lr, momentum, self.weight_decay, LARS_TRUST),
                    first || self.momentum == 0.0,
                )
            }
        }
    }

    /// The gradients' `found_inf` check and unscaling by `1/scale` in one kernel (fp16's loss
    /// scaler); the one host read of the step says whether to take it.
    pub fn unscale_grads(&mut self, scale: f64) -> Result<bool> {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self
                .params
                .iter()
                .map(|(_, p)| p.grad())
                .filter(Tensor::defined)
                .collect();
            let Some(first) = grads.first() else {
                return Ok(true);
            };
            let opts = (tch::Kind::Float, first.device());
            let mut found_inf = Tensor::zeros([1], opts);
            let mut inv_scale = Tensor::full([1], 1.0 / scale, opts);
            crate::nn::foreach::unscale_grads(&grads, &mut found_inf, &mut inv_scale)?;
            Ok(crate::runtime::counters::scalar(&found_inf) == 0.0)
        })
    }
}

/// lr(step) = base · batch/256 · warmup · ½(1 + cos(π·step/total)), stepped per iteration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub base_lr: f64,
    pub batch_size: usize,
    pub total_steps: u64,
    pub warmup_steps: u64,
    pub cosine: bool,
}

impl Schedule {
    pub fn peak(&self) -> f64 {
        self.base_lr * self.batch_size as f64 / 256.0
    }

    pub fn lr(&self, step: u64) -> f64 {
        let mut lr = self.peak();
        if step < self.warmup_steps {
            lr *= (step + 1) as f64 / self.warmup_steps as f64;
        }
        if self.cosine && self.total_steps > 0 {
            lr *= cosine_half(step, self.total_steps);
        }
        lr
    }
}

/// ½(1 + cos(π·step/total)): 1 at the start, 0 at the end.
fn cosine_half(step: u64, total: u64) -> f64 {
    0.5 * (1.0 + (PI * step as f64 / total as f64).cos())
}

/// The linear protocol's lr per epoch: ×0.1 at each milestone epoch, or a cosine to 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EpochDecay {
    Milestones(Vec<usize>),
    Cosine,
}

impl EpochDecay {
    pub fn lr(&self, base: f64, epoch: usize, epochs: usize) -> f64 {
        match self {
            EpochDecay::Cosine => base * 0.5 * (1.0 + (PI * epoch as f64 / epochs as f64).cos()),
            EpochDecay::Milestones(m) => {
                base * 0.1f64.powi(m.iter().filter(|&&at| epoch >= at).count() as i32)
            }
        }
    }
}

/// How the key (target) encoder's momentum moves over a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MomentumSchedule {
    /// m throughout (MoCo v1/v2).
    Constant,
    /// 1 − (1 − m)·½(1 + cos(π·step/total)): from m towards 1 (MoCo v3's `adjust_moco_momentum`,
    /// BYOL's τ).
    Cosine,
}

impl MomentumSchedule {
    pub fn at(self, base: f64, step: u64, total: u64) -> f64 {
        match self {
            MomentumSchedule::Constant => base,
            MomentumSchedule::Cosine => 1.0 - (1.0 - base) * cosine_half(step, total.max(1)),
        }
    }
}

/// Dynamic loss scaling for fp16 (what `torch.cuda.amp.GradScaler` does; tch has none): scale
/// the loss, unscale the gradients, skip the step and halve the scale on inf/NaN, double it after
/// `growth_interval` good steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub scale: f64,
    pub good_steps: u64,
    pub growth_interval: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler {
            scale: 65536.0,
            good_steps: 0,
            growth_interval: 2000,
        }
    }
}

impl LossScaler {
    /// After backward of `loss · scale`: unscales and returns whether the step should be taken.
    pub fn unscale_and_check(&mut self, opt: &mut Optimizer) -> Result<bool> {
        let finite = opt.unscale_grads(self.scale)?;
        if finite {
            self.good_steps += 1;
            if self.good_steps >= self.growth_interval {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale = (self.scale * 0.5).max(1.0);
            self.good_steps = 0;
        }
        Ok(finite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn cosine_with_warmup() {
        let s = Schedule {
            base_lr: 0.03,
            batch_size: 512,
            total_steps: 100,
            warmup_steps: 10,
            cosine: true,
        };
        assert!((s.peak() - 0.06).abs() < 1e-12);
        assert!((s.lr(0) - 0.006).abs() < 1e-12);
        assert!((s.lr(1) - 0.012 * 0.5 * (1.0 + (PI / 100.0).cos())).abs() < 1e-12);
        assert!((s.lr(50) - 0.03).abs() < 1e-12);
        assert!(s.lr(99) < 1e-4);
    }

    #[test]
    fn momentum_goes_from_base_to_one_on_a_cosine() {
        let m = MomentumSchedule::Cosine;
        assert_eq!(m.at(0.99, 0, 100), 0.99);
        assert!((m.at(0.99, 50, 100) - 0.995).abs() < 1e-12);
        assert!((m.at(0.99, 100, 100) - 1.0).abs() < 1e-12);
        assert_eq!(MomentumSchedule::Constant.at(0.99, 50, 100), 0.99);
    }

    /// LARS on a weight matrix: the step is η‖w‖/‖g + wd·w‖ of the plain one; a bias (1-D) gets
    /// neither weight decay nor the ratio.
    #[test]
    fn lars_scales_matrices_and_leaves_vectors() {
        let w = Tensor::from_slice(&[3.0f64, 4.0])
            .view([1, 2])
            .set_requires_grad(true);
        let b = Tensor::from_slice(&[1.0f64]).set_requires_grad(true);
        let mut opt = Optimizer::new(
            OptimizerKind::Lars,
            vec![
                ("w".into(), w.shallow_clone()),
                ("b".into(), b.shallow_clone()),
            ],
            0.9,
            0.5,
        );
        (w.sum(Kind::Double) * 2.0 + b.sum(Kind::Double) * 2.0).backward();
        opt.step(1.0).unwrap();
        // d = g + wd·w = (2 + 1.5, 2 + 2) = (3.5, 4); ‖w‖ = 5, ‖d‖ = √28.25.
        let q = LARS_TRUST * 5.0 / 28.25f64.sqrt();
        let got = Vec::<f64>::try_from(w.detach().flatten(0, -1)).unwrap();
        assert!((got[0] - (3.0 - 3.5 * q)).abs() < 1e-15, "{got:?}");
        assert!((got[1] - (4.0 - 4.0 * q)).abs() < 1e-15, "{got:?}");
        assert!((b.double_value(&[0]) - (1.0 - 2.0)).abs() < 1e-15);
    }

    #[test]
    fn scaler_skips_inf_and_grows() {
        let p = Tensor::ones([2], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let mut opt = Optimizer::sgd(vec![("p".into(), p.shallow_clone())], 0.9, 0.0);
        let mut sc = LossScaler {
            growth_interval: 2,
            ..Default::default()
        };
        (&p * f64::INFINITY).sum(Kind::Float).backward();
        assert!(!sc.unscale_and_check(&mut opt).unwrap());
        assert_eq!(sc.scale, 32768.0);
        for _ in 0..2 {
            opt.zero_grad();
            (&p * sc.scale).sum(Kind::Float).backward();
            assert!(sc.unscale_and_check(&mut opt).unwrap());
        }
        assert_eq!(sc.scale, 65536.0);
        assert_eq!(Vec::<f32>::try_from(p.grad()).unwrap(), vec![1.0, 1.0]);
    }
}
