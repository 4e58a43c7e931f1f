#!/usr/bin/env bash
# Benchmarks of docs/benchmarks.md, each side by side with its Python baseline in the same run.
#
#   scripts/bench.sh infer   moco-infer (ort, tract) vs PIL + onnxruntime in Python, batch 1 and 64
#   scripts/bench.sh export  moco-export's file vs torch.onnx.export's, same weights, ort and tract;
#                            BN folded vs --no-fold
#   scripts/bench.sh data    two-view images/s: decoded store + batched aug+ (tch) vs torchvision's
#                            DataLoader (PIL decode + aug+, 2 workers; and pre-decoded)
#   scripts/bench.sh train   pretraining step time, resnet18 batch 64: moco-train vs the PyTorch
#                            reference (tests/python/moco_train.py), same threads; RECIPE adds
#                            flags both take (e.g. "--crop 64 --head-bn --amp bf16")
#   scripts/bench.sh ops     ATen ops and host syncs per training step (bench-step --gpu-path:
#                            what a GPU step dispatches), every method, batch 256, 96 and 64 px,
#                            beside plain PyTorch MoCo v2 steps counted the same way
#                            (tests/python/count_ops.py)
#
# DATA (default $MOCO_IMAGENETTE: imagenette96, 96 px photos in the folder layout), THREADS (2), LIMIT (images per run; 0 = all).
# REPS (3): interleaved repetitions; the table shows medians.
# Writes a markdown table to stdout and the raw JSON lines to runs/bench/*.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
DATA="${DATA:-${MOCO_IMAGENETTE:-}}"
THREADS="${THREADS:-2}"
LIMIT="${LIMIT:-0}"
out=runs/bench; mkdir -p "$out"
[ -d "$DATA/val" ] || { echo "bench: $DATA/val not found (set DATA=...)" >&2; exit 1; }
# The workspace build (`make build`): per-package builds would unify other features and rebuild.
cargo build --release -q --workspace --bins
py=.venv/bin/python3

weights() { # arch dir: torchvision-initialised weights with calibrated BN statistics
  mkdir -p "$2"; [ -f "$2/encoder.safetensors" ] || $py tests/python/torchvision_parity.py --arch "$1" --out "$2" >&2
}
infer() { # model backend batch
  target/release/moco-infer --model "$1" --data "$DATA" --split val --backend "$2" --batch-size "$3" \
    --threads "$THREADS" --limit "$LIMIT" --quiet --json 2>/dev/null | tail -1
}
pyinfer() { # model batch
  $py tests/python/bench_infer.py --model "$1" --data "$DATA" --split val --batch-size "$2" \
    --threads "$THREADS" --limit "$LIMIT"
}
field() { $py -c "import json,sys; print('%.1f' % json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
ratio() { $py -c "import sys; print('%.2f' % (float(sys.argv[1]) / float(sys.argv[2])))" "$1" "$2"; }

REPS="${REPS:-3}"
table() { # jsonl file: medians of images_per_sec per (tag) → markdown, ratios against the baseline
  $py - "$1" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda tag, key: statistics.median(r[key] for r in rows if r["tag"] == tag)
print("| batch | Python PIL+ORT | moco-infer ort | ort / Python | moco-infer tract | tract / ort | inference only: Python / ort / tract |")
print("|---|---|---|---|---|---|---|")
for b in sorted({r["batch_size"] for r in rows}):
    p, o, t = (med(f"{k}{b}", "images_per_sec") for k in ("py", "ort", "tract"))
    pi, oi, ti = (med(f"{k}{b}", "inference_images_per_sec") for k in ("py", "ort", "tract"))
    print(f"| {b} | {p:.1f} | {o:.1f} | **{o/p:.2f}×** | {t:.1f} | **{t/o:.2f}×** | {pi:.1f} / {oi:.1f} / {ti:.1f} |")
PY
}

case "${1:-}" in
infer)
  weights resnet18 "$out/w18"
  target/release/moco-export --encoder "$out/w18/encoder.safetensors" --classifier "$out/w18/classifier.safetensors" --out "$out/r18.onnx" 2>/dev/null
  : > "$out/infer.jsonl"
  for rep in $(seq "$REPS"); do
    for b in 1 64; do   # interleaved, so drifts of the machine hit every side alike
      tag() { $py -c "import json,sys; d=json.loads(sys.argv[1]); d['tag']=sys.argv[2]; print(json.dumps(d))" "$1" "$2"; }
      tag "$(pyinfer "$out/r18.onnx" $b)" "py$b" >> "$out/infer.jsonl"
      tag "$(infer "$out/r18.onnx" ort $b)" "ort$b" >> "$out/infer.jsonl"
      tag "$(infer "$out/r18.onnx" tract $b)" "tract$b" >> "$out/infer.jsonl"
    done
  done
  table "$out/infer.jsonl" ;;
