#!/usr/bin/env bash
# exporter and infer ship without libtorch: neither may depend on tch or torch-sys, directly or
# through models' `tch` feature.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
for crate in moco-exporter moco-infer; do
  if cargo tree -p "$crate" -e normal,build --prefix none | grep -E '^(tch|torch-sys) ' ; then
    echo "check-no-libtorch: $crate depends on libtorch (above)" >&2
    fail=1
  fi
done
[ "$fail" = 0 ] && echo "check-no-libtorch: moco-exporter and moco-infer do not depend on tch/torch-sys"
exit "$fail"
