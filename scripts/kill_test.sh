#!/usr/bin/env bash
# The long kill test: more random SIGKILL points over a longer run than CI's version.
#   KILLS=20 STEPS=40 SEED=1 bash scripts/kill_test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
export MOCO_KILL_POINTS="${KILLS:-20}" MOCO_KILL_STEPS="${STEPS:-40}" MOCO_KILL_SEED="${SEED:-1}"
cargo test --release -p moco-trainer --test cli killed_anywhere -- --nocapture
