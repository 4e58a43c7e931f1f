#!/usr/bin/env bash
# int8 calibration on several encoders: for each `NAME ENCODER CLASSIFIER` line of LIST
# (scripts/int8_encoders.sh writes one), the fp32 export, `--quantize int8` with each range method
# alone (minmax, percentile, mse, entropy; every layer int8), the default (`--calibration auto
# --keep-float auto`), and ONNX Runtime's quantize_static of the fp32 file; each model evaluated by
# moco-infer (ort) on the val split. One markdown table: top-1, the share of val images whose top-1
# is fp32's, ort images/s at batch 64, file size, and what the default chose (docs/benchmarks.md,
# "int8").
#
#   scripts/int8_study.sh LIST DATA [OUT]
# env: THREADS (2), IMAGES (512 calibration images, from train), REDO (models to make and
# evaluate again, default all: fp32 minmax percentile mse entropy auto ort-static)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
list=${1:?usage: scripts/int8_study.sh LIST DATA [OUT]} data=${2:?DATA: a labeled dataset root}
out=${3:-$here/runs/int8}
THREADS=${THREADS:-2} IMAGES=${IMAGES:-512}
REDO=${REDO:-fp32 minmax percentile mse entropy auto ort-static}
redo() { [[ " $REDO " == *" $1 "* ]]; }
bin=$here/target/release py=$here/.venv/bin/python3
[ -d "$data/val" ] || { echo "int8_study: $data/val not found" >&2; exit 1; }
mkdir -p "$out"
infer() { # model → its --json line, predictions in model.csv
  "$bin/moco-infer" --model "$1" --data "$data" --split val --backend ort --batch-size 64 \
    --threads "$THREADS" --predictions "${1%.onnx}.csv" --json 2>/dev/null | tail -1 > "${1%.onnx}.json"
}
while read -r name enc cls; do
  [ -n "$name" ] && [ "${name#\#}" = "$name" ] || continue
  d="$out/$name"; mkdir -p "$d"
  redo fp32 && "$bin/moco-export" --encoder "$enc" --classifier "$cls" --out "$d/fp32.onnx" 2>/dev/null
  for m in minmax percentile mse entropy auto; do
    redo "$m" || continue
    float=none; [ "$m" = auto ] && float=auto
    "$bin/moco-export" --encoder "$enc" --classifier "$cls" --out "$d/$m.onnx" --quantize int8 \
      --calibration "$m" --keep-float "$float" --calibration-data "$data" \
      --calibration-images "$IMAGES" --json 2>/dev/null | tail -1 > "$d/$m.export.json"
  done
  if redo ort-static; then
    PYTHONPATH=$here/tests/python "$py" "$here/tests/python/ort_quantize.py" \
      --model "$d/fp32.onnx" --data "$data" --images "$IMAGES" --out "$d/ort-static.onnx" 2>/dev/null
  fi
  for m in $REDO; do infer "$d/$m.onnx"; done
  echo "int8_study: $name done" >&2
done < "$list"
"$py" - "$list" "$out" <<'PY'
import csv, json, os, sys
list_, out = sys.argv[1], sys.argv[2]
def preds(path):
    return {r["image"]: r["prediction"] for r in csv.DictReader(open(path))}
print("| encoder | model | top-1 | Δ vs fp32 | top-1 as fp32's | ort img/s (batch 64) | size |")
print("|---|---|---|---|---|---|---|")
for line in open(list_):
    if not line.strip() or line.startswith("#"):
        continue
    name = line.split()[0]
    d = f"{out}/{name}"
    fp = json.load(open(f"{d}/fp32.json")); fpp = preds(f"{d}/fp32.csv")
    q = json.load(open(f"{d}/auto.export.json"))["quantization"]
    chose = f"default: {q['calibration']}, float: {' '.join(q['float_layers']) or 'none'}"
    for m in ["fp32", "minmax", "percentile", "mse", "entropy", "auto", "ort-static"]:
        r = json.load(open(f"{d}/{m}.json")); p = preds(f"{d}/{m}.csv")
        agree = sum(p[k] == v for k, v in fpp.items()) / len(fpp)
        label = chose if m == "auto" else m
        mb = os.path.getsize(f"{d}/{m}.onnx") / 1e6
        print(f"| {name} | {label} | {100*r['top1']:.2f} % | {100*(r['top1']-fp['top1']):+.2f} | "
              f"{100*agree:.2f} % | {r['inference_images_per_sec']:.0f} | {mb:.1f} MB |")
PY
