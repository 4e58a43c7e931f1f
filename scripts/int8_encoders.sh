#!/usr/bin/env bash
# The encoders the int8 study holds quantization to, each with its linear classifier, and the LIST
# file scripts/int8_study.sh reads (`NAME ENCODER CLASSIFIER` lines):
#   random-r18   torchvision's resnet18 initialisation (torch.manual_seed(0)), `linear --fast`
#   early        PRETRAIN_RUN's step-500 checkpoint, `linear --fast`
#   late         PRETRAIN_RUN's encoder.safetensors, `linear --fast`
#   finetuned    the late encoder fine-tuned with its classifier (`linear --finetune`, 4 epochs)
#   random-r50   torchvision's resnet50 initialisation, `linear --fast`
#
#   scripts/int8_encoders.sh PRETRAIN_RUN DATA OUT
# PRETRAIN_RUN: a resnet18 `moco-train pretrain --out` directory with checkpoints/step-000000500.
# env: THREADS (libtorch threads, default 1), ONLY (names to build, default all)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
run=${1:?usage: scripts/int8_encoders.sh PRETRAIN_RUN DATA OUT}
data=${2:?DATA: a labeled dataset root} out=${3:?OUT: where the encoders go}
THREADS=${THREADS:-1} ONLY=${ONLY:-random-r18 early late finetuned random-r50}
bin=$here/target/release/moco-train py=$here/.venv/bin/python3
mkdir -p "$out"
wanted() { [[ " $ONLY " == *" $1 "* ]]; }
torchvision_init() { # arch → $out/$arch-init.pth
  "$py" -c "import sys, torch, torchvision
torch.manual_seed(0)
torch.save(getattr(torchvision.models, sys.argv[1])().state_dict(), sys.argv[2])" "$1" "$out/$1-init.pth"
}
probe() { # name encoder [flags…] → $out/name/classifier.safetensors
  local name=$1 enc=$2; shift 2
  "$bin" linear --data "$data" --encoder "$enc" --out "$out/$name" --threads "$THREADS" \
    --no-tensorboard --quiet --json "$@" > "$out/$name.json"
  echo "int8_encoders: $name $(cat "$out/$name.json")" >&2
}
if wanted random-r18; then torchvision_init resnet18; probe random-r18 "$out/resnet18-init.pth" --fast; fi
if wanted early; then probe early "$run/checkpoints/step-000000500.safetensors" --fast; fi
if wanted late; then probe late "$run/encoder.safetensors" --fast; fi
if wanted finetuned; then
  probe finetuned "$run/encoder.safetensors" --finetune --epochs 4 --cosine \
    --lr 1 --backbone-lr 0.001 --batch-size 64
fi
if wanted random-r50; then torchvision_init resnet50; probe random-r50 "$out/resnet50-init.pth" --fast; fi
{
  echo "random-r18 $out/resnet18-init.pth $out/random-r18/classifier.safetensors"
  echo "early $run/checkpoints/step-000000500.safetensors $out/early/classifier.safetensors"
  echo "late $run/encoder.safetensors $out/late/classifier.safetensors"
  echo "finetuned $out/finetuned/encoder.safetensors $out/finetuned/classifier.safetensors"
  echo "random-r50 $out/resnet50-init.pth $out/random-r50/classifier.safetensors"
} > "$out/encoders.list"
echo "int8_encoders: $out/encoders.list" >&2
