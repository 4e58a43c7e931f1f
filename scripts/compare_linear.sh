#!/usr/bin/env bash
# `moco-train linear` vs the PyTorch reference (tests/python/linear_reference.py) from the same
# encoders, plus the random-init floor: val top-1 on real photos.
#   DATA (default $MOCO_IMAGENETTE: imagenette96, 96 px photos in the folder layout), ENCODERS ("random runs/compare/rust-0/encoder.safetensors";
#   `random` = each side's own random init, or pass a saved init file to give both the same one),
#   SEEDS ("0 1"), FULL=1 (the full protocol: RRC + flip every epoch through the frozen backbone,
#   instead of --fast cached features), EPOCHS (100), MILESTONES (60,80), STANDARDIZE=1 (both sides
#   standardise the features: `linear --standardize`, its default lr).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
DATA="${DATA:-${MOCO_IMAGENETTE:-}}"; SEEDS="${SEEDS:-0 1}"; THREADS="${THREADS:-2}"
[ -d "$DATA/train" ] || { echo "$(basename "$0"): set DATA (or MOCO_IMAGENETTE) to a labeled dataset root; \"$DATA/train\" not found" >&2; exit 1; }
ENCODERS="${ENCODERS:-random runs/compare/rust-0/encoder.safetensors}"
EPOCHS="${EPOCHS:-100}"; MILESTONES="${MILESTONES:-60,80}"
out=runs/compare-linear; mkdir -p "$out"
if [ "${FULL:-0}" = 1 ]; then rmode=(); pmode=(--augment); mode=full; else rmode=(--fast); pmode=(); mode=--fast; fi
std=(); [ "${STANDARDIZE:-0}" = 1 ] && { std=(--standardize); mode="$mode --standardize"; }
export MOCO_CACHE_DIR="${MOCO_CACHE_DIR:-runs/compare/cache}"
echo "| encoder | seed | moco-train linear ($mode, $EPOCHS epochs) | PyTorch reference |"
echo "|---|---|---|---|"
for enc in $ENCODERS; do
  for seed in $SEEDS; do
    if [ "$enc" = random ]; then r=(--random-init --arch resnet18); p=(); else r=(--encoder "$enc"); p=(--encoder "$enc"); fi
    rust=$(target/release/moco-train linear "${r[@]}" --data "$DATA" --out "$out/lin" "${rmode[@]}" "${std[@]}" --seed "$seed" \
      --epochs "$EPOCHS" --milestones "$MILESTONES" \
      --threads "$THREADS" --quiet --json | tail -1)
    py=$(.venv/bin/python3 tests/python/linear_reference.py "${p[@]}" "${pmode[@]}" "${std[@]}" --data "$DATA" --seed "$seed" \
      --threads "$THREADS" --epochs "$EPOCHS" --milestones "$MILESTONES")
    # A random-init floor draws its own weights on each side (tch vs torch RNG): different nets.
    python3 -c "import json,sys; r,p=json.loads(sys.argv[1]),json.loads(sys.argv[2]); print(f'| {sys.argv[3]} | {sys.argv[4]} | {100*r[\"top1\"]:.1f} % | {100*p[\"top1\"]:.1f} % |')" \
      "$rust" "$py" "$enc" "$seed"
  done
done
