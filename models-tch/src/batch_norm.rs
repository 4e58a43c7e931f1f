//! BatchNorm (2d on `[N,C,H,W]`, 1d on `[N,C]`) with torchvision's buffers, and MoCo's
//! SplitBatchNorm in training mode.
//!
//! SplitBatchNorm keeps each group's running statistics between steps (`<name>.running_mean` +
//! [`GROUPS`], `[S·C]`) instead of repeating the torchvision buffers into groups and averaging
//! them back after every forward as the official layer does: the update is linear, so the mean of
//! the per-group statistics after any number of steps is exactly what the official layer's
//! buffers hold. The torchvision buffers are brought up to date from the groups where they are
//! read: an eval forward, and every save ([`sync_group_stats`]). A training forward is one
//! dispatcher op and its backward another (`csrc/split_batch_norm.cpp`), where the official
//! layer dispatches 13 and autograd as many again.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use tch::{nn, Kind, Tensor};
use torch_sys::C_tensor;

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
    /// The groups' running mean and variance (`splits > 1`).
    groups: Option<(Tensor, Tensor)>,
    /// A training forward has moved the groups since the torchvision buffers were last set.
    stale: Cell<bool>,
    /// [`REPLAYS`] when the torchvision buffers were last set.
    replays_seen: Cell<u64>,
}

/// Training forwards this code did not run (a CUDA graph's replays of a captured step), counted
/// by [`groups_moved_by_replay`]: every SplitBatchNorm's groups may have moved since.
static REPLAYS: AtomicU64 = AtomicU64::new(0);

/// Says that a replayed step moved the SplitBatchNorm groups behind the modules' backs.
pub fn groups_moved_by_replay() {
    REPLAYS.fetch_add(1, Ordering::Relaxed);
}

/// The suffix of the per-group running statistics of a SplitBatchNorm.
pub const GROUPS: &str = models::SPLIT_GROUPS_SUFFIX;

/// Sets every `<x>` with a `<x>_groups` beside it in `vars` to the mean of its groups: the
/// torchvision buffers of every SplitBatchNorm, up to date before they are saved or read.
pub fn sync_group_stats(vars: &HashMap<String, Tensor>) {
    tch::no_grad(|| {
        for (name, groups) in vars {
            if let Some(base) = name.strip_suffix(GROUPS).and_then(|b| vars.get(b)) {
                mean_of_groups(groups, base);
            }
        }
    });
}

/// Sets every `<x>_groups` in `vars` to `<x>` repeated: after `<x>` was loaded on its own (a
/// torchvision file), each group starts from it.
pub fn reseed_group_stats(vars: &HashMap<String, Tensor>) {
    tch::no_grad(|| {
        for (name, groups) in vars {
            if let Some(base) = name.strip_suffix(GROUPS).and_then(|b| vars.get(b)) {
                reseed(groups, base);
            }
        }
    });
}

fn mean_of_groups(groups: &Tensor, base: &Tensor) {
    let c = base.size()[0];
    base.shallow_clone()
        .copy_(&groups.view([-1, c]).mean_dim(0, false, base.kind()));
}

