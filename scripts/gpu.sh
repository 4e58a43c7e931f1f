#!/usr/bin/env bash
# The GPU check of the project, prepared here and run in one call on a machine with a CUDA GPU.
#
#   scripts/gpu.sh pack            here: release build, the binaries gzipped into .gpu/ (< 64 MiB)
#   scripts/gpu.sh verify          there: every device check in one command (≤ 8 minutes):
#                                  (a) environment, (b) CPU↔CUDA parity from one start for every
#                                  method in float64/float32/bf16, (c) throughput, (c2) the
#                                  CUDA graph against the eager step, (d) learning,
#                                  (e) moco-infer; keeps OUT/summary.json (also the last stdout
#                                  line), OUT/verify.log.gz and OUT/curves.png
#   scripts/gpu.sh run -- CMD ...  there: CMD with the packed binaries first on PATH
#
# GPU_SH_DEVICE=cpu runs `verify` here in a small mode (tiny data and steps, the CPU standing in
# for the GPU), as trainer/tests/gpu_script.rs does, so that the script never runs for the first
# time on the GPU. GPU_SH_BIN names a folder of binaries to use instead of the packed ones.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pack_dir="$root/.gpu"
limit_mib=60
bins=(moco-train moco-export moco-infer)

pack() {
  cd "$root"
  bash scripts/setup.sh
  . scripts/env.sh
  # Two builds: one workspace-wide build would unify features and hand models' tch to infer.
  cargo build --release -p moco-trainer >&2
  cargo build --release -p moco-exporter -p moco-infer >&2
  rm -rf "$pack_dir"; mkdir -p "$pack_dir/bin"
  for b in "${bins[@]}"; do
    cp "target/release/$b" "$pack_dir/bin/"
    strip "$pack_dir/bin/$b"
  done
  # The stripped binaries are ~85 MiB, over what the device tool carries: ship them gzipped.
  tar -C "$pack_dir" -czf "$pack_dir/bin.tar.gz" bin
  rm -rf "$pack_dir/bin"
  local mib=$(( $(du -sk "$pack_dir" | cut -f1) / 1024 ))
  echo "gpu.sh pack: $pack_dir holds ${mib} MiB (gzipped): ${bins[*]}" >&2
  [ "$mib" -lt "$limit_mib" ] || { echo "gpu.sh pack: ${mib} MiB is over the ${limit_mib} MiB the device tool carries" >&2; exit 1; }
}

# PATH, libtorch and ONNX Runtime of the machine this runs on (its python3's torch and
# onnxruntime), for the packed binaries.
use_binaries() {
  local py="${MOCO_PYTHON:-python3}"
  if [ -n "${GPU_SH_BIN:-}" ]; then
    export PATH="$GPU_SH_BIN:$PATH"
  else
    [ -d "$pack_dir/bin" ] || tar -C "$pack_dir" -xzf "$pack_dir/bin.tar.gz"
    export PATH="$pack_dir/bin:$PATH"
    local torch_lib
    torch_lib="$("$py" -c 'import torch,os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
    export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  local ort
  ort="$("$py" -c 'import onnxruntime,os,glob; print((glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")) or [""])[0])' 2>/dev/null || true)"
  [ -z "$ort" ] || export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$ort}"
  export MOCO_PYTHON="$py"
}

run() {
  cd "$root"
  [ "${1:-}" = "--" ] && shift
  use_binaries
  "$@"
}

# ---- verify -----------------------------------------------------------------------------------

