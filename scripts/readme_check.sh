#!/usr/bin/env bash
# Runs the README's "your own data" commands as written, on a small generated dataset: the block
# between `<!-- readme-check -->` and the end of its code fence, with DATA and EPOCHS set for the
# small data (the block's own assignments of them are skipped). The binaries come from BIN
# (default target/release). trainer/tests/readme.rs runs it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${BIN:-$root/target/release}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
block="$(awk '/<!-- readme-check -->/ { on = 1; next } on && /^```bash/ { inside = 1; next }
             inside && /^```/ { exit } inside { print }' "$root/README.md")"
[ -n "$block" ] || { echo "readme_check: no <!-- readme-check --> block in README.md" >&2; exit 1; }
"$bin/moco-train" synth --out "$work/data" --classes 3 --train-per-class 100 --val-per-class 10 \
  --unlabeled 100 >&2
cd "$work"
export PATH="$bin:$PATH" DATA="$work/data" EPOCHS=1 MOCO_CACHE_DIR="$work/cache"
echo "$block" | grep -vE '^(DATA|EPOCHS)=' > commands.sh
echo "readme_check: running" >&2; cat commands.sh >&2
bash -euo pipefail commands.sh >&2
for f in run/encoder.safetensors lin/classifier.safetensors model.onnx predictions.csv; do
  [ -s "$f" ] || { echo "readme_check: $f was not written" >&2; exit 1; }
done
echo "readme_check: the README's commands ran as written" >&2
