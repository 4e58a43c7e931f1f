#!/usr/bin/env bash
# Recipe studies at equal compute: short pretraining runs, each given the same CPU minutes, then
# kNN and a linear probe on their encoders, one table.
#
#   scripts/study.sh RECIPES [OUT]
#
# RECIPES: one run per line, `name | pretrain flags` (# starts a comment); the flags name what
# differs. Every run gets the same data and seed. Runs go JOBS (2) at a time with THREADS (1)
# libtorch threads each, so that every run gets the same share of the machine.
#
# BUDGET_MIN (CPU minutes per run, default 15): each recipe is first timed for CAL_STEPS (16) steps
# in the same conditions (JOBS side by side), and its run gets as many steps as its measured speed
# fits in the budget (a --crop-from recipe is timed at both ends of its ramp); the cosine schedule
# runs over those steps. A recipe that names --steps or --epochs keeps them. Results: OUT/NAME/
# (the run), OUT/NAME.linear/ (the probe, LINEAR=1), OUT/study.jsonl (one line per run) and a
# markdown table on stdout (CPU minutes: the run's own user + system time, OUT/NAME.cpu);
# LINEAR_FLAGS adds flags to the probe (e.g. --standardize). kNN: k 200, T 0.1, train → val, at
# the data's size (96 px for imagenette96); KNN_EVERY=N also measures it every N epochs during the
# run (the curve in OUT/NAME/metrics.jsonl). The table's first row is the floor: the same kNN and
# probe on resnet18 at random init, seed FLOOR_SEED (0), measured in the same conditions (FLOOR=0
# skips it). A run whose directory already holds a result is not repeated. DATA (the imagenette96
# photos; required).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
RECIPES="${1:?usage: scripts/study.sh RECIPES [OUT]}"
OUT="${2:-runs/study}"
DATA="${DATA:?DATA=path to a labeled dataset (e.g. imagenette96)}"
JOBS="${JOBS:-2}"
THREADS="${THREADS:-1}"
BUDGET_MIN="${BUDGET_MIN:-15}"
CAL_STEPS="${CAL_STEPS:-16}"
LINEAR="${LINEAR:-1}"
LINEAR_FLAGS="${LINEAR_FLAGS:-}"
FLOOR="${FLOOR:-1}"
FLOOR_SEED="${FLOOR_SEED:-0}"
BIN="${BIN:-target/release/moco-train}"
[ -x "$BIN" ] || { echo "study: build first (make build)" >&2; exit 1; }
[ -d "$DATA/train" ] || { echo "study: $DATA/train not found (set DATA=...)" >&2; exit 1; }
mkdir -p "$OUT"

# Seconds per step of FLAGS, warm: the second half of a CAL_STEPS-step run. Prints it, the side of
# its views and where their ramp starts (empty without one).
time_step() { # dir flags
  local dir=$1 flags=$2
  rm -rf "$dir"
  # shellcheck disable=SC2086
  RAYON_NUM_THREADS="$THREADS" "$BIN" pretrain --data "$DATA" --out "$dir" --threads "$THREADS" \
    --no-knn --quiet --json --steps "$CAL_STEPS" --log-every $((CAL_STEPS / 2)) $flags \
    > /dev/null 2> "$dir.stderr" || return 1
  .venv/bin/python3 - "$dir" <<'PY'
import json, sys
last = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")][-1]
alg = json.load(open(sys.argv[1] + "/config.json"))["algorithm"]
aug = alg["augmentation"]
print(alg["batch_size"] / last["images_per_sec"], aug["size"], aug.get("size_from", ""))
PY
}