# `stage NAME SECONDS CMD...`: one stage under its own timeout, its output in the log, its result
# (the JSON lines it printed on fd 3) kept for the summary; a stage that fails or times out is
# recorded and the next one runs.
stage() {
  local name=$1 secs=$2; shift 2
  local t0; t0=$(date +%s)
  echo "== $name (timeout ${secs} s)" >> "$LOG"
  local rc=0
  timeout --kill-after=10 "$secs" bash -ec '"$@"' _ "$@" >> "$LOG" 2>&1 3>> "$RESULTS" || rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local status=ok
  [ "$rc" = 0 ] || status="failed (exit $rc)"
  [ "$rc" = 124 ] && status="timed out"
  echo "{\"stage\": \"$name\", \"status\": \"$status\", \"seconds\": $dt}" >> "$RESULTS"
  echo "gpu.sh verify: $name: $status in $dt s" >&2
}

# A result line for the summary (fd 3 of a stage).
result() { echo "$1" >&3; }

environment() {
  local want_cuda=$1
  "$MOCO_PYTHON" - "$want_cuda" <<'PY' >&3
import json, subprocess, sys, torch
r = {"stage": "environment", "torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
if r["cuda_available"]:
    r["gpu"] = torch.cuda.get_device_name(0)
    r["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    r["cuda"] = torch.version.cuda
try:
    r["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                     capture_output=True, text=True, timeout=20).stdout.strip()
except Exception as e:
    r["nvidia_smi"] = f"unavailable: {e}"
print(json.dumps(r))
PY
  moco-train info >> "$LOG"
  local v; v="$("$MOCO_PYTHON" -c 'import torch; print(torch.__version__)')"
  case "$v" in 2.11.0*) ;; *) echo "gpu.sh verify: python3's torch is $v, the binaries need 2.11.0" >&2; return 3 ;; esac
  if [ "$want_cuda" = 1 ] && ! "$MOCO_PYTHON" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu.sh verify: no CUDA device visible to torch" >&2; return 4
  fi
}

# (b) For every METHOD:PRECISION of PARITY: one start saved on the CPU, two steps on the CPU and
# two on the device from it, `moco-train compare` with that precision's bounds.
parity() {
  local dev=$1 data=$2 work=$3
  local common=(--data "$data" --no-knn --quiet --steps 2 --log-every 1 --checkpoint-every 2
    --batch-size "$PARITY_BATCH" --crop "$PARITY_CROP" --mlp-hidden 256 --proj-dim 64 --seed 1)
  local m p
  for mp in $PARITY; do
    m=${mp%%:*} p=${mp#*:}
    local extra=()
    case "$m" in mocov1|mocov2) extra=(--queue-size "$((PARITY_BATCH * 4))" --bn-splits 2) ;; esac
    [ -f "$work/$m.init" ] || moco-train pretrain "${common[@]}" "${extra[@]}" --method "$m" \
      --out "$work/init-$m" --device cpu --save-init "$work/$m.init" >> "$LOG" 2>&1
    local flags=()
    case "$p" in float64) flags=(--float64) ;; bf16) flags=(--amp bf16) ;; esac
    local a="$work/$m-$p-$dev" b="$work/$m-$p-cpu"
    local ok=1
    moco-train pretrain "${common[@]}" "${extra[@]}" "${flags[@]}" --method "$m" --init-from "$work/$m.init" \
      --device cpu --out "$b" >> "$LOG" 2>&1 || ok=0
    [ "$ok" = 1 ] && { moco-train pretrain "${common[@]}" "${extra[@]}" "${flags[@]}" --method "$m" \
      --init-from "$work/$m.init" --device "$dev" --no-tf32 --out "$a" >> "$LOG" 2>&1 || ok=0; }
    if [ "$ok" = 1 ]; then
      local line
      line="$(moco-train compare "$a" "$b" --precision "$p" --json 2>> "$LOG" | tail -1)" || true
      [ -n "$line" ] || line="{\"ok\": false, \"error\": \"$(tail -1 "$LOG" | tr -d '"\\')\"}"
      result "{\"stage\": \"parity\", \"method\": \"$m\", \"precision\": \"$p\", \"compare\": $line}"
    else
      result "{\"stage\": \"parity\", \"method\": \"$m\", \"precision\": \"$p\", \"error\": \"$(tail -1 "$LOG" | tr -d '"\\')\"}"
    fi
  done
}

