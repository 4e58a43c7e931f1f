#!/usr/bin/env bash
# Instruction-set paths: what this CPU has, and the tests whose numbers depend on the float path
# re-run with libtorch, oneDNN, MKL and our own multiversioned loops held to a lower one.
#   scripts/isa.sh report            one line: the CPU's paths, libtorch's and the host loops'
#   scripts/isa.sh test avx2|default the float-path-sensitive tests on that path
# (`default` is libtorch's name for the x86-64 baseline without AVX.) Source scripts/env.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."

capability() {
  python3 -c 'import torch; print(torch.backends.cpu.get_cpu_capability())'
}

hold_to() {
  case "$1" in
    avx2) export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 MOCO_SIMD=avx2 ;;
    default) export ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2 MOCO_SIMD=baseline ;;
    *) echo "isa.sh: unknown path '$1' (avx2 or default)" >&2; exit 2 ;;
  esac
}

case "${1:-report}" in
  report)
    flags=$(grep -m1 -o -w -E 'avx512f|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')
    host=$(target/release/moco-train info | python3 -c 'import json,sys; print(json.load(sys.stdin)["host_loops_available"])')
    echo "isa: cpu flags [${flags% }], libtorch dispatch $(capability)${ATEN_CPU_CAPABILITY:+ (held by ATEN_CPU_CAPABILITY)}, host loops tested on [$host]"
    ;;
  test)
    hold_to "${2:?avx2 or default}"
    echo "isa: tests held to $2: libtorch dispatch $(capability), host loops $MOCO_SIMD"
    # moco_parity is left out by default (260 s on the baseline path, its multi-step checks are in
    # float64); ISA_ALL=1 adds it. The distributed tests that compare a run with itself (a stop
    # signal, a group of one) or check failure paths depend on no float path and are skipped.
    skips=(-- --skip a_stop_signal_to_one_rank --skip a_group_of_one --skip an_unreachable_master)
    [ -z "${ISA_ALL:-}" ] || skips=()
    cargo test --release --workspace --no-fail-fast --lib \
      --test dist --test augment_parity --test torchvision_parity \
      --test eval_transform_parity --test trainer_infer_agreement ${ISA_ALL:+--test moco_parity} \
      "${skips[@]}"
    ;;
  *) echo "isa.sh: report | test avx2|default" >&2; exit 2 ;;
esac
