#!/usr/bin/env bash
# The labeling study of docs/benchmarks.md ("Label requests, measured"): every strategy of
# label-request and the two random baselines, on imagenette96's train split (a labeled start of
# START images per class, the rest the pool), budgets of 5 % and 20 % of the pool, seeds 0-2,
# with a pretrained encoder and with the random-init control.
#
#   scripts/label_study.sh ENCODER OUT
#
# OUT/pretrained/ and OUT/random-init/ hold results.jsonl, summary.md and label_study.png.
# STARTS (default 50,100), CONTROL_STARTS (default 50), THREADS (default: all cores), DATA
# (default $MOCO_IMAGENETTE). A study stopped part-way continues when run again.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
ENCODER="${1:?usage: scripts/label_study.sh ENCODER OUT}"
OUT="${2:?usage: scripts/label_study.sh ENCODER OUT}"
DATA="${DATA:-${MOCO_IMAGENETTE:-}}"
[ -d "$DATA/train" ] || { echo "label_study: DATA=$DATA has no train/ (set DATA or MOCO_IMAGENETTE)" >&2; exit 1; }
BIN="${BIN:-target/release/moco-train}"
[ -x "$BIN" ] || { echo "label_study: build first (make build)" >&2; exit 1; }
threads=(); [ -z "${THREADS:-}" ] || threads=(--threads "$THREADS")
mkdir -p "$OUT"
study() { # name starts encoder-flags...
  local name=$1 starts=$2; shift 2
  "$BIN" label-study --data "$DATA" "$@" --starts "$starts" --standardize "${threads[@]}" \
    --out "$OUT/$name" --json > "$OUT/$name.json"
}
[ "${SKIP_CONTROL:-0}" = 1 ] || study random-init "${CONTROL_STARTS:-50}" --random-init --arch resnet18
[ "${SKIP_PRETRAINED:-0}" = 1 ] || study pretrained "${STARTS:-50,100}" --encoder "$ENCODER"
