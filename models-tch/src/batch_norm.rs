//! BatchNorm2d with torchvision's buffers, and MoCo's SplitBatchNorm in training mode.

use tch::{nn, Kind, Tensor};

use models::layers::BatchNorm2d;

use crate::path_for;

#[derive(Debug)]
pub struct BatchNorm {
    pub spec: BatchNorm2d,
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Tensor,
    /// Shuffle-BN on one device (MoCo's `SplitBatchNorm`): in training, the batch is normalised as
    /// `splits` independent sub-batches, as if spread over that many GPUs. 1 = plain BatchNorm.
    pub splits: i64,
}

impl BatchNorm {
    pub fn new(root: &nn::Path, spec: &BatchNorm2d, splits: i64) -> Self {
        let p = path_for(root, &spec.name);
        let c = spec.channels as i64;
        let nbt = Tensor::zeros([], (Kind::Int64, p.device()));
        BatchNorm {
            spec: spec.clone(),
            weight: p.var("weight", &[c], nn::Init::Const(1.0)),
            bias: p.var("bias", &[c], nn::Init::Const(0.0)),
            running_mean: p.zeros_no_train("running_mean", &[c]),
            running_var: p.ones_no_train("running_var", &[c]),
            num_batches_tracked: p.add("num_batches_tracked", nbt, false),
            splits: splits.max(1),
        }
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let (eps, momentum) = (self.spec.eps, self.spec.momentum);
        if !train {
            return x.batch_norm(
                Some(&self.weight),
                Some(&self.bias),
                Some(&self.running_mean),
                Some(&self.running_var),
                false,
                momentum,
                eps,
                true,
            );
        }
        if self.splits == 1 {
            let y = x.batch_norm(
                Some(&self.weight),
                Some(&self.bias),
                Some(&self.running_mean),
                Some(&self.running_var),
                true,
                momentum,
                eps,
                true,
            );
            tch::no_grad(|| {
                let _ = self.num_batches_tracked.shallow_clone().f_add_scalar_(1);
            });
            return y;
        }
        self.split_forward(x)
    }

    /// MoCo's `SplitBatchNorm.forward` in training mode (moco/demo: colab notebook): fold the
    /// splits into channels, normalise with repeated parameters and stats, then average the
    /// per-split running stats back. Like the reference, it leaves `num_batches_tracked` alone.
    fn split_forward(&self, x: &Tensor) -> Tensor {
        let s = self.splits;
        let (n, c, h, w) = x.size4().expect("BatchNorm2d input must be 4-D");
        assert!(n % s == 0, "batch {n} is not divisible by --bn-splits {s}");
        let mean_split = self.running_mean.repeat([s]);
        let var_split = self.running_var.repeat([s]);
        let y = x
            .reshape([-1, c * s, h, w])
            .batch_norm(
                Some(&self.weight.repeat([s])),
                Some(&self.bias.repeat([s])),
                Some(&mean_split),
                Some(&var_split),
                true,
                self.spec.momentum,
                self.spec.eps,
                true,
            )
            .reshape([n, c, h, w]);
        tch::no_grad(|| {
            self.running_mean
                .shallow_clone()
                .copy_(
                    &mean_split
                        .view([s, c])
                        .mean_dim(0, false, self.running_mean.kind()),
                );
            self.running_var
                .shallow_clone()
                .copy_(
                    &var_split
                        .view([s, c])
                        .mean_dim(0, false, self.running_mean.kind()),
                );
        });
        y
    }
}
