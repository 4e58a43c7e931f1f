//! Self-supervised methods on the training core (`crate::train`). A method is the part of a step
//! that differs between papers — its networks, its loss, what happens after the optimizer step —
//! behind [`Method`]; data order, views, optimizer, logging, checkpoints and ranks are the
//! core's. A new method is one file with an [`Entry`] and one line in the `methods!` list below.

pub mod parts;

use std::rc::Rc;

use anyhow::{bail, Result};
use models::Arch;
use models_tch::ResNet;
use tch::{Device, Tensor};

use crate::augment::AugConfig;
use crate::config::{MethodConfig, Recipe};
use crate::runtime::dist::Dist;

/// `module: [ENTRY, …]` per line: declares each method's module and registers its entries.
macro_rules! methods {
    ($($module:ident: [$($entry:ident),+],)+) => {
        $(pub mod $module;)+
        /// Every method `pretrain --method` knows, by name; the first is the default.
        pub const REGISTRY: &[Entry] = &[$($($module::$entry,)+)+];
    };
}

methods! {
    moco: [MOCOV2, MOCOV1],
    mocov3: [MOCOV3],
    simclr: [SIMCLR],
    byol: [BYOL],
}

/// A method as the registry holds it.
pub struct Entry {
    pub name: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    /// The published recipe for `arch`: every value the command line and a preset leave unset.
    pub recipe: fn(Arch) -> Recipe,
    /// The published augmentations for views of `size` pixels.
    pub augmentation: fn(u32) -> AugConfig,
    /// The method's hyperparameters from a complete recipe for `arch` (or why they do not fit).
    pub config: fn(&Recipe, Arch) -> Result<MethodConfig>,
    /// Its networks, initialised from libtorch's global RNG (`tch::manual_seed` decides).
    pub build: fn(&MethodConfig, &Build) -> Result<Box<dyn Method>>,
    /// Whether it takes multi-crop's small views (`--small-crops`).
    pub small_views: bool,
}

/// What building a method needs besides its own configuration.
#[derive(Debug, Clone, Copy)]
pub struct Build {
    pub arch: Arch,
    pub device: Device,
    /// BatchNorm groups on this rank (the run's `--bn-splits` / world size).
    pub bn_splits: i64,
    /// Images per step over all ranks.
    pub batch: usize,
    /// Both views through a network in one forward, each view normalised on its own (what a GPU
    /// step needs: half the launches). Off on the CPU, whose two forwards then add up their
    /// gradients in PyTorch's order, bit for bit in float64.
    pub merge_views: bool,
}

