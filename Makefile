# vgpu-registry developer entry points. Each target installs what it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
BIN := target/debug/vgpu-admin
DIST := dist
WHEEL_TOOLS := $(VENV)/.wheel-tools

.PHONY: help build demo test test-rust test-python test-plugin lint venv wheel dom0-bin clean

help:
	@echo "make demo   build and walk the main workflow on the bundled XAPI simulator"
	@echo "make test   every suite (what CI runs)"
	@echo "make build  debug binaries"
	@echo "make wheel  the shippable abi3 manylinux2014 wheel of vgpu_registry in $(DIST)/"
	@echo "make dom0-bin  vgpu-admin linked for dom0's glibc 2.17, in $(DIST)/"

build:
	$(CARGO) build --workspace

$(VENV)/.stamp: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

venv: $(VENV)/.stamp

$(WHEEL_TOOLS): $(VENV)/.stamp rust/python/build-requirements.txt
	$(VPY) -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
		-r rust/python/build-requirements.txt
	touch $@

# One cp36-abi3 wheel, linked against glibc 2.17 by zig, refused if it needs a newer GLIBC_.
wheel: $(WHEEL_TOOLS)
	rm -f $(DIST)/vgpu_registry-*.whl
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" maturin build --release --zig --compatibility manylinux2014 \
		-m rust/python/Cargo.toml --out $(DIST)/
	$(VPY) rust/python/check_wheel.py $(DIST)/vgpu_registry-*.whl 2.17

# vgpu-admin for dom0: linked against glibc 2.17 by zig, refused if it needs a newer GLIBC_.
dom0-bin: $(WHEEL_TOOLS)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(CARGO) zigbuild --release \
		--target x86_64-unknown-linux-gnu.2.17 -p vgpu-admin
	mkdir -p $(DIST)
	cp target/x86_64-unknown-linux-gnu/release/vgpu-admin $(DIST)/vgpu-admin
	@newest=$$(objdump -T $(DIST)/vgpu-admin | grep -o 'GLIBC_[0-9.]*' | sort -V | tail -n 1); \
	echo "$(DIST)/vgpu-admin: newest $$newest"; \
	[ "$$(printf '%s\nGLIBC_2.17\n' "$$newest" | sort -V | tail -n 1)" = GLIBC_2.17 ] || \
	{ echo "$(DIST)/vgpu-admin needs $$newest, newer than dom0's glibc 2.17"; exit 1; }

demo: build
	PYTHON=$(PYTHON) tests/demo/run-demo.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test-rust:
	$(CARGO) test --workspace

test-python: build venv
	VGPU_ADMIN_BIN=$(CURDIR)/$(BIN) $(VPY) -m pytest -q tests/xapi_sim tests/cli

# The plugin run the way xapi runs it, under CPython 2.7 (CLI bridge), 3.6 (the wheel from dist/)
# and 3.12 (both paths); a missing interpreter is reported as a loud SKIPPED line.
test-plugin: build venv wheel
	VGPU_ADMIN_BIN=$(CURDIR)/$(BIN) PYTHON=$(CURDIR)/$(VPY) tests/plugin/run-all.sh

test: lint test-rust test-python test-plugin
	@echo "make test: all suites passed"

clean:
	$(CARGO) clean
	rm -rf $(VENV) dist

.PHONY: bench
bench: venv
	$(CARGO) build --release -p vgpu-admin
	$(VPY) tests/bench/bench.py
