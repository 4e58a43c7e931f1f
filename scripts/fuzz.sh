#!/usr/bin/env bash
# cargo-fuzz over the readers of untrusted files: the torch.save reader (labels, checkpoints),
# safetensors weights, the labeling answer CSV, ONNX models (metadata, and run by tract), the STL-10
# reader, image decoding + eval transform, a config.json given to --config, and resume states.
#   bash scripts/fuzz.sh                 every target, 10 million runs or 1,800 s each, whichever
#                                        comes first
#   bash scripts/fuzz.sh pt_labels 60    one target, 60 s (or 10 million runs)
# Needs the nightly toolchain, cargo-fuzz (`cargo install cargo-fuzz`) and scripts/setup.sh's
# .venv. New corpus entries stay in fuzz/corpus/<target>/ (only the seed-* files are committed);
# crashes land in fuzz/artifacts/<target>/ and make this script fail.
set -euo pipefail
# run_state links the trainer: libtorch comes from the project's .venv (scripts/setup.sh).
. "$(dirname "$0")/env.sh"
cd "$(dirname "$0")/../fuzz"
targets=("${1:-pt_labels stl10 image_decode onnx_metadata torch_checkpoint safetensors_weights merge_labels_csv onnx_model config_json run_state}")
secs="${2:-1800}"
for t in ${targets[@]}; do
  mkdir -p "corpus/$t"
  max_len=65536
  [ "$t" = stl10 ] && max_len=4096
  echo "== $t: ${secs}s" >&2
  cargo +nightly fuzz run -O "$t" "corpus/$t" -- \
    -max_total_time="$secs" -runs=10000000 -rss_limit_mb=2048 -max_len="$max_len" -timeout=10 -print_final_stats=1
done
