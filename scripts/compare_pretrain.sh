#!/usr/bin/env bash
# moco-train pretrain vs the PyTorch reference (tests/python/moco_train.py) on real photos: same
# steps, batch, hyperparameters; two seeds each, so the run-to-run noise is measured beside the
# difference. Prints the loss at every logged step and the final kNN top-1 (bank train, queries val).
#
#   DATA (default $MOCO_IMAGENETTE: imagenette96, 96 px photos in the folder layout), STEPS (60), BATCH (64), THREADS (2), SEEDS ("0 1")
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
DATA="${DATA:-${MOCO_IMAGENETTE:-}}"; STEPS="${STEPS:-60}"; BATCH="${BATCH:-64}"
[ -d "$DATA/train" ] || { echo "$(basename "$0"): set DATA (or MOCO_IMAGENETTE) to a labeled dataset root; \"$DATA/train\" not found" >&2; exit 1; }
THREADS="${THREADS:-2}"; SEEDS="${SEEDS:-0 1}"
out=runs/compare; mkdir -p "$out"
export MOCO_CACHE_DIR="${MOCO_CACHE_DIR:-$out/cache}"
hp=(--steps "$STEPS" --batch-size "$BATCH" --queue-size 1024 --lr 0.3 --bn-splits 8 --log-every 10)
for seed in $SEEDS; do
  rm -rf "$out/rust-$seed" "$out/py-$seed"
  target/release/moco-train pretrain --data "$DATA" --out "$out/rust-$seed" "${hp[@]}" --seed "$seed" \
    --threads "$THREADS" --knn-every 0 --quiet --json > "$out/rust-$seed.json"
  .venv/bin/python3 tests/python/moco_train.py --data "$DATA" --out "$out/py-$seed" "${hp[@]}" --seed "$seed" \
    --threads "$THREADS" --workers "$THREADS" > "$out/py-$seed.json"
done
.venv/bin/python3 - "$out" $SEEDS <<'PY'
import json, sys
out, seeds = sys.argv[1], sys.argv[2:]
def rows(path):
    return [json.loads(l) for l in open(path)]
runs = {}
for s in seeds:
    for side in ("rust", "py"):
        r = rows(f"{out}/{side}-{s}/metrics.jsonl")
        runs[f"{side} seed {s}"] = ({x["step"]: x["loss"] for x in r if "loss" in x},
                                    [x["knn_top1"] for x in r if "knn_top1" in x][-1])
steps = sorted(next(iter(runs.values()))[0])
print("| run | " + " | ".join(f"loss @{s}" for s in steps) + " | kNN top-1 |")
print("|---|" + "---|" * (len(steps) + 1))
for name, (loss, knn) in runs.items():
    print(f"| {name} | " + " | ".join(f"{loss[s]:.3f}" for s in steps) + f" | {100*knn:.1f} % |")
PY