# (c) Synchronised steps of MoCo v2: two-view images/s, host ms per step, peak memory.
throughput() {
  local dev=$1 data=$2 work=$3
  for arch in $ARCHS; do for crop in $CROPS; do for amp in $AMPS; do for batch in $BATCHES; do
    local line
    line="$(moco-train bench-step --data "$data" --out "$work/bench" --device "$dev" --arch "$arch" \
      --crop "$crop" --amp "$amp" --batch-size "$batch" --bn-splits 8 --queue-size 65536 --no-knn --quiet \
      --warmup "$WARMUP" --timed "$TIMED" --no-count --json 2>> "$LOG" | tail -1)" || line=""
    rm -rf "$work/bench"
    [ -n "$line" ] && result "{\"stage\": \"throughput\", \"result\": $line}"
  done; done; done; done
}

# (c2) `--cuda-graph`: the captured step against the eager one from one start (8 steps: 3 eager,
# the capture, 4 replays; `moco-train compare` at float32's bounds), then MoCo v2's bench-step
# with and without the graph. Needs CUDA: on the CPU it says so.
graph() {
  local dev=$1 data=$2 work=$3
  if [ "$dev" = cpu ]; then
    result "{\"stage\": \"graph\", \"skipped\": \"needs a CUDA device\"}"
    return 0
  fi
  local common=(--data "$data" --no-knn --quiet --batch-size "$PARITY_BATCH" --crop "$PARITY_CROP"
    --mlp-hidden 256 --proj-dim 64 --seed 1 --log-every 1)
  for m in mocov2 mocov3 simclr byol; do
    local extra=()
    case "$m" in mocov2) extra=(--queue-size "$((PARITY_BATCH * 4))" --bn-splits 2) ;; esac
    [ -f "$work/$m.init" ] || moco-train pretrain "${common[@]}" "${extra[@]}" --method "$m" \
      --out "$work/init-$m" --device cpu --save-init "$work/$m.init" >> "$LOG" 2>&1
    local a="$work/graph-$m" b="$work/eager-$m" line=""
    for run in "$a --cuda-graph" "$b"; do
      set -- $run
      moco-train pretrain "${common[@]}" "${extra[@]}" --method "$m" --init-from "$work/$m.init" \
        --device "$dev" --no-tf32 --steps 8 --checkpoint-every 8 --out "$@" >> "$LOG" 2>&1 || line="{\"ok\": false, \"error\": \"pretrain $*\"}"
    done
    [ -n "$line" ] || line="$(moco-train compare "$a" "$b" --precision float32 --json 2>> "$LOG" | tail -1)" || true
    result "{\"stage\": \"graph\", \"method\": \"$m\", \"compare\": ${line:-{\}}}"
  done
  for g in "" --cuda-graph; do
    line="$(moco-train bench-step --data "$data" --out "$work/bench" --device "$dev" --arch resnet18 \
      --crop 96 --amp bf16 --batch-size 256 --bn-splits 8 --queue-size 65536 --no-knn --quiet \
      --warmup "$WARMUP" --timed "$TIMED" --json $g 2>> "$LOG" | tail -1)" || line=""
    rm -rf "$work/bench"
    [ -n "$line" ] && result "{\"stage\": \"graph\", \"result\": $line}"
  done
}

