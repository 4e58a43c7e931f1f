//! MoCo v2 (He et al.; Chen et al.): a query encoder trained by SGD, a key encoder that follows
//! it by momentum, and a queue of past keys as negatives — the official `moco/builder.py`, with
//! the single-device shuffle BN of MoCo's demo (`SplitBatchNorm` + shuffled key batch).

use anyhow::Result;
use models::{Arch, MlpHead, ResNetDesc, MOCO_DIM};
use models_tch::{MlpHeadModule, ResNet};
use serde::{Deserialize, Serialize};
use tch::nn::{self, VarStore};
use tch::{Device, Kind, Tensor};

/// A backbone with MoCo v2's projection MLP (`fc.0`, ReLU, `fc.2`), torchvision names.
#[derive(Debug)]
pub struct Encoder {
    pub backbone: ResNet,
    pub head: MlpHeadModule,
}

impl Encoder {
    /// `head_bn_splits`: None for MoCo v2's plain MLP, else the projector with BatchNorm in that
    /// many shuffle-BN groups (the backbone's `bn_splits`; other values only for planted faults).
    pub fn new(
        root: &nn::Path,
        desc: &ResNetDesc,
        bn_splits: i64,
        head_bn_splits: Option<i64>,
    ) -> Self {
        let (d, out) = (desc.feature_dim, MOCO_DIM);
        let head = match head_bn_splits {
            Some(_) => MlpHead::with_norm(d, out),
            None => MlpHead::new(d, out),
        };
        Encoder {
            backbone: ResNet::new(root, desc, bn_splits),
            head: MlpHeadModule::new(root, &head, head_bn_splits.unwrap_or(1)),
        }
    }

    /// l2-normalized projections, `[N, 128]`.
    pub fn embed(&self, x: &Tensor, train: bool) -> Tensor {
        let z = self
            .head
            .forward_t(&self.backbone.forward_t(x, train), train);
        normalize(&z)
    }
}

/// `F.normalize(x, dim=1)`: x / max(‖x‖, 1e-12).
pub fn normalize(x: &Tensor) -> Tensor {
    let norm = x.norm_scalaropt_dim(2, &[1i64][..], true).clamp_min(1e-12);
    x / norm
}

/// Planted faults for the parity test's proof that it catches a wrong algorithm. Never set by
/// the command line.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    #[default]
    None,
    /// Momentum update after the key forward instead of before it.
    MomentumAfterKeys,
    /// Keys left in shuffled order.
    NoUnshuffle,
    /// The projector's BatchNorm over the whole batch instead of the shuffle-BN groups.
    HeadBnWholeBatch,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MocoConfig {
    pub arch: Arch,
    pub queue_size: i64,
    pub momentum: f64,
    pub temperature: f64,
    pub bn_splits: i64,
    pub symmetric: bool,
    /// BatchNorm in the projection MLP (MoCo v3's projector) instead of MoCo v2's plain MLP.
    #[serde(default)]
    pub head_bn: bool,
    #[serde(skip)]
    #[doc(hidden)]
    pub fault: Fault,
}

pub struct Moco {
    pub cfg: MocoConfig,
    pub vs_q: VarStore,
    pub q: Encoder,
    pub vs_k: VarStore,
    pub k: Encoder,
    /// `[128, K]`, columns l2-normalized, as the official queue.
    pub queue: Tensor,
    pub ptr: i64,
    /// Trainable parameters, paired by name: (name, query, key).
    pairs: Vec<(String, Tensor, Tensor)>,
    /// Data-parallel ranks: keys are shuffled across all of them (shuffle BN as the official
    /// MoCo: gather the key images, run this rank's slice of the shuffled batch, gather the keys).
    pub dist: Option<std::rc::Rc<crate::dist::Dist>>,
}

/// One contrastive step's outputs: the loss (a graph to backpropagate), the keys enqueued and
/// this rank's queries (detached, for [`Moco::similarity_by_age`]).
pub struct StepOut {
    pub loss: Tensor,
    pub keys: Tensor,
    pub queries: Tensor,
}

impl Moco {
    /// Query encoder initialised as torchvision does (`tch::manual_seed` decides the draw); the
    /// key encoder a copy of it; the queue random unit vectors (`Tensor::randn` then normalized).
    pub fn new(cfg: MocoConfig, device: Device) -> Self {
        let desc = ResNetDesc::new(cfg.arch);
        let vs_q = VarStore::new(device);
        let head_splits = match cfg.fault {
            Fault::HeadBnWholeBatch => 1,
            _ => cfg.bn_splits,
        };
        let head_bn = cfg.head_bn.then_some(head_splits);
        let q = Encoder::new(&vs_q.root(), &desc, cfg.bn_splits, head_bn);
        let mut vs_k = VarStore::new(device);
        let k = Encoder::new(&vs_k.root(), &desc, cfg.bn_splits, head_bn);
        tch::no_grad(|| vs_k.copy(&vs_q)).expect("key encoder has the query encoder's variables");
        vs_k.freeze();
        let queue = normalize(
            &Tensor::randn([MOCO_DIM as i64, cfg.queue_size], (Kind::Float, device))
                .transpose(0, 1),
        )
        .transpose(0, 1)
        .contiguous();
        let mut moco = Moco {
            cfg,
            vs_q,
            q,
            vs_k,
            k,
            queue,
            ptr: 0,
            pairs: Vec::new(),
            dist: None,
        };
        moco.pair_parameters();
        moco
    }

