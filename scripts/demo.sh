#!/usr/bin/env bash
# The main job on the embedded default. Until the pipeline lands (synth → pretrain → linear →
# export → moco-infer), it shows what exists: the ResNet models held against torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/demo}"
mkdir -p "$out"
echo "demo: ResNet-18 (models crate, tch lowering) vs torchvision on random weights" >&2
target/release/moco-parity --arch resnet18 --ref "$out/parity-resnet18" --generate --mutants