# (d) ≈ LEARN_SECONDS of MoCo v2 (bf16 where the device has it) at batch 256 on generated data, kNN every epoch, against
# the random-init floor measured the same way; the curve as OUT/curves.png.
learning() {
  local dev=$1 data=$2 work=$3 out=$4
  local floor
  floor="$(moco-train knn --random-init --arch resnet18 --data "$data" --device "$dev" --json 2>> "$LOG" | tail -1)"
  result "{\"stage\": \"learning\", \"floor\": $floor}"
  # Epochs that fit the budget at the speed stage (c) measured (or a guess without it).
  local epochs
  epochs="$("$MOCO_PYTHON" - "$RESULTS" "$LEARN_SECONDS" "$data" "$LEARN_MAX_EPOCHS" <<'PY'
import json, os, sys
rows = [r["result"] for r in map(json.loads, open(sys.argv[1]))
        if r.get("stage") == "throughput" and "result" in r]
ips = [r["two_view_images_per_sec"] for r in rows
       if r["arch"] == "resnet18" and r["amp"] == "bf16" and r["crop"] == 96]
n = sum(len(os.listdir(os.path.join(sys.argv[3], s))) if s == "unlabeled" else
        sum(len(os.listdir(os.path.join(sys.argv[3], s, c))) for c in os.listdir(os.path.join(sys.argv[3], s)))
        for s in ("unlabeled", "train"))
speed = 0.8 * max(ips) if ips else 200.0
print(min(int(sys.argv[4]), max(1, int(float(sys.argv[2]) * speed / n))))
PY
)"
  local run="$work/learn"
  local line
  # Stopped past its budget (SIGTERM: a checkpoint, exit 75), it still leaves its curve.
  line="$(timeout -s TERM "$(( LEARN_SECONDS * 2 ))" moco-train pretrain --data "$data" --out "$run" \
    --device "$dev" --amp "$LEARN_AMP" --batch-size "$LEARN_BATCH" --epochs "$epochs" --knn-every 1 --lr 0.24 \
    --head-bn --bn-splits 8 --queue-size 4096 --quiet --json 2>> "$LOG" | tail -1)" || line="{}"
  result "{\"stage\": \"learning\", \"epochs\": $epochs, \"result\": ${line:-{\}}}"
  "$MOCO_PYTHON" -c 'import json,sys; [print(json.dumps({"stage": "learning", "epoch": r.get("epoch"), "knn_top1": r["knn_top1"], "images_per_sec": r.get("images_per_sec")})) for r in map(json.loads, open(sys.argv[1])) if "knn_top1" in r]' "$run/metrics.jsonl" >&3
  local f; f="$("$MOCO_PYTHON" -c 'import json,sys; print(json.loads(sys.argv[1])["top1"])' "$floor")"
  moco-train plot "$run" --floor "$f" --out "$out/curves.png" >> "$LOG" 2>&1
}

# (e) moco-infer on the learned encoder with a quick linear probe: ONNX Runtime's CUDA provider
# where its library is there, else a line saying so; tract on the CPU.
inference() {
  local dev=$1 data=$2 work=$3
  local run="$work/learn" encoder="$work/learn/encoder.safetensors"
  # A learning run stopped at its budget left a checkpoint instead (its query encoder is read).
  [ -f "$encoder" ] || encoder="$(ls "$run"/checkpoints/step-*.safetensors | tail -1)"
  moco-train linear --encoder "$encoder" --data "$data" --out "$work/probe" --fast \
    --epochs "$PROBE_EPOCHS" --device "$dev" --json >> "$LOG" 2>&1
  moco-export --encoder "$encoder" --classifier "$work/probe/classifier.safetensors" \
    --out "$work/model.onnx" >> "$LOG" 2>&1
  local providers
  providers="$("$MOCO_PYTHON" -c 'import onnxruntime as o; print(" ".join(o.get_available_providers()))' 2>/dev/null || echo none)"
  result "{\"stage\": \"inference\", \"ort_providers\": \"$providers\"}"
  local backends=("tract cpu" "ort cpu")
  if [ "$dev" != cpu ]; then
    if echo "$providers" | grep -q CUDAExecutionProvider; then
      backends+=("ort cuda")
    else
      result "{\"stage\": \"inference\", \"ort_cuda\": \"absent: this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu: GPU=1 make setup)\"}"
    fi
  fi
  for bd in "${backends[@]}"; do
    set -- $bd
    local line
    line="$(moco-infer --model "$work/model.onnx" --data "$data" --split val --backend "$1" --device "$2" \
      --batch-size 64 --json 2>> "$LOG" | tail -1)" || line="{\"error\": \"failed\"}"
    result "{\"stage\": \"inference\", \"backend\": \"$1\", \"device\": \"$2\", \"result\": $line}"
  done
}