    fn pair_parameters(&mut self) {
        let qv = self.vs_q.variables();
        let kv = self.vs_k.variables();
        let mut names: Vec<&String> = qv.keys().filter(|n| qv[*n].requires_grad()).collect();
        names.sort();
        self.pairs = names
            .into_iter()
            .map(|n| (n.clone(), qv[n].shallow_clone(), kv[n].shallow_clone()))
            .collect();
    }

    /// Every variable of both encoders (BN buffers included) as `q/<name>` and `k/<name>`,
    /// sorted by name: the checkpoint's names, and one order on every rank.
    /// Every variable, BN statistic and the queue in `kind` (float64 for the check mode).
    pub fn set_kind(&mut self, kind: Kind) {
        self.vs_q.set_kind(kind);
        self.vs_k.set_kind(kind);
        self.queue = self.queue.to_kind(kind);
    }

    pub fn variables(&self) -> Vec<(String, Tensor)> {
        let named = |prefix: &str, vs: &VarStore| {
            vs.variables()
                .into_iter()
                .map(|(n, t)| (format!("{prefix}/{n}"), t))
                .collect::<Vec<_>>()
        };
        let mut v = named("q", &self.vs_q);
        v.extend(named("k", &self.vs_k));
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The query encoder's trainable parameters, sorted by name.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        self.pairs
            .iter()
            .map(|(n, q, _)| (n.clone(), q.shallow_clone()))
            .collect()
    }

    /// θ_k ← m·θ_k + (1−m)·θ_q over parameters (buffers follow the key encoder's own forward).
    pub fn momentum_update(&self) {
        let m = self.cfg.momentum;
        tch::no_grad(|| {
            for (_, q, k) in &self.pairs {
                let mut k = k.shallow_clone();
                let _ = k.g_mul_scalar_(m);
                let _ = k.g_add_(&(q * (1.0 - m)));
            }
        });
    }

    /// Keys of `im_k` from the key encoder, the batch shuffled by `perm` before it and put back
    /// after (shuffle BN: no sub-batch sees the same images in the query and key encoders).
    /// Returns this rank's keys and the whole batch's (the same on one process). Across ranks
    /// `perm` runs over the global batch, so the BN groups are those of one process with
    /// `--bn-splits` groups; every rank draws the same `perm` from the (seed, step) stream.
    fn keys(&self, im_k: &Tensor, perm: &[i64]) -> Result<(Tensor, Tensor)> {
        tch::no_grad(|| {
            let device = im_k.device();
            let idx = Tensor::from_slice(perm).to(device);
            let unshuffle = |k: Tensor| {
                if self.cfg.fault == Fault::NoUnshuffle {
                    k
                } else {
                    k.index_select(0, &idx.argsort(0, false))
                }
            };
            match &self.dist {
                None => {
                    let k = unshuffle(self.k.embed(&im_k.index_select(0, &idx), true));
                    Ok((k.shallow_clone(), k))
                }
                Some(d) => {
                    use crate::dist::{interleave, share_tensor};
                    let all = interleave(&d.all_gather(im_k)?, d.world);
                    let mine = share_tensor(&all.index_select(0, &idx), d.rank, d.world);
                    let k = self.k.embed(&mine, true);
                    let k = unshuffle(interleave(&d.all_gather(&k)?, d.world));
                    Ok((share_tensor(&k, d.rank, d.world), k))
                }
            }
        })
    }

    /// The loss of queries `im_q` against keys of `im_k`, the whole batch's keys, the queries.
    fn contrastive(&self, im_q: &Tensor, im_k: &Tensor, perm: &[i64]) -> Result<StepOut> {
        let q = self.q.embed(im_q, true);
        let (k, keys) = self.keys(im_k, perm)?;
        if self.cfg.fault == Fault::MomentumAfterKeys {
            self.momentum_update();
        }
        Ok(StepOut {
            loss: self.info_nce(&q, &k),
            keys,
            queries: q.detach(),
        })
    }