# Steps that fit BUDGET_MIN at the measured speed of the recipe. A recipe with progressive
# resizing (`--crop-from A`, or a preset's ramp) is timed at both ends of its ramp (views of A and
# of its final side B, each without the ramp); its steps at each side are priced between the two
# by the side's area, as the ramp spends them (`AugConfig::size_at`: a linear ramp in steps of 8
# pixels).
calibrate() { # name flags
  local name=$1 flags=$2 dir="$OUT/.cal/$1" from fixed end side ramp start=""
  [ -f "$dir.steps" ] && return 0
  mkdir -p "$OUT/.cal"
  from=$(echo "$flags" | sed -nE 's/.*--crop-from[ =]+([0-9]+).*/\1/p')
  fixed=$(echo "$flags" | sed -E 's/--crop-from[ =]+[0-9]+//')
  end=$(time_step "$dir" "$fixed") \
    || { echo "study: calibrating $name failed: $(tail -1 "$dir.stderr")" >&2; return 0; }
  read -r _ side ramp <<< "$end"
  if [ -n "$ramp" ]; then # a preset's ramp ran in the timing: time the final side alone
    from="${from:-$ramp}"; fixed="$fixed --crop-from $side"
    end=$(time_step "$dir" "$fixed") \
      || { echo "study: calibrating $name failed: $(tail -1 "$dir.stderr")" >&2; return 0; }
  fi
  if [ -n "$from" ]; then
    local small
    small="$(echo "$fixed" | sed -E 's/--crop(-from)?[ =]+[0-9]+//g') --crop $from --crop-from $from"
    start=$(time_step "$dir.from" "$small") \
      || { echo "study: calibrating $name at $from px failed: $(tail -1 "$dir.from.stderr")" >&2; return 0; }
  fi
  .venv/bin/python3 - "$BUDGET_MIN" "$THREADS" "$end" "$start" > "$dir.steps" <<'PY'
import sys
secs = float(sys.argv[1]) * 60 / int(sys.argv[2])
t_b, b = (float(v) for v in sys.argv[3].split()[:2])
per_step = t_b
if sys.argv[4]:
    t_a, a = (float(v) for v in sys.argv[4].split()[:2])
    def side(t):  # AugConfig::size_at
        return min(max(round((a + (b - a) * t) / 8) * 8, min(a, b)), max(a, b))
    cost = lambda s: t_a + (t_b - t_a) * (s * s - a * a) / (b * b - a * a)
    if a != b:
        per_step = sum(cost(side(i / 1000)) for i in range(1000)) / 1000
print(max(1, int(secs / per_step)))
PY
}

one() { # "name | flags"
  local name flags steps
  name="$(echo "${1%%|*}" | xargs)"; flags="${1#*|}"
  if [ ! -f "$OUT/$name/result.json" ]; then
    steps=""
    if ! echo "$flags" | grep -qE -- '--(steps|epochs)'; then
      calibrate "$name" "$flags"
      [ -f "$OUT/.cal/$name.steps" ] || return 0
      steps="--steps $(cat "$OUT/.cal/$name.steps")"
    fi
    local monitor="--no-knn"
    [ -z "${KNN_EVERY:-}" ] || monitor="--knn-every $KNN_EVERY"
    local t0; t0=$(date +%s)
    # The process's own CPU seconds (user, system), one line per segment of a resumed run: what
    # the run used, however busy the machine was around it.
    local TIMEFORMAT='%3U %3S'
    # shellcheck disable=SC2086
    { time RAYON_NUM_THREADS="$THREADS" "$BIN" pretrain --data "$DATA" --out "$OUT/$name" \
      --threads "$THREADS" $monitor --quiet --json --resume $steps $flags \
      > "$OUT/$name.stdout" 2> "$OUT/$name.stderr"; } 2>> "$OUT/$name.cpu" \
      || { echo "study: $name failed: $(tail -1 "$OUT/$name.stderr")" >&2; return 0; }
    tail -1 "$OUT/$name.stdout" > "$OUT/$name/result.json"
    echo "$(( $(date +%s) - t0 ))" > "$OUT/$name/wall_seconds"
    echo "study: $name done: $(cat "$OUT/$name/result.json")" >&2
  fi
  probe "$name" --encoder "$OUT/$name/encoder.safetensors"
}
# kNN (OUT/NAME/knn.json) and the linear probe (OUT/NAME.linear/) of a run's encoder or of the
# random init, whichever ENCODER_FLAGS name; each skipped once it has its result.
probe() { # name encoder-flags...
  local name=$1; shift
  mkdir -p "$OUT/$name"
  if [ ! -f "$OUT/$name/knn.json" ]; then
    RAYON_NUM_THREADS="$THREADS" "$BIN" knn "$@" --data "$DATA" \
      --threads "$THREADS" --json 2> "$OUT/$name.knn.stderr" | tail -1 > "$OUT/$name/knn.json.tmp" \
      && mv "$OUT/$name/knn.json.tmp" "$OUT/$name/knn.json" \
      || echo "study: kNN of $name failed: $(tail -1 "$OUT/$name.knn.stderr")" >&2
  fi
  if [ "$LINEAR" = 1 ] && [ ! -f "$OUT/$name.linear/result.json" ]; then
    # shellcheck disable=SC2086
    RAYON_NUM_THREADS="$THREADS" "$BIN" linear "$@" --data "$DATA" \
      --out "$OUT/$name.linear" --fast --epochs 100 --threads "$THREADS" $LINEAR_FLAGS --json \
      > "$OUT/$name.linear.stdout" 2> "$OUT/$name.linear.stderr" \
      && tail -1 "$OUT/$name.linear.stdout" > "$OUT/$name.linear/result.json" \
      || echo "study: linear of $name failed: $(tail -1 "$OUT/$name.linear.stderr")" >&2
  fi
}
calibrate_line() { # "name | flags": the calibration alone (all recipes are timed before any run)
  local name flags; name="$(echo "${1%%|*}" | xargs)"; flags="${1#*|}"
  [ -f "$OUT/$name/result.json" ] || echo "$flags" | grep -qE -- '--(steps|epochs)' || calibrate "$name" "$flags"
}
export -f one probe time_step calibrate calibrate_line; export OUT DATA THREADS BIN BUDGET_MIN CAL_STEPS LINEAR LINEAR_FLAGS KNN_EVERY
lines() { grep -v '^\s*#' "$RECIPES" | grep '|' | tr '\n' '\0'; }
lines | xargs -0 -P "$JOBS" -I{} bash -c 'calibrate_line "$1"' _ {}
lines | xargs -0 -P "$JOBS" -I{} bash -c 'one "$1"' _ {}

