#!/usr/bin/env bash
# Idempotent setup: a project-local .venv that supplies PyTorch (the source of libtorch for tch and
# the reference for parity tests) and ONNX Runtime (the source of libonnxruntime for `ort`).
# Re-running is cheap: a stamp records what was installed, and nothing is done when it matches.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
req="$root/scripts/requirements.txt"
stamp="$venv/.moco-setup-stamp"
want="$(cat "$req" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"

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

py="${PYTHON:-python3}"
command -v "$py" >/dev/null || { echo "setup: $py not found (need Python 3.10+)" >&2; exit 1; }
echo "setup: creating $venv (torch 2.11.0 is ~4.8 GB with its CUDA libraries; a few minutes)" >&2
[ -x "$venv/bin/python3" ] || "$py" -m venv "$venv"
"$venv/bin/python3" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
"$venv/bin/python3" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
# torchvision is only a parity reference; --no-deps keeps pip from swapping the pinned torch.
"$venv/bin/python3" -m pip install --quiet --disable-pip-version-check --no-deps torchvision==0.26.0 >&2
"$venv/bin/python3" - <<'PY' >&2
import torch, torchvision, onnxruntime, onnx, numpy, PIL, tensorboard
assert torch.__version__.startswith("2.11.0"), torch.__version__
print("setup: torch", torch.__version__, "torchvision", torchvision.__version__,
      "onnxruntime", onnxruntime.__version__, "onnx", onnx.__version__)
PY
echo "$want" > "$stamp"
