#!/usr/bin/env bash
# exporter and infer ship without libtorch: neither may depend on tch or torch-sys, directly or
# through another crate, and their release binaries must not load it, neither built alone nor
# in the workspace build that `make test` and `make build` do (cargo unifies features there).
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
for crate in moco-exporter moco-infer; do
  if cargo tree -p "$crate" -e normal,build --prefix none | grep -E '^(tch|torch-sys) '; then
    echo "check-no-libtorch: $crate depends on libtorch (above)" >&2
    fail=1
  fi
done
check_binaries() {
  for bin in moco-export moco-infer; do
    if ldd "target/release/$bin" | grep -E 'libtorch|libc10'; then
      echo "check-no-libtorch: target/release/$bin ($1) loads libtorch (above)" >&2
      fail=1
    fi
  done
}
# The binaries `make build` ships (a per-package build would compile tract and ort a second time
# with other features for nothing: `cargo tree` above already covers it).
cargo build --release -q --workspace --bins
check_binaries "workspace build"
[ "$fail" = 0 ] && echo "check-no-libtorch: moco-export and moco-infer neither depend on nor load libtorch"
exit "$fail"
