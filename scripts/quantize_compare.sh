#!/usr/bin/env bash
# `moco-export --quantize int8` against the fp32 model and against ONNX Runtime's own
# quantize_static of the same fp32 model, in one run: top-1 on the val split, file size, and
# moco-infer's images/s (ort, --threads T) at batch 1 and 64, plus tract. One markdown table
# (docs/benchmarks.md, "int8").
#
#   scripts/quantize_compare.sh ENCODER CLASSIFIER DATA [OUTDIR]
# env: THREADS (2), IMAGES (512 calibration images), LIMIT (batch-1 runs use the first LIMIT
# val images; default all)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
enc=$1 cls=$2 data=$3 out=${4:-$(mktemp -d)}
THREADS=${THREADS:-2} IMAGES=${IMAGES:-512}
bin=$here/target/release py=$here/.venv/bin/python3
mkdir -p "$out"
"$bin/moco-export" --encoder "$enc" --classifier "$cls" --out "$out/fp32.onnx"
t0=$(date +%s.%N)
"$bin/moco-export" --encoder "$enc" --classifier "$cls" --out "$out/int8.onnx" \
  --quantize int8 --calibration-data "$data" --calibration-images "$IMAGES"
t1=$(date +%s.%N)
PYTHONPATH=$here/tests/python "$py" "$here/tests/python/ort_quantize.py" --model "$out/fp32.onnx" \
  --data "$data" --images "$IMAGES" --out "$out/ort-int8.onnx" 2>/dev/null
t2=$(date +%s.%N)
for m in int8 ort-int8; do
  PYTHONPATH=$here/tests/python "$py" "$here/tests/python/ort_quantize.py" --check "$out/$m.onnx" >"$out/$m.check.json"
done
echo "quantize time: moco-export $(echo "$t1 - $t0" | bc) s, quantize_static $(echo "$t2 - $t1" | bc) s" >&2
# moco-infer's --json lines for model $1, backend $2, batch $3, one per repeat, into
# $out/$1.$2.$3.json (nothing when the backend refuses the model or takes longer than 150 s).
run() {
  local i
  : >"$out/$1.$2.$3.json"
  for i in $(seq "$4"); do
    timeout 150 "$bin/moco-infer" --model "$out/$1.onnx" --data "$data" --split val --backend "$2" \
      --batch-size "$3" --threads "$THREADS" --json ${LIMIT:+--limit $LIMIT} 2>/dev/null | tail -1 \
      >>"$out/$1.$2.$3.json" || true
  done
}
# A pass over 2,000 images takes 2–10 s with ort: the median of 3 passes, models interleaved.
for i in 1 2 3; do
  for m in fp32 int8 ort-int8; do
    run $m ort 64 1 && mv "$out/$m.ort.64.json" "$out/$m.ort.64.$i.json"
    run $m ort 1 1 && mv "$out/$m.ort.1.json" "$out/$m.ort.1.$i.json"
  done
done
for m in fp32 int8 ort-int8; do
  cat "$out/$m".ort.64.?.json >"$out/$m.ort.64.json"
  cat "$out/$m".ort.1.?.json >"$out/$m.ort.1.json"
  run $m tract 64 1
done
python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
def r(m, b, n):
    runs = [json.loads(l) for l in open(f"{out}/{m}.{b}.{n}.json") if l.strip()]
    if not runs:
        return {}
    runs.sort(key=lambda x: x["inference_images_per_sec"])
    return runs[len(runs) // 2]
top1 = lambda x: f"{100 * x['top1']:.2f} %" if "top1" in x else "—"
ips = lambda x: f"{x['inference_images_per_sec']:.0f}" if "top1" in x else "did not run"
print("| model | size | top-1 (ort) | top-1 (tract) | ort batch 1 img/s | ort batch 64 img/s | tract batch 64 img/s |")
print("|---|---|---|---|---|---|---|")
for m in ["fp32", "int8", "ort-int8"]:
    size = os.path.getsize(f"{out}/{m}.onnx") / 1e6
    b64, b1, tr = r(m, "ort", 64), r(m, "ort", 1), r(m, "tract", 64)
    print(f"| {m} | {size:.1f} MB | {top1(b64)} | {top1(tr)} | {ips(b1)} | {ips(b64)} | {ips(tr)} |")
PY
