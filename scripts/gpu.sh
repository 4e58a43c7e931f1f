#!/usr/bin/env bash
# Runs project binaries on the lent GPU machine (see README "GPU machine").
#
#   scripts/gpu.sh pack            here: release build, copy the binaries into .gpu/ (< 64 MiB)
#   scripts/gpu.sh run -- CMD ...  there: run CMD with .gpu/bin first on PATH, against the libtorch
#                                  of that machine's python3 (its torch/lib), MOCO_PYTHON=python3
#   scripts/gpu.sh selftest        here: pack, then `run` the CPU parity check through the packed
#                                  binaries with the venv's python3 standing in for the remote one
#   scripts/gpu.sh checks          there: every device check in one call (parity, NCCL step,
#                                  augmentation rate, ort's providers); logs under $OUT
#
# The device tool call is then: command `bash scripts/gpu.sh run -- moco-parity ... --device cuda`,
# carry [".gpu"]. The working tree travels with it, so tests/python/ is there too.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pack_dir="$root/.gpu"
limit_mib=60
bins=(moco-train moco-export moco-infer moco-parity)

pack() {
  cd "$root"
  bash scripts/setup.sh
  . scripts/env.sh
  # Two builds: one workspace-wide build would unify features and hand models' tch to infer.
  cargo build --release -p moco-trainer -p moco-tests >&2
  cargo build --release -p moco-exporter -p moco-infer >&2
  rm -rf "$pack_dir"; mkdir -p "$pack_dir/bin"
  for b in "${bins[@]}"; do
    [ -x "target/release/$b" ] || continue
    cp "target/release/$b" "$pack_dir/bin/"
    strip "$pack_dir/bin/$b"
  done
  # The stripped binaries are ~85 MiB, over what the device tool carries: ship them gzipped
  # (~25 MiB); `run` unpacks them there.
  tar -C "$pack_dir" -czf "$pack_dir/bin.tar.gz" bin
  local names; names="$(ls "$pack_dir/bin" | tr '\n' ' ')"
  rm -rf "$pack_dir/bin"
  git rev-parse HEAD > "$pack_dir/COMMIT" 2>/dev/null || true
  local mib=$(( $(du -sk "$pack_dir" | cut -f1) / 1024 ))
  echo "gpu.sh pack: $pack_dir holds ${mib} MiB (gzipped): $names" >&2
  if [ "$mib" -ge "$limit_mib" ]; then
    echo "gpu.sh pack: ${mib} MiB is over the ${limit_mib} MiB budget of the device tool" >&2
    exit 1
  fi
}

run() {
  cd "$root"
  [ "${1:-}" = "--" ] && shift
  if [ ! -d "$pack_dir/bin" ] && [ -f "$pack_dir/bin.tar.gz" ]; then
    tar -C "$pack_dir" -xzf "$pack_dir/bin.tar.gz"
  fi
  local py="${MOCO_PYTHON:-python3}"
  local torch_lib
  torch_lib="$("$py" -c 'import torch,os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
  export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export PATH="$pack_dir/bin:$PATH" MOCO_PYTHON="$py" MOCO_REPO_ROOT="$root"
  # cuDNN convolutions default to TF32 on Ampere+; parity checks need true fp32.
  export NVIDIA_TF32_OVERRIDE="${NVIDIA_TF32_OVERRIDE:-0}"
  echo "gpu.sh run: libtorch from $torch_lib; $("$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())')" >&2
  for b in "$pack_dir"/bin/*; do
    if ldd "$b" | grep -q 'not found'; then
      echo "gpu.sh run: $(basename "$b") has unresolved libraries:" >&2; ldd "$b" | grep 'not found' >&2
    fi
  done
  "$@"
}

selftest() {
  pack
  local ref; ref="$(mktemp -d)"
  MOCO_PYTHON="$root/.venv/bin/python3" run -- bash -c '
    set -e
    echo "libtorch resolves to: $(ldd "$(command -v moco-parity)" | grep -E "libtorch_cpu|libtorch_cuda" | sed "s/ (.*//" | tr -s "\t " " ")"
    moco-parity --arch resnet18 --ref "$0" --generate --device cpu' "$ref"
  rm -rf "$ref"
}

# The device checks, each logged to $OUT/<name>.log, one failing does not stop the others.
checks() {
  local out="${OUT:-/tmp/gpu-checks}"; mkdir -p "$out"
  local data="$out/synth"
  check() { local name=$1; shift; echo "== $name" >&2
    if run -- "$@" >"$out/$name.log" 2>&1; then echo "ok $name" | tee -a "$out/summary.txt" >&2
    else echo "FAILED $name (exit $?)" | tee -a "$out/summary.txt" >&2; tail -5 "$out/$name.log" >&2; fi; }
  check synth moco-train synth --out "$data"
  check parity bash -c 'moco-parity --arch resnet18 --ref "$(mktemp -d)" --generate --device cuda'
  check nccl-step moco-train pretrain --data "$data" --out "$out/nccl" --device cuda \
    --dist-backend nccl --steps 3 --batch-size 64 --queue-size 256 --bn-splits 4 --no-knn --quiet --json
  check gloo-cuda-step moco-train pretrain --data "$data" --out "$out/gloo" --device cuda \
    --dist-backend gloo --steps 3 --batch-size 64 --queue-size 256 --bn-splits 4 --no-knn --quiet --json
  # One bf16 step of every method (the last line of each log: its loss and step time).
  local methods
  methods=$(run -- moco-train methods --json | python3 -c \
    "import json,sys; print(' '.join(m['name'] for m in json.loads(sys.stdin.read().splitlines()[-1])['methods']))")
  for m in $methods; do
    check "step-$m" moco-train pretrain --data "$data" --out "$out/step-$m" --device cuda --method "$m" \
      --amp bf16 --steps 2 --batch-size 64 --log-every 1 --no-knn --quiet --json
  done
  check bench-data moco-train bench-data --data "$data" --device cuda --batch-size 256 --json
  check ort-providers bash -c '"$MOCO_PYTHON" -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())"'
  cat "$out/summary.txt" >&2
}

case "${1:-}" in
  pack) pack ;;
  checks) checks ;;
  run) shift; run "$@" ;;
  selftest) selftest ;;
  *) echo "usage: scripts/gpu.sh pack | run -- CMD... | selftest | checks" >&2; exit 2 ;;
esac
