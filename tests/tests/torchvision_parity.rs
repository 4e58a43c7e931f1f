//! models_tch against torchvision: same random weights, same inputs, same outputs
//! (eval and train mode, SplitBatchNorm), gradients and BatchNorm running statistics.
//! Reference: tests/python/torchvision_parity.py, run with the project's .venv.

use moco_tests::compare::summarize;
use moco_tests::parity::{mutants, ResnetReference};
use models::{Arch, ResNetDesc};
use tch::Device;

fn parity(arch: Arch) {
    let dir = tempfile::tempdir().unwrap();
    let reference = ResnetReference::generate(arch, dir.path(), 0).unwrap();
    let checks = reference.run(&ResNetDesc::new(arch), Device::Cpu).unwrap();
    let summary = summarize(&checks);
    eprintln!("{arch}: {summary}");
    assert!(checks.iter().all(|c| c.ok), "{arch}: {summary}");
    // 3 eval outputs, 2 train outputs, 2 split outputs, every gradient, BN state twice.
    assert!(checks.len() > 7 + 3 * ResNetDesc::new(arch).conv_bns().len());

    // Negative controls: each planted bug must be caught by at least one comparison.
    for (name, desc) in mutants(arch) {
        let m = reference.run(&desc, Device::Cpu).unwrap();
        assert!(
            m.iter().any(|c| !c.ok),
            "{arch}: mutant `{name}` passed the parity checks: {}",
            summarize(&m)
        );
    }
}

#[test]
fn resnet18_matches_torchvision() {
    parity(Arch::Resnet18);
}

#[test]
fn resnet50_matches_torchvision() {
    parity(Arch::Resnet50);
}
