//! MoCo v3, SimCLR and BYOL: the trainer's own step against a PyTorch reference of each
//! published algorithm (`tests/python/{mocov3,simclr,byol}_reference.py`), five steps in float64
//! from the same initial weights on the same aug+ views — the loss, every gradient of the online
//! network, and the whole target network after each step (its momentum/EMA update and BN
//! buffers). Then planted faults, each of which the comparison must catch.

use std::collections::BTreeMap;

use moco_tests::compare::summarize;
use moco_tests::python::run_script;
use moco_tests::steps::{
    assert_amp_parity, build, build_with, compare, inputs, inputs_map, narrow_config,
    read_reference, run_rust, run_rust_under, Inputs, Tolerances, AMP_MODE, CPU_BF16, RNG_LOCK,
};
use tch::{Kind, Tensor};
use trainer::config::{MethodConfig, OptimConfig, Recipe};
use trainer::nn::optim::MomentumSchedule;
use trainer::runtime::faults::{plant, Fault};

const STEPS: usize = 5;
/// A planted fault shows from the second step at the latest (a wrong update, or a wrong momentum
/// once the schedule has moved): its runs stop there.
const FAULT_STEPS: usize = 2;
const BATCH: usize = 8;
const SIZE: u32 = 64;

/// The method's published configuration with narrow heads (64 hidden, 32 out).
fn config(name: &str) -> (MethodConfig, OptimConfig) {
    narrow_config(name, Recipe::default(), 2)
}

fn write_inputs(
    path: &std::path::Path,
    (cfg, optim): (&MethodConfig, &OptimConfig),
    bn_splits: i64,
    inp: &Inputs,
    dtype: &str,
) {
    let method = build(cfg, bn_splits, BATCH, Kind::Float);
    let meta = [
        ("arch", "resnet18".to_string()),
        ("temperature", format!("{:e}", cfg.temperature)),
        ("momentum", format!("{:e}", cfg.momentum)),
        ("bn_splits", bn_splits.to_string()),
        ("weight_decay", format!("{:e}", optim.weight_decay)),
        ("optim_momentum", format!("{:e}", optim.momentum)),
        (
            "optimizer",
            serde_json::to_value(optim.kind)
                .unwrap()
                .as_str()
                .unwrap()
                .into(),
        ),
        ("projector", serde_json::to_string(&cfg.projector).unwrap()),
        ("predictor", serde_json::to_string(&cfg.predictor).unwrap()),
        ("dtype", dtype.into()),
    ];
    inputs_map(method.as_ref(), inp, &meta).save(path).unwrap();
}

/// What a planted fault changes: a fault of the code, or of the configuration.
enum Plant {
    Code(Fault),
    Config(fn(&mut MethodConfig)),
}

/// Float64 on both sides: the two implementations differ only in the order of their roundings.
/// The heads' BatchNorm1d normalises over 8 samples (4 per group with 2 splits), whose backward
/// divides by small-sample deviations: gradients get 1e-9 (as MoCo's projector BN), the rest
/// 1e-11 (loss, absolute; states, relative to max(1, |x|)).
const TOL: (f64, f64, f64) = (1e-11, 1e-9, 1e-11);

fn parity(name: &str, script: &str, bn_splits: i64, faults: Vec<(&str, Plant)>) {
    parity_within(name, script, bn_splits, TOL, faults)
}

/// The PyTorch reference's run of `name` in float64, and what produced it.
struct Reference {
    cfg: MethodConfig,
    optim: OptimConfig,
    inp: Inputs,
    out: BTreeMap<String, Tensor>,
}

fn reference(name: &str, script: &str, bn_splits: i64) -> Reference {
    let (cfg, optim) = config(name);
    let dir = tempfile::tempdir().unwrap();
    let (inp_path, out_path) = (dir.path().join("in"), dir.path().join("out"));
    let inp = inputs(STEPS, BATCH, SIZE, optim.lr);
    write_inputs(&inp_path, (&cfg, &optim), bn_splits, &inp, "float64");
    run_script(
        script,
        &[inp_path.to_str().unwrap(), out_path.to_str().unwrap()],
    )
    .unwrap();
    let out = read_reference(&out_path);
    Reference {
        cfg,
        optim,
        inp,
        out,
    }
}

