# The two Quickstart commands (README): `make demo` and `make test`. Both run the idempotent
# setup first (a project-local .venv with PyTorch and ONNX Runtime), then build with its env.
SHELL := /bin/bash
ENV := . scripts/env.sh &&
CARGO_TEST_FLAGS ?=

.PHONY: setup build demo test lint gpu-pack clean-venv

setup:
	@bash scripts/setup.sh

# Per package: one workspace-wide build would unify features and link libtorch into moco-infer.
build: setup
	$(ENV) cargo build --release -p moco-trainer -p moco-tests
	$(ENV) cargo build --release -p moco-exporter -p moco-infer

demo: build
	$(ENV) bash scripts/demo.sh

test: setup
	$(ENV) cargo test --release --workspace $(CARGO_TEST_FLAGS)

# What CI adds to `make test`.
lint: setup
	$(ENV) cargo fmt --all -- --check
	$(ENV) cargo clippy --workspace --all-targets -- -D warnings
	$(ENV) bash scripts/check-no-libtorch.sh

gpu-pack: setup
	$(ENV) bash scripts/gpu.sh pack
