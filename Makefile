# The two Quickstart commands (README): `make demo` and `make test`. Both run the idempotent
# setup first (a project-local .venv with PyTorch and ONNX Runtime), then build with its env.
SHELL := /bin/bash
ENV := . scripts/env.sh &&
CARGO_TEST_FLAGS ?=

.PHONY: setup build demo test lint gpu-pack clean-venv

setup:
	@bash scripts/setup.sh

# The workspace as `make test` builds it (the same features, so nothing is rebuilt after it).
# libtorch lives in moco-models-tch, a crate of its own, so moco-export and moco-infer stay
# free of it in this build too (scripts/check-no-libtorch.sh).
build: setup
	$(ENV) cargo build --release --workspace --bins

demo: build
	$(ENV) bash scripts/demo.sh

# The binaries first: the tests of the CLI docs, the README and scripts/gpu.sh run moco-export
# and moco-infer beside moco-train, and skip without them.
test: build
	$(ENV) cargo test --release --workspace $(CARGO_TEST_FLAGS)

# What CI adds to `make test`: formatting, lints, the libtorch-free check, the docs' words.
lint: setup
	$(ENV) cargo fmt --all -- --check
	$(ENV) cargo clippy --workspace --all-targets -- -D warnings
	$(ENV) bash scripts/check-no-libtorch.sh
	bash scripts/check-docs.sh

gpu-pack: setup
	$(ENV) bash scripts/gpu.sh pack
