//! The Rust side of the methods' step parity: the trainer's own step (`train::step::train_step`)
//! run on fixed inputs — real aug+ views of generated images, an lr per step — with every
//! quantity a reference records (loss, gradients, the target network and queue after the step),
//! the inputs written for the Python reference, and the comparison.

use std::collections::BTreeMap;
use std::path::Path;

use models::{Arch, TensorData, TensorMap};
use models_tch::convert::tensor_to_data;
use tch::{Device, Kind, Tensor};
use trainer::augment::{AugConfig, Augmenter};
use trainer::config::{MethodConfig, OptimConfig, Recipe};
use trainer::methods::{self, Build, Method, StepCtx, Views};
use trainer::nn::amp::Autocast;
use trainer::nn::optim::{Lr, Optimizer, Schedule};
use trainer::runtime::rng::{stream, Purpose};
use trainer::train::graph::GraphStep;
use trainer::train::step::{train_step, StepState};

use crate::compare::{check, check_abs, check_rel_l2, Check};

/// The seed of the views' and the shuffle-BN draws (the trainer's (seed, step) streams).
pub const DRAW_SEED: u64 = 3;
/// `tch::manual_seed` before the method's networks are built.
pub const INIT_SEED: i64 = 7;

/// One run's fixed inputs.
pub struct Inputs {
    pub im1: Vec<Tensor>,
    pub im2: Vec<Tensor>,
    /// Multi-crop's small views of each step (none without them).
    pub small: Vec<Vec<Tensor>>,
    pub lrs: Vec<f64>,
    pub batch: usize,
    /// The run's length, which the momentum schedules run over (also for a shortened copy).
    pub total_steps: usize,
}

impl Inputs {
    /// The first `steps` steps' inputs.
    pub fn first(&self, steps: usize) -> Inputs {
        let take = |v: &[Tensor]| v.iter().take(steps).map(|t| t.shallow_clone()).collect();
        Inputs {
            im1: take(&self.im1),
            im2: take(&self.im2),
            small: self.small.iter().take(steps).map(|v| take(v)).collect(),
            lrs: self.lrs.iter().take(steps).copied().collect(),
            batch: self.batch,
            total_steps: self.total_steps,
        }
    }
}

/// Real aug+ views (`size` pixels) of generated 96×96 texture images, and a warmup + cosine lr.
pub fn inputs(steps: usize, batch: usize, size: u32, base_lr: f64) -> Inputs {
    inputs_of(AugConfig::mocov2(size), steps, batch, base_lr)
}

/// [`inputs`] with the views of `aug` (its small views too).
pub fn inputs_of(aug: AugConfig, steps: usize, batch: usize, base_lr: f64) -> Inputs {
    let aug = Augmenter::new(aug, &Default::default(), Device::Cpu);
    let schedule = Schedule {
        base_lr,
        batch_size: 256,
        total_steps: steps as u64,
        warmup_steps: 2,
        cosine: true,
    };
    let mut out = Inputs {
        im1: vec![],
        im2: vec![],
        small: vec![],
        lrs: vec![],
        batch,
        total_steps: steps,
    };
    for s in 0..steps {
        let mut raw = Vec::new();
        for i in 0..batch {
            raw.extend_from_slice(datasets::synth::render(i % 10, (s * batch + i) as u64).as_raw());
        }
        let images = Tensor::from_slice(&raw)
            .view([batch as i64, 96, 96, 3])
            .permute([0, 3, 1, 2]);
        let mut rng = stream(DRAW_SEED, Purpose::Augment, s as u64);
        let p1 = aug.draw(&mut rng, 0, batch, (96, 96));
        let p2 = aug.draw(&mut rng, 1, batch, (96, 96));
        let small = aug.draw_small(&mut rng, batch, (96, 96));
        out.im1.push(aug.views(&images, &p1));
        out.im2.push(aug.views(&images, &p2));
        out.small.push(aug.small_views_of(&images, &small));
        out.lrs.push(schedule.lr(s as u64));
    }
    out
}

