#!/usr/bin/env bash
# Every stage at the competition's size (512,000 unlabeled, 25,600 + 25,600 labeled, 800
# classes), each measured by scripts/measure.py (wall, CPU, peak RSS and peak anonymous memory)
# into $DIR/results.jsonl; docs/benchmarks.md "At the competition's scale" is made from it.
#
#   scripts/scale.sh [STAGE...]     (default: every stage, in order; a recorded stage is skipped)
#
# DIR (default runs/scale in the checkout) holds the data (≈ 11 GB of PNGs), the decoded stores (≈ 16 GB)
# and the runs. UNLABELED (default 512000) sizes the full set; POOLS (default "64000 128000") are
# the label-request pools, views of the first POOL unlabeled images (symbolic links), so the
# growth of label-request is measured without a 512,000-image pass of every strategy.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
DIR=${DIR:-$here/runs/scale}
BIN=${BIN:-$here/target/release}
UNLABELED=${UNLABELED:-512000}
PER_CLASS=${PER_CLASS:-32}
CLASSES=${CLASSES:-800}
POOLS=${POOLS:-64000 128000}
STRATEGIES=${STRATEGIES:-entropy margin balanced contrastive kcenter}
THREADS=${THREADS:-2}
mkdir -p "$DIR"
cd "$DIR"
R=results.jsonl
labeled=$((CLASSES * PER_CLASS))
common=(--cache-dir cache --threads "$THREADS" --json)

done_stage() { [[ -f $R ]] && grep -q "\"stage\": \"$1\"" $R; }
measure() {
  local stage=$1 images=$2
  shift 2
  if done_stage "$stage"; then
    echo "$stage: recorded" >&2
    return
  fi
  python3 "$here/scripts/measure.py" $R "$stage" "$images" -- "$@"
}

# A competition root whose unlabeled split is the first $1 images of the full set.
pool_root() {
  local n=$1 root=pool-$1
  if [[ ! -d $root ]]; then
    mkdir -p "$root.tmp/unlabeled"
    for f in train val train_label_tensor.pt val_label_tensor.pt; do
      ln -s "$DIR/comp/$f" "$root.tmp/$f"
    done
    python3 -c 'import os, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    os.symlink(f"{src}/{i}.png", f"{dst}/{i}.png")' "$DIR/comp/unlabeled" "$root.tmp/unlabeled" "$n"
    mv "$root.tmp" "$root"
  fi
  echo "$root"
}

stage_synth() {
  measure synth $((UNLABELED + 2 * labeled)) "$BIN/moco-train" synth --out comp \
    --layout competition --classes "$CLASSES" --train-per-class "$PER_CLASS" \
    --val-per-class "$PER_CLASS" --unlabeled "$UNLABELED" --json
}

stage_stores() {
  # COLD=1 (root only): the build starts from an empty page cache, as after a download.
  if [[ ${COLD:-0} == 1 ]] && ! done_stage stores; then
    sync
    echo 3 >/proc/sys/vm/drop_caches || echo "COLD=1: cannot drop the page cache (root only)" >&2
  fi
  measure stores $((UNLABELED + 2 * labeled)) "$BIN/moco-train" bench-data --data comp \
    --splits unlabeled,train,val --batches 1 --batch-size 64 "${common[@]}"
  # What every later command pays to start: list the split, fingerprint it, map its store.
  measure open-stores $((UNLABELED + 2 * labeled)) "$BIN/moco-train" bench-data --data comp \
    --splits unlabeled,train,val --batches 1 --batch-size 64 "${common[@]}"
}

stage_pretrain() {
  measure pretrain-50 $((UNLABELED + labeled)) "$BIN/moco-train" pretrain --data comp \
    --out run --steps 50 --batch-size 64 --no-knn --seed 0 "${common[@]}"
  local small
  small=$(pool_root 64000)
  measure pretrain-50-small $((64000 + labeled)) "$BIN/moco-train" pretrain --data "$small" \
    --out run-small --steps 50 --batch-size 64 --no-knn --seed 0 "${common[@]}"
}