/// `steps` of our run of `cfg` in float64, the views apart or merged.
fn run_f64(r: &Reference, cfg: &MethodConfig, bn_splits: i64, steps: usize, merge: bool) -> Run {
    let mut method = build_with(cfg, bn_splits, BATCH, Kind::Double, merge);
    run_rust(method.as_mut(), &r.optim, &r.inp.first(steps), Kind::Double)
}

type Run = BTreeMap<String, Tensor>;

/// `faults` planted one at a time into a run of `steps` (views merged or not): each must fail
/// a check against the reference.
fn assert_caught(
    r: &Reference,
    bn_splits: i64,
    (steps, merge): (usize, bool),
    tol: Tolerances,
    faults: Vec<(&str, Plant)>,
) {
    for (what, plant_it) in faults {
        let mut bad = r.cfg.clone();
        let _armed = match plant_it {
            Plant::Code(f) => Some(plant(f)),
            Plant::Config(change) => {
                change(&mut bad);
                None
            }
        };
        let checks = compare(
            &run_f64(r, &bad, bn_splits, steps, merge),
            &r.out,
            steps,
            tol,
        );
        let failed = checks.iter().filter(|c| !c.ok).count();
        eprintln!(
            "  planted fault `{what}`: {failed}/{} checks fail",
            checks.len()
        );
        assert!(failed > 0, "the comparison did not catch: {what}");
    }
}

fn parity_within(
    name: &str,
    script: &str,
    bn_splits: i64,
    tol: Tolerances,
    faults: Vec<(&str, Plant)>,
) {
    let _turn = RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let r = reference(name, script, bn_splits);
    let checks = compare(
        &run_f64(&r, &r.cfg, bn_splits, STEPS, false),
        &r.out,
        STEPS,
        tol,
    );
    let summary = summarize(&checks);
    eprintln!("{name} parity (Double, {STEPS} steps, {bn_splits} BN groups): {summary}");
    assert!(
        checks.len() > STEPS * 60,
        "too few quantities: {}",
        checks.len()
    );
    assert!(checks.iter().all(|c| c.ok), "{summary}");
    assert_caught(&r, bn_splits, (FAULT_STEPS, false), tol, faults);
}

/// The GPU's step: both views through each network in one forward ([`ViewPair::Merged`]), held
/// to the same reference with the same tolerances for its first [`FAULT_STEPS`] steps — the
/// arithmetic is PyTorch's up to the order in which the gradients of the two views are summed.
/// Later steps are left out: the small-sample BatchNorm amplifies that reordering (float64
/// rounding, 1e-16) past the gradients' 1e-9 by step 4 (measured 2.4e-9 on MoCo v3). Then
/// the views normalised together must be caught.
fn merged_views_parity(name: &str, script: &str, bn_splits: i64) {
    let _turn = RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let r = reference(name, script, bn_splits);
    let checks = compare(
        &run_f64(&r, &r.cfg, bn_splits, FAULT_STEPS, true),
        &r.out,
        FAULT_STEPS,
        TOL,
    );
    let summary = summarize(&checks);
    eprintln!(
        "{name} merged views (Double, {FAULT_STEPS} steps, {bn_splits} BN groups): {summary}"
    );
    assert!(checks.iter().all(|c| c.ok), "{summary}");
    let share = Plant::Code(trainer::methods::parts::VIEWS_SHARE_BN);
    assert_caught(
        &r,
        bn_splits,
        (FAULT_STEPS, true),
        TOL,
        vec![("views share BN", share)],
    );
}

#[test]
fn mocov3_merged_views_match_pytorch_and_keep_each_views_batch_norm() {
    merged_views_parity("mocov3", "mocov3_reference.py", 2);
}

