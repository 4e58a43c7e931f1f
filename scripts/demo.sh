#!/usr/bin/env bash
# The main job: synth → pretrain → linear → export → moco-infer (ort and tract), ending with an
# accuracy table (random-init floor vs pretrained, ort vs tract) and the figures.
#
#   DATA=ROOT     a dataset root instead of the embedded default (e.g. imagenette96, 96 px photos)
#   OUT=DIR       where everything goes (runs/demo)
#   STEPS=N       pretraining steps (450 of 64-pixel views: about 6½ minutes on 2 AVX-512 cores, kNN included)
#   BATCH, QUEUE, LR, BN_SPLITS, ARCH, THREADS, DEVICE, LINEAR_EPOCHS, SEED
#   KNN_EVERY=N   pretraining's kNN monitor every N epochs (2; the curve's points against the floor)
#   PRETRAIN_FLAGS="..."  pretrain flags ("--crop 64 --head-bn"; e.g. add --no-crop)
#   LINEAR_FLAGS="..."    flags of both linear runs, floor and pretrained ("--standardize")
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/demo}"
STEPS="${STEPS:-450}"; BATCH="${BATCH:-64}"; QUEUE="${QUEUE:-1024}"; LR="${LR:-0.24}"; BN_SPLITS="${BN_SPLITS:-2}"
ARCH="${ARCH:-resnet18}"; THREADS="${THREADS:-2}"; DEVICE="${DEVICE:-auto}"
LINEAR_EPOCHS="${LINEAR_EPOCHS:-100}"; SEED="${SEED:-0}"; KNN_EVERY="${KNN_EVERY:-2}"
read -r -a extra <<< "${PRETRAIN_FLAGS---crop 64 --head-bn}"
read -r -a lin_extra <<< "${LINEAR_FLAGS---standardize}"
train=target/release/moco-train
infer=target/release/moco-infer
mkdir -p "$out"
export MOCO_CACHE_DIR="${MOCO_CACHE_DIR:-$out/cache}"
t0=$(date +%s)
say() { echo "demo [$(( $(date +%s) - t0 )) s]: $*" >&2; }
last() { tail -1; }
pct() { python3 -c "import json,sys; print('%.1f' % (100 * json.loads(sys.argv[1])[sys.argv[2]]))" "$1" "$2"; }
rate() { python3 -c "import json,sys; print('%.0f' % json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

if [ -z "${DATA:-}" ]; then
  DATA="$out/data"
  [ -d "$DATA" ] || $train synth --out "$DATA"
fi
say "data: $DATA"
$train preview-augment --data "$DATA" --out "$out/augment.png" --n 8 --json >/dev/null
common=(--data "$DATA" --threads "$THREADS" --device "$DEVICE" --seed "$SEED" --json)

say "random-init floor (kNN and linear on frozen random features, one pass over the data)"
lin_floor=$($train linear --random-init --arch "$ARCH" --out "$out/linear-random" --fast --knn \
  --epochs "$LINEAR_EPOCHS" --quiet "${lin_extra[@]}" "${common[@]}" | last)
knn_floor=$(python3 -c "import json,sys; print(json.dumps({'top1': json.loads(sys.argv[1])['knn_top1']}))" "$lin_floor")

say "pretraining: $ARCH, $STEPS steps of batch $BATCH (progress: $out/pretrain/metrics.jsonl)"
pre=$($train pretrain --out "$out/pretrain" --arch "$ARCH" --steps "$STEPS" --batch-size "$BATCH" \
  --queue-size "$QUEUE" --lr "$LR" --bn-splits "$BN_SPLITS" --knn-every "$KNN_EVERY" --checkpoint-every 100 --resume \
  "${extra[@]}" "${common[@]}" | last)
# pretrain's own final kNN (same k, T, bank and query as `knn`): no second pass over the data,
# unless a resumed, already finished run had nothing to measure.
knn_pre=$(python3 -c "import json,sys; t=json.loads(sys.argv[1]).get('knn_top1'); print(json.dumps({'top1': t}) if t is not None else '')" "$pre")
[ -n "$knn_pre" ] || knn_pre=$($train knn --encoder "$out/pretrain/encoder.safetensors" "${common[@]}" | last)

say "linear evaluation of the pretrained encoder"
lin_pre=$($train linear --encoder "$out/pretrain/encoder.safetensors" --out "$out/linear" --fast \
  --epochs "$LINEAR_EPOCHS" --quiet "${lin_extra[@]}" "${common[@]}" | last)
$train plot "$out/pretrain" --out "$out/curves.png" --floor "$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['top1'])" "$knn_floor")" >/dev/null

first_val=$(find "$DATA/val" -type f \( -name '*.png' -o -name '*.jpg' \) | sort | head -1)
[ -n "$first_val" ] && $train feature-maps --encoder "$out/pretrain/encoder.safetensors" --image "$first_val" \
  --out "$out/feature-maps.png" --json >/dev/null
say "export to ONNX and evaluate with moco-infer"
cp "$out/pretrain/config.json" "$out/linear/pretrain-config.json"
$train export --encoder "$out/pretrain/encoder.safetensors" --classifier "$out/linear/classifier.safetensors" \
  --out "$out/model.onnx" >/dev/null
ort=$($infer --model "$out/model.onnx" --data "$DATA" --split val --backend ort --threads "$THREADS" \
  --predictions "$out/predictions-ort.csv" --quiet --json 2>"$out/infer-ort.txt" | last)
tract=$($infer --model "$out/model.onnx" --data "$DATA" --split val --backend tract --threads "$THREADS" \
  --predictions "$out/predictions-tract.csv" --quiet --json 2>"$out/infer-tract.txt" | last)
same() { cmp -s "$1" "$2" && echo "identical" || echo "DIFFERENT"; }

cat <<TABLE

| encoder | kNN top-1 (k=200) | linear top-1 | linear top-5 |
|---|---|---|---|
| random init (floor) | $(pct "$knn_floor" top1) % | $(pct "$lin_floor" top1) % | $(pct "$lin_floor" top5) % |
| MoCo, $STEPS steps | $(pct "$knn_pre" top1) % | $(pct "$lin_pre" top1) % | $(pct "$lin_pre" top5) % |

| ONNX model on val | top-1 | top-5 | images/s | predictions vs moco-train linear |
|---|---|---|---|---|
| moco-infer ort | $(pct "$ort" top1) % | $(pct "$ort" top5) % | $(rate "$ort" images_per_sec) | $(same "$out/predictions-ort.csv" "$out/linear/val_predictions.csv") |
| moco-infer tract | $(pct "$tract" top1) % | $(pct "$tract" top5) % | $(rate "$tract" images_per_sec) | $(same "$out/predictions-tract.csv" "$out/linear/val_predictions.csv") |

Pretraining: $STEPS steps of batch $BATCH, ${extra[*]:-aug+ at full size}, lr $LR, queue $QUEUE, $BN_SPLITS BN splits.
Linear probe on both encoders: linear --fast --epochs $LINEAR_EPOCHS ${lin_extra[*]:-}.
Figures: $out/curves.png (loss, lr, kNN vs the floor), $out/augment.png (originals and two views),
$out/feature-maps.png (conv1 activations of one val image).
Model: $out/model.onnx. Total: $(( $(date +%s) - t0 )) s.
TABLE
