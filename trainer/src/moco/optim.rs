//! `torch.optim.SGD` (momentum, weight decay, no dampening, no Nesterov) with its momentum
//! buffers in the open, so a checkpoint can carry them; the cosine schedule; fp16's loss scaler.
//! tch's own optimizer keeps its buffers inside libtorch, out of reach of an exact resume.

use std::f64::consts::PI;

use serde::{Deserialize, Serialize};
use tch::Tensor;

pub struct Sgd {
    pub params: Vec<(String, Tensor)>,
    /// Momentum buffers by parameter; `None` until the first step, as in PyTorch.
    pub buffers: Vec<Option<Tensor>>,
    pub momentum: f64,
    pub weight_decay: f64,
}

impl Sgd {
    pub fn new(params: Vec<(String, Tensor)>, momentum: f64, weight_decay: f64) -> Self {
        let buffers = (0..params.len()).map(|_| None).collect();
        Sgd {
            params,
            buffers,
            momentum,
            weight_decay,
        }
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// `torch.optim.SGD.step` for one lr: d = g + wd·p; buf = m·buf + d (buf = d at first);
    /// p -= lr·buf.
    pub fn step(&mut self, lr: f64) {
        tch::no_grad(|| {
            for ((_, p), buf) in self.params.iter().zip(self.buffers.iter_mut()) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let d = if self.weight_decay != 0.0 {
                    g + p * self.weight_decay
                } else {
                    g
                };
                let b = match buf.take() {
                    None => d.detach().copy(),
                    Some(mut b) if self.momentum != 0.0 => {
                        let _ = b.g_mul_scalar_(self.momentum);
                        let _ = b.g_add_(&d);
                        b
                    }
                    Some(_) => d,
                };
                let _ = p.shallow_clone().g_add_(&(&b * -lr));
                *buf = Some(b);
            }
        });
    }

    /// Multiplies every gradient by `f` and says whether all of them are finite.
    pub fn scale_grads(&mut self, f: f64) -> bool {
        tch::no_grad(|| {
            let mut finite = true;
            for (_, p) in &self.params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(f);
                    finite &= bool::try_from(g.isfinite().all()).unwrap_or(false);
                }
            }
            finite
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
            lr *= 0.5 * (1.0 + (PI * step as f64 / self.total_steps as f64).cos());
        }
        lr
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
    pub fn unscale_and_check(&mut self, opt: &mut Sgd) -> bool {
        let finite = opt.scale_grads(1.0 / self.scale);
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
        finite
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
    fn scaler_skips_inf_and_grows() {
        let p = Tensor::ones([2], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let mut opt = Sgd::new(vec![("p".into(), p.shallow_clone())], 0.9, 0.0);
        let mut sc = LossScaler {
            growth_interval: 2,
            ..Default::default()
        };
        (&p * f64::INFINITY).sum(Kind::Float).backward();
        assert!(!sc.unscale_and_check(&mut opt));
        assert_eq!(sc.scale, 32768.0);
        for _ in 0..2 {
            opt.zero_grad();
            (&p * sc.scale).sum(Kind::Float).backward();
            assert!(sc.unscale_and_check(&mut opt));
        }
        assert_eq!(sc.scale, 65536.0);
        assert_eq!(Vec::<f32>::try_from(p.grad()).unwrap(), vec![1.0, 1.0]);
    }
}