stage_knn() {
  measure knn $((2 * labeled)) "$BIN/moco-train" knn --encoder run/encoder.safetensors \
    --data comp --bank-split train --query-split val "${common[@]}"
}

stage_linear() {
  measure linear-fast $((2 * labeled)) "$BIN/moco-train" linear \
    --encoder run/encoder.safetensors --data comp --out linear-fast --fast --seed 0 "${common[@]}"
  measure linear-1-epoch $((2 * labeled)) "$BIN/moco-train" linear \
    --encoder run/encoder.safetensors --data comp --out linear-full --epochs 1 --seed 0 \
    "${common[@]}"
}

stage_label_request() {
  local n s root
  for n in $POOLS; do
    root=$(pool_root "$n")
    # The pool's stores are built first, unmeasured: a request is timed on its own.
    "$BIN/moco-train" bench-data --data "$root" --splits unlabeled,train --batches 1 \
      "${common[@]}" >/dev/null 2>&1
    for s in $STRATEGIES; do
      measure "label-request-$s-$n" "$n" "$BIN/moco-train" label-request \
        --encoder run/encoder.safetensors --classifier linear-fast/classifier.safetensors \
        --data "$root" --budget $((labeled / 2)) --strategy "$s" --out "request-$s-$n.csv" \
        "${common[@]}"
    done
  done
}

stage_merge() {
  local n
  n=$(echo "$POOLS" | awk '{print $NF}')
  # The labeler's answer: the predicted class of every requested image.
  awk -F, 'NR == 1 {print "image,label"} NR > 1 {print $3 "," $5}' \
    "request-entropy-$n.csv" >labels-entropy.csv
  rm -rf merged
  measure merge-labels $((UNLABELED + 2 * labeled)) "$BIN/moco-train" merge-labels --data comp \
    --request "request-entropy-$n.csv" --labels labels-entropy.csv --out merged --json
}

stage_export() {
  measure export "$CLASSES" "$BIN/moco-export" --encoder run/encoder.safetensors \
    --classifier linear-fast/classifier.safetensors --out model.onnx --json
}

stage_infer() {
  local b
  for b in ort tract; do
    measure "infer-$b" "$labeled" "$BIN/moco-infer" --model model.onnx --data comp --split val \
      --backend "$b" --threads "$THREADS" --predictions "predictions-$b.csv" --json
  done
}

# The results as the markdown table of docs/benchmarks.md.
stage_table() {
  python3 - "$R" <<'PY'
import json, re, sys
# The pipeline's order, whatever order the stages were (re)measured in; a stage's pools by size.
order = ["synth", "stores", "open-stores", "pretrain-50", "pretrain-50-small", "knn",
         "linear-fast", "linear-1-epoch", "label-request-entropy", "label-request-margin",
         "label-request-balanced", "label-request-kcenter", "label-request-contrastive",
         "merge-labels", "export", "infer-ort", "infer-tract"]
def key(r):
    base = r["stage"] if r["stage"] in order else re.sub(r"-[0-9]+$", "", r["stage"])
    return (order.index(base) if base in order else len(order), r["images"])
records = sorted((json.loads(line) for line in open(sys.argv[1])), key=key)
print("| stage | images | wall | CPU (user+sys) | peak RSS | of which anonymous |")
print("|---|---|---|---|---|---|")
for r in records:
    print(f"| {r['stage']} | {r['images']:,} | {r['wall_s']:,.0f} s | {r['user_s'] + r['sys_s']:,.0f} s "
          f"| {r['max_rss_mb']:,.0f} MB | {r['peak_anon_mb']:,.0f} MB |")
PY
}

stages=("$@")
[[ ${#stages[@]} -gt 0 ]] || stages=(synth stores pretrain knn linear label_request merge export infer)
for s in "${stages[@]}"; do
  "stage_$s"
done