#[test]
fn byol_merged_views_match_pytorch_and_keep_each_views_batch_norm() {
    merged_views_parity("byol", "byol_reference.py", 1);
}

/// MoCo v3's loss is two cross entropies over the batch, each scaled by 2T (T = 1 here), after
/// a predictor whose BatchNorm groups hold 4 samples: the rounding differences of the
/// small-sample BN reach the loss at step 4 (measured 1.7e-11 on a loss of ≈ 8), so the loss is
/// held to 1e-10; gradients and states as the others.
#[test]
fn mocov3_steps_match_pytorch_in_f64_and_catch_planted_faults() {
    parity_within(
        "mocov3",
        "mocov3_reference.py",
        2,
        (1e-10, TOL.1, TOL.2),
        vec![
            (
                "keys of the query's own view",
                Plant::Code(trainer::methods::mocov3::SAME_VIEW_KEYS),
            ),
            (
                "a constant key momentum",
                Plant::Config(|c| c.momentum_schedule = MomentumSchedule::Constant),
            ),
            (
                "temperature 0.2 instead of 1",
                Plant::Config(|c| c.temperature = 0.2),
            ),
            (
                "LARS scaling biases and BatchNorm",
                Plant::Code(trainer::nn::optim::LARS_ON_VECTORS),
            ),
        ],
    );
}

#[test]
fn simclr_steps_match_pytorch_in_f64_and_catch_planted_faults() {
    parity(
        "simclr",
        "simclr_reference.py",
        1,
        vec![
            (
                "self-similarity among the negatives",
                Plant::Code(trainer::nn::loss::UNMASKED_SELF),
            ),
            (
                "temperature 0.5 instead of 0.1",
                Plant::Config(|c| c.temperature = 0.5),
            ),
        ],
    );
}

#[test]
fn byol_steps_match_pytorch_in_f64_and_catch_planted_faults() {
    parity(
        "byol",
        "byol_reference.py",
        1,
        vec![
            (
                "target updated before the step",
                Plant::Code(trainer::methods::byol::EMA_BEFORE_STEP),
            ),
            (
                "a constant τ",
                Plant::Config(|c| c.momentum_schedule = MomentumSchedule::Constant),
            ),
        ],
    );
}

/// One step of each method under CPU bf16 autocast against the PyTorch reference under
/// `torch.autocast('cpu', torch.bfloat16)` with AMP's float32 loss (`amp_policy.py`): the loss,
/// every gradient and the target network. Then the losses left to autocast must be caught.
fn amp_parity(name: &str, script: &str, bn_splits: i64) {
    let _turn = RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (cfg, optim) = config(name);
    let dir = tempfile::tempdir().unwrap();
    let (inp_path, out_path) = (dir.path().join("in"), dir.path().join("out"));
    let inp = inputs(1, BATCH, SIZE, optim.lr);
    write_inputs(&inp_path, (&cfg, &optim), bn_splits, &inp, AMP_MODE);
    run_script(
        script,
        &[inp_path.to_str().unwrap(), out_path.to_str().unwrap()],
    )
    .unwrap();
    let reference = read_reference(&out_path);
    let run = || {
        let mut method = build(&cfg, bn_splits, BATCH, Kind::Float);
        run_rust_under(method.as_mut(), &optim, &inp, Kind::Float, CPU_BF16)
    };
    assert_amp_parity(name, run, &reference);
}

#[test]
fn mocov3_step_under_cpu_bf16_autocast_matches_pytorch_amp() {
    amp_parity("mocov3", "mocov3_reference.py", 2);
}

#[test]
fn simclr_step_under_cpu_bf16_autocast_matches_pytorch_amp() {
    amp_parity("simclr", "simclr_reference.py", 1);
}

#[test]
fn byol_step_under_cpu_bf16_autocast_matches_pytorch_amp() {
    amp_parity("byol", "byol_reference.py", 1);
}
