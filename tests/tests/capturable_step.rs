//! The step `pretrain --cuda-graph` captures, run eagerly on the CPU: every value it takes from
//! the host (views, lr, shuffle permutations, the queue position, a scheduled momentum) read
//! from a device tensor set before the step. Three steps of each method must match the plain
//! step; what only a GPU can check — the capture and its replays — is the job of
//! `trainer/tests/cuda_graph.rs` and `scripts/gpu.sh`.

use moco_tests::compare::summarize;
use moco_tests::steps::{
    build, compare, inputs_of, narrow_config, run_rust, run_rust_capturable, RNG_LOCK,
};
use tch::Kind;
use trainer::augment::{AugConfig, SmallViews};
use trainer::config::{MethodConfig, OptimConfig, Recipe};
use trainer::runtime::faults::plant;

const STEPS: usize = 3;
const BATCH: usize = 8;
const SIZE: u32 = 32;

/// In float64 the two steps differ only where a value moved to the device goes through other
/// ops (1 − m, lr·buf rounded once more): roundings of 1e-16 that the small-sample BatchNorm
/// amplifies over the steps, held to the tolerances of the PyTorch parity tests (loss, gradients,
/// states). A wrong permutation, queue position, momentum or lr moves the loss by 1e-3 or more.
const TOL: (f64, f64, f64) = (1e-11, 1e-9, 1e-11);

fn config(name: &str) -> (MethodConfig, OptimConfig, i64) {
    let queue = Recipe {
        queue_size: (name == "mocov2").then_some(32),
        ..Recipe::default()
    };
    let (cfg, optim) = narrow_config(name, queue, 1);
    let splits = if name == "mocov2" { 2 } else { 1 };
    (cfg, optim, splits)
}

fn capturable_matches_plain(name: &str) {
    capturable_matches_plain_on(name, AugConfig::mocov2(SIZE))
}

fn capturable_matches_plain_on(name: &str, aug: AugConfig) {
    let _turn = RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (cfg, optim, splits) = config(name);
    let inp = inputs_of(aug, STEPS, BATCH, optim.lr);
    let plain = run_rust(
        build(&cfg, splits, BATCH, Kind::Double).as_mut(),
        &optim,
        &inp,
        Kind::Double,
    );
    let capturable = || {
        let mut method = build(&cfg, splits, BATCH, Kind::Double);
        run_rust_capturable(method.as_mut(), &optim, &inp, Kind::Double)
    };
    let checks = compare(&capturable(), &plain, STEPS, TOL);
    let summary = summarize(&checks);
    eprintln!("{name}: capturable vs plain step, {STEPS} steps: {summary}");
    assert!(
        checks.len() > STEPS * 60,
        "too few quantities: {}",
        checks.len()
    );
    assert!(checks.iter().all(|c| c.ok), "{summary}");
    let _armed = plant(trainer::train::graph::INPUTS_NOT_SET);
    let checks = compare(&capturable(), &plain, STEPS, TOL);
    let failed = checks.iter().filter(|c| !c.ok).count();
    eprintln!(
        "  planted `inputs not set`: {failed}/{} checks fail",
        checks.len()
    );
    assert!(failed > 0, "{name}: stale inputs not caught");
}

#[test]
fn mocov2_capturable_step_matches_the_plain_step() {
    capturable_matches_plain("mocov2");
}

/// Multi-crop's small views are inputs of the captured step too.
#[test]
fn mocov2_multi_crop_capturable_step_matches_the_plain_step() {
    let small = SmallViews {
        count: 2,
        size: 32,
        scale: SmallViews::SCALE,
    };
    capturable_matches_plain_on(
        "mocov2",
        AugConfig {
            small: Some(small),
            ..AugConfig::mocov2(SIZE)
        },
    )
}

#[test]
fn mocov3_capturable_step_matches_the_plain_step() {
    capturable_matches_plain("mocov3");
}

#[test]
fn simclr_capturable_step_matches_the_plain_step() {
    capturable_matches_plain("simclr");
}

#[test]
fn byol_capturable_step_matches_the_plain_step() {
    capturable_matches_plain("byol");
}
