//! What the methods are built from: a backbone with its projector (and predictor) in one
//! VarStore under torchvision's names, a momentum (EMA) copy of it, and the naming of their
//! variables for checkpoints.

use anyhow::Result;
use models::{MlpHead, MlpShape, ResNetDesc};
use models_tch::{MlpHeadModule, Mode, ResNet};
use tch::nn::{self, VarStore};
use tch::{Device, Tensor};

use crate::config::MethodConfig;
use crate::runtime::faults::{planted, Fault};

/// The projector described by a method's shape: a bare `fc` for one layer (torchvision's own
/// classifier with `out` classes, as MoCo v1 uses it), else a `Sequential` named `fc.<i>`.
pub fn projector(feature_dim: usize, shape: &MlpShape) -> MlpHead {
    if shape.layers == 1 && !shape.out_norm {
        MlpHead::linear("fc", feature_dim, shape.out)
    } else {
        MlpHead::build("fc", feature_dim, *shape)
    }
}

/// A backbone and its projector: `z = fc(pool(backbone(x)))`, names as torchvision's resnet whose
/// `fc` was replaced by the projector.
#[derive(Debug)]
pub struct Encoder {
    pub backbone: ResNet,
    pub head: MlpHeadModule,
}

impl Encoder {
    /// The backbone's BatchNorm in `bn_splits` groups, the projector's in `head_bn_splits`.
    pub fn new(
        root: &nn::Path,
        desc: &ResNetDesc,
        head: &MlpHead,
        bn_splits: i64,
        head_bn_splits: i64,
    ) -> Self {
        Encoder {
            backbone: ResNet::new(root, desc, bn_splits),
            head: MlpHeadModule::new(root, head, head_bn_splits),
        }
    }

    /// The projection, not normalised.
    pub fn project(&self, x: &Tensor, train: bool) -> Tensor {
        self.project_in(x, Mode::from_train(train))
    }

    /// The training projections of both views.
    pub fn projections(&self, views: &ViewPair) -> (Tensor, Tensor) {
        match views {
            ViewPair::Apart(x1, x2) => (self.project(x1, true), self.project(x2, true)),
            ViewPair::Merged(x) => deinterleave(&self.project_in(x, views.mode())),
        }
    }

    fn project_in(&self, x: &Tensor, mode: Mode) -> Tensor {
        self.head.forward(&self.backbone.forward(x, mode), mode)
    }
}

/// Planted fault: merged views normalised as one batch instead of each on its own.
pub const VIEWS_SHARE_BN: Fault = "merged views share their BatchNorm";

/// A step's two views, for networks that see both: apart (a forward each, PyTorch's order of
/// arithmetic), or merged into one batch, image i of view v at row 2i + v — the layout in which
/// each view's BatchNorm groups are groups of one BatchNorm ([`Mode::Train`] with 2 views), so
/// both take one forward and one backward (half a GPU step's launches).
pub enum ViewPair<'a> {
    Apart(&'a Tensor, &'a Tensor),
    Merged(Tensor),
}

impl<'a> ViewPair<'a> {
    pub fn new(x1: &'a Tensor, x2: &'a Tensor, merge: bool) -> Self {
        match merge {
            true => ViewPair::Merged(Tensor::stack(&[x1, x2], 1).flatten(0, 1)),
            false => ViewPair::Apart(x1, x2),
        }
    }

    fn mode(&self) -> Mode {
        let views = if planted(VIEWS_SHARE_BN) { 1 } else { 2 };
        Mode::Train { views }
    }
}

/// The two views of a merged result `[2N, D]` (views of it, not copies).
fn deinterleave(x: &Tensor) -> (Tensor, Tensor) {
    let parted = x.view([-1, 2, x.size()[1]]);
    (parted.select(1, 0), parted.select(1, 1))
}

/// An online network (encoder, maybe a predictor) in its VarStore.
pub struct Online {
    pub vs: VarStore,
    pub enc: Encoder,
    pub predictor: Option<MlpHeadModule>,
}

impl Online {
    /// Draws the backbone, then the projector, then the predictor, in PyTorch's order of
    /// construction (the draws of one seed land where the reference puts them).
    pub fn new(cfg: &MethodConfig, desc: &ResNetDesc, device: Device, bn_splits: i64) -> Self {
        Self::with_head_splits(cfg, desc, device, bn_splits, bn_splits)
    }

    pub fn with_head_splits(
        cfg: &MethodConfig,
        desc: &ResNetDesc,
        device: Device,
        bn_splits: i64,
        head_bn_splits: i64,
    ) -> Self {
        let vs = VarStore::new(device);
        let head = projector(desc.feature_dim, &cfg.projector);
        let enc = Encoder::new(&vs.root(), desc, &head, bn_splits, head_bn_splits);
        let predictor = cfg.predictor.map(|shape| {
            let spec = MlpHead::build("predictor", cfg.projector.out, shape);
            MlpHeadModule::new(&vs.root(), &spec, bn_splits)
        });
        Online { vs, enc, predictor }
    }

