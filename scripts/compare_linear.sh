#!/usr/bin/env bash
# `moco-train linear --fast` vs the PyTorch reference (tests/python/linear_reference.py) from the
# same encoders, plus the random-init floor: val top-1 on real photos, two seeds each.
#   DATA (../shared/data/imagenette96), ENCODERS ("runs/compare/rust-0/encoder.safetensors"), SEEDS
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
DATA="${DATA:-../shared/data/imagenette96}"; SEEDS="${SEEDS:-0 1}"; THREADS="${THREADS:-2}"
ENCODERS="${ENCODERS:-random runs/compare/rust-0/encoder.safetensors}"
out=runs/compare-linear; mkdir -p "$out"
export MOCO_CACHE_DIR="${MOCO_CACHE_DIR:-runs/compare/cache}"
echo "| encoder | seed | moco-train linear --fast | PyTorch reference |"
echo "|---|---|---|---|"
for enc in $ENCODERS; do
  for seed in $SEEDS; do
    if [ "$enc" = random ]; then r=(--random-init --arch resnet18); p=(); else r=(--encoder "$enc"); p=(--encoder "$enc"); fi
    rust=$(target/release/moco-train linear "${r[@]}" --data "$DATA" --out "$out/lin" --fast --seed "$seed" \
      --threads "$THREADS" --quiet --json | tail -1)
    py=$(.venv/bin/python3 tests/python/linear_reference.py "${p[@]}" --data "$DATA" --seed "$seed" --threads "$THREADS")
    # A random-init floor draws its own weights on each side (tch vs torch RNG): different nets.
    python3 -c "import json,sys; r,p=json.loads(sys.argv[1]),json.loads(sys.argv[2]); print(f'| {sys.argv[3]} | {sys.argv[4]} | {100*r[\"top1\"]:.1f} % | {100*p[\"top1\"]:.1f} % |')" \
      "$rust" "$py" "$enc" "$seed"
  done
done