pub fn find(name: &str) -> Result<&'static Entry> {
    match REGISTRY.iter().find(|e| e.name == name) {
        Some(e) => Ok(e),
        None => bail!(
            "--method {name}: unknown (one of {})",
            names().collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Refuses the flags that were given (`(given, flag)`) but mean nothing to `method`, saying why.
pub fn refuse(method: &str, flags: &[(bool, &str)], why: &str) -> Result<()> {
    match flags.iter().find(|(given, _)| *given) {
        Some((_, flag)) => bail!("{flag}: {method} {why}"),
        None => Ok(()),
    }
}

/// The MLPs' hidden width: `--mlp-hidden`, 0 (or unset) meaning the backbone's feature width.
pub fn hidden_width(r: &Recipe, arch: Arch) -> usize {
    match r.mlp_hidden.unwrap_or(0) {
        0 => models::ResNetDesc::new(arch).feature_dim,
        h => h,
    }
}

pub fn names() -> impl Iterator<Item = &'static str> {
    REGISTRY.iter().map(|e| e.name)
}

/// Where a step stands: what keyed draws and schedules inside a method need.
#[derive(Debug, Clone, Copy)]
pub struct StepCtx {
    /// 0-based.
    pub step: u64,
    pub total_steps: u64,
    pub seed: u64,
}

/// One step's loss.
pub struct Loss {
    /// The graph to backpropagate on this rank. The core averages gradients over ranks, so this
    /// is whatever makes that average the gradient of the global batch's loss.
    pub graph: Tensor,
    /// The global batch's loss as reported (detached), as far as this rank knows it; the core
    /// averages it over ranks for the log.
    pub value: Tensor,
}

impl Loss {
    /// The usual case: each rank's loss is the mean over its share of the batch, so the mean of
    /// the ranks' gradients is the gradient of the whole batch's mean.
    pub fn local_mean(loss: Tensor) -> Loss {
        let value = loss.detach();
        Loss { graph: loss, value }
    }
}

/// A step's views on this rank: the pair every method takes, and multi-crop's small views (none
/// unless the augmentation asks for them).
pub struct Views {
    pub v1: Tensor,
    pub v2: Tensor,
    pub small: Vec<Tensor>,
}

impl Views {
    pub fn pair(v1: Tensor, v2: Tensor) -> Views {
        Views {
            v1,
            v2,
            small: Vec::new(),
        }
    }

    /// Every view in `kind`.
    pub fn to_kind(&self, kind: tch::Kind) -> Views {
        Views {
            v1: self.v1.to_kind(kind),
            v2: self.v2.to_kind(kind),
            small: self.small.iter().map(|v| v.to_kind(kind)).collect(),
        }
    }
}

/// A self-supervised method's side of a training step.
pub trait Method {
    /// This step's loss on this rank's two batches of views.
    fn loss(&mut self, v1: &Tensor, v2: &Tensor, ctx: &StepCtx) -> Result<Loss>;

    /// This step's loss on all of this rank's views: the pair's, for a method without small
    /// views ([`Entry::small_views`]).
    fn loss_of(&mut self, views: &Views, ctx: &StepCtx) -> Result<Loss> {
        if !views.small.is_empty() {
            bail!("--small-crops: this method takes no small views");
        }
        self.loss(&views.v1, &views.v2, ctx)
    }

    /// After the optimizer step (queue, target network). With `log`, the method's own metrics
    /// for this step's log line.
    fn after_step(&mut self, ctx: &StepCtx, log: bool) -> Result<Vec<(&'static str, f64)>>;

    /// The network that is trained (its backbone is the one evaluated and exported).
    fn online(&self) -> &parts::Online;

    /// Trainable parameters, sorted by name: what the optimizer steps.
    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.online().parameters()
    }

    /// Every variable of its networks (parameters and BatchNorm buffers) under a unique name:
    /// checkpoints, the first broadcast over ranks, buffer averaging, the float kind, layout.
    fn networks(&self) -> Vec<(String, Tensor)>;

    /// Other tensors a resume needs (a queue and its pointer): checkpointed and broadcast, never
    /// averaged or converted to channels_last.
    fn extra_state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// The backbone that is evaluated and exported.
    fn backbone(&self) -> &ResNet {
        &self.online().enc.backbone
    }

    /// The exported backbone's variables, torchvision names (`encoder.safetensors`).
    fn backbone_variables(&self) -> Vec<(String, Tensor)> {
        self.online().backbone_variables()
    }

    /// Joins a process group (keys or embeddings gathered over ranks).
    fn attach(&mut self, dist: Rc<Dist>);

    /// Makes every value the step takes from the host (a shuffle permutation, a queue position,
    /// a scheduled momentum) a device tensor that [`Method::stage`] sets before each step: the
    /// step then launches the same kernels on the same memory every time, which a CUDA graph can
    /// capture once and replay.
    fn make_capturable(&mut self) -> Result<()> {
        Ok(())
    }

    /// Sets this step's host-decided values into the tensors of [`Method::make_capturable`]
    /// (outside a captured graph, before each step).
    fn stage(&mut self, _ctx: &StepCtx) -> Result<()> {
        Ok(())
    }
}

/// Every method with its recipe for `arch` (`moco-train methods`).
pub fn describe(arch: Arch) -> serde_json::Value {
    let all: Vec<serde_json::Value> = REGISTRY
        .iter()
        .map(|e| {
            let r = (e.recipe)(arch);
            serde_json::json!({"name": e.name, "about": e.about, "recipe": r,
                "config": (e.config)(&r, arch).ok(), "augmentation": (e.augmentation)(96)})
        })
        .collect();
    serde_json::json!({ "arch": arch.name(), "methods": all })
}