    /// Mean cosine similarity of `queries` to the newest and to the oldest `block` keys in the
    /// queue (call it before the step's enqueue). Keys differ in age only by the key encoder
    /// that made them: a newest-minus-oldest gap well above zero says the network can tell
    /// negatives apart by the encoder's drift rather than by their content.
    pub fn similarity_by_age(&self, queries: &Tensor, block: i64) -> (f64, f64) {
        tch::no_grad(|| {
            let k = self.cfg.queue_size;
            let newest = (self.ptr - block).rem_euclid(k);
            let mean_to = |at: i64| {
                let cols = self.queue.narrow(1, at, block.min(k - at));
                queries.mm(&cols).mean(Kind::Double).double_value(&[])
            };
            (mean_to(newest), mean_to(self.ptr))
        })
    }

    /// Cross entropy over [l_pos, l_neg]/T with the positive at index 0.
    pub fn info_nce(&self, q: &Tensor, k: &Tensor) -> Tensor {
        let l_pos = (q * k).sum_dim_intlist(&[1i64][..], true, q.kind());
        let l_neg = q.mm(&self.queue.detach());
        let logits = Tensor::cat(&[l_pos, l_neg], 1) / self.cfg.temperature;
        let labels = Tensor::zeros([q.size()[0]], (Kind::Int64, q.device()));
        // tch's `cross_entropy_for_logits` computes the log-softmax in f32 whatever the input.
        logits.log_softmax(-1, logits.kind()).nll_loss(&labels)
    }

    /// The forward of one training step on two views. `perms` holds one shuffle permutation
    /// (two with the symmetric loss). The momentum update comes first, as in the official code:
    /// the key encoder follows the query encoder as it was after the previous SGD step.
    pub fn forward(&self, im1: &Tensor, im2: &Tensor, perms: &[Vec<i64>]) -> Result<StepOut> {
        if self.cfg.fault != Fault::MomentumAfterKeys {
            self.momentum_update();
        }
        if self.cfg.symmetric {
            let a = self.contrastive(im1, im2, &perms[0])?;
            let b = self.contrastive(im2, im1, &perms[1])?;
            Ok(StepOut {
                loss: a.loss + b.loss,
                keys: Tensor::cat(&[b.keys, a.keys], 0),
                queries: Tensor::cat(&[a.queries, b.queries], 0),
            })
        } else {
            self.contrastive(im1, im2, &perms[0])
        }
    }

    /// Replaces the oldest keys: queue[:, ptr:ptr+N] = keysᵀ; ptr advances modulo K.
    pub fn enqueue(&mut self, keys: &Tensor) {
        let n = keys.size()[0];
        assert!(
            self.cfg.queue_size % n == 0,
            "queue size must be divisible by the keys per step"
        );
        tch::no_grad(|| {
            self.queue
                .narrow(1, self.ptr, n)
                .copy_(&keys.detach().transpose(0, 1));
        });
        self.ptr = (self.ptr + n) % self.cfg.queue_size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CUDA path converts variables and inputs to channels_last; the same step on the CPU
    /// must give the same loss and keys (SplitBatchNorm folds the batch into channels, which a
    /// plain `view` cannot do on channels_last strides).
    #[test]
    fn channels_last_step_equals_nchw_step() {
        let cfg = MocoConfig {
            arch: Arch::Resnet18,
            queue_size: 8,
            momentum: 0.99,
            temperature: 0.2,
            bn_splits: 2,
            symmetric: false,
            head_bn: false,
            fault: Fault::None,
        };
        // One draw of weights, queue and images for both runs: other tests share libtorch's
        // global RNG, so two seeded draws in a row need not be the same draw.
        tch::manual_seed(1);
        let base = Moco::new(cfg.clone(), Device::Cpu);
        let x1 = Tensor::randn([8, 3, 64, 64], (Kind::Float, Device::Cpu));
        let x2 = Tensor::randn([8, 3, 64, 64], (Kind::Float, Device::Cpu));
        let run = |cl: bool| {
            let mut moco = Moco::new(cfg.clone(), Device::Cpu);
            tch::no_grad(|| {
                moco.vs_q.copy(&base.vs_q).unwrap();
                moco.vs_k.copy(&base.vs_k).unwrap();
            });
            moco.queue = base.queue.copy();
            let (mut x1, mut x2) = (x1.copy(), x2.copy());
            if cl {
                for (_, mut t) in moco.variables() {
                    crate::amp::make_channels_last(&mut t).unwrap();
                }
                crate::amp::make_channels_last(&mut x1).unwrap();
                crate::amp::make_channels_last(&mut x2).unwrap();
            }
            let out = moco
                .forward(&x1, &x2, &[vec![2, 0, 7, 1, 5, 3, 6, 4]])
                .unwrap();
            (out.loss.double_value(&[]), out.keys)
        };
        let (l1, k1) = run(false);
        let (l2, k2) = run(true);
        // Other convolution kernels run for channels_last: rounding differs (measured 4e-5 on a
        // loss of 0.4); a batch folded wrongly into the split BN moves it by 1e-1.
        assert!((l1 - l2).abs() < 5e-4, "{l1} vs {l2}");
        assert!((k1 - k2).abs().max().double_value(&[]) < 5e-3);
    }
}
