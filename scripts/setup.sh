#!/usr/bin/env bash
# Idempotent setup: a project-local .venv that supplies PyTorch (the source of libtorch for tch and
# the reference for parity tests) and ONNX Runtime (the source of libonnxruntime for `ort`).
# Re-running is cheap: a stamp records what was installed, and nothing is done when it matches.
#
# GPU=1: ONNX Runtime's GPU build (onnxruntime-gpu, the same version) in place of the CPU one, so
# that `moco-infer --device cuda` runs; refused in one line, the CPU build kept, where the NVIDIA
# driver or a CUDA/cuDNN library it needs is missing. The choice is remembered (.venv/.moco-gpu):
# later runs without GPU keep it, GPU=0 goes back. PyTorch's wheel is the same either way.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
req="$root/scripts/requirements.txt"
stamp="$venv/.moco-setup-stamp"
gpu="${GPU:-$(cat "$venv/.moco-gpu" 2>/dev/null || echo 0)}"
want="$( (cat "$req" "${BASH_SOURCE[0]}"; echo "gpu=$gpu") | sha256sum | cut -d' ' -f1)"

# Gloo's headers, for distributed pretraining: trainer/build.rs compiles csrc/dist.cpp against
# them and the wheel's c10d (Debian's libgloo-dev; the library itself is not linked, libtorch
# carries its own Gloo).
if [ ! -f /usr/include/gloo/config.h ] && [ ! -f /usr/local/include/gloo/config.h ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "setup: installing libgloo-dev (Gloo headers for distributed pretraining)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q libgloo-dev >&2 || { apt-get update -q >&2 && apt-get install -y -q libgloo-dev >&2; }
  else
    echo "setup: warning: no Gloo headers and no root to install libgloo-dev: moco-train will" \
      "build without distributed pretraining (its tests fail)" >&2
  fi
fi

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python3" ]; then
  exit 0
fi

# The libraries onnxruntime-gpu's CUDA provider loads: the driver's, and CUDA 13 / cuDNN 9 from
# the nvidia wheels that torch 2.11.0 brings into the venv. Prints what is missing.
gpu_libraries_missing() {
  local site="$1" missing=()
  if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1' && ! ls /usr/local/nvidia/lib64/libcuda.so.1 /usr/lib/x86_64-linux-gnu/libcuda.so.1 >/dev/null 2>&1; then
    missing+=("libcuda.so.1 (the NVIDIA driver)")
  fi
  for lib in cu13/lib/libcudart.so.13 cu13/lib/libcublas.so.13 cu13/lib/libcublasLt.so.13 \
    cu13/lib/libcurand.so.10 cu13/lib/libcufft.so.12 cudnn/lib/libcudnn.so.9; do
    [ -e "$site/nvidia/$lib" ] || missing+=("$(basename "$lib")")
  done
  echo "${missing[*]}"
}

# onnxruntime-gpu in place of onnxruntime, after checking what its CUDA provider loads.
gpu_onnxruntime() {
  local site; site="$("$venv/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  local missing; missing="$(gpu_libraries_missing "$site")"
  if [ -n "$missing" ]; then
    echo "setup: GPU=1 refused: onnxruntime-gpu needs $missing, not found on this machine; the CPU onnxruntime is kept" >&2
    exit 1
  fi
  echo "setup: GPU=1: onnxruntime-gpu==$ort_version in place of onnxruntime (a 250 MB wheel)" >&2
  "$venv/bin/python3" -m pip uninstall --quiet --disable-pip-version-check -y onnxruntime >&2 || true
  "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check --no-deps "onnxruntime-gpu==$ort_version" >&2
  LD_LIBRARY_PATH="$site/nvidia/cu13/lib:$site/nvidia/cudnn/lib:${LD_LIBRARY_PATH:-}" "$venv/bin/python3" -c '
import onnxruntime as o, sys
p = o.get_available_providers()
print("setup: onnxruntime providers", p, file=sys.stderr)
sys.exit(0 if "CUDAExecutionProvider" in p else 1)'
}

# The CPU build back (GPU=0 after GPU=1): the two wheels install the same module.
cpu_onnxruntime() {
  if "$venv/bin/python3" -m pip show onnxruntime-gpu >/dev/null 2>&1; then
    "$venv/bin/python3" -m pip uninstall --quiet --disable-pip-version-check -y onnxruntime-gpu >&2
    "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "onnxruntime==$ort_version" >&2
  fi
}

ort_version="$(grep -E '^onnxruntime==' "$req" | cut -d= -f3)"
py="${PYTHON:-python3}"
command -v "$py" >/dev/null || { echo "setup: $py not found (need Python 3.10+)" >&2; exit 1; }
echo "setup: creating $venv (torch 2.11.0 is ~4.8 GB with its CUDA libraries; a few minutes)" >&2
[ -x "$venv/bin/python3" ] || "$py" -m venv "$venv"
"$venv/bin/python3" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
# With GPU=1 the onnxruntime line is left to gpu_onnxruntime (the two wheels are one module).
if [ "$gpu" = 1 ]; then
  "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check -r <(grep -v '^onnxruntime==' "$req") >&2
else
  cpu_onnxruntime
  "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
fi
# torchvision is only a parity reference; --no-deps keeps pip from swapping the pinned torch.
"$venv/bin/python3" -m pip install --quiet --disable-pip-version-check --no-deps torchvision==0.26.0 >&2
if [ "$gpu" = 1 ]; then
  gpu_onnxruntime
fi
echo "$gpu" > "$venv/.moco-gpu"
"$venv/bin/python3" - <<'PY' >&2
import torch, torchvision, onnxruntime, onnx, numpy, PIL, tensorboard
assert torch.__version__.startswith("2.11.0"), torch.__version__
print("setup: torch", torch.__version__, "torchvision", torchvision.__version__,
      "onnxruntime", onnxruntime.__version__, "onnx", onnx.__version__)
PY
echo "$want" > "$stamp"