    /// The predictor's output on a projection (the projection itself without a predictor).
    pub fn predict(&self, z: &Tensor, train: bool) -> Tensor {
        match &self.predictor {
            Some(p) => p.forward_t(z, train),
            None => z.shallow_clone(),
        }
    }

    /// The training predictions of both views (their projections without a predictor).
    pub fn predictions(&self, views: &ViewPair) -> (Tensor, Tensor) {
        let predict = |z: &Tensor, mode| match &self.predictor {
            Some(p) => p.forward(z, mode),
            None => z.shallow_clone(),
        };
        match views {
            ViewPair::Apart(..) => {
                let (z1, z2) = self.enc.projections(views);
                let one = Mode::Train { views: 1 };
                (predict(&z1, one), predict(&z2, one))
            }
            ViewPair::Merged(x) => {
                let mode = views.mode();
                deinterleave(&predict(&self.enc.project_in(x, mode), mode))
            }
        }
    }

    /// Trainable parameters, sorted by name.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The backbone's variables alone (no `fc.*`, no `predictor.*`, no SplitBatchNorm groups),
    /// torchvision names, the BatchNorm statistics up to date.
    pub fn backbone_variables(&self) -> Vec<(String, Tensor)> {
        let vars = self.vs.variables();
        models_tch::batch_norm::sync_group_stats(&vars);
        vars.into_iter()
            .filter(|(n, _)| {
                !crate::nn::encoder::is_head(n) && !n.ends_with(models_tch::batch_norm::GROUPS)
            })
            .collect()
    }
}

/// A momentum (EMA) copy of an online encoder: MoCo's key encoder, BYOL's target. It starts as
/// a copy, is never trained, and follows its online network by θ ← m·θ + (1−m)·θ_online over the
/// parameters (its BatchNorm statistics come from its own forwards).
pub struct Target {
    pub vs: VarStore,
    pub enc: Encoder,
    /// The trainable parameters of the online encoder, by name, and their copies here.
    sources: Vec<Tensor>,
    targets: Vec<Tensor>,
}

impl Target {
    /// Built like `online`'s encoder (same shapes, no predictor) and copied from it.
    pub fn follow(
        online: &Online,
        cfg: &MethodConfig,
        desc: &ResNetDesc,
        bn_splits: i64,
        head_bn_splits: i64,
    ) -> Self {
        let mut vs = VarStore::new(online.vs.device());
        let head = projector(desc.feature_dim, &cfg.projector);
        let enc = Encoder::new(&vs.root(), desc, &head, bn_splits, head_bn_splits);
        let src = online.vs.variables();
        tch::no_grad(|| {
            for (name, mut t) in vs.variables() {
                t.copy_(&src[&name]);
            }
        });
        vs.freeze();
        let kv = vs.variables();
        let mut names: Vec<&String> = src
            .keys()
            .filter(|n| src[*n].requires_grad() && kv.contains_key(*n))
            .collect();
        names.sort();
        let sources = names.iter().map(|n| src[*n].shallow_clone()).collect();
        let targets = names.iter().map(|n| kv[*n].shallow_clone()).collect();
        Target {
            vs,
            enc,
            sources,
            targets,
        }
    }

    /// θ_target ← m·θ_target + (1−m)·θ_online over the parameters, two kernels for all of them.
    pub fn update(&self, m: f64) -> Result<()> {
        tch::no_grad(|| crate::nn::foreach::ema(&self.targets, &self.sources, m))
    }

    /// A tensor the update scales (its device and float kind).
    pub fn first_parameter(&self) -> &Tensor {
        &self.targets[0]
    }

    /// The update at `m`, or at the value staged in `staged` (a capturable step's momentum).
    pub fn update_at(&self, m: f64, staged: &StagedScalar) -> Result<()> {
        match &staged.0 {
            Some(t) => tch::no_grad(|| crate::nn::foreach::ema_at(&self.targets, &self.sources, t)),
            None => self.update(m),
        }
    }
}

/// A number a step takes from the host, as a 0-dim device tensor once the step is capturable
/// ([`crate::methods::Method::make_capturable`]): set before each step, read by the kernels.
#[derive(Default)]
pub struct StagedScalar(Option<Tensor>);

impl StagedScalar {
    /// On the device and in the float kind of `like` (a parameter it scales).
    pub fn like(like: &Tensor) -> Self {
        StagedScalar(Some(Tensor::zeros([], (like.kind(), like.device()))))
    }

    /// Sets the value (no-op while the step is not capturable).
    pub fn set(&self, v: f64) {
        if let Some(t) = &self.0 {
            let _ = t.shallow_clone().fill_(v);
        }
    }
}

/// Every variable of `stores` as `<prefix>/<name>`, sorted by name: one order on every rank. The
/// BatchNorm statistics are brought up to date from the SplitBatchNorm groups first.
pub fn named(stores: &[(&str, &VarStore)]) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = stores
        .iter()
        .flat_map(|(prefix, vs)| {
            let vars = vs.variables();
            models_tch::batch_norm::sync_group_stats(&vars);
            vars.into_iter()
                .map(move |(n, t)| (format!("{prefix}/{n}"), t))
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}