/// `name`'s published configuration with narrow heads (64 hidden, 32 out: the algorithm is the
/// same at any width, and the tests run in seconds), `recipe` set over it, and its optimizer
/// with `warmup_steps` of linear warm-up then the cosine.
pub fn narrow_config(name: &str, recipe: Recipe, warmup_steps: u64) -> (MethodConfig, OptimConfig) {
    let entry = methods::find(name).unwrap();
    let r = Recipe {
        mlp_hidden: Some(64),
        proj_dim: Some(32),
        ..recipe
    }
    .or((entry.recipe)(Arch::Resnet18));
    let optim = OptimConfig {
        kind: r.optimizer.unwrap(),
        lr: r.lr.unwrap(),
        weight_decay: r.weight_decay.unwrap(),
        momentum: r.optim_momentum.unwrap(),
        warmup_steps,
        cosine: true,
    };
    ((entry.config)(&r, Arch::Resnet18).unwrap(), optim)
}

/// The method as the trainer builds it (resnet18 on the CPU, its networks drawn after
/// `tch::manual_seed(INIT_SEED)`), in `kind`.
pub fn build(cfg: &MethodConfig, bn_splits: i64, batch: usize, kind: Kind) -> Box<dyn Method> {
    build_with(cfg, bn_splits, batch, kind, false)
}

/// [`build`], with both views through a network in one forward where `merge_views` (the GPU's
/// step).
pub fn build_with(
    cfg: &MethodConfig,
    bn_splits: i64,
    batch: usize,
    kind: Kind,
    merge_views: bool,
) -> Box<dyn Method> {
    tch::manual_seed(INIT_SEED);
    let b = Build {
        arch: Arch::Resnet18,
        device: Device::Cpu,
        bn_splits,
        batch,
        merge_views,
    };
    let method = (methods::find(&cfg.name).unwrap().build)(cfg, &b).unwrap();
    trainer::train::set_kind(method.as_ref(), kind);
    method
}

/// The trainer's steps, recorded as the references record them: `loss_<t>`, `grad_<t>/<name>`
/// (online parameters), `k_<t>/<name>` (the target network after the step), `queue_<t>` and
/// `ptr_<t>` where there is a queue.
pub fn run_rust(
    method: &mut dyn Method,
    optim: &OptimConfig,
    inp: &Inputs,
    kind: Kind,
) -> BTreeMap<String, Tensor> {
    run_rust_under(method, optim, inp, kind, None)
}

/// [`run_rust`] with the forward under `autocast` (the trainer's `--amp`).
pub fn run_rust_under(
    method: &mut dyn Method,
    optim: &OptimConfig,
    inp: &Inputs,
    kind: Kind,
    autocast: Option<Autocast>,
) -> BTreeMap<String, Tensor> {
    run_rust_with(method, optim, inp, (kind, autocast), None)
}

/// [`run_rust`] through the capturable step that `--cuda-graph` captures ([`GraphStep::eager`]:
/// every host-decided input staged in a device tensor, run eagerly).
pub fn run_rust_capturable(
    method: &mut dyn Method,
    optim: &OptimConfig,
    inp: &Inputs,
    kind: Kind,
) -> BTreeMap<String, Tensor> {
    let mut capturable = GraphStep::eager(method).unwrap();
    run_rust_with(method, optim, inp, (kind, None), Some(&mut capturable))
}