export)
  : > "$out/export.jsonl"
  for arch in resnet18 resnet50; do
    w="$out/w-$arch"; weights $arch "$w"
    target/release/moco-export --encoder "$w/encoder.safetensors" --classifier "$w/classifier.safetensors" --out "$out/$arch.ours.onnx" 2>/dev/null
    target/release/moco-export --encoder "$w/encoder.safetensors" --classifier "$w/classifier.safetensors" --out "$out/$arch.nofold.onnx" --no-fold 2>/dev/null
    $py tests/python/torch_export.py --encoder "$w/encoder.safetensors" --classifier "$w/classifier.safetensors" --like "$out/$arch.ours.onnx" --out "$out/$arch.torch.onnx" 2>/dev/null
  done
  for rep in $(seq "$REPS"); do
    for arch in resnet18 resnet50; do
      for kind in ours nofold torch; do
        f="$out/$arch.$kind.onnx"
        for be in ort tract; do
          $py -c "import json,os,sys; d=json.loads(sys.argv[1]); d.update(arch=sys.argv[2], kind=sys.argv[3], bytes=os.path.getsize(sys.argv[4])); print(json.dumps(d))" \
            "$(infer "$f" $be 64)" $arch $kind "$f" >> "$out/export.jsonl"
        done
      done
    done
  done
  $py - "$out/export.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(arch, kind, be):
    return statistics.median(r["inference_images_per_sec"] for r in rows
                             if (r["arch"], r["kind"], r["backend"]) == (arch, kind, be))
size = {(r["arch"], r["kind"]): r["bytes"] for r in rows}
print("| arch | file | bytes | vs torch size | ort img/s | ort vs torch | tract img/s | tract vs torch |")
print("|---|---|---|---|---|---|---|---|")
for arch in ("resnet18", "resnet50"):
    for kind, label in (("ours", "moco-export (BN folded)"), ("nofold", "moco-export --no-fold"), ("torch", "torch.onnx.export")):
        o, t = med(arch, kind, "ort"), med(arch, kind, "tract")
        to, tt = med(arch, "torch", "ort"), med(arch, "torch", "tract")
        b, tb = size[(arch, kind)], size[(arch, "torch")]
        print(f"| {arch} | {label} | {b:,} | {b/tb:.4f} | {o:.1f} | **{o/to:.2f}×** | {t:.1f} | **{t/tt:.2f}×** |")
PY
  ;;
data)
  BATCHES="${BATCHES:-20}"
  export MOCO_CACHE_DIR="${MOCO_CACHE_DIR:-$out/cache}"
  : > "$out/data.jsonl"
  target/release/moco-train bench-data --data "$DATA" --batches 1 --threads "$THREADS" --json >/dev/null  # builds the store
  for rep in $(seq "$REPS"); do
    tagj() { $py -c "import json,sys; d=json.loads(sys.argv[1]); d['tag']=sys.argv[2]; print(json.dumps(d))" "$1" "$2"; }
    tagj "$(target/release/moco-train bench-data --data "$DATA" --batches "$BATCHES" --threads "$THREADS" --json 2>/dev/null | tail -1)" rust >> "$out/data.jsonl"
    tagj "$($py tests/python/bench_augment.py --data "$DATA" --batches "$BATCHES" --workers "$THREADS")" png >> "$out/data.jsonl"
    tagj "$($py tests/python/bench_augment.py --data "$DATA" --batches "$BATCHES" --workers "$THREADS" --predecoded)" predecoded >> "$out/data.jsonl"
  done
  $py - "$out/data.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda tag: statistics.median(r["two_view_images_per_sec"] for r in rows if r["tag"] == tag)
r, p, d = med("rust"), med("png"), med("predecoded")
print("| pipeline | two-view images/s | moco-train / it |")
print("|---|---|---|")
print(f"| torchvision, PIL decode from PNG, DataLoader 2 workers | {p:.0f} | **{r/p:.2f}×** |")
print(f"| torchvision, pre-decoded PIL images, 2 workers | {d:.0f} | **{r/d:.2f}×** |")
print(f"| moco-train: decoded store + batched aug+ on tch, 2 threads | {r:.0f} | 1.00× |")
PY
  ;;
