#!/usr/bin/env bash
# The main job on the embedded default. Until pretraining and linear evaluation land, it runs
# what exists: the embedded dataset is generated (moco-train synth), and the ResNet-18 of the
# models crate is held against torchvision on random weights, with planted bugs it must catch.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/demo}"
mkdir -p "$out"
if [ ! -d "$out/data" ]; then
  target/release/moco-train synth --out "$out/data"
fi
echo "demo: ResNet-18 (models crate, tch lowering) vs torchvision on random weights" >&2
target/release/moco-parity --arch resnet18 --ref "$out/parity-resnet18" --generate --mutants
