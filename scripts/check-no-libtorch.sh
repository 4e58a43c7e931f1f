#!/usr/bin/env bash
# exporter and infer ship without libtorch: neither may depend on tch or torch-sys, directly or
# through another crate, and the release binaries that `make build` ships (the workspace build,
# where cargo unifies features) must not load it.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
for crate in moco-exporter moco-infer; do
  if cargo tree -p "$crate" -e normal,build --prefix none | grep -E '^(tch|torch-sys) '; then
    echo "check-no-libtorch: $crate depends on libtorch (above)" >&2
    fail=1
  fi
done
# Not a per-package build as well: it would compile tract and ort a second time with other
# features, and `cargo tree` above already covers that build's dependencies.
cargo build --release -q --workspace --bins
for bin in moco-export moco-infer; do
  if ldd "target/release/$bin" | grep -E 'libtorch|libc10'; then
    echo "check-no-libtorch: target/release/$bin loads libtorch (above)" >&2
    fail=1
  fi
done
[ "$fail" = 0 ] && echo "check-no-libtorch: moco-export and moco-infer neither depend on nor load libtorch"
exit "$fail"