verify() {
  cd "$root"
  local out="${OUT:-$root/runs/gpu-verify}"; mkdir -p "$out"
  local work; work="$(mktemp -d)"
  export LOG="$work/verify.log" RESULTS="$work/results.jsonl"
  : > "$LOG"; : > "$RESULTS"
  local dev=cuda want_cuda=1 synth
  if [ "${GPU_SH_DEVICE:-cuda}" = cpu ]; then
    dev=cpu want_cuda=0
    # Every method once, every precision once: each line of the script runs. bf16 only where
    # this CPU has it natively (moco-train refuses emulated bf16).
    local bf16=bf16
    grep -qwE 'avx512_bf16|amx_bf16|bf16' /proc/cpuinfo || bf16=off
    export PARITY="mocov2:float64 mocov2:$([ $bf16 = bf16 ] && echo bf16 || echo float32) mocov1:float32 mocov3:float32 simclr:float32 byol:float32"
    export AMPS="off $([ $bf16 = bf16 ] && echo bf16)" LEARN_AMP=$bf16
    export PARITY_BATCH=8 PARITY_CROP=32 ARCHS=resnet18 CROPS=32 BATCHES="8 16" WARMUP=1 TIMED=2
    export LEARN_SECONDS=20 LEARN_MAX_EPOCHS=3 LEARN_BATCH=16 PROBE_EPOCHS=2
    synth=(--classes 3 --train-per-class 20 --val-per-class 10 --unlabeled 40)
  else
    export PARITY="$(for m in mocov2 mocov1 mocov3 simclr byol; do printf '%s ' $m:float64 $m:float32 $m:bf16; done)"
    export PARITY_BATCH=32 PARITY_CROP=64 ARCHS="resnet18 resnet50" CROPS="96 64" BATCHES="256" WARMUP=20 TIMED=100
    export LEARN_SECONDS=120 LEARN_MAX_EPOCHS=100 LEARN_BATCH=256 PROBE_EPOCHS=20
    export AMPS="off bf16" LEARN_AMP=bf16
    synth=()
  fi
  use_binaries
  export -f result environment parity throughput graph learning inference
  stage environment 60 environment "$want_cuda" || true
  if grep -q '"stage": "environment", "status": "failed' "$RESULTS"; then
    summarize "$work" "$out"
    echo "gpu.sh verify: stopped: $(grep 'gpu.sh verify' "$LOG" | tail -1)" >&2
    return 1
  fi
  local data="$work/synth"
  moco-train synth --out "$data" "${synth[@]}" >> "$LOG" 2>&1
  stage parity 240 parity "$dev" "$data" "$work" || true
  stage throughput 200 throughput "$dev" "$data" "$work" || true
  stage graph 120 graph "$dev" "$data" "$work" || true
  stage learning $(( LEARN_SECONDS * 2 + 60 )) learning "$dev" "$data" "$work" "$out" || true
  stage inference 60 inference "$dev" "$data" "$work" || true
  summarize "$work" "$out"
}

summarize() {
  local work=$1 out=$2
  gzip -c "$work/verify.log" > "$out/verify.log.gz"
  "$MOCO_PYTHON" "$root/scripts/gpu_summary.py" "$work/results.jsonl" "$out/summary.json"
}

case "${1:-}" in
  pack) pack ;;
  verify) verify ;;
  run) shift; run "$@" ;;
  *) echo "usage: scripts/gpu.sh pack | verify | run -- CMD..." >&2; exit 2 ;;
esac
