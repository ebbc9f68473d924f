# vgpu-registry developer entry points. Each target installs what it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
BIN := target/debug/vgpu-admin

.PHONY: help build demo test test-rust test-python lint venv clean

help:
	@echo "make demo   build and walk the main workflow on the bundled XAPI simulator"
	@echo "make test   every suite (what CI runs)"
	@echo "make build  debug binaries"

build:
	$(CARGO) build --workspace

$(VENV)/.stamp: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

venv: $(VENV)/.stamp

demo: build
	PYTHON=$(PYTHON) tests/demo/run-demo.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test-rust:
	$(CARGO) test --workspace

test-python: build venv
	VGPU_ADMIN_BIN=$(CURDIR)/$(BIN) $(VPY) -m pytest -q tests/xapi_sim tests/cli

test: lint test-rust test-python
	@echo "make test: all suites passed"

clean:
	$(CARGO) clean
	rm -rf $(VENV) dist

.PHONY: bench
bench: venv
	$(CARGO) build --release -p vgpu-admin
	$(VPY) tests/bench/bench.py