train)
  # RECIPE: flags both trainers take (e.g. "--crop 64 --head-bn" with BN_SPLITS=2, the demo's).
  STEPS="${STEPS:-40}"; BN_SPLITS="${BN_SPLITS:-8}"; RECIPE="${RECIPE:-}"
  export MOCO_CACHE_DIR="${MOCO_CACHE_DIR:-$out/cache}"
  : > "$out/train.jsonl"
  for rep in $(seq "$REPS"); do
    rm -rf "$out/train-rust" "$out/train-py"
    # shellcheck disable=SC2086
    target/release/moco-train pretrain --data "$DATA" --out "$out/train-rust" --steps "$STEPS" --batch-size 64 \
      --queue-size 1024 --bn-splits "$BN_SPLITS" --log-every 10 --no-knn --threads "$THREADS" --quiet --json \
      $RECIPE >/dev/null
    # shellcheck disable=SC2086
    $py tests/python/moco_train.py --data "$DATA" --out "$out/train-py" --steps "$STEPS" --batch-size 64 \
      --queue-size 1024 --bn-splits "$BN_SPLITS" --log-every 10 --no-knn --threads "$THREADS" --workers "$THREADS" \
      $RECIPE >/dev/null
    # Steady state: the logged intervals after the first (warm-up, store and worker start).
    $py - "$out/train-rust/metrics.jsonl" "$out/train-py/metrics.jsonl" >> "$out/train.jsonl" <<'PY'
import json, statistics, sys
ips = lambda f: statistics.median(json.loads(l)["images_per_sec"] for l in list(open(f))[1:] if "images_per_sec" in l)
print(json.dumps({"rust": ips(sys.argv[1]), "python": ips(sys.argv[2])}))
PY
  done
  $py - "$out/train.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
r = statistics.median(x["rust"] for x in rows); p = statistics.median(x["python"] for x in rows)
print("| resnet18, batch 64, 2 threads | two-view images/s | s/step | step time vs Python |")
print("|---|---|---|---|")
print(f"| PyTorch reference (DataLoader 2 workers) | {p:.1f} | {64/p:.2f} | 1.00× |")
print(f"| moco-train pretrain | {r:.1f} | {64/r:.2f} | **{p/r:.2f}×** |")
PY
  ;;
ops)
  DATA_OPS="${DATA_OPS:-$out/synth}"
  [ -d "$DATA_OPS" ] || target/release/moco-train synth --out "$DATA_OPS" >&2
  : > "$out/ops.jsonl"
  for crop in 96 64; do
    for m in mocov2 mocov1 mocov3 simclr byol; do
      extra=""; case "$m" in mocov1|mocov2) extra="--queue-size 4096 --bn-splits 8" ;; esac
      # shellcheck disable=SC2086
      target/release/moco-train bench-step --data "$DATA_OPS" --out "$out/ops-run" --method "$m" \
        --batch-size 256 --crop "$crop" --threads "$THREADS" --gpu-path --warmup 1 --timed 1 \
        --no-knn --quiet --json $extra 2>/dev/null | tail -1 >> "$out/ops.jsonl"
      rm -rf "$out/ops-run"
    done
    for args in "--bn-splits 1" "--bn-splits 1 --foreach-momentum" "--bn-splits 8"; do
      # shellcheck disable=SC2086
      $py tests/python/count_ops.py --batch-size 256 --crop "$crop" $args 2>/dev/null | tail -1 >> "$out/ops.jsonl"
    done
  done
  $py - "$out/ops.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| step (batch 256) | crop | top-level ATen ops | nested | host syncs |")
print("|---|---|---|---|---|")
for r in rows:
    if "method" in r:
        name = f"moco-train {r['method']} (augmentation on the device, shuffle BN where the method has it)"
        syncs = f"{r['syncs_per_step']:.0f}"
    else:
        name = "PyTorch eager MoCo v2, views given, " + (
            f"SplitBatchNorm ×{r['bn_splits']}" if r["bn_splits"] > 1 else "no shuffle BN") + (
            ", foreach momentum update" if r["foreach_momentum"] else "")
        syncs = ""
    print(f"| {name} | {r['crop']} | {r['ops_per_step']:.0f} | {r['nested_ops_per_step']:.0f} | {syncs} |")
PY
  ;;
*) echo "usage: scripts/bench.sh infer|export|data|train|ops" >&2; exit 2 ;;
esac
