#!/usr/bin/env bash
# Fingerprints of what fixed-seed CPU runs write: the encoder of every method after a few steps,
# a resumed run's, and the linear probe's and a fine-tune's classifier. Run it before and after a
# change that should not change results, then `diff` the two lists.
#   bash scripts/same_output.sh OUT      (writes OUT/sums.txt; BIN=dir of the binaries)
set -euo pipefail
out="${1:?usage: same_output.sh OUT}"
bin="${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release}"
rm -rf "$out" && mkdir -p "$out"
train() { "$bin/moco-train" "$@" --quiet --threads 1 --no-tensorboard; }
"$bin/moco-train" synth --out "$out/data" --classes 4 --train-per-class 24 --val-per-class 8 \
  --unlabeled 64 --seed 3 2>/dev/null
common=(--data "$out/data" --arch resnet18 --batch-size 16 --seed 11 --no-knn --size 32 --crop 32)
for m in mocov1 mocov2 mocov3 simclr byol; do
  train pretrain "${common[@]}" --steps 6 --method "$m" --out "$out/$m"
done
MOCO_TEST_KILL_AT=step:4 train pretrain "${common[@]}" --method mocov2 --steps 6 --checkpoint-every 3 \
  --out "$out/resumed" 2>/dev/null || true
train pretrain "${common[@]}" --method mocov2 --steps 6 --resume --out "$out/resumed"
train linear --encoder "$out/mocov2/encoder.safetensors" --data "$out/data" --out "$out/linear" \
  --epochs 2 --seed 5 --size 32
train linear --encoder "$out/mocov2/encoder.safetensors" --data "$out/data" --out "$out/finetune" \
  --epochs 1 --seed 5 --size 32 --finetune
(cd "$out" && sha256sum ./*/encoder.safetensors ./*/classifier.safetensors) | tee "$out/sums.txt"