# The random-init floor, measured as the runs are.
if [ "$FLOOR" = 1 ]; then
  probe floor --random-init --arch resnet18 --seed "$FLOOR_SEED"
fi

.venv/bin/python3 - "$RECIPES" "$OUT" "$THREADS" <<'PY'
import json, os, sys
recipes, out, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
print("| run | flags | steps | images seen | CPU min | final loss | kNN top-1 | linear top-1 |")
print("|---|---|---|---|---|---|---|---|")
top1 = lambda path: json.load(open(path))["top1"] if os.path.exists(path) else None
pct = lambda v: "" if v is None else f"{100 * v:.1f} %"
floor_knn = top1(os.path.join(out, "floor", "knn.json"))
floor_linear = top1(os.path.join(out, "floor.linear", "result.json"))
if floor_knn is not None or floor_linear is not None:
    print(f"| random init (the floor) | | 0 | 0 | 0 | | {pct(floor_knn)} | {pct(floor_linear)} |")
with open(os.path.join(out, "study.jsonl"), "w") as log:
    for line in open(recipes):
        if line.lstrip().startswith("#") or "|" not in line:
            continue
        name, flags = (s.strip() for s in line.split("|", 1))
        path = os.path.join(out, name, "result.json")
        if not os.path.exists(path):
            print(f"| {name} | `{flags}` | failed | | | | | |")
            continue
        r = json.load(open(path))
        cfg = json.load(open(os.path.join(out, name, "config.json")))
        r.update(name=name, flags=flags, batch=cfg["algorithm"]["batch_size"])
        r["images"] = r["steps"] * r["batch"]
        cpu = os.path.join(out, name + ".cpu")
        if os.path.exists(cpu):
            r["cpu_minutes"] = sum(float(v) for l in open(cpu) for v in l.split()) / 60
        else:  # runs from before the CPU time was kept
            r["cpu_minutes"] = r["seconds"] * threads / 60
        r["linear_top1"] = top1(os.path.join(out, name + ".linear", "result.json"))
        r["knn_top1"] = top1(os.path.join(out, name, "knn.json"))
        r.update(floor_knn_top1=floor_knn, floor_linear_top1=floor_linear)
        log.write(json.dumps(r) + "\n")
        print(f"| {name} | `{flags}` | {r['steps']} | {r['images']:,} | {r['cpu_minutes']:.0f} | "
              f"{r['loss']:.3f} | {pct(r.get('knn_top1'))} | {pct(r['linear_top1'])} |")
PY
