# Source this (after scripts/setup.sh) for the environment the build and the binaries use:
#   . scripts/env.sh
# The binaries also find libtorch (rpath) and libonnxruntime (a path baked in at build time) by
# themselves when run from this checkout; this file is for builds and for relocated binaries.
_moco_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
_moco_site="$("$_moco_root/.venv/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
export MOCO_VENV="$_moco_root/.venv"
export PATH="$MOCO_VENV/bin:$PATH"
# torch-sys finds libtorch through the venv's python (the wheel's torch/ is a full libtorch).
export LIBTORCH_USE_PYTORCH=1
export LIBTORCH="$_moco_site/torch"
export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ORT_DYLIB_PATH="$_moco_site/onnxruntime/capi/libonnxruntime.so.1.31.1"
# onnxruntime-gpu (GPU=1 make setup) loads CUDA and cuDNN from the nvidia wheels beside torch.
for _moco_lib in "$_moco_site/nvidia/cu13/lib" "$_moco_site/nvidia/cudnn/lib"; do
  [ -d "$_moco_lib" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$_moco_lib"
done
unset _moco_lib
unset _moco_root _moco_site