fn run_rust_with(
    method: &mut dyn Method,
    optim: &OptimConfig,
    inp: &Inputs,
    (kind, autocast): (Kind, Option<Autocast>),
    mut capturable: Option<&mut GraphStep>,
) -> BTreeMap<String, Tensor> {
    let mut opt = Optimizer::new(
        optim.kind,
        method.parameters(),
        optim.momentum,
        optim.weight_decay,
    );
    let mut scaler = None;
    let mut rec = BTreeMap::new();
    let steps = inp.im1.len();
    for s in 0..steps {
        let ctx = StepCtx {
            step: s as u64,
            total_steps: inp.total_steps as u64,
            seed: DRAW_SEED,
        };
        let st = StepState {
            opt: &mut opt,
            scaler: &mut scaler,
            dist: None,
            autocast,
            kind,
        };
        let views = Views {
            v1: inp.im1[s].shallow_clone(),
            v2: inp.im2[s].shallow_clone(),
            small: inp.small[s].iter().map(Tensor::shallow_clone).collect(),
        }
        .to_kind(kind);
        let views = &views;
        let out = match capturable.as_deref_mut() {
            Some(g) => g.step(method, st, views, &ctx, inp.lrs[s]),
            None => train_step(method, st, views, &ctx, Lr::Value(inp.lrs[s]), false),
        }
        .unwrap();
        rec.insert(format!("loss_{s}"), out.loss.reshape([1]));
        for (name, p) in &opt.params {
            rec.insert(format!("grad_{s}/{name}"), p.grad().copy());
        }
        for (name, t) in method.networks() {
            if let Some(k) = name.strip_prefix("k/") {
                rec.insert(format!("k_{s}/{k}"), t.copy());
            }
        }
        for (name, t) in method.extra_state() {
            match name.as_str() {
                "queue_ptr" => rec.insert(format!("ptr_{s}"), t.copy().reshape([1])),
                _ => rec.insert(format!("{name}_{s}"), t.copy()),
            };
        }
    }
    rec
}

/// The reference's inputs: the online network's initial variables (`q/<name>`), the method's
/// other state (a queue), the views, the lrs and `meta`; add what else the reference needs, then
/// save.
pub fn inputs_map(method: &dyn Method, inp: &Inputs, meta: &[(&str, String)]) -> TensorMap {
    let mut map = TensorMap::new();
    for (name, t) in method.networks() {
        // The SplitBatchNorm groups are ours: the references hold their mean, torchvision's.
        if name.starts_with("q/") && !name.ends_with(models_tch::batch_norm::GROUPS) {
            map.insert(name, tensor_to_data(&t));
        }
    }
    for (name, t) in method.extra_state() {
        if t.is_floating_point() {
            map.insert(name, tensor_to_data(&t));
        }
    }
    for s in 0..inp.im1.len() {
        map.insert(format!("im1_{s}"), tensor_to_data(&inp.im1[s]));
        map.insert(format!("im2_{s}"), tensor_to_data(&inp.im2[s]));
        for (i, v) in inp.small[s].iter().enumerate() {
            map.insert(format!("small_{s}_{i}"), tensor_to_data(v));
        }
        map.metadata
            .insert(format!("lr_{s}"), format!("{:e}", inp.lrs[s]));
    }
    map.metadata
        .insert("steps".into(), inp.im1.len().to_string());
    let small = inp.small.first().map_or(0, Vec::len);
    map.metadata.insert("small".into(), small.to_string());
    for (k, v) in meta {
        map.metadata.insert(k.to_string(), v.clone());
    }
    map
}

/// An int64 tensor for the inputs file (shuffle permutations).
pub fn ints(v: &[i64]) -> TensorData {
    TensorData::from_i64(vec![v.len()], v)
}

/// Per-quantity tolerances: (loss, gradients, state), as a fraction of max(1, max|reference|)
/// (absolute for the loss).
pub type Tolerances = (f64, f64, f64);

/// Every reference quantity of the first `steps` steps against ours.
pub fn compare(
    ours: &BTreeMap<String, Tensor>,
    reference: &BTreeMap<String, Tensor>,
    steps: usize,
    (t_loss, t_grad, t_state): Tolerances,
) -> Vec<Check> {
    compare_by(ours, reference, steps, |name, got, want| {
        if name.starts_with("loss_") {
            check_abs(name, got, want, t_loss)
        } else if is_exact(name) {
            check_abs(name, got, want, 0.0)
        } else if name.starts_with("grad_") {
            check(name, got, want, t_grad)
        } else {
            check(name, got, want, t_state)
        }
    })
}