fn reseed(groups: &Tensor, base: &Tensor) {
    let c = base.size()[0];
    groups.shallow_clone().view([-1, c]).copy_(base);
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
        let splits = splits.max(1);
        let groups = (splits > 1).then(|| {
            (
                p.zeros_no_train(&format!("running_mean{GROUPS}"), &[splits * c]),
                p.ones_no_train(&format!("running_var{GROUPS}"), &[splits * c]),
            )
        });
        BatchNorm {
            spec: spec.clone(),
            weight: affine.then(|| p.var("weight", &[c], nn::Init::Const(1.0))),
            bias: affine.then(|| p.var("bias", &[c], nn::Init::Const(0.0))),
            running_mean: p.zeros_no_train("running_mean", &[c]),
            running_var: p.ones_no_train("running_var", &[c]),
            num_batches_tracked: p.add("num_batches_tracked", nbt, false),
            splits,
            groups,
            stale: Cell::new(false),
            replays_seen: Cell::new(0),
        }
    }

    /// The torchvision buffers set to the mean of the groups, if a training forward moved them.
    pub fn sync(&self) {
        let replays = REPLAYS.load(Ordering::Relaxed);
        let replayed = self.replays_seen.replace(replays) != replays;
        let moved = self.stale.replace(false) | replayed;
        if let (Some((mean, var)), true) = (&self.groups, moved) {
            tch::no_grad(|| {
                mean_of_groups(mean, &self.running_mean);
                mean_of_groups(var, &self.running_var);
            });
        }
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward(x, Mode::from_train(train))
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Tensor {
        match mode {
            Mode::Eval => {
                self.sync();
                self.with_running_stats(x)
            }
            Mode::Train { views } => self.train_forward(x, views),
        }
    }

    fn with_running_stats(&self, x: &Tensor) -> Tensor {
        x.batch_norm(
            self.weight.as_ref(),
            self.bias.as_ref(),
            Some(&self.running_mean),
            Some(&self.running_var),
            false,
            self.spec.momentum,
            self.spec.eps,
            true,
        )
    }

    /// A training forward: plain BatchNorm (counting `num_batches_tracked`) or MoCo's
    /// `SplitBatchNorm.forward` (moco/demo: colab notebook; each group's running statistics
    /// updated in place, `num_batches_tracked` left alone as there), per view. One dispatcher op
    /// forward and one backward (`csrc/split_batch_norm.cpp`).
    fn train_forward(&self, x: &Tensor, views: i64) -> Tensor {
        let (mean, var, count) = match &self.groups {
            Some((mean, var)) => {
                self.stale.set(true);
                (mean, var, None)
            }
            None => (
                &self.running_mean,
                &self.running_var,
                Some(&self.num_batches_tracked),
            ),
        };
        split_batch_norm(
            x,
            (self.weight.as_ref(), self.bias.as_ref()),
            (mean, var, count),
            (self.splits, views),
            (self.spec.momentum, self.spec.eps),
        )
    }
}

/// How a forward normalises: with the running statistics, or in training with the batch's —
/// `views` interleaved views of one batch (image i of view v at row i·views + v), each view
/// normalised and counted as if it had been a forward of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Eval,
    Train { views: i64 },
}

impl Mode {
    pub fn from_train(train: bool) -> Self {
        if train {
            Mode::Train { views: 1 }
        } else {
            Mode::Eval
        }
    }
}

extern "C" {
    fn moco_split_batch_norm(
        out: *mut *mut C_tensor,
        input: *mut C_tensor,
        weight: *mut C_tensor,
        bias: *mut C_tensor,
        running_mean: *mut C_tensor,
        running_var: *mut C_tensor,
        num_batches_tracked: *mut C_tensor,
        splits: i64,
        views: i64,
        momentum: f64,
        eps: f64,
        error: *mut *const std::ffi::c_char,
    ) -> i32;
}

/// `moco::split_batch_norm`: each of `views` interleaved views of `x` normalised as `splits`
/// groups (image i of a view in group i mod splits), the groups' running statistics
/// `[splits·C]` updated in place as by one forward per view in order, and `count` (if given)
/// raised by `views`. Panics on a libtorch error, as tch's infallible ops do.
fn split_batch_norm(
    x: &Tensor,
    (weight, bias): (Option<&Tensor>, Option<&Tensor>),
    (mean, var, count): (&Tensor, &Tensor, Option<&Tensor>),
    (splits, views): (i64, i64),
    (momentum, eps): (f64, f64),
) -> Tensor {
    let ptr = |t: Option<&Tensor>| t.map_or(std::ptr::null(), Tensor::as_ptr) as *mut C_tensor;
    let mut out: *mut C_tensor = std::ptr::null_mut();
    let mut error: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: every pointer is a live tch tensor (or null where the op takes an optional one);
    // the C function catches every C++ exception and on success hands over a new tensor.
    let rc = unsafe {
        moco_split_batch_norm(
            &mut out,
            ptr(Some(x)),
            ptr(weight),
            ptr(bias),
            ptr(Some(mean)),
            ptr(Some(var)),
            ptr(count),
            splits,
            views,
            momentum,
            eps,
            &mut error,
        )
    };
    if rc != 0 {
        // SAFETY: on failure `error` points to a NUL-terminated message owned by the C side.
        let msg = unsafe { std::ffi::CStr::from_ptr(error) }.to_string_lossy();
        panic!("split batch norm: {msg}");
    }
    // SAFETY: `out` is a tensor the C side allocated for us to own.
    unsafe { Tensor::from_ptr(out) }
}
