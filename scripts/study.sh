#!/usr/bin/env bash
# Recipe study for small data: short pretraining runs, the kNN top-1 at their end, one table.
#
#   scripts/study.sh RECIPES [OUT]
#
# RECIPES: one run per line, `name | pretrain flags` (# starts a comment). Every run gets the
# same data, batch and seed; the flags name what differs. Runs go JOBS (2) at a time with
# THREADS (1) libtorch threads each, so that every run gets the same share of the machine.
# DATA (../shared/data/imagenette96). Results: OUT/NAME/ (the run), OUT/study.jsonl (one line
# per run: name, flags, steps, seconds, final loss, kNN top-1 k=200 T=0.1 on train→val), and a
# markdown table on stdout. A run whose directory already holds a result is not repeated.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
RECIPES="${1:?usage: scripts/study.sh RECIPES [OUT]}"
OUT="${2:-$HOME/moco-runs/study}"
DATA="${DATA:-../shared/data/imagenette96}"
JOBS="${JOBS:-2}"
THREADS="${THREADS:-1}"
BIN=target/release/moco-train
[ -x "$BIN" ] || { echo "study: build first (make build)" >&2; exit 1; }
[ -d "$DATA/train" ] || { echo "study: $DATA/train not found (set DATA=...)" >&2; exit 1; }
mkdir -p "$OUT"

one() { # "name | flags"
  local name flags
  name="$(echo "${1%%|*}" | xargs)"; flags="${1#*|}"
  [ -f "$OUT/$name/result.json" ] && return 0
  # shellcheck disable=SC2086
  RAYON_NUM_THREADS="$THREADS" "$BIN" pretrain --data "$DATA" --out "$OUT/$name" --threads "$THREADS" \
    --knn-every 0 --quiet --json $flags > "$OUT/$name.stdout" 2> "$OUT/$name.stderr" \
    || { echo "study: $name failed: $(tail -1 "$OUT/$name.stderr")" >&2; return 0; }
  tail -1 "$OUT/$name.stdout" > "$OUT/$name/result.json"
  echo "study: $name done: $(cat "$OUT/$name/result.json")" >&2
}
export -f one; export OUT DATA THREADS BIN
grep -v '^\s*#' "$RECIPES" | grep '|' | tr '\n' '\0' | xargs -0 -P "$JOBS" -I{} bash -c 'one "$1"' _ {}

.venv/bin/python3 - "$RECIPES" "$OUT" <<'PY'
import json, os, sys
recipes, out = sys.argv[1:3]
print("| run | flags | steps | seconds | final loss | kNN top-1 |")
print("|---|---|---|---|---|---|")
with open(os.path.join(out, "study.jsonl"), "w") as log:
    for line in open(recipes):
        if line.lstrip().startswith("#") or "|" not in line:
            continue
        name, flags = (s.strip() for s in line.split("|", 1))
        path = os.path.join(out, name, "result.json")
        if not os.path.exists(path):
            print(f"| {name} | `{flags}` | failed | | | |")
            continue
        r = json.load(open(path))
        r.update(name=name, flags=flags)
        log.write(json.dumps(r) + "\n")
        knn = "" if r.get("knn_top1") is None else f"{100 * r['knn_top1']:.1f} %"
        print(f"| {name} | `{flags}` | {r['steps']} | {r['seconds']:.0f} | {r['loss']:.3f} | {knn} |")
PY