/// The first step's quantities under bf16 autocast, each by its relative L2 difference
/// ([`AMP_TOL`]).
pub fn compare_amp(
    ours: &BTreeMap<String, Tensor>,
    reference: &BTreeMap<String, Tensor>,
) -> Vec<Check> {
    compare_by(ours, reference, 1, |name, got, want| {
        if is_exact(name) {
            check_abs(name, got, want, 0.0)
        } else {
            check_rel_l2(name, got, want, AMP_TOL)
        }
    })
}

/// One bf16-autocast step of `run` held to `reference`, then again with the loss planted in bf16,
/// which the comparison must catch.
pub fn assert_amp_parity(
    name: &str,
    run: impl Fn() -> BTreeMap<String, Tensor>,
    reference: &BTreeMap<String, Tensor>,
) {
    let checks = compare_amp(&run(), reference);
    let summary = crate::compare::summarize(&checks);
    eprintln!("{name} parity (CPU bf16 autocast, 1 step): {summary}");
    assert!(checks.iter().all(|c| c.ok), "{summary}");
    let _armed = trainer::runtime::faults::plant(trainer::nn::amp::LOSS_IN_HALF);
    let checks = compare_amp(&run(), reference);
    let failed = checks.iter().filter(|c| !c.ok).count();
    eprintln!(
        "  planted fault `loss in bf16`: {failed}/{} checks fail; {}",
        checks.len(),
        crate::compare::summarize(&checks)
    );
    assert!(
        failed > 0,
        "the comparison did not catch the loss left in bf16"
    );
}

/// Integers that must agree exactly: the queue pointer and BatchNorm's step counts.
fn is_exact(name: &str) -> bool {
    name.starts_with("ptr_") || name.contains("num_batches_tracked")
}

fn compare_by(
    ours: &BTreeMap<String, Tensor>,
    reference: &BTreeMap<String, Tensor>,
    steps: usize,
    check_one: impl Fn(&str, &Tensor, &Tensor) -> Check,
) -> Vec<Check> {
    let mut checks = Vec::new();
    for (name, want) in reference {
        let step: usize = name
            .split(['_', '/'])
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("reference names are <what>_<step>[/<tensor>]");
        if step >= steps {
            continue;
        }
        checks.push(match ours.get(name) {
            Some(got) => check_one(name, got, want),
            None => check(
                &format!("{name} (missing)"),
                &want.ones_like(),
                &want.zeros_like(),
                0.0,
            ),
        });
    }
    checks
}

/// The reference's output file as named tensors.
pub fn read_reference(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

/// The references' mode for `--amp bf16` on the CPU (`tests/python/amp_policy.py`).
pub const AMP_MODE: &str = "bf16-autocast";

/// The trainer's `--amp bf16` on the CPU.
pub const CPU_BF16: Option<Autocast> = Some(Autocast {
    cuda: false,
    bf16: true,
});

/// Under bf16 autocast both sides run the same libtorch kernels on the same bf16 casts of the
/// same float32 inputs (measured: every quantity of all four methods bit-identical but BYOL's
/// target, 5e-10 from float32's EMA). Where a float32 accumulation is ordered differently (another
/// thread count, another kernel) an element can land on the other side of a bf16 rounding: one
/// unit in the last place, at most 2⁻⁸ of the element. The bound allows every element of a
/// quantity to move that far: ‖Δ‖₂ ≤ 2⁻⁸ ‖x‖₂. A loss left in bf16 moves whole gradients
/// systematically (measured: 1.8e-2 to 1.4 on the worst gradient of each method).
pub const AMP_TOL: f64 = 1.0 / 256.0;

/// libtorch's RNG is global: the parity tests draw initial weights from it, so they take turns
/// instead of interleaving their draws on parallel test threads.
pub static RNG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
