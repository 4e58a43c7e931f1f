//! BatchNorm (2d on `[N,C,H,W]`, 1d on `[N,C]`) with torchvision's buffers, and MoCo's
//! SplitBatchNorm in training mode.

use tch::{nn, Kind, Tensor};

use models::layers::BatchNorm2d;

use crate::path_for;

#[derive(Debug)]
pub struct BatchNorm {
    pub spec: BatchNorm2d,
    /// None for `affine=False` (the projector's last BatchNorm1d).
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Tensor,
    /// Shuffle-BN on one device (MoCo's `SplitBatchNorm`): in training, the batch is normalised as
    /// `splits` independent sub-batches, as if spread over that many GPUs. 1 = plain BatchNorm.
    pub splits: i64,
}

impl BatchNorm {
    pub fn new(root: &nn::Path, spec: &BatchNorm2d, splits: i64) -> Self {
        Self::build(root, spec, splits, true)
    }

    /// `affine=False`: normalisation only.
    pub fn without_affine(root: &nn::Path, spec: &BatchNorm2d, splits: i64) -> Self {
        Self::build(root, spec, splits, false)
    }

    fn build(root: &nn::Path, spec: &BatchNorm2d, splits: i64, affine: bool) -> Self {
        let p = path_for(root, &spec.name);
        let c = spec.channels as i64;
        let nbt = Tensor::zeros([], (Kind::Int64, p.device()));
        BatchNorm {
            spec: spec.clone(),
            weight: affine.then(|| p.var("weight", &[c], nn::Init::Const(1.0))),
            bias: affine.then(|| p.var("bias", &[c], nn::Init::Const(0.0))),
            running_mean: p.zeros_no_train("running_mean", &[c]),
            running_var: p.ones_no_train("running_var", &[c]),
            num_batches_tracked: p.add("num_batches_tracked", nbt, false),
            splits: splits.max(1),
        }
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        if !train {
            return self.whole_batch(x, false);
        }
        if self.splits == 1 {
            let y = self.whole_batch(x, true);
            tch::no_grad(|| {
                let _ = self.num_batches_tracked.shallow_clone().f_add_scalar_(1);
            });
            return y;
        }
        self.split_forward(x)
    }

    /// Plain BatchNorm: batch statistics (updating the running ones) when `training`, else the
    /// running statistics.
    fn whole_batch(&self, x: &Tensor, training: bool) -> Tensor {
        x.batch_norm(
            self.weight.as_ref(),
            self.bias.as_ref(),
            Some(&self.running_mean),
            Some(&self.running_var),
            training,
            self.spec.momentum,
            self.spec.eps,
            true,
        )
    }

    /// MoCo's `SplitBatchNorm.forward` in training mode (moco/demo: colab notebook): fold the
    /// splits into channels, normalise with repeated parameters and stats, then average the
    /// per-split running stats back. Like the reference, it leaves `num_batches_tracked` alone.
    fn split_forward(&self, x: &Tensor) -> Tensor {
        let s = self.splits;
        let shape = x.size();
        let (n, c) = (shape[0], shape[1]);
        assert!(n % s == 0, "batch {n} is not divisible by --bn-splits {s}");
        let mean_split = self.running_mean.repeat([s]);
        let var_split = self.running_var.repeat([s]);
        let mut folded = vec![-1, c * s];
        folded.extend_from_slice(&shape[2..]);
        let repeat = |t: &Option<Tensor>| t.as_ref().map(|t| t.repeat([s]));
        let y = x
            .reshape(&folded)
            .batch_norm(
                repeat(&self.weight).as_ref(),
                repeat(&self.bias).as_ref(),
                Some(&mean_split),
                Some(&var_split),
                true,
                self.spec.momentum,
                self.spec.eps,
                true,
            )
            .reshape(&shape);
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
